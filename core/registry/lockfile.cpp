#include "core/registry/lockfile.hpp"

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace npme::registry {

namespace {

constexpr std::string_view k_node_modules = "node_modules/";

util::Unexpected<Error> invalid_lockfile(std::string_view reason) {
  return make_error(Errc::invalid, "invalid lockfile: " + std::string(reason));
}

util::Unexpected<Error> invalid_entry(std::string_view key, std::string_view reason) {
  return invalid_lockfile("entry '" + std::string(key.substr(0, 256)) + "': " + std::string(reason));
}

// Returns string member `field` of `entry`: nullopt when it is absent, an
// error when it is not a string.
Expected<std::optional<std::string>> optional_string(const nlohmann::json& entry, std::string_view key,
                                                     std::string_view field) {
  const nlohmann::json* value = member(entry, field);
  if (value == nullptr || value->is_null()) {
    return std::optional<std::string>{};
  }
  if (!value->is_string()) {
    return invalid_entry(key, "\"" + std::string(field) + "\" is not a string");
  }
  return std::optional<std::string>{value->get<std::string>()};
}

bool is_true(const nlohmann::json& entry, std::string_view field) {
  const nlohmann::json* value = member(entry, field);
  return value != nullptr && value->is_boolean() && value->get<bool>();
}

bool is_http_url(std::string_view url) {
  return url.starts_with("https://") || url.starts_with("http://");
}

// Returns the package an entry of "packages" installs from a registry, or
// nullopt for one it does not.
Expected<std::optional<LockedPackage>> locked_package(std::string_view key, const nlohmann::json& entry) {
  // The root is "", workspaces and the targets of links are plain folders
  // ("packages/a", "../lib"): only paths under node_modules are installs.
  std::size_t last = key.rfind(k_node_modules);
  if (last == std::string_view::npos) {
    return std::optional<LockedPackage>{};
  }
  if (!entry.is_object()) {
    return invalid_entry(key, "expected a JSON object");
  }
  if (is_true(entry, "link")) {
    return std::optional<LockedPackage>{};
  }
  NPME_TRY_ASSIGN(auto version, optional_string(entry, key, "version"));
  NPME_TRY_ASSIGN(auto resolved, optional_string(entry, key, "resolved"));
  NPME_TRY_ASSIGN(auto integrity, optional_string(entry, key, "integrity"));
  NPME_TRY_ASSIGN(auto name, optional_string(entry, key, "name"));
  if (!version) {
    return std::optional<LockedPackage>{};
  }
  // Git, "file:" and directory dependencies come from elsewhere; a bundled
  // dependency without "resolved" came inside its parent's tarball.
  if (resolved ? !is_http_url(*resolved) : is_true(entry, "inBundle")) {
    return std::optional<LockedPackage>{};
  }
  LockedPackage package;
  package.name = name ? *name : std::string(key.substr(last + k_node_modules.size()));
  package.version = std::move(*version);
  package.resolved = resolved.value_or("");
  package.integrity = integrity.value_or("");
  if (auto valid = validate_package_name(package.name); !valid) {
    return invalid_entry(key, valid.error().message);
  }
  if (auto valid = validate_version(package.version); !valid) {
    return invalid_entry(key, valid.error().message);
  }
  return std::optional<LockedPackage>{std::move(package)};
}

bool by_name_then_version(const LockedPackage& a, const LockedPackage& b) {
  if (a.name != b.name) {
    return a.name < b.name;
  }
  int order = compare_versions(a.version, b.version);
  if (order != 0) {
    return order < 0;
  }
  return a.version < b.version; // "1.0.0+a" and "1.0.0+b" are different files
}

} // namespace

Expected<std::vector<LockedPackage>> parse_lockfile(std::string_view text) {
  std::optional<nlohmann::json> doc = parse_json(text);
  if (!doc) {
    return invalid_lockfile("not valid JSON");
  }
  if (!doc->is_object()) {
    return invalid_lockfile("expected a JSON object");
  }
  const nlohmann::json* lockfile_version = member(*doc, "lockfileVersion");
  if (lockfile_version == nullptr || !lockfile_version->is_number_integer()) {
    return invalid_lockfile("\"lockfileVersion\" is missing or not an integer");
  }
  auto number = lockfile_version->get<std::int64_t>();
  if (number == 1) {
    return make_error(Errc::invalid, "lockfileVersion 1 is not supported: run 'npm install --lockfile-version 3' "
                                     "with npm 7 or later to upgrade it");
  }
  // Versions after 3 are read like 3, as npm reads them (with a warning).
  if (number < 1) {
    return invalid_lockfile("unknown lockfileVersion " + std::to_string(number));
  }
  const nlohmann::json* packages = member(*doc, "packages");
  if (packages == nullptr || !packages->is_object()) {
    return invalid_lockfile("\"packages\" is missing or not an object");
  }

  std::vector<LockedPackage> locked;
  for (const auto& [key, entry] : packages->items()) {
    NPME_TRY_ASSIGN(auto package, locked_package(key, entry));
    if (package) {
      locked.push_back(std::move(*package));
    }
  }
  std::stable_sort(locked.begin(), locked.end(), by_name_then_version);
  // The same name and version at several paths is one package; keep the
  // fields that some copy has.
  std::vector<LockedPackage> unique;
  for (LockedPackage& package : locked) {
    if (!unique.empty() && unique.back().name == package.name && unique.back().version == package.version) {
      if (unique.back().resolved.empty()) {
        unique.back().resolved = std::move(package.resolved);
      }
      if (unique.back().integrity.empty()) {
        unique.back().integrity = std::move(package.integrity);
      }
      continue;
    }
    unique.push_back(std::move(package));
  }
  return unique;
}

} // namespace npme::registry
