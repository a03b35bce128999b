#pragma once
// The body of `npm publish` (libnpmpublish): a packument fragment with one
// new version and its tarball as a base64 attachment. Parsing checks the
// body against the URL and the tarball against the checksums the client
// computed, so that a corrupted or mismatched upload never reaches the store.

#include "core/registry/publish_body.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <string_view>

namespace npme::registry {

struct PublishRequest {
  std::string name;                            // "@scope/pkg"
  std::string version;                         // "1.0.0"
  nlohmann::json manifest;                     // the version's manifest as sent
  std::map<std::string, std::string> dist_tags; // tag → version; at least "latest" or the tag sent
  std::uint64_t size = 0;                      // of the decoded attachment (the tarball)
  std::string integrity;                       // "sha512-..." of the tarball
  std::string shasum;                          // sha1 hex of the tarball
  std::string readme;                          // root "readme" when sent, else the manifest's
};

// True when `body` carries attachments, i.e. it is a publish rather than a
// metadata update (deprecate, unpublish of one version).
bool has_attachments(const nlohmann::json& body);

// Parses and verifies the publish body `body` (split by BodySplitter) sent
// to the URL of package `url_name`. Checks: a JSON object whose "name" (and
// "_id" when present) equals `url_name`; exactly one entry in "versions",
// keyed by a valid version equal to the manifest's "version", the
// manifest's "name" equal to `url_name`; valid dist-tags pointing at that
// version; exactly one tarball attachment named "<name>-<version>.tgz" (the
// scoped or unscoped name), the one whose base64 "data" the splitter
// decoded, of "length" bytes with the SHA-512 of "dist.integrity" and the
// SHA-1 of "dist.shasum". Provenance attachments ("*.sigstore") are
// ignored. Every failure is Errc::invalid with a message naming what did
// not match.
Expected<PublishRequest> parse_publish(std::string_view url_name, const PutBody& body);

// Checks SRI string `integrity` (one or more space-separated
// "<algorithm>-<base64>[?options]" entries) against `sha512`, the raw
// SHA-512 of the data: it must hold a sha512 entry, and one of its sha512
// entries must match (as in SRI, other algorithms are ignored when sha512 is
// present). Returns the SRI of the data on success; Errc::invalid naming
// both values on a mismatch.
Expected<std::string> check_integrity(std::string_view integrity, std::string_view sha512);

} // namespace npme::registry
