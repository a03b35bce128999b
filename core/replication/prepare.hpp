#pragma once
// How a follower prepares its upstream's changes before it commits them:
// each change's document and the tarballs this instance lacks are fetched,
// every tarball is checked against its version's dist (util::check_tarball)
// and staged, and nothing is written to the metadata. Either one request
// per item ("/_doc/{id}" and tarball GETs), or a slice of a window at a
// time through the upstream's bulk route (bulk.hpp). Runs on the follower's
// prefetch connections (http::Fetcher); the follower commits the results
// in feed order (follower.cpp).

#include "core/http/client.hpp"
#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace npme::replication {

// True for a package's document id (users and tokens start with '_').
bool is_package_id(std::string_view id);

// A tarball that a package document names: one version's dist.
struct TarballRef {
  std::string version;
  std::string path;      // dist.tarball: relative to the packages directory
  std::string integrity; // dist.integrity, "sha512-..." (may hold several hashes), or ""
  std::string shasum;    // dist.shasum, sha1 hex, or ""
};

// What a follower reads of an upstream's document.
struct UpstreamDocument {
  std::string rev;                  // "_rev", "" when absent
  bool uplink_copy = false;         // an uplink's packument ("_uplink"): its tarballs come on demand
  std::vector<TarballRef> tarballs; // of a package document: every version with a dist
};

// Parses `body`, the upstream's document `id` as "/_doc/{id}" (or a bulk
// frame) serves it. Errc::invalid unless it is a JSON object whose "_id" is
// `id` and "_rev", when present, a string; for a package document (see
// is_package_id), also unless "versions", when present, is an object and
// every dist.tarball a relative path.
Expected<UpstreamDocument> parse_upstream_document(std::string_view id, std::string_view body);

// What applying one change takes, fetched and staged but not yet committed.
struct Prepared {
  std::string id;
  store::Write::Kind kind = store::Write::Kind::none; // none: nothing to do
  std::string body;
  std::string rev;
  std::vector<store::StagedFile> staged;
  std::vector<std::string> removed_files;
  std::int64_t tarballs = 0;
  std::int64_t bytes = 0;
};

// GETs `url` from the upstream on the caller's connection; `what` names it
// in errors. Errc::not_found on 404.
using Getter = std::function<Expected<http::ClientResponse>(const std::string& url, const std::string& what)>;

// Fetches what the upstream's change of document `id` needs — its document
// and every tarball this instance lacks, verified and staged with `sync` —
// one request per item, through `client` and `get`. A document the upstream
// no longer has gives a Prepared of kind none (its tombstone comes later).
// With `check_files` (a full resync), a document already at the upstream's
// revision is skipped only when every tarball it names is present and
// matches the store's record (size and tag, store::Store::check_file); the
// others are fetched again and committed with the same revision.
Expected<Prepared> prepare_change(store::Store& store, http::Client& client, const std::string& upstream,
                                  const std::string& id, bool deleted, const std::string& feed_rev,
                                  const Getter& get, store::Sync sync, bool check_files = false);

// One change of a window: what the feed said, and what preparing it gave.
struct WindowItem {
  std::int64_t seq;
  std::string id;
  bool deleted;
  std::string feed_rev;
  std::optional<Expected<Prepared>> prepared;
  bool check_files = false; // a full resync: see prepare_change
};

// Prepares `items` (a slice of a window) through the upstream's bulk route
// with `client`, sending `headers`: one request for their documents, then
// requests of up to 64 tarballs, each tarball checked exactly as a single
// download is and staged with `sync`. What an answer leaves out is asked
// again; what it names "large", or "missing" for a change that needs it (not
// an uplink copy's, which comes on demand), is fetched on its own. A
// truncated or inconsistent answer fails the changes it was for. Each
// item's outcome is in its `prepared`. Errc::not_found when the upstream
// has no bulk route (an older npme): nothing was fetched, and the caller
// prepares the items with prepare_change().
Expected<void> prepare_bulk(store::Store& store, http::Client& client, const std::string& upstream,
                            const http::Headers& headers, std::span<WindowItem*> items, const Getter& get,
                            store::Sync sync);

} // namespace npme::replication
