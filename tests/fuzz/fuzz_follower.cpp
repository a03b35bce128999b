// What a follower reads from its upstream (core/replication/): the answer
// to "GET /" (parse_upstream_root), a changes feed (parse_feed_answer), a
// document as "/_doc/{id}" serves it (parse_upstream_document) and a bulk
// answer (parse_bulk). An upstream is another npme, but a broken or
// hostile one must only make the follower report an error. Input: one
// answer, given to every parser; for the document, its id is the input's
// "_id" when that is a string.

#include "core/replication/bulk.hpp"
#include "core/replication/follower.hpp"
#include "core/replication/prepare.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <nlohmann/json.hpp>

#include <string>

using namespace npme;
using npme::fuzz::require;

namespace {

void check_feed(std::string_view body, std::int64_t since) {
  auto feed = replication::parse_feed_answer(body, since);
  if (!feed) {
    return;
  }
  require(feed->changes.size() <= feed->entries, "feed: no more changes than entries");
  require(feed->problem.empty() == (feed->changes.size() == feed->entries), "feed: a problem iff an entry is bad");
  std::int64_t last = since;
  for (const auto& change : feed->changes) {
    require(change.seq > last, "feed: sequence numbers increase past since");
    last = change.seq;
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body = fuzz::text(data, size);

  static_cast<void>(replication::parse_upstream_root(body));
  check_feed(body, 0);
  check_feed(body, 3);

  std::string id = "fuzz-pkg";
  if (auto doc = nlohmann::json::parse(body, nullptr, false); doc.is_object()) {
    if (auto it = doc.find("_id"); it != doc.end() && it->is_string()) {
      id = it->get<std::string>();
    }
  }
  if (auto document = replication::parse_upstream_document(id, body)) {
    for (const auto& tarball : document->tarballs) {
      require(!tarball.path.empty(), "document: tarball paths are set");
    }
  }
  require(!replication::parse_upstream_document(id + "-other", body), "document: the id must match");

  if (auto frames = replication::parse_bulk(body)) {
    for (const auto& frame : *frames) {
      require(frame.bytes.empty() || (frame.bytes.data() >= body.data() &&
                                      frame.bytes.data() + frame.bytes.size() <= body.data() + body.size()),
              "bulk: frames point into the answer");
    }
  }
  return 0;
}
