#pragma once
// The replication feed every instance serves on its registry port (DESIGN.md
// §5), CouchDB 1.x shaped: "GET /" (update_seq, doc_count, instance, epoch),
// "GET /_changes" (one entry per document, its latest change; longpoll),
// "GET /_doc/{id}" (a document exactly as stored, for followers), and
// "POST /_bulk" (many documents and tarballs in one answer, bulk.hpp). Only
// callers presenting the instance's `secret` may read them.

#include "core/http/server.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace npme::replication {

// Followers name themselves on every feed request (DESIGN.md §10): their
// instance id and their own registry.url. The upstream's answers to
// "/_changes" say whether it counts the follower as synchronous.
inline constexpr std::string_view k_instance_header = "Npme-Instance";
inline constexpr std::string_view k_instance_url_header = "Npme-Instance-Url";
inline constexpr std::string_view k_sync_header = "Npme-Sync"; // "sync" or "async"
// The highest sequence of a write its synchronous followers confirmed.
inline constexpr std::string_view k_sync_confirmed_header = "Npme-Sync-Confirmed";

class Replicas;

struct FeedContext {
  store::Store& store;
  std::function<std::shared_ptr<const settings::Settings>()> settings;
  std::string instance_id;
  std::function<std::int64_t()> epoch;
  // Set when the instance stops: long polls answer at once instead of
  // holding the server's shutdown for their timeout.
  std::shared_ptr<std::atomic<bool>> stopping = std::make_shared<std::atomic<bool>>(false);
  // The table of followers (core/replication/replicas.hpp); null: not kept.
  Replicas* replicas = nullptr;
  // Whether the instance takes writes now (automatic failover can fence a
  // primary whose settings still say publication=all); null: the settings say.
  std::function<bool()> writable{};
};

// Adds the feed's routes to `router`; they must come before the registry's
// routes. `context` must outlive the router. Long polls of "/_changes" are
// deferred answers: they hold no thread while they wait (one thread answers
// them when a change commits, their timeout passes, or the instance stops).
void add_feed_routes(http::Router& router, const FeedContext& context);

// Answers document `id` exactly as stored ("_id" and "_rev" inside, the
// revision as ETag), or 404: what followers read ("/_doc", "/_fetch").
http::Response document_response(const store::Store& store, const std::string& id);

// True when `request` presents `secret` as "Authorization: Bearer" or as
// npmE's "?sharedFetchSecret=" (compared in constant time).
bool presents_secret(const http::Request& request, std::string_view secret);

} // namespace npme::replication
