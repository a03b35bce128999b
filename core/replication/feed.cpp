#include "core/replication/feed.hpp"

#include "core/util/crypto.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <charconv>

namespace npme::replication {

namespace {

using nlohmann::json;

constexpr std::size_t k_default_limit = 1000;
constexpr std::size_t k_max_limit = 10000;
constexpr std::int64_t k_default_timeout_ms = 30000;
constexpr std::int64_t k_max_timeout_ms = 60000;
// Long polls hold a worker thread each; past this many at once, a long poll
// answers at once (empty) and the follower simply asks again.
constexpr int k_max_long_polls = 8;

http::Response error(int status, const std::string& message) {
  return http::Response::json(status, json{{"error", message}}.dump());
}

// Parses query parameter `name` as a non-negative integer; `fallback` when
// absent, nullopt when malformed.
std::optional<std::int64_t> int_param(const http::Request& request, const std::string& name, std::int64_t fallback) {
  auto it = request.query.find(name);
  if (it == request.query.end() || it->second.empty()) {
    return fallback;
  }
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), value);
  if (ec != std::errc() || end != it->second.data() + it->second.size() || value < 0) {
    return std::nullopt;
  }
  return value;
}

json changes_json(const std::vector<store::Change>& changes, std::int64_t since, std::int64_t update_seq) {
  json results = json::array();
  std::int64_t last = since;
  for (const auto& change : changes) {
    json entry = {{"seq", change.seq}, {"id", change.id}, {"changes", json::array({{{"rev", change.rev}}})},
                  {"time", change.time}};
    if (change.deleted) {
      entry["deleted"] = true;
    }
    results.push_back(std::move(entry));
    last = change.seq;
  }
  return {{"results", std::move(results)}, {"last_seq", last}, {"update_seq", update_seq}};
}

} // namespace

bool presents_secret(const http::Request& request, std::string_view secret) {
  if (secret.empty()) {
    return false;
  }
  if (auto header = request.headers.get("Authorization"); header && header->starts_with("Bearer ")) {
    return util::constant_time_equal(header->substr(7), secret);
  }
  if (auto it = request.query.find("sharedFetchSecret"); it != request.query.end()) {
    return util::constant_time_equal(it->second, secret);
  }
  return false;
}

void add_feed_routes(http::Router& router, const FeedContext& context) {
  auto refused = [] { return error(401, "replication needs the instance's secret"); };

  router.add("GET", "/", [context, refused](http::Request& request) {
    if (!presents_secret(request, context.settings()->get("secret"))) {
      return refused();
    }
    auto packages = context.store.count_packages();
    if (!packages) {
      return error(500, packages.error().message);
    }
    json doc = {{"db_name", "registry"},
                {"update_seq", context.store.update_seq()},
                {"doc_count", *packages},
                {"instance", context.instance_id},
                {"epoch", context.epoch()},
                {"publication", context.settings()->get("publication")}};
    return http::Response::json(200, doc.dump());
  });

  auto long_polls = std::make_shared<std::atomic<int>>(0);
  router.add(
    "GET", "/_changes",
    [context, refused, long_polls](http::Request& request) {
      if (!presents_secret(request, context.settings()->get("secret"))) {
        return refused();
      }
      auto since = int_param(request, "since", 0);
      auto limit = int_param(request, "limit", k_default_limit);
      auto timeout = int_param(request, "timeout", k_default_timeout_ms);
      std::string feed = request.query.count("feed") ? request.query.at("feed") : "normal";
      if (!since || !limit || !timeout || *limit == 0 || (feed != "normal" && feed != "longpoll")) {
        return error(400, "_changes: since, limit and timeout must be non-negative integers (limit > 0), feed "
                          "normal or longpoll");
      }
      const auto count = static_cast<std::size_t>(std::min<std::int64_t>(*limit, k_max_limit));
      auto changes = context.store.changes_since(*since, count);
      if (!changes) {
        return error(500, changes.error().message);
      }
      if (changes->empty() && feed == "longpoll") {
        if (long_polls->fetch_add(1) < k_max_long_polls) {
          // Waits in slices so that a stopping instance lets go at once.
          const auto deadline =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(std::min(*timeout, k_max_timeout_ms));
          while (!context.stopping->load() && context.store.update_seq() <= *since &&
                 std::chrono::steady_clock::now() < deadline) {
            context.store.wait_for_change(*since, std::chrono::milliseconds(200));
          }
        }
        long_polls->fetch_sub(1);
        changes = context.store.changes_since(*since, count);
        if (!changes) {
          return error(500, changes.error().message);
        }
      }
      return http::Response::json(200, changes_json(*changes, *since, context.store.update_seq()).dump());
    },
    http::Blocking::yes);

  router.add("GET", "/_doc/{id}", [context, refused](http::Request& request) {
    if (!presents_secret(request, context.settings()->get("secret"))) {
      return refused();
    }
    return document_response(context.store, request.param("id"));
  });
}

http::Response document_response(const store::Store& store, const std::string& id) {
  auto doc = store.get(id);
  if (!doc) {
    return error(500, doc.error().message);
  }
  if (!*doc) {
    return error(404, "not found");
  }
  http::Response response = http::Response::json(200, (*doc)->body);
  response.headers.set("ETag", "\"" + (*doc)->rev + "\"");
  return response;
}

} // namespace npme::replication
