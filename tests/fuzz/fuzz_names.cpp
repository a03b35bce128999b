// Package names, versions, dist-tags and tarball file names as the registry
// reads them from URLs and bodies (core/registry/names.hpp).
// Input: "<name or URL segment>\n<version, tag or tarball file name>".

#include "core/registry/names.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <algorithm>
#include <string>

using namespace npme;
using npme::fuzz::require;

namespace {

// What validate_package_name() promises: nothing that could act as a
// path segment, within npm's limits.
void check_valid_name(std::string_view name) {
  require(!name.empty() && name.size() <= registry::k_max_name_length, "valid name: length");
  require(name.front() != '.' && name.front() != '_' && name.front() != '-', "valid name: first character");
  const auto slashes = std::count(name.begin(), name.end(), '/');
  require(slashes == 0 || (slashes == 1 && name.front() == '@'), "valid name: one '/', after a scope");
  require(name.find("/.") == std::string_view::npos, "valid name: no segment starts with '.'");
  require(name.find_first_of("%\\ \t\r\n:?#") == std::string_view::npos, "valid name: URL-friendly characters");
  require(registry::is_scoped(name) == (slashes == 1), "valid name: is_scoped()");
  require(!registry::unscoped_name(name).empty(), "valid name: unscoped part");
  auto again = registry::name_from_param(name);
  require(again && *again == name, "valid name: name_from_param() agrees");
}

int sign(int value) {
  return (value > 0) - (value < 0);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto [first, second] = fuzz::split_line(fuzz::text(data, size));

  const bool valid_name = static_cast<bool>(registry::validate_package_name(first));
  if (valid_name) {
    check_valid_name(first);
  }
  if (auto decoded = registry::name_from_url_segment(first)) {
    check_valid_name(*decoded);
  }
  if (auto scope = fuzz::split_line(second); !scope.first.empty()) {
    if (auto joined = registry::name_from_params(first, scope.first)) {
      check_valid_name(*joined);
    }
  }

  const bool valid_version = static_cast<bool>(registry::validate_version(second));
  if (valid_version) {
    require(second.size() <= 256, "valid version: length");
    require(second.find_first_of("/\\ ") == std::string_view::npos, "valid version: no path characters");
    require(registry::compare_versions(second, second) == 0, "compare_versions(v, v) == 0");
    require(registry::is_version_range(second), "a version is a range");
    require(!registry::validate_dist_tag(second), "a version is no dist-tag");
  }
  // Orders the two lines as versions: antisymmetric whatever they are.
  require(sign(registry::compare_versions(first, second)) == -sign(registry::compare_versions(second, first)),
          "compare_versions() is antisymmetric");

  if (registry::validate_dist_tag(second)) {
    require(!second.empty() && second.size() <= registry::k_max_name_length, "valid dist-tag: length");
    require(!valid_version, "valid dist-tag: not a version");
  }

  if (valid_name) {
    // The tarball a version gets, and what a request for a file may name.
    if (valid_version) {
      auto path = registry::tarball_rel_path_for_file(first, registry::tarball_file_name(first, second));
      require(path && *path == registry::tarball_rel_path(first, second), "tarball path round trip");
    }
    if (auto path = registry::tarball_rel_path_for_file(first, second)) {
      require(second.find_first_of("/\\") == std::string_view::npos && !second.starts_with('.'),
              "tarball file: one plain path segment");
      require(path->starts_with(std::string(first) + "/-/"), "tarball file: inside the package");
    }
  }
  static_cast<void>(registry::is_version_range(first));
  return 0;
}
