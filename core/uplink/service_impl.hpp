#pragma once
// The inside of uplink::Service, shared by its source files: service.cpp
// (decisions, the breaker, the poller, status), fetch.cpp (requests to the
// uplink or the upstream), jobs.cpp (add-package, lockfile imports),
// audit.cpp (npm audit forwarding). Not part of the area's API.

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/replication/sequence.hpp"
#include "core/uplink/packument.hpp"
#include "core/uplink/service.hpp"
#include "core/util/time.hpp"

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace npme::uplink {

namespace detail {

using nlohmann::json;
using registry::Need;
using registry::SourceOutcome;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

inline constexpr std::size_t k_connections = 8;
inline constexpr milliseconds k_connect_timeout{3000};
inline constexpr milliseconds k_packument_timeout{120000};
inline constexpr milliseconds k_tarball_timeout{300000};
inline constexpr long k_stall_seconds = 5;               // no byte for this long: the uplink hangs
inline constexpr seconds k_negative_ttl{60};             // how long a 404 of the uplink is believed
inline constexpr int k_breaker_threshold = 3;            // consecutive failures that mark the uplink down
inline constexpr seconds k_breaker_base{15};
inline constexpr seconds k_breaker_max{300};
inline constexpr std::size_t k_poll_batch = 16;          // revalidations the poller starts per round

enum class Mode { off, uplink, replica };

struct Config {
  Mode mode = Mode::off;
  std::string url;    // uplink.url or upstream.url
  std::string token;  // uplink.token or upstream.secret
  std::string policy; // uplink.policy or upstream.policy
  std::string privates;
  seconds maxage{300};
  std::string audit;
  std::string proxy;
  std::string ca_file;
  std::size_t max_body = 64u << 20;
};

inline Config config_of(const settings::Settings& s) {
  Config c;
  c.privates = s.get("uplink.private");
  c.proxy = s.get("network.http_proxy");
  c.ca_file = settings::ca_file(s, "uplink.ca_file");
  c.max_body = settings::parse_size(s.get("registry.max_body"));
  c.audit = s.get("uplink.audit");
  c.maxage = seconds(std::atoll(s.get("uplink.maxage").c_str()));
  if (!s.get("upstream.url").empty()) {
    c.mode = Mode::replica;
    c.url = s.get("upstream.url");
    c.token = s.get("upstream.secret");
    c.policy = s.get("upstream.policy");
  } else if (!s.get("uplink.url").empty()) {
    c.mode = Mode::uplink;
    c.url = s.get("uplink.url");
    c.token = s.get("uplink.token");
    c.policy = s.get("uplink.policy");
  }
  return c;
}

// What the service knows of a held document, parsed once per revision.
struct Held {
  std::string rev;
  bool from_uplink = false;
  std::set<std::string> versions;
  std::map<std::string, std::string> tags;
  std::map<std::string, std::string> tarball_urls; // version → the uplink's URL
  std::map<std::string, std::string> path_version; // relative tarball path → version
  std::map<std::string, std::pair<std::string, std::string>> checks; // version → integrity, shasum
  std::string etag;
  std::string last_modified;
  std::chrono::system_clock::time_point checked; // last fetch or revalidation
  bool last_check_failed = false;
  std::string last_check_error;
};

inline std::shared_ptr<Held> parse_held(const store::Document& doc) {
  auto held = std::make_shared<Held>();
  held->rev = doc.rev;
  auto body = json::parse(doc.body, nullptr, false);
  if (!body.is_object()) {
    return held;
  }
  const json* origin = registry::member(body, k_origin_member);
  held->from_uplink = origin != nullptr && origin->is_object();
  if (const json* versions = registry::member(body, "versions"); versions != nullptr && versions->is_object()) {
    std::string name = body.value("name", doc.id);
    for (const auto& [version, manifest] : versions->items()) {
      held->versions.insert(version);
      held->path_version[registry::tarball_rel_path(name, version)] = version;
      const json* dist = registry::member(manifest, "dist");
      if (dist != nullptr && dist->is_object()) {
        held->checks[version] = {registry::string_member(*dist, "integrity").value_or(""),
                                 registry::string_member(*dist, "shasum").value_or("")};
      }
    }
  }
  if (const json* tags = registry::member(body, "dist-tags"); tags != nullptr && tags->is_object()) {
    for (const auto& [tag, version] : tags->items()) {
      if (version.is_string()) {
        held->tags[tag] = version.get<std::string>();
      }
    }
  }
  if (held->from_uplink) {
    held->etag = registry::string_member(*origin, "etag").value_or("");
    held->last_modified = registry::string_member(*origin, "last_modified").value_or("");
    if (auto fetched = util::parse_iso8601(registry::string_member(*origin, "fetched").value_or(""))) {
      held->checked = *fetched;
    }
    if (const json* urls = registry::member(*origin, "tarballs"); urls != nullptr && urls->is_object()) {
      for (const auto& [version, url] : urls->items()) {
        if (url.is_string()) {
          held->tarball_urls[version] = url.get<std::string>();
        }
      }
    }
  }
  return held;
}

// Counters for /metrics.
struct Counters {
  std::atomic<std::int64_t> hit{0};
  std::atomic<std::int64_t> miss{0};
  std::atomic<std::int64_t> revalidated{0};
  std::atomic<std::int64_t> stale{0};
  std::atomic<std::int64_t> error{0};
  std::atomic<std::int64_t> requests{0};     // requests sent to the uplink
  std::atomic<std::int64_t> latency_us{0};   // their total time
  std::atomic<std::int64_t> tarballs{0};
  std::atomic<std::int64_t> tarball_bytes{0};
};

struct Job {
  std::string id;
  std::string kind; // "add-package" or "lockfile"
  std::string state = "running";
  std::string started;
  std::string finished;
  std::int64_t total = 0;
  std::int64_t done = 0;
  std::string current;
  std::vector<json> packages; // {name, version}
  std::vector<json> errors;   // {name, message}
  std::int64_t tarballs = 0;
  std::int64_t bytes = 0;
};

inline json job_json(const Job& job) {
  return {{"id", job.id},         {"kind", job.kind},         {"state", job.state},     {"started", job.started},
          {"finished", job.finished.empty() ? json(nullptr) : json(job.finished)},
          {"total", job.total},   {"done", job.done},         {"current", job.current}, {"packages", job.packages},
          {"errors", job.errors}, {"tarballs", job.tarballs}, {"tarball_bytes", job.bytes}};
}

inline SourceOutcome ready() {
  return SourceOutcome{SourceOutcome::Kind::ready, 0, ""};
}
inline SourceOutcome not_found(std::string message) {
  return SourceOutcome{SourceOutcome::Kind::not_found, 404, std::move(message)};
}
inline SourceOutcome failed(int status, std::string message) {
  return SourceOutcome{SourceOutcome::Kind::failed, status, std::move(message)};
}
inline SourceOutcome stale(std::string message) {
  return SourceOutcome{SourceOutcome::Kind::stale, 0, std::move(message)};
}

// Errc of a failed request → the status a client gets for an uncached name.
inline int status_of(Errc code) {
  return code == Errc::timeout ? 504 : 502;
}

inline bool is_availability_failure(Errc code) {
  return code == Errc::unreachable || code == Errc::timeout || code == Errc::failed;
}

} // namespace detail

// The inside of this area's own files only.
using namespace detail;

struct Service::Impl {
  store::Store& store;
  SettingsSource settings;
  std::filesystem::path data_dir;
  std::unique_ptr<http::Fetcher> fetcher;
  Counters counters;

  mutable std::mutex mutex; // everything below
  std::map<std::string, std::shared_ptr<Held>> held;         // by name
  std::map<std::string, Clock::time_point> negative;         // name → until
  std::map<std::string, std::vector<std::function<void(SourceOutcome)>>> inflight;
  int failures = 0;
  int trips = 0;
  Clock::time_point down_until{};
  std::string last_error;
  std::string last_error_time;
  std::string last_success_time;
  std::map<std::string, std::shared_ptr<Job>> jobs;
  std::vector<std::thread> job_threads;
  std::set<std::string> whitelist; // under `mutex`
  std::vector<std::string> whitelist_pending; // read-through names not yet in the file, under `mutex`

  std::atomic<bool> stopping{false};
  std::thread poller;
  std::condition_variable poll_wake;
  bool started = false;

  Impl(store::Store& store_ref, SettingsSource source, std::filesystem::path data)
    : store(store_ref), settings(std::move(source)), data_dir(std::move(data)) {
    http::ClientOptions options;
    options.connect_timeout = k_connect_timeout;
    options.timeout = k_packument_timeout;
    options.cancelled = [this] { return stopping.load(); };
    fetcher = std::make_unique<http::Fetcher>(k_connections, options);
  }

  Config config() const { return config_of(*settings()); }

  // ---- state of held names ----

  std::shared_ptr<Held> held_state(const store::Document& doc);
  // The same from a head: the state kept for its revision, else the whole
  // document read and parsed.
  std::shared_ptr<Held> held_state(const store::Head& head);

  void mark_checked(const std::string& name, bool ok, const std::string& error) {
    std::lock_guard lock(mutex);
    if (auto it = held.find(name); it != held.end()) {
      if (ok) {
        it->second->checked = std::chrono::system_clock::now();
      }
      it->second->last_check_failed = !ok;
      it->second->last_check_error = error;
    }
  }

  // ---- the circuit breaker ----

  bool down() const {
    std::lock_guard lock(mutex);
    return Clock::now() < down_until;
  }

  void record(bool ok, const std::string& message);

  std::string down_message(const Config& c) const {
    std::lock_guard lock(mutex);
    auto left = std::chrono::duration_cast<seconds>(down_until - Clock::now()).count();
    return "uplink " + c.url + " is down (last error at " + last_error_time + ": " + last_error + "); retrying in " +
           std::to_string(std::max<long long>(1, left)) + " s";
  }

  // ---- requests ----

  void configure(http::Client& client, const Config& c, milliseconds timeout);

  Expected<http::ClientResponse> timed_request(http::Client& client, const std::string& url, const http::Headers& headers);

  // The white-list as last read: decide() runs on I/O threads, which never
  // read files; the poller reads it again every second (the admin API and
  // operators may change it).
  bool whitelisted(const std::string& name) {
    std::lock_guard lock(mutex);
    return whitelist.count(name) != 0;
  }

  void reload_whitelist();

  // Read-through adds each fetched name to the white-list; the file is
  // written by the poller once a second (flush_whitelist), not by the miss
  // that a client waits for.
  void queue_whitelist(const std::string& name);
  void flush_whitelist();

  Expected<void> add_to_whitelist(const std::vector<std::string>& add);

  bool local_name(const std::string& name);

  // Fetches and stores the packument of `name` from the uplink (run on a
  // pooled connection).
  SourceOutcome fetch_packument(http::Client& client, const Config& c, const std::string& name);

  // Fetches a missing tarball of `name` (`rel_path`) and puts it in place.
  SourceOutcome fetch_tarball(http::Client& client, const Config& c, const std::string& name,
                              const std::string& rel_path);

  // Asks the upstream (a replica's primary) for `name` and stores its copy.
  SourceOutcome fetch_from_upstream(http::Client& client, const Config& c, const std::string& name);

  SourceOutcome run_fetch(http::Client& client, const std::string& name, const Need& need);

  void complete(const std::string& key, const SourceOutcome& outcome);

  void fetch(const std::string& name, const Need& need, std::function<void(SourceOutcome)> done);

  SourceOutcome fetch_and_wait(const std::string& name, const Need& need);

  // ---- the poller ----

  void poll_loop();

  void poll_once(const Config& c);

  // ---- jobs ----

  void run_job(const std::shared_ptr<Job>& job, JobRequest request);
  void job_update(const std::shared_ptr<Job>& job, const std::function<void(Job&)>& change) {
    std::lock_guard lock(mutex);
    change(*job);
  }
};

} // namespace npme::uplink
