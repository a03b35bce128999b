#include "core/replication/feed.hpp"

#include "core/replication/bulk.hpp"
#include "core/replication/replicas.hpp"
#include "core/util/crypto.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <iterator>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace npme::replication {

namespace {

using nlohmann::json;

constexpr std::size_t k_default_limit = 1000;
constexpr std::size_t k_max_limit = 10000;
constexpr std::int64_t k_default_timeout_ms = 30000;
constexpr std::int64_t k_max_timeout_ms = 60000;
// Long polls waiting at once (each costs a connection and a few hundred
// bytes, no thread); past this many, a long poll is not kept: it answers
// empty at once (a bound against a flood, not a limit followers meet).
constexpr std::size_t k_max_long_polls = 10000;
// The longest the long-poll thread sleeps before it looks at timeouts and
// new polls again.
constexpr std::chrono::milliseconds k_slice{50};

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

// The answer to a "/_changes" request of follower `key` (its acknowledgement
// was recorded when it arrived).
http::Response answer(const FeedContext& context, const std::string& key, std::int64_t since,
                       const std::vector<store::Change>& changes) {
  const std::int64_t last = changes.empty() ? since : changes.back().seq;
  if (context.replicas != nullptr) {
    context.replicas->on_answer(key, last, !changes.empty());
  }
  auto response = http::Response::json(200, changes_json(changes, since, context.store.update_seq()).dump());
  if (context.replicas != nullptr && !key.empty()) {
    response.headers.set(std::string(k_sync_header), context.replicas->is_synchronous(key) ? "sync" : "async");
    if (const auto confirmed = context.replicas->confirmed_seq(); confirmed > 0) {
      response.headers.set(std::string(k_sync_confirmed_header), std::to_string(confirmed));
    }
  }
  return response;
}

// The long polls waiting for a change: answered by one thread when a change
// commits past their `since`, when their timeout passes, or at once when the
// instance stops. No server thread waits for them.
class LongPolls {
public:
  struct Poll {
    std::int64_t since = 0;
    std::size_t limit = 0;
    std::chrono::steady_clock::time_point deadline;
    http::Responder responder;
    std::string key;
  };

  explicit LongPolls(FeedContext context) : m_context(std::move(context)), m_thread([this] { run(); }) {}

  ~LongPolls() {
    {
      std::lock_guard lock(m_mutex);
      m_exit = true;
    }
    m_wake.notify_all();
    m_thread.join();
    for (auto& poll : m_polls) {
      poll.responder.send(answer(m_context, poll.key, poll.since, {}));
    }
  }

  // False when too many wait already: the caller answers at once.
  bool add(Poll poll) {
    {
      std::lock_guard lock(m_mutex);
      if (m_polls.size() >= k_max_long_polls) {
        return false;
      }
      m_polls.push_back(std::move(poll));
    }
    m_wake.notify_all();
    return true;
  }

private:
  void run() {
    while (true) {
      std::int64_t min_since = 0;
      auto next = std::chrono::steady_clock::now() + k_slice;
      {
        std::unique_lock lock(m_mutex);
        // Without long polls this thread sleeps until add() or the exit:
        // an idle instance has no timer waking it.
        m_wake.wait(lock, [this] { return m_exit || !m_polls.empty(); });
        if (m_exit) {
          return;
        }
        if (m_polls.empty()) {
          continue;
        }
        min_since = m_polls.front().since;
        for (const auto& poll : m_polls) {
          min_since = std::min(min_since, poll.since);
          next = std::min(next, poll.deadline);
        }
      }
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - std::chrono::steady_clock::now());
      if (wait.count() > 0 && !m_context.stopping->load()) {
        m_context.store.wait_for_change(min_since, std::min(wait, k_slice));
      }
      const auto now = std::chrono::steady_clock::now();
      const auto update_seq = m_context.store.update_seq();
      const bool stopping = m_context.stopping->load();
      std::vector<Poll> due;
      {
        std::lock_guard lock(m_mutex);
        auto it = std::stable_partition(m_polls.begin(), m_polls.end(), [&](const Poll& poll) {
          return !(stopping || poll.since < update_seq || poll.deadline <= now);
        });
        std::move(it, m_polls.end(), std::back_inserter(due));
        m_polls.erase(it, m_polls.end());
      }
      // Followers at the same position share one read of the store.
      std::map<std::pair<std::int64_t, std::size_t>, std::vector<store::Change>> read;
      for (auto& poll : due) {
        std::vector<store::Change> changes;
        if (poll.since < update_seq) {
          auto cached = read.find({poll.since, poll.limit});
          if (cached == read.end()) {
            auto fetched = m_context.store.changes_since(poll.since, poll.limit);
            if (!fetched) {
              poll.responder.send(error(500, fetched.error().message));
              if (m_context.replicas != nullptr) {
                m_context.replicas->on_answer(poll.key, poll.since, false);
              }
              continue;
            }
            cached = read.emplace(std::make_pair(poll.since, poll.limit), std::move(*fetched)).first;
          }
          changes = cached->second;
        }
        poll.responder.send(answer(m_context, poll.key, poll.since, changes));
      }
    }
  }

  FeedContext m_context;
  std::mutex m_mutex;
  std::condition_variable m_wake;
  std::vector<Poll> m_polls;
  bool m_exit = false;
  std::thread m_thread; // last: starts once the members above exist
};

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
                {"publication", context.writable && !context.writable() ? std::string("read-only")
                                                                          : context.settings()->get("publication")}};
    return http::Response::json(200, doc.dump());
  });

  auto long_polls = std::make_shared<LongPolls>(context);
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
      // The request is the follower's acknowledgement of everything up to `since`.
      const std::string key = context.replicas != nullptr ? context.replicas->on_request(request, *since) : "";
      const auto count = static_cast<std::size_t>(std::min<std::int64_t>(*limit, k_max_limit));
      auto changes = context.store.changes_since(*since, count);
      if (!changes) {
        if (context.replicas != nullptr) {
          context.replicas->on_answer(key, *since, false);
        }
        return error(500, changes.error().message);
      }
      if (changes->empty() && feed == "longpoll" && *timeout > 0 && !context.stopping->load()) {
        LongPolls::Poll poll{*since, count,
                             std::chrono::steady_clock::now() +
                               std::chrono::milliseconds(std::min(*timeout, k_max_timeout_ms)),
                             request.defer(), key};
        if (poll.responder) {
          auto responder = poll.responder;
          if (long_polls->add(std::move(poll))) {
            return http::Response::later();
          }
          responder.cancel();
        }
      }
      return answer(context, key, *since, *changes);
    },
    http::Blocking::yes);

  router.add("GET", "/_doc/{id}", [context, refused](http::Request& request) {
    if (!presents_secret(request, context.settings()->get("secret"))) {
      return refused();
    }
    return document_response(context.store, request.param("id"));
  });
  add_bulk_route(router, context);
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
