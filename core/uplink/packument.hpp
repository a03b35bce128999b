#pragma once
// What the uplink's packuments become in the store, and where their
// tarballs may be fetched from. A packument is stored whole as an ordinary
// document (so it replicates and snapshots), with every tarball as this
// registry's relative path and an "_uplink" member recording its origin;
// that member is what makes a name "from the uplink" (core/uplink/service).

#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace npme::uplink {

// The member of a stored document that marks it as a copy from the uplink.
inline constexpr std::string_view k_origin_member = store::k_uplink_member;

// What the uplink said about the packument besides its body.
struct Validators {
  std::string etag;
  std::string last_modified;
};

// Returns the document to store for `fetched`, the uplink's full packument
// of package `name` from `uplink_url`, fetched at `now` (ISO 8601): "_rev"
// and "_attachments" dropped, each version's dist.tarball replaced by this
// registry's relative path (the uplink's URL is kept in
// _uplink.tarballs[version]), versions that are not valid semver or name
// another package dropped, dist-tags that point nowhere dropped.
// Everything else is kept as the uplink sent it: time, modified,
// dist.integrity, dist.signatures, attestations, _npmUser.
// _uplink.digest is a SHA-256 of the content (without the fetch time), so
// that a refetch that changed nothing writes nothing. Errc::invalid when
// `fetched` is not an object, names another package, or has no versions
// object (Errc::not_found when it has none because it was unpublished).
Expected<nlohmann::json> normalize_packument(const nlohmann::json& fetched, const std::string& name,
                                             const std::string& uplink_url, const Validators& validators,
                                             std::string_view now);

// Returns the URL to fetch a tarball from: `recorded` (the uplink's own
// dist.tarball) when it is on the origin of `uplink_url`, else the uplink's
// canonical path `uplink_url` + "/" + `rel_path`, so that nothing but the
// uplink is ever asked (and its token goes nowhere else). Errc::forbidden
// when `recorded` has a ".." segment (also percent-encoded).
Expected<std::string> tarball_source(std::string_view uplink_url, std::string_view recorded, std::string_view rel_path);

// Returns "scheme://host[:port]" of `url`, lowercase; "" when it has none.
std::string origin_of(std::string_view url);

// Returns the URL path of package `name` on a registry: "lodash",
// "@scope%2fpkg" (how npm asks for scoped packages).
std::string package_path(std::string_view name);

// The uplink.private setting: scopes ("@acme", "@acme/*") and name globs
// with '*' ("acme-*"), comma-separated.
class PrivateNames {
public:
  explicit PrivateNames(std::string_view setting);
  // True when `name` matches a scope or glob: never taken from the uplink.
  bool matches(std::string_view name) const;

private:
  std::vector<std::string> m_scopes; // "@acme/"
  std::vector<std::string> m_globs;
};

} // namespace npme::uplink
