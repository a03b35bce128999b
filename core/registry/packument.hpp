#pragma once
// The package document ("packument") as stored and as served. The stored
// document keeps every tarball as a path relative to the packages directory
// ("pkg/-/pkg-1.0.0.tgz"), so that it replicates unchanged between instances;
// URLs are rendered at serve time from the serving instance's registry.url.

#include "core/registry/publish.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace npme::registry {

// Who publishes or changes a package.
struct Publisher {
  std::string name;
  std::string email;
};

// The keys of "time" that are not versions.
bool is_time_meta_key(std::string_view key);

// Returns the stored document after publishing `request` by `publisher` at
// `now` (ISO 8601) onto `current` (nullopt for a new package). Refuses with
// Errc::forbidden a version that exists, existed (its "time" entry stays
// after an unpublish) or is listed in `retired` (versions of an earlier,
// wholly unpublished package of the same name). The manifest's dist.tarball
// becomes the relative tarball path; root description, readme and the like
// follow the version tagged "latest".
Expected<nlohmann::json> merge_publish(const std::optional<nlohmann::json>& current, const PublishRequest& request,
                                       const Publisher& publisher, std::string_view now,
                                       const std::set<std::string>& retired = {});

// The same on a document's head (as store::Head keeps it): `head` is the
// document without its versions' manifests (a "versions" member in it is
// ignored), `versions` the keys of its versions, sorted bytewise. Returns
// the new head (without "versions") and the new version's manifest.
struct PublishMerge {
  nlohmann::json head;
  nlohmann::json manifest;
};
Expected<PublishMerge> merge_publish_head(const std::optional<nlohmann::json>& head,
                                          const std::vector<std::string>& versions, const PublishRequest& request,
                                          const Publisher& publisher, std::string_view now,
                                          const std::set<std::string>& retired = {});

// The result of a metadata update (`npm deprecate`, `npm unpublish pkg@ver`).
struct MetadataUpdate {
  nlohmann::json doc;                     // the new stored document
  std::vector<std::string> removed_files; // tarballs of removed versions (relative paths)
  std::vector<std::string> removed_versions;
  bool removes_package = false;           // no version is left
};

// Applies the metadata update `body` (a packument as npm sends it back
// after `?write=true`) to stored document `current` at `now`. Allowed:
// removing versions (their "time" entries stay), setting or clearing
// "deprecated" on existing versions, and dist-tags that point at remaining
// versions. Refused with Errc::invalid: new versions, a changed
// dist.integrity or dist.shasum, a malformed body or dist-tag. The caller
// checks the revision.
Expected<MetadataUpdate> apply_metadata_update(const nlohmann::json& current, const nlohmann::json& body,
                                               std::string_view now);

// Returns the document with dist-tag `tag` pointing at `version`, which
// must exist (Errc::not_found otherwise); Errc::invalid for a bad tag.
Expected<nlohmann::json> set_dist_tag(nlohmann::json doc, std::string_view tag, std::string_view version,
                                      std::string_view now);

// Returns the document without dist-tag `tag`. Refuses "latest"
// (Errc::invalid); Errc::not_found when the tag does not exist.
Expected<nlohmann::json> remove_dist_tag(nlohmann::json doc, std::string_view tag, std::string_view now);

// Returns the relative tarball paths of every version of `doc`.
std::vector<std::string> tarball_paths(const nlohmann::json& doc);

// The record kept as "_unpublished:<name>" when a whole package is
// unpublished, so that its version numbers can never be reused.
std::string unpublished_record_id(std::string_view name);
nlohmann::json make_unpublished_record(const nlohmann::json& doc, const std::optional<nlohmann::json>& previous,
                                       std::string_view now);
// Returns the versions a record made by make_unpublished_record() retires.
std::set<std::string> retired_versions(const nlohmann::json& record);

// Returns `base_url` (registry.url, trailing '/' ignored) joined with the
// stored tarball value `stored`; absolute URLs are returned unchanged.
std::string tarball_url(std::string_view base_url, std::string_view stored);

// Returns the full packument of stored document `doc` as served, with
// tarball URLs under `base_url`.
std::string render_full(const nlohmann::json& doc, std::string_view base_url);

// Returns the abbreviated packument ("application/vnd.npm.install-v1+json")
// of stored document `doc`: name, modified, dist-tags, the `time` of
// created, modified and each version served, and per version only what
// installers need.
std::string render_abbreviated(const nlohmann::json& doc, std::string_view base_url);

// Returns the install-relevant fields of version manifest `manifest`, with
// hasInstallScript computed from its preinstall/install/postinstall scripts.
nlohmann::json abbreviate_manifest(const nlohmann::json& manifest);

// Returns the manifest of `version_or_tag` (a version or a dist-tag) in
// `doc` with its tarball URL under `base_url`; Errc::not_found when neither.
Expected<std::string> render_version(const nlohmann::json& doc, std::string_view version_or_tag,
                                     std::string_view base_url);

// True when the Accept header `accept` asks for the abbreviated packument.
bool wants_abbreviated(std::string_view accept);

// Returns a strong ETag (quoted) for the response body `body`.
std::string make_etag(std::string_view body);

// True when the If-None-Match header `if_none_match` (one tag, a list, weak
// "W/" tags or "*") matches `etag`.
bool etag_matches(std::string_view if_none_match, std::string_view etag);

} // namespace npme::registry
