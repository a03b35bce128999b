// A stored package document as the registry serves it (core/registry/
// packument.hpp): the abbreviated packument ("corgi") that installers ask
// for, the full one, one version, and the edits made on a stored document
// (dist-tags, unpublish records). Stored documents come from publishes,
// followers and uplinks, so any JSON object is possible. Input: the document.

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/registry/packument.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <string>

using namespace npme;
using nlohmann::json;
using npme::fuzz::require;

namespace {

constexpr std::string_view k_now = "2024-05-01T12:00:00.000Z";
constexpr std::string_view k_base = "http://127.0.0.1:8080/";

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // As the registry loads a document (Registry::load): one that is not a
  // JSON object is refused before anything renders it.
  auto doc = registry::parse_json(fuzz::text(data, size));
  if (!doc || !doc->is_object()) {
    return 0;
  }
  const std::string abbreviated = registry::render_abbreviated(*doc, k_base);
  auto corgi = registry::parse_json(abbreviated);
  require(corgi && corgi->is_object(), "abbreviated: a JSON object");
  const json* stored_versions = registry::member(*doc, "versions");
  const json* corgi_versions = registry::member(*corgi, "versions");
  require(corgi_versions != nullptr && corgi_versions->is_object(), "abbreviated: versions");
  if (stored_versions != nullptr && stored_versions->is_object()) {
    require(corgi_versions->size() == stored_versions->size(), "abbreviated: every version");
  }
  const std::string full = registry::render_full(*doc, k_base);
  require(registry::parse_json(full).has_value(), "full: valid JSON");

  static_cast<void>(registry::render_version(*doc, "latest", k_base));
  for (const auto& path : registry::tarball_paths(*doc)) {
    require(path.find("/../") == std::string::npos && !path.starts_with("../") && !path.starts_with("/"),
            "tarball paths stay in the packages directory");
  }
  const json record = registry::make_unpublished_record(*doc, std::nullopt, k_now);
  static_cast<void>(registry::retired_versions(record));

  if (stored_versions != nullptr && stored_versions->is_object() && !stored_versions->empty()) {
    const std::string first = stored_versions->begin().key();
    static_cast<void>(registry::render_version(*doc, first, k_base));
    if (auto tagged = registry::set_dist_tag(*doc, "fuzz", first, k_now)) {
      static_cast<void>(registry::render_abbreviated(*tagged, k_base));
      auto removed = registry::remove_dist_tag(*tagged, "fuzz", k_now);
      require(static_cast<bool>(removed), "a tag set can be removed");
    }
    for (const auto& [version, manifest] : stored_versions->items()) {
      static_cast<void>(registry::abbreviate_manifest(manifest));
    }
  }
  // What npm sends back to deprecate or unpublish: the document itself.
  static_cast<void>(registry::apply_metadata_update(*doc, *doc, k_now));
  return 0;
}
