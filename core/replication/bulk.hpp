#pragma once
// The followers' bulk route (README, "Additions to DESIGN.md"): "POST /_bulk"
// on the feed, secret required like "/_doc", answers many documents and
// tarballs in one response, so that an initial sync costs a few requests
// per window of changes instead of one per document and one per tarball.
//
// Request body: {"docs":["id",...],"files":["a/-/a-1.0.0.tgz",...]} (at most
// k_bulk_max_items of each). The answer (Content-Type k_bulk_content_type) is
// a sequence of frames, each a JSON header line ended by '\n' followed by
// exactly "length" bytes:
//
//   {"kind":"doc","id":"a","length":N}\n<document exactly as "/_doc" serves it>
//   {"kind":"file","path":"a/-/a-1.0.0.tgz","length":N}\n<tarball as stored>
//   {"kind":"missing","id":"a"}\n            (or "path": not held here)
//   {"kind":"large","path":"..."}\n           (or "id": larger than one answer may be)
//   {"kind":"end"}\n
//
// Items are answered in request order, documents first, until the payload
// would pass k_bulk_max_bytes: the items left out are simply absent, and the
// follower asks for them again. Tarballs are served only from this
// instance's disk, never fetched from its uplink or upstream (a "missing"
// one is what "?held=1" would answer 404 for). An answer without its end
// frame is truncated.

#include "core/http/client.hpp"
#include "core/http/server.hpp"
#include "core/replication/feed.hpp"
#include "core/util/error.hpp"

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace npme::replication {

inline constexpr std::string_view k_bulk_path = "/_bulk";
inline constexpr std::string_view k_bulk_content_type = "application/vnd.npme.bulk";
// The most payload bytes (documents and tarballs) in one answer: bounds the
// memory of both sides per request.
inline constexpr std::size_t k_bulk_max_bytes = 16u << 20;
// The most documents, and the most files, one request may name.
inline constexpr std::size_t k_bulk_max_items = 1000;
// The longest header line of a frame (ids and paths are far shorter).
inline constexpr std::size_t k_bulk_max_header = 4096;

// Adds "POST /_bulk" to `router` (called by add_feed_routes). `context` must
// outlive the router.
void add_bulk_route(http::Router& router, const FeedContext& context);

// One frame of an answer. `bytes` points into the parsed answer.
struct BulkFrame {
  enum class Kind { doc, file, missing, large };
  Kind kind = Kind::doc;
  bool is_file = false; // names a file ("path"), else a document ("id")
  std::string name;     // the id or the path
  std::string_view bytes;
};

// Parses the whole answer `body`: its frames up to the end frame, which is
// not returned. Errc::invalid naming the offset for anything else: a header
// line that is not a JSON object of the shapes above or is longer than
// k_bulk_max_header, a length past the end of `body`, bytes after the end
// frame, no end frame (a truncated answer).
Expected<std::vector<BulkFrame>> parse_bulk(std::string_view body);

// What a follower asks for in one request.
struct BulkRequest {
  std::vector<std::string> docs;
  std::vector<std::string> files;
};

// A parsed answer with the body its frames point into (shared, so that the
// frames stay valid however the answer is moved or copied).
struct BulkAnswer {
  std::shared_ptr<const std::string> body;
  std::vector<BulkFrame> frames;
};

// POSTs `request` to `upstream`'s bulk route with `client` (adding
// `headers`) and parses the answer; every frame names something that was
// asked for, at most once (Errc::invalid otherwise). The answer may be at
// most k_bulk_max_bytes plus its frame headers (Errc::too_large past that).
// Errc::not_found when the upstream has no bulk route (404, 405 or 501: an
// older npme; ask item by item), Errc::unauthorized on 401/403, Errc::failed
// on other statuses; the client's errors as they are.
Expected<BulkAnswer> fetch_bulk(http::Client& client, const std::string& upstream, const BulkRequest& request,
                                const http::Headers& headers = {});

} // namespace npme::replication
