#include "core/registry/packument.hpp"

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/text.hpp"

#include <algorithm>
#include <array>
#include <cctype>

namespace npme::registry {

namespace {

using nlohmann::json;

// Root fields that npm's registry copies from the version tagged "latest".
constexpr std::array<std::string_view, 9> k_root_fields_from_latest{
  "description", "license", "homepage", "keywords", "repository", "author", "bugs", "contributors",
  "readmeFilename"};

// The version fields an installer needs (the abbreviated "corgi" format).
constexpr std::array<std::string_view, 20> k_abbreviated_fields{
  "name",         "version",          "deprecated",           "dependencies", "optionalDependencies",
  "devDependencies", "bundleDependencies", "peerDependencies",  "peerDependenciesMeta", "bin",
  "directories",  "dist",             "engines",              "cpu",          "os",
  "libc",         "funding",          "_hasShrinkwrap",       "hasInstallScript", "acceptDependencies"};

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json& object_member(json& doc, const char* key) {
  json& value = doc[key];
  if (!value.is_object()) {
    value = json::object();
  }
  return value;
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

json maintainer_entry(const Publisher& publisher) {
  json entry = {{"name", publisher.name}};
  if (!publisher.email.empty()) {
    entry["email"] = publisher.email;
  }
  return entry;
}

// Copies the root fields of the package from `manifest`, the version now
// tagged "latest", as npm's registry does; `readme` replaces the root
// readme when the publish carried one.
void update_root_from_latest(json& doc, const json& manifest, const std::string* readme) {
  for (std::string_view key : k_root_fields_from_latest) {
    if (const json* value = member(manifest, key); value != nullptr) {
      doc[std::string(key)] = *value;
    } else {
      doc.erase(std::string(key));
    }
  }
  if (readme != nullptr) {
    doc["readme"] = *readme;
  }
}

// Points "latest" at the highest remaining version when it is missing, and
// drops tags whose version is gone.
void repair_dist_tags(json& doc) {
  json& tags = object_member(doc, "dist-tags");
  const json& versions = doc["versions"];
  for (auto it = tags.begin(); it != tags.end();) {
    if (!it.value().is_string() || !versions.contains(it.value().get<std::string>())) {
      it = tags.erase(it);
    } else {
      ++it;
    }
  }
  if (!tags.contains("latest") && versions.is_object() && !versions.empty()) {
    std::string highest;
    for (const auto& [version, manifest] : versions.items()) {
      if (highest.empty() || compare_versions(version, highest) > 0) {
        highest = version;
      }
    }
    tags["latest"] = highest;
  }
}

void follow_latest(json& doc, const std::string& previous_latest) {
  auto latest = string_member(doc["dist-tags"], "latest");
  if (!latest || *latest == previous_latest) {
    return;
  }
  if (const json* manifest = member(doc["versions"], *latest); manifest != nullptr) {
    update_root_from_latest(doc, *manifest, nullptr);
  }
}

// Returns the relative tarball path of `version` of package `name`, computed
// rather than read from the document, so that a document that came from
// elsewhere can never make the registry delete a file outside the package.
std::optional<std::string> safe_tarball_path(std::string_view name, std::string_view version) {
  if (!validate_package_name(name) || !validate_version(version)) {
    return std::nullopt;
  }
  return tarball_rel_path(name, version);
}

json render_tarball(json manifest, std::string_view base_url) {
  if (json* dist = member(manifest, "dist"); dist != nullptr && dist->is_object()) {
    if (auto tarball = string_member(*dist, "tarball")) {
      (*dist)["tarball"] = tarball_url(base_url, *tarball);
    }
  }
  return manifest;
}

bool has_install_script(const json& manifest) {
  const json* scripts = member(manifest, "scripts");
  if (scripts == nullptr) {
    return false;
  }
  for (const char* hook : {"preinstall", "install", "postinstall"}) {
    if (auto script = string_member(*scripts, hook); script && !script->empty()) {
      return true;
    }
  }
  return false;
}

} // namespace

bool is_time_meta_key(std::string_view key) {
  return key == "created" || key == "modified" || key == "unpublished";
}

Expected<PublishMerge> merge_publish_head(const std::optional<json>& head, const std::vector<std::string>& versions,
                                          const PublishRequest& request, const Publisher& publisher,
                                          std::string_view now, const std::set<std::string>& retired) {
  PublishMerge merged;
  json& doc = merged.head;
  if (head && head->is_object()) {
    doc = *head;
    doc.erase("versions");
  } else {
    doc = json::object();
    doc["_id"] = request.name;
    doc["name"] = request.name;
    doc["maintainers"] = json::array({maintainer_entry(publisher)});
    doc["users"] = json::object();
    doc["time"] = {{"created", std::string(now)}};
  }
  json& time = object_member(doc, "time");
  if (std::binary_search(versions.begin(), versions.end(), request.version) || time.contains(request.version) ||
      retired.contains(request.version)) {
    return make_error(Errc::forbidden, "cannot publish over the previously published version " + request.version);
  }
  if (!time.contains("created")) {
    time["created"] = std::string(now);
  }
  json& maintainers = doc["maintainers"];
  if (!maintainers.is_array() || maintainers.empty()) {
    maintainers = json::array({maintainer_entry(publisher)});
  }

  json& manifest = merged.manifest;
  manifest = request.manifest;
  manifest.erase("readme");
  manifest.erase("_attachments");
  manifest["_id"] = request.name + "@" + request.version;
  json& dist = object_member(manifest, "dist");
  dist["tarball"] = tarball_rel_path(request.name, request.version);
  dist["integrity"] = request.integrity;
  dist["shasum"] = request.shasum;
  manifest["_npmUser"] = maintainer_entry(publisher);
  manifest["maintainers"] = maintainers;
  if (!manifest.contains("hasInstallScript") && has_install_script(manifest)) {
    manifest["hasInstallScript"] = true;
  }

  time[request.version] = std::string(now);
  time["modified"] = std::string(now);
  json& tags = object_member(doc, "dist-tags");
  for (const auto& [tag, version] : request.dist_tags) {
    tags[tag] = version;
  }
  if (!tags.contains("latest")) {
    tags["latest"] = request.version;
  }
  if (tags["latest"] == request.version) {
    update_root_from_latest(doc, manifest, &request.readme);
  }
  if (!doc.contains("readme")) {
    doc["readme"] = "";
  }
  return merged;
}

Expected<json> merge_publish(const std::optional<json>& current, const PublishRequest& request,
                             const Publisher& publisher, std::string_view now, const std::set<std::string>& retired) {
  std::optional<json> head;
  std::vector<std::string> keys;
  json versions = json::object();
  if (current && current->is_object()) {
    head = *current;
    if (auto it = head->find("versions"); it != head->end()) {
      if (it->is_object()) {
        versions = std::move(*it);
        for (const auto& [version, manifest] : versions.items()) {
          keys.push_back(version); // sorted: json's objects are
        }
      }
      head->erase(it);
    }
  }
  NPME_TRY_ASSIGN(PublishMerge merged, merge_publish_head(head, keys, request, publisher, now, retired));
  json doc = std::move(merged.head);
  versions[request.version] = std::move(merged.manifest);
  doc["versions"] = std::move(versions);
  return doc;
}

Expected<MetadataUpdate> apply_metadata_update(const json& current, const json& body, std::string_view now) {
  if (!body.is_object()) {
    return make_error(Errc::invalid, "invalid package update: expected a JSON object");
  }
  MetadataUpdate update;
  update.doc = current;
  json& doc = update.doc;
  std::string name = string_member(doc, "name").value_or("");
  if (auto body_name = string_member(body, "name"); body_name && *body_name != name) {
    return make_error(Errc::invalid, "invalid package update: name '" + *body_name + "' does not match the package '" +
                                       name + "'");
  }
  const json* body_versions = member(body, "versions");
  if (body_versions == nullptr || !body_versions->is_object()) {
    return make_error(Errc::invalid, "invalid package update: \"versions\" is missing or not an object");
  }
  json& versions = object_member(doc, "versions");
  std::string previous_latest = string_member(object_member(doc, "dist-tags"), "latest").value_or("");

  for (const auto& [version, manifest] : body_versions->items()) {
    json* stored = member(versions, version);
    if (stored == nullptr) {
      return make_error(Errc::invalid, "invalid package update: version " + version +
                                         " does not exist; new versions are published with their tarball");
    }
    if (!manifest.is_object()) {
      return make_error(Errc::invalid, "invalid package update: the manifest of " + version + " is not an object");
    }
    if (const json* dist = member(manifest, "dist"); dist != nullptr) {
      const json* stored_dist = member(*stored, "dist");
      for (const char* key : {"integrity", "shasum"}) {
        const json* sent = member(*dist, key);
        const json* kept = stored_dist != nullptr ? member(*stored_dist, key) : nullptr;
        if (sent != nullptr && (kept == nullptr || *sent != *kept)) {
          return make_error(Errc::invalid, std::string("invalid package update: cannot change dist.") + key + " of " +
                                             version);
        }
      }
    }
    const json* deprecated = member(manifest, "deprecated");
    if (deprecated != nullptr && !deprecated->is_string() && !deprecated->is_null()) {
      return make_error(Errc::invalid, "invalid package update: deprecated of " + version + " must be a string");
    }
    // An empty message is how npm undeprecates.
    if (deprecated != nullptr && deprecated->is_string() && !deprecated->get_ref<const std::string&>().empty()) {
      (*stored)["deprecated"] = *deprecated;
    } else {
      stored->erase("deprecated");
    }
  }

  for (auto it = versions.begin(); it != versions.end();) {
    if (body_versions->contains(it.key())) {
      ++it;
      continue;
    }
    update.removed_versions.push_back(it.key());
    if (auto path = safe_tarball_path(name, it.key())) {
      update.removed_files.push_back(*path);
    }
    it = versions.erase(it);
  }

  if (const json* body_tags = member(body, "dist-tags"); body_tags != nullptr && !body_tags->is_null()) {
    if (!body_tags->is_object()) {
      return make_error(Errc::invalid, "invalid package update: \"dist-tags\" is not an object");
    }
    json tags = json::object();
    for (const auto& [tag, target] : body_tags->items()) {
      if (!target.is_string()) {
        return make_error(Errc::invalid, "invalid package update: dist-tag '" + tag + "' is not a version string");
      }
      const auto& version = target.get_ref<const std::string&>();
      if (!versions.contains(version)) {
        return make_error(Errc::invalid, "invalid package update: dist-tag '" + tag + "' points at version " +
                                           version + ", which does not exist");
      }
      // Tags already stored stay acceptable even if they predate the
      // current naming rules; new ones must be valid.
      if (!doc["dist-tags"].contains(tag)) {
        NPME_TRY(validate_dist_tag(tag));
      }
      tags[tag] = version;
    }
    doc["dist-tags"] = std::move(tags);
  }
  repair_dist_tags(doc);
  update.removes_package = versions.empty();
  object_member(doc, "time")["modified"] = std::string(now);
  follow_latest(doc, previous_latest);
  return update;
}

Expected<json> set_dist_tag(json doc, std::string_view tag, std::string_view version, std::string_view now) {
  NPME_TRY(validate_dist_tag(tag));
  if (member(object_member(doc, "versions"), version) == nullptr) {
    return make_error(Errc::not_found, "version " + std::string(version) + " of " +
                                         string_member(doc, "name").value_or("") + " does not exist");
  }
  json& tags = object_member(doc, "dist-tags");
  std::string previous_latest = string_member(tags, "latest").value_or("");
  tags[std::string(tag)] = std::string(version);
  object_member(doc, "time")["modified"] = std::string(now);
  follow_latest(doc, previous_latest);
  return doc;
}

Expected<json> remove_dist_tag(json doc, std::string_view tag, std::string_view now) {
  if (tag == "latest") {
    return make_error(Errc::invalid, "cannot remove the dist-tag 'latest'; point it at another version instead");
  }
  json& tags = object_member(doc, "dist-tags");
  if (!tags.contains(tag)) {
    return make_error(Errc::not_found, "dist-tag '" + std::string(tag) + "' does not exist");
  }
  tags.erase(std::string(tag));
  object_member(doc, "time")["modified"] = std::string(now);
  return doc;
}

std::vector<std::string> tarball_paths(const json& doc) {
  std::vector<std::string> paths;
  std::string name = string_member(doc, "name").value_or("");
  if (const json* versions = member(doc, "versions"); versions != nullptr && versions->is_object()) {
    for (const auto& [version, manifest] : versions->items()) {
      if (auto path = safe_tarball_path(name, version)) {
        paths.push_back(*path);
      }
    }
  }
  return paths;
}

std::string unpublished_record_id(std::string_view name) {
  return "_unpublished:" + std::string(name);
}

json make_unpublished_record(const json& doc, const std::optional<json>& previous, std::string_view now) {
  std::set<std::string> versions = previous ? retired_versions(*previous) : std::set<std::string>{};
  if (const json* current = member(doc, "versions"); current != nullptr && current->is_object()) {
    for (const auto& [version, manifest] : current->items()) {
      versions.insert(version);
    }
  }
  if (const json* time = member(doc, "time"); time != nullptr && time->is_object()) {
    for (const auto& [key, value] : time->items()) {
      if (!is_time_meta_key(key)) {
        versions.insert(key);
      }
    }
  }
  json record = json::object();
  record["name"] = string_member(doc, "name").value_or("");
  record["versions"] = versions;
  record["unpublished"] = std::string(now);
  return record;
}

std::set<std::string> retired_versions(const json& record) {
  std::set<std::string> versions;
  if (const json* list = member(record, "versions"); list != nullptr && list->is_array()) {
    for (const json& version : *list) {
      if (version.is_string()) {
        versions.insert(version.get<std::string>());
      }
    }
  }
  return versions;
}

std::string tarball_url(std::string_view base_url, std::string_view stored) {
  if (stored.starts_with("http://") || stored.starts_with("https://")) {
    return std::string(stored);
  }
  while (!base_url.empty() && base_url.back() == '/') {
    base_url.remove_suffix(1);
  }
  while (!stored.empty() && stored.front() == '/') {
    stored.remove_prefix(1);
  }
  std::string url(base_url);
  url += '/';
  url += stored;
  return url;
}

std::string render_full(const json& doc, std::string_view base_url) {
  json out = doc;
  out.erase(std::string(store::k_uplink_member)); // where a copy came from: this instance's business only
  if (json* versions = member(out, "versions"); versions != nullptr && versions->is_object()) {
    for (auto& [version, manifest] : versions->items()) {
      manifest = render_tarball(std::move(manifest), base_url);
    }
  }
  return dump(out);
}

json abbreviate_manifest(const json& manifest) {
  json out = json::object();
  for (std::string_view key : k_abbreviated_fields) {
    if (const json* value = member(manifest, key); value != nullptr) {
      out[std::string(key)] = *value;
    }
  }
  if (!out.contains("hasInstallScript") && has_install_script(manifest)) {
    out["hasInstallScript"] = true;
  }
  return out;
}

std::string render_abbreviated(const json& doc, std::string_view base_url) {
  json out = json::object();
  out["name"] = string_member(doc, "name").value_or("");
  const json* time = member(doc, "time");
  if (time != nullptr && !time->is_object()) {
    time = nullptr;
  }
  if (time != nullptr) {
    if (auto modified = string_member(*time, "modified")) {
      out["modified"] = *modified;
    }
  }
  const json* tags = member(doc, "dist-tags");
  out["dist-tags"] = tags != nullptr && tags->is_object() ? *tags : json::object();
  json versions = json::object();
  // The publish times of the versions served, with created and modified:
  // pnpm 11 and 12 judge a version's age by them (minimumReleaseAge) and,
  // when the abbreviated packument has no `time`, fetch the full one too
  // (two requests per package instead of one; tests/integration/test_pnpm.sh).
  json times = json::object();
  if (time != nullptr) {
    for (const char* key : {"created", "modified"}) {
      if (auto value = string_member(*time, key)) {
        times[key] = *value;
      }
    }
  }
  if (const json* stored = member(doc, "versions"); stored != nullptr && stored->is_object()) {
    for (const auto& [version, manifest] : stored->items()) {
      versions[version] = render_tarball(abbreviate_manifest(manifest), base_url);
      if (time != nullptr) {
        if (auto published = string_member(*time, version)) {
          times[version] = *published;
        }
      }
    }
  }
  if (!times.empty()) {
    out["time"] = std::move(times);
  }
  out["versions"] = std::move(versions);
  return dump(out);
}

Expected<std::string> render_version(const json& doc, std::string_view version_or_tag, std::string_view base_url) {
  std::string version(version_or_tag);
  if (const json* tags = member(doc, "dist-tags"); tags != nullptr) {
    if (auto tagged = string_member(*tags, version_or_tag)) {
      version = *tagged;
    }
  }
  const json* versions = member(doc, "versions");
  const json* manifest = versions != nullptr ? member(*versions, version) : nullptr;
  if (manifest == nullptr) {
    return make_error(Errc::not_found, "version not found: " + string_member(doc, "name").value_or("") + "@" +
                                         std::string(version_or_tag));
  }
  return dump(render_tarball(*manifest, base_url));
}

bool wants_abbreviated(std::string_view accept) {
  return lowercase(accept).find("application/vnd.npm.install-v1+json") != std::string::npos;
}

std::string make_etag(std::string_view body) {
  return "\"" + util::hex(util::sha1(body)) + "\"";
}

bool etag_matches(std::string_view if_none_match, std::string_view etag) {
  auto unquote = [](std::string_view tag) {
    if (tag.size() >= 2 && tag.front() == '"' && tag.back() == '"') {
      tag = tag.substr(1, tag.size() - 2);
    }
    return tag;
  };
  std::string_view wanted = unquote(etag);
  while (!if_none_match.empty()) {
    auto comma = if_none_match.find(',');
    std::string_view candidate = util::trim(if_none_match.substr(0, comma));
    if_none_match = comma == std::string_view::npos ? std::string_view{} : if_none_match.substr(comma + 1);
    if (candidate == "*") {
      return true;
    }
    if (candidate.starts_with("W/")) {
      candidate.remove_prefix(2);
    }
    if (!candidate.empty() && unquote(candidate) == wanted) {
      return true;
    }
  }
  return false;
}

} // namespace npme::registry
