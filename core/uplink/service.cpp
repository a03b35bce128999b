#include "core/uplink/service.hpp"

#include "core/registry/json_util.hpp"
#include "core/registry/lockfile.hpp"
#include "core/registry/names.hpp"
#include "core/registry/semver.hpp"
#include "core/replication/sequence.hpp"
#include "core/uplink/packument.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/gzip.hpp"
#include "core/util/integrity.hpp"
#include "core/util/time.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace npme::uplink {

namespace {

using nlohmann::json;
using registry::Need;
using registry::SourceOutcome;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::size_t k_connections = 8;
constexpr milliseconds k_connect_timeout{3000};
constexpr milliseconds k_packument_timeout{120000};
constexpr milliseconds k_tarball_timeout{300000};
constexpr long k_stall_seconds = 5;               // no byte for this long: the uplink hangs
constexpr seconds k_negative_ttl{60};             // how long a 404 of the uplink is believed
constexpr int k_breaker_threshold = 3;            // consecutive failures that mark the uplink down
constexpr seconds k_breaker_base{15};
constexpr seconds k_breaker_max{300};
constexpr std::size_t k_poll_batch = 16;          // revalidations the poller starts per round

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

Config config_of(const settings::Settings& s) {
  Config c;
  c.privates = s.get("uplink.private");
  c.proxy = s.get("network.http_proxy");
  c.ca_file = s.get("network.ca_file");
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

std::shared_ptr<Held> parse_held(const store::Document& doc) {
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

json job_json(const Job& job) {
  return {{"id", job.id},         {"kind", job.kind},         {"state", job.state},     {"started", job.started},
          {"finished", job.finished.empty() ? json(nullptr) : json(job.finished)},
          {"total", job.total},   {"done", job.done},         {"current", job.current}, {"packages", job.packages},
          {"errors", job.errors}, {"tarballs", job.tarballs}, {"tarball_bytes", job.bytes}};
}

SourceOutcome ready() {
  return SourceOutcome{SourceOutcome::Kind::ready, 0, ""};
}
SourceOutcome not_found(std::string message) {
  return SourceOutcome{SourceOutcome::Kind::not_found, 404, std::move(message)};
}
SourceOutcome failed(int status, std::string message) {
  return SourceOutcome{SourceOutcome::Kind::failed, status, std::move(message)};
}
SourceOutcome stale(std::string message) {
  return SourceOutcome{SourceOutcome::Kind::stale, 0, std::move(message)};
}

// Errc of a failed request → the status a client gets for an uncached name.
int status_of(Errc code) {
  return code == Errc::timeout ? 504 : 502;
}

bool is_availability_failure(Errc code) {
  return code == Errc::unreachable || code == Errc::timeout || code == Errc::failed;
}

} // namespace

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
  std::mutex whitelist_mutex; // the file; taken before `mutex`, never after
  std::set<std::string> whitelist; // under `mutex`

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

  std::shared_ptr<Held> held_state(const store::Document& doc) {
    {
      std::lock_guard lock(mutex);
      if (auto it = held.find(doc.id); it != held.end() && it->second->rev == doc.rev) {
        return it->second;
      }
    }
    auto parsed = parse_held(doc);
    std::lock_guard lock(mutex);
    auto& slot = held[doc.id];
    if (slot && slot->rev == doc.rev) {
      return slot;
    }
    if (slot && slot->from_uplink && parsed->from_uplink && slot->checked > parsed->checked) {
      parsed->checked = slot->checked; // a 304 since the document was written
    }
    slot = parsed;
    return parsed;
  }

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

  void record(bool ok, const std::string& message) {
    std::lock_guard lock(mutex);
    if (ok) {
      failures = 0;
      trips = 0;
      down_until = {};
      last_success_time = util::iso8601();
      return;
    }
    last_error = message;
    last_error_time = util::iso8601();
    if (++failures >= k_breaker_threshold) {
      auto pause = std::min<seconds>(k_breaker_max, k_breaker_base * (1 << std::min(trips, 5)));
      down_until = Clock::now() + pause;
      ++trips;
      failures = k_breaker_threshold - 1; // after the pause, one failure trips it again
    }
  }

  std::string down_message(const Config& c) const {
    std::lock_guard lock(mutex);
    auto left = std::chrono::duration_cast<seconds>(down_until - Clock::now()).count();
    return "uplink " + c.url + " is down (last error at " + last_error_time + ": " + last_error + "); retrying in " +
           std::to_string(std::max<long long>(1, left)) + " s";
  }

  // ---- requests ----

  void configure(http::Client& client, const Config& c, milliseconds timeout) {
    auto& options = client.options();
    options.bearer_token = c.token;
    options.proxy = c.proxy;
    options.ca_file = c.ca_file;
    options.max_bytes = c.max_body;
    options.timeout = timeout;
    options.connect_timeout = k_connect_timeout;
    options.stall_seconds = k_stall_seconds;
  }

  Expected<http::ClientResponse> timed_request(http::Client& client, const std::string& url, const http::Headers& headers) {
    const auto start = Clock::now();
    auto response = client.request("GET", url, "", headers);
    counters.requests += 1;
    counters.latency_us += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    return response;
  }

  // The white-list as last read: decide() runs on I/O threads, which never
  // read files; the poller reads it again every second (the admin API and
  // operators may change it).
  bool whitelisted(const std::string& name) {
    std::lock_guard lock(mutex);
    return whitelist.count(name) != 0;
  }

  void reload_whitelist() {
    std::lock_guard file_lock(whitelist_mutex);
    auto names = replication::read_whitelist(data_dir);
    if (!names) {
      return; // keep the last good copy
    }
    std::lock_guard lock(mutex);
    whitelist = std::set<std::string>(names->begin(), names->end());
  }

  Expected<void> add_to_whitelist(const std::vector<std::string>& add) {
    std::lock_guard file_lock(whitelist_mutex);
    NPME_TRY_ASSIGN(auto names, replication::read_whitelist(data_dir));
    std::set<std::string> present(names.begin(), names.end());
    bool changed = false;
    for (const auto& name : add) {
      if (present.insert(name).second) {
        names.push_back(name);
        changed = true;
      }
    }
    if (changed) {
      NPME_TRY(replication::write_whitelist(data_dir, names));
    }
    std::lock_guard lock(mutex);
    whitelist = std::move(present);
    return {};
  }

  bool local_name(const std::string& name) {
    auto held_doc = store.get(name);
    if (!held_doc || !*held_doc) {
      return false;
    }
    return !held_state(**held_doc)->from_uplink;
  }

  // Fetches and stores the packument of `name` from the uplink (run on a
  // pooled connection).
  SourceOutcome fetch_packument(http::Client& client, const Config& c, const std::string& name) {
    auto current = store.get(name);
    if (!current) {
      return failed(500, current.error().message);
    }
    std::shared_ptr<Held> held_copy;
    if (*current) {
      held_copy = held_state(**current);
      if (!held_copy->from_uplink) {
        return ready(); // published here meanwhile: local, never fetched
      }
    }
    configure(client, c, k_packument_timeout);
    http::Headers headers;
    headers.add("Accept", "application/json");
    if (held_copy && !held_copy->etag.empty()) {
      headers.add("If-None-Match", held_copy->etag);
    }
    if (held_copy && !held_copy->last_modified.empty()) {
      headers.add("If-Modified-Since", held_copy->last_modified);
    }
    const std::string url = c.url + "/" + package_path(name);
    auto response = timed_request(client, url, headers);
    auto give_up = [&](Errc code, const std::string& message) -> SourceOutcome {
      counters.error += 1;
      if (is_availability_failure(code)) {
        record(false, message);
      }
      if (held_copy) {
        mark_checked(name, false, message);
        counters.stale += 1;
        return stale("served from cache: " + message);
      }
      return failed(code == Errc::forbidden ? 502 : status_of(code), message);
    };
    if (!response) {
      if (response.error().code == Errc::interrupted) {
        return failed(503, "the registry is stopping");
      }
      if (response.error().code == Errc::too_large) {
        return give_up(Errc::invalid, "uplink packument of '" + name + "' is larger than registry.max_body (" +
                                        std::to_string(c.max_body) + " bytes)");
      }
      return give_up(response.error().code, "uplink " + c.url + ": " + response.error().message);
    }
    const int status = response->status;
    if (status == 304 && held_copy) {
      record(true, "");
      mark_checked(name, true, "");
      counters.revalidated += 1;
      return ready();
    }
    if (status == 404) {
      record(true, "");
      if (held_copy) {
        mark_checked(name, true, "");
        return ready(); // gone upstream: the copy stays (never a 404 for a held name)
      }
      std::lock_guard lock(mutex);
      negative[name] = Clock::now() + k_negative_ttl;
      return not_found("'" + name + "' is not in this registry or its uplink");
    }
    if (status == 401 || status == 403) {
      record(true, "");
      return give_up(Errc::forbidden, "uplink " + c.url + " refused " +
                                         (c.token.empty() ? std::string("the request (no uplink.token is set)")
                                                          : std::string("uplink.token")) +
                                         " (" + std::to_string(status) + ")");
    }
    if (status >= 500 || status != 200) {
      return give_up(Errc::failed, "uplink " + c.url + " answered " + std::to_string(status) + " for '" + name + "'");
    }
    record(true, "");
    auto fetched = json::parse(response->body, nullptr, false);
    if (fetched.is_discarded()) {
      return give_up(Errc::invalid, "uplink sent a malformed packument for '" + name + "': not JSON");
    }
    Validators validators{std::string(response->headers.get("ETag").value_or("")),
                          std::string(response->headers.get("Last-Modified").value_or(""))};
    auto doc = normalize_packument(fetched, name, c.url, validators, util::iso8601());
    if (!doc) {
      if (doc.error().code == Errc::not_found && !held_copy) {
        return not_found(doc.error().message);
      }
      return give_up(Errc::invalid, doc.error().message);
    }
    const std::string digest = (*doc)[std::string(k_origin_member)].value("digest", "");
    bool changed = false;
    auto written = store.apply(name, [&](const std::optional<store::Document>& now) -> Expected<store::Write> {
      store::Write write;
      if (now) {
        auto body = json::parse(now->body, nullptr, false);
        const json* origin = body.is_object() ? registry::member(body, k_origin_member) : nullptr;
        if (origin == nullptr) {
          return write; // published here meanwhile: keep it
        }
        if (origin->value("digest", "") == digest && origin->value("etag", "") == validators.etag) {
          return write; // nothing changed upstream
        }
        // Versions gone upstream take their tarballs with them.
        const json held_versions = body.value("versions", json::object());
        for (const auto& [version, manifest] : held_versions.items()) {
          if (!(*doc)["versions"].contains(version)) {
            write.remove_files.push_back(registry::tarball_rel_path(name, version));
          }
        }
      }
      write.kind = store::Write::Kind::put;
      write.body = doc->dump();
      changed = true;
      return write;
    });
    if (!written) {
      return failed(500, "cannot store the packument of '" + name + "': " + written.error().message);
    }
    {
      std::lock_guard lock(mutex);
      negative.erase(name);
    }
    if (!changed) {
      mark_checked(name, true, "");
    }
    if (held_copy) {
      counters.revalidated += 1;
    }
    if (c.policy == "read-through" && !held_copy) {
      static_cast<void>(add_to_whitelist({name}));
    }
    return ready();
  }

  // Fetches a missing tarball of `name` (`rel_path`) and puts it in place.
  SourceOutcome fetch_tarball(http::Client& client, const Config& c, const std::string& name,
                              const std::string& rel_path) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto current = store.get(name);
      if (!current) {
        return failed(500, current.error().message);
      }
      std::shared_ptr<Held> state = *current ? held_state(**current) : nullptr;
      std::string version;
      if (state) {
        if (auto it = state->path_version.find(rel_path); it != state->path_version.end()) {
          version = it->second;
        }
      }
      if (version.empty()) {
        if (attempt > 0 || c.mode != Mode::uplink) {
          return not_found("not found");
        }
        // A version the copy lacks: revalidate now, then look again.
        auto outcome = fetch_packument(client, c, name);
        if (outcome.kind == SourceOutcome::Kind::failed || outcome.kind == SourceOutcome::Kind::not_found) {
          return outcome;
        }
        continue;
      }
      if (!state->from_uplink && c.mode == Mode::uplink) {
        return not_found("not found");
      }
      std::string url;
      if (c.mode == Mode::replica) {
        url = c.url + "/" + rel_path;
      } else {
        auto recorded = state->tarball_urls.count(version) ? state->tarball_urls[version] : std::string();
        auto source = tarball_source(c.url, recorded, rel_path);
        if (!source) {
          counters.error += 1;
          return failed(502, source.error().message);
        }
        url = *source;
      }
      configure(client, c, k_tarball_timeout);
      const auto& check = state->checks[version];
      const auto start = Clock::now();
      auto bytes = http::fetch_tarball(client, url, http::TarballCheck{name + "@" + version, check.first, check.second});
      counters.requests += 1;
      counters.latency_us += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
      if (!bytes) {
        const auto code = bytes.error().code;
        if (code == Errc::interrupted) {
          return failed(503, "the registry is stopping");
        }
        counters.error += 1;
        if (is_availability_failure(code)) {
          record(false, bytes.error().message);
        }
        if (code == Errc::not_found) {
          return not_found(bytes.error().message);
        }
        return failed(code == Errc::verify ? 502 : status_of(code), bytes.error().message);
      }
      record(true, "");
      auto staged = store.stage_file(rel_path, *bytes, store::Sync::now);
      if (!staged) {
        return failed(500, staged.error().message);
      }
      auto added = store.add_file(name, state->rev, std::move(*staged));
      if (!added) {
        if (added.error().code == Errc::conflict) {
          continue; // the document changed meanwhile: look again
        }
        return failed(500, added.error().message);
      }
      counters.tarballs += 1;
      counters.tarball_bytes += static_cast<std::int64_t>(bytes->size());
      return ready();
    }
    return failed(502, "the document of '" + name + "' kept changing while its tarball was fetched");
  }

  // Asks the upstream (a replica's primary) for `name` and stores its copy.
  SourceOutcome fetch_from_upstream(http::Client& client, const Config& c, const std::string& name) {
    configure(client, c, k_packument_timeout);
    auto response = timed_request(client, c.url + "/_fetch/" + http::percent_encode(name, "@"), {});
    if (!response) {
      if (response.error().code == Errc::interrupted) {
        return failed(503, "the registry is stopping");
      }
      counters.error += 1;
      return failed(status_of(response.error().code), "upstream " + c.url + ": " + response.error().message);
    }
    if (response->status == 404) {
      return not_found("'" + name + "' is not in this registry or its upstream");
    }
    if (response->status != 200) {
      counters.error += 1;
      auto body = json::parse(response->body, nullptr, false);
      std::string message = body.is_object() && body.contains("error") && body["error"].is_string()
                              ? body["error"].get<std::string>()
                              : "answered " + std::to_string(response->status);
      return failed(response->status == 504 ? 504 : 502, "upstream " + c.url + ": " + message);
    }
    auto doc = json::parse(response->body, nullptr, false);
    if (!doc.is_object() || doc.value("_id", "") != name) {
      return failed(502, "upstream " + c.url + " sent a malformed document for '" + name + "'");
    }
    const std::string rev = doc.value("_rev", "");
    doc.erase("_rev");
    // A package published on the upstream comes with every tarball, as the
    // follower would bring it (a replica never holds a local package without
    // its tarballs: snapshots rely on it); copies of uplink packages come
    // bare, their tarballs on demand.
    std::vector<store::StagedFile> staged;
    if (!doc.contains(std::string(k_origin_member))) {
      configure(client, c, k_tarball_timeout);
      const json versions = doc.value("versions", json::object());
      for (const auto& [version, manifest] : versions.items()) {
        const json* dist = registry::member(manifest, "dist");
        const std::string rel = registry::tarball_rel_path(name, version);
        auto path = dist != nullptr ? registry::string_member(*dist, "tarball") : std::nullopt;
        if (!path || *path != rel) {
          return failed(502, "upstream " + c.url + " sent '" + name + "' with an unexpected tarball path for " + version);
        }
        std::error_code ec;
        if (std::filesystem::is_regular_file(store.file_path(rel), ec)) {
          continue;
        }
        auto bytes = http::fetch_tarball(client, c.url + "/" + rel,
                                         http::TarballCheck{name + "@" + version,
                                                            registry::string_member(*dist, "integrity").value_or(""),
                                                            registry::string_member(*dist, "shasum").value_or("")});
        if (!bytes) {
          counters.error += 1;
          return failed(bytes.error().code == Errc::timeout ? 504 : 502, bytes.error().message);
        }
        auto file = store.stage_file(rel, *bytes, store::Sync::now);
        if (!file) {
          return failed(500, file.error().message);
        }
        staged.push_back(std::move(*file));
      }
    }
    auto written = store.apply(name, [&](const std::optional<store::Document>& now) -> Expected<store::Write> {
      store::Write write;
      if (now && now->rev == rev) {
        return write; // the feed brought it meanwhile
      }
      write.kind = store::Write::Kind::put;
      write.body = doc.dump();
      write.rev = rev;
      write.add_files = std::move(staged);
      return write;
    });
    if (!written) {
      return failed(500, "cannot store '" + name + "': " + written.error().message);
    }
    return ready();
  }

  SourceOutcome run_fetch(http::Client& client, const std::string& name, const Need& need) {
    const Config c = config();
    if (c.mode == Mode::off) {
      return not_found("not found");
    }
    if (need.kind == Need::Kind::tarball) {
      if (c.mode == Mode::replica) {
        auto current = store.get(name);
        if (current && !*current) {
          auto outcome = fetch_from_upstream(client, c, name);
          if (outcome.kind != SourceOutcome::Kind::ready) {
            return outcome;
          }
        }
      } else if (auto current = store.get(name); current && !*current) {
        auto outcome = fetch_packument(client, c, name);
        if (outcome.kind != SourceOutcome::Kind::ready) {
          return outcome;
        }
      }
      return fetch_tarball(client, c, name, need.detail);
    }
    if (c.mode == Mode::replica) {
      return fetch_from_upstream(client, c, name);
    }
    return fetch_packument(client, c, name);
  }

  void complete(const std::string& key, const SourceOutcome& outcome) {
    std::vector<std::function<void(SourceOutcome)>> waiters;
    {
      std::lock_guard lock(mutex);
      auto it = inflight.find(key);
      if (it == inflight.end()) {
        return;
      }
      waiters = std::move(it->second);
      inflight.erase(it);
    }
    for (auto& waiter : waiters) {
      try {
        waiter(outcome);
      } catch (...) {
      }
    }
  }

  void fetch(const std::string& name, const Need& need, std::function<void(SourceOutcome)> done) {
    const std::string key = need.kind == Need::Kind::tarball ? "t:" + need.detail : "p:" + name;
    {
      std::lock_guard lock(mutex);
      if (stopping.load()) {
        // Answered below, outside the lock.
      } else {
        auto [it, first] = inflight.try_emplace(key);
        it->second.push_back(std::move(done));
        if (!first) {
          return; // one fetch serves every concurrent miss
        }
      }
    }
    if (stopping.load()) {
      if (done) {
        done(failed(503, "the registry is stopping"));
      }
      return;
    }
    fetcher->post([this, key, name, need](http::Client& client) {
      SourceOutcome outcome;
      try {
        outcome = run_fetch(client, name, need);
      } catch (const std::exception& e) {
        outcome = failed(500, std::string("internal error: ") + e.what());
      }
      complete(key, outcome);
    });
  }

  SourceOutcome fetch_and_wait(const std::string& name, const Need& need) {
    auto promise = std::make_shared<std::promise<SourceOutcome>>();
    auto future = promise->get_future();
    fetch(name, need, [promise](SourceOutcome outcome) { promise->set_value(std::move(outcome)); });
    return future.get();
  }

  // ---- the poller ----

  void poll_loop() {
    auto last_poll = Clock::now();
    std::unique_lock lock(mutex);
    while (!stopping.load()) {
      poll_wake.wait_for(lock, seconds(1), [this] { return stopping.load(); });
      if (stopping.load()) {
        break;
      }
      const bool is_down = Clock::now() < down_until;
      lock.unlock();
      reload_whitelist();
      const Config c = config();
      const auto every = std::clamp<seconds>(c.maxage / 2, seconds(1), seconds(30));
      if (c.mode == Mode::uplink && !is_down && Clock::now() - last_poll >= every) {
        last_poll = Clock::now();
        poll_once(c);
      }
      lock.lock();
    }
  }

  void poll_once(const Config& c) {
    std::vector<std::string> names;
    {
      std::lock_guard lock(whitelist_mutex);
      if (auto listed = replication::read_whitelist(data_dir)) {
        names = std::move(*listed);
      }
    }
    std::size_t started_now = 0;
    const auto now = std::chrono::system_clock::now();
    for (const auto& name : names) {
      if (stopping.load() || started_now >= k_poll_batch || fetcher->pending() >= k_connections) {
        break;
      }
      auto current = store.get(name);
      if (!current || !*current) {
        continue;
      }
      auto state = held_state(**current);
      if (!state->from_uplink || now - state->checked < c.maxage) {
        continue;
      }
      fetch(name, Need{Need::Kind::packument, ""}, [](SourceOutcome) {});
      ++started_now;
    }
  }

  // ---- jobs ----

  void run_job(const std::shared_ptr<Job>& job, JobRequest request);
  void job_update(const std::shared_ptr<Job>& job, const std::function<void(Job&)>& change) {
    std::lock_guard lock(mutex);
    change(*job);
  }
};

Service::Service(store::Store& store, SettingsSource settings, std::filesystem::path data_dir)
  : m_impl(std::make_unique<Impl>(store, std::move(settings), std::move(data_dir))) {
}

Service::~Service() {
  stop();
}

void Service::start() {
  m_impl->reload_whitelist();
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->started) {
    return;
  }
  m_impl->started = true;
  m_impl->poller = std::thread([impl = m_impl.get()] { impl->poll_loop(); });
}

void Service::stop() {
  Impl& impl = *m_impl;
  if (impl.stopping.exchange(true)) {
    return;
  }
  impl.poll_wake.notify_all();
  impl.fetcher->abort();
  if (impl.poller.joinable()) {
    impl.poller.join();
  }
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(impl.mutex);
    threads = std::move(impl.job_threads);
  }
  for (auto& thread : threads) {
    thread.join();
  }
  // Queued fetches run with aborted connections and answer their waiters.
  impl.fetcher.reset();
  std::map<std::string, std::vector<std::function<void(SourceOutcome)>>> left;
  {
    std::lock_guard lock(impl.mutex);
    left = std::move(impl.inflight);
  }
  for (auto& [key, waiters] : left) {
    for (auto& waiter : waiters) {
      waiter(failed(503, "the registry is stopping"));
    }
  }
}

registry::PackageSource::Decision Service::decide(const std::string& name, const std::optional<store::Document>& held,
                                                  const Need& need) {
  Impl& impl = *m_impl;
  Decision decision;
  const Config c = impl.config();
  if (c.mode == Mode::off) {
    return decision;
  }
  if (held) {
    auto state = impl.held_state(*held);
    if (c.mode == Mode::replica) {
      decision.fetch = need.kind == Need::Kind::tarball;
      return decision;
    }
    if (!state->from_uplink) {
      return decision; // local: never fetched
    }
    const bool is_down = impl.down();
    const bool lacks = (need.kind == Need::Kind::version && !state->versions.count(need.detail) &&
                        !state->tags.count(need.detail)) ||
                       (need.kind == Need::Kind::tarball && !state->path_version.count(need.detail));
    if (need.kind == Need::Kind::tarball || (lacks && !is_down)) {
      decision.fetch = true;
      impl.counters.miss += 1;
      return decision;
    }
    // A name taken off the white-list (remove-package) keeps its copy as it is.
    const bool expired =
      std::chrono::system_clock::now() - state->checked >= c.maxage && impl.whitelisted(name);
    if (expired && !is_down) {
      // Served now; the next request sees what the revalidation brings.
      impl.fetch(name, Need{Need::Kind::packument, ""}, [](SourceOutcome) {});
    }
    if (expired && (is_down || state->last_check_failed)) {
      decision.warning = is_down ? impl.down_message(c) : "revalidation failed: " + state->last_check_error;
      impl.counters.stale += 1;
    } else {
      impl.counters.hit += 1;
    }
    return decision;
  }
  // Not held.
  if (PrivateNames(c.privates).matches(name)) {
    decision.answer = not_found("'" + name + "' is private (uplink.private) and not published here");
    return decision;
  }
  if (c.mode == Mode::replica) {
    if (c.policy != "mirror" && !impl.whitelisted(name)) {
      return decision;
    }
    decision.fetch = true;
    impl.counters.miss += 1;
    return decision;
  }
  if (c.policy == "white-list" && !impl.whitelisted(name)) {
    decision.answer = not_found("'" + name + "' is not in the white-list of this registry (npme add-package " + name +
                                " adds it)");
    return decision;
  }
  {
    std::lock_guard lock(impl.mutex);
    if (auto it = impl.negative.find(name); it != impl.negative.end()) {
      if (Clock::now() < it->second) {
        decision.answer = not_found("'" + name + "' is not in this registry or its uplink");
        return decision;
      }
      impl.negative.erase(it);
    }
  }
  if (impl.down()) {
    impl.counters.error += 1;
    decision.answer = failed(502, impl.down_message(c));
    return decision;
  }
  impl.counters.miss += 1;
  decision.fetch = true;
  return decision;
}

void Service::fetch(const std::string& name, const Need& need, std::function<void(SourceOutcome)> done) {
  m_impl->fetch(name, need, std::move(done));
}

Expected<void> Service::check_write(const std::string& name, const std::optional<store::Document>& held) {
  if (!held) {
    return {};
  }
  if (m_impl->held_state(*held)->from_uplink) {
    return make_error(Errc::forbidden, "'" + name + "' comes from the uplink (" + m_impl->config().url +
                                         "): it cannot be published or changed here; publish under a private scope, "
                                         "or list the name in uplink.private before its first publish");
  }
  return {};
}

registry::SourceOutcome Service::refresh(const std::string& name) {
  auto held = m_impl->store.get(name);
  if (held && !*held && PrivateNames(m_impl->config().privates).matches(name)) {
    return not_found("'" + name + "' is private (uplink.private) and not published here");
  }
  return m_impl->fetch_and_wait(name, Need{Need::Kind::packument, ""});
}

bool Service::is_private(const std::string& name) {
  return PrivateNames(m_impl->config().privates).matches(name) || m_impl->local_name(name);
}

Expected<std::string> Service::start_job(JobRequest request) {
  Impl& impl = *m_impl;
  const Config c = impl.config();
  if (c.mode != Mode::uplink) {
    return make_error(Errc::precondition, "this instance has no uplink (set uplink.url first)");
  }
  for (const auto& spec : request.specs) {
    const auto at = spec.find('@', 1);
    const std::string name = spec.substr(0, at);
    if (auto valid = registry::validate_package_name(name); !valid) {
      return make_error(Errc::invalid, valid.error().message);
    }
  }
  auto job = std::make_shared<Job>();
  job->id = util::hex(util::random_bytes(6));
  job->kind = request.locked.empty() ? "add-package" : "lockfile";
  job->started = util::iso8601();
  std::lock_guard lock(impl.mutex);
  if (impl.stopping.load()) {
    return make_error(Errc::failed, "the registry is stopping");
  }
  impl.jobs[job->id] = job;
  impl.job_threads.emplace_back([&impl, job, request = std::move(request)]() mutable {
    impl.run_job(job, std::move(request));
  });
  return job->id;
}

std::optional<json> Service::job(const std::string& id) const {
  std::lock_guard lock(m_impl->mutex);
  auto it = m_impl->jobs.find(id);
  if (it == m_impl->jobs.end()) {
    return std::nullopt;
  }
  return job_json(*it->second);
}

void Service::Impl::run_job(const std::shared_ptr<Job>& job, JobRequest request) {
  // (name, range) to take; versions taken, so that a closure ends.
  std::deque<std::pair<std::string, std::string>> queue;
  std::set<std::string> taken;
  std::vector<std::string> names;
  for (const auto& spec : request.specs) {
    const auto at = spec.find('@', 1);
    queue.emplace_back(spec.substr(0, at), at == std::string::npos ? "latest" : spec.substr(at + 1));
  }
  job_update(job, [&](Job& j) { j.total = static_cast<std::int64_t>(queue.size() + request.locked.size()); });
  auto error = [&](const std::string& name, const std::string& message) {
    job_update(job, [&](Job& j) { j.errors.push_back({{"name", name}, {"message", message}}); });
  };
  auto take_tarball = [&](const std::string& name, const std::string& version) {
    auto outcome = fetch_and_wait(name, Need{Need::Kind::tarball, registry::tarball_rel_path(name, version)});
    if (outcome.kind != SourceOutcome::Kind::ready) {
      error(name + "@" + version, outcome.message);
      return;
    }
    std::error_code ec;
    auto size = std::filesystem::file_size(store.file_path(registry::tarball_rel_path(name, version)), ec);
    job_update(job, [&](Job& j) {
      j.tarballs += 1;
      j.bytes += ec ? 0 : static_cast<std::int64_t>(size);
    });
  };
  // The packument of `name`, fetched (or revalidated) first.
  auto packument = [&](const std::string& name, std::set<std::string>& fetched) -> std::optional<json> {
    if (!fetched.count(name)) {
      auto outcome = fetch_and_wait(name, Need{Need::Kind::packument, ""});
      if (outcome.kind == SourceOutcome::Kind::not_found || outcome.kind == SourceOutcome::Kind::failed) {
        error(name, outcome.message);
        return std::nullopt;
      }
      fetched.insert(name);
    }
    auto doc = store.get(name);
    if (!doc || !*doc) {
      error(name, "not found");
      return std::nullopt;
    }
    auto body = json::parse((*doc)->body, nullptr, false);
    if (!body.is_object()) {
      error(name, "the stored document is not valid JSON");
      return std::nullopt;
    }
    if (!body.contains(std::string(k_origin_member))) {
      return std::nullopt; // local: its dependencies are the publisher's business
    }
    return body;
  };
  std::set<std::string> fetched;
  while (!queue.empty() && !stopping.load()) {
    auto [name, range] = queue.front();
    queue.pop_front();
    job_update(job, [&](Job& j) { j.current = name + "@" + range; });
    if (auto valid = registry::validate_package_name(name); !valid) {
      error(name, valid.error().message);
    } else if (PrivateNames(config().privates).matches(name)) {
      error(name, "private (uplink.private): never taken from the uplink");
    } else if (auto body = packument(name, fetched)) {
      std::vector<std::string> versions;
      for (const auto& [version, manifest] : (*body)["versions"].items()) {
        versions.push_back(version);
      }
      std::map<std::string, std::string> tags;
      const json dist_tags = body->value("dist-tags", json::object());
      for (const auto& [tag, version] : dist_tags.items()) {
        if (version.is_string()) {
          tags[tag] = version.get<std::string>();
        }
      }
      auto version = registry::pick_version(versions, tags, range);
      if (!version) {
        error(name, "no version of '" + name + "' matches '" + range + "'");
      } else if (taken.insert(name + "@" + *version).second) {
        names.push_back(name);
        job_update(job, [&](Job& j) { j.packages.push_back({{"name", name}, {"version", *version}}); });
        if (request.prefetch) {
          take_tarball(name, *version);
        }
        if (request.dependencies) {
          const json& manifest = (*body)["versions"][*version];
          for (const char* field : {"dependencies", "optionalDependencies", "peerDependencies"}) {
            const json* deps = registry::member(manifest, field);
            if (deps == nullptr || !deps->is_object()) {
              continue;
            }
            for (const auto& [dep, spec] : deps->items()) {
              if (!spec.is_string()) {
                continue;
              }
              std::string dep_name = dep;
              std::string dep_range = spec.get<std::string>();
              // "npm:real@range" installs another package under this name.
              if (dep_range.starts_with("npm:")) {
                auto alias = dep_range.substr(4);
                auto at = alias.find('@', 1);
                dep_name = alias.substr(0, at);
                dep_range = at == std::string::npos ? "latest" : alias.substr(at + 1);
              }
              if (dep_range.find(':') != std::string::npos || dep_range.find('/') != std::string::npos) {
                continue; // git, file, URL: not from a registry
              }
              queue.emplace_back(dep_name, dep_range.empty() ? "*" : dep_range);
              job_update(job, [&](Job& j) { j.total += 1; });
            }
          }
        }
      }
    }
    job_update(job, [&](Job& j) { j.done += 1; });
  }
  for (const auto& locked : request.locked) {
    if (stopping.load()) {
      break;
    }
    job_update(job, [&](Job& j) { j.current = locked.name + "@" + locked.version; });
    if (PrivateNames(config().privates).matches(locked.name)) {
      error(locked.name, "private (uplink.private): never taken from the uplink");
    } else if (auto body = packument(locked.name, fetched)) {
      const json* manifest = registry::member((*body)["versions"], locked.version);
      if (manifest == nullptr) {
        error(locked.name + "@" + locked.version, "the uplink has no version " + locked.version);
      } else {
        const json* dist = registry::member(*manifest, "dist");
        std::string integrity = dist != nullptr ? registry::string_member(*dist, "integrity").value_or("") : "";
        auto lock_digest = util::expected_digest(locked.integrity);
        auto doc_digest = util::expected_digest(integrity);
        bool agrees = !lock_digest || (doc_digest && lock_digest->algorithm == doc_digest->algorithm &&
                                       std::any_of(lock_digest->digests.begin(), lock_digest->digests.end(),
                                                   [&](const std::string& d) { return util::digest_matches(*doc_digest, d); }));
        if (!agrees && lock_digest && doc_digest && lock_digest->algorithm != doc_digest->algorithm) {
          agrees = true; // checked against the tarball's bytes below
        }
        if (!agrees) {
          error(locked.name + "@" + locked.version, "the lockfile's integrity " + locked.integrity +
                                                      " differs from the uplink's " + integrity);
        } else {
          names.push_back(locked.name);
          job_update(job, [&](Job& j) {
            j.packages.push_back({{"name", locked.name}, {"version", locked.version}});
          });
          take_tarball(locked.name, locked.version);
          if (!locked.integrity.empty()) {
            auto bytes = util::read_file(store.file_path(registry::tarball_rel_path(locked.name, locked.version)));
            if (bytes) {
              if (auto checked = util::check_tarball(locked.name + "@" + locked.version, locked.integrity, "", *bytes);
                  !checked) {
                error(locked.name + "@" + locked.version, checked.error().message);
              }
            }
          }
        }
      }
    }
    job_update(job, [&](Job& j) { j.done += 1; });
  }
  if (auto added = add_to_whitelist(names); !added) {
    error("whitelist", added.error().message);
  }
  job_update(job, [&](Job& j) {
    j.current.clear();
    j.finished = util::iso8601();
    j.state = stopping.load() ? "interrupted" : j.errors.empty() ? "done" : "done-with-errors";
  });
}

json Service::status() const {
  Impl& impl = *m_impl;
  const Config c = impl.config();
  auto cfg = impl.settings();
  json out = {{"url", cfg->get("uplink.url")}, {"policy", cfg->get("uplink.policy")}};
  std::lock_guard lock(impl.mutex);
  std::string state = "disabled";
  if (c.mode == Mode::replica) {
    state = "via-upstream";
  } else if (c.mode == Mode::uplink) {
    state = Clock::now() < impl.down_until ? "down" : "up";
  }
  out["state"] = state;
  out["last_error"] = impl.last_error.empty() ? json(nullptr) : json(impl.last_error);
  out["last_error_time"] = impl.last_error_time.empty() ? json(nullptr) : json(impl.last_error_time);
  out["last_success_time"] = impl.last_success_time.empty() ? json(nullptr) : json(impl.last_success_time);
  auto names = impl.store.count_packages_containing("\"" + std::string(k_origin_member) + "\":");
  out["names"] = names ? *names : 0;
  out["requests"] = {{"hit", impl.counters.hit.load()},
                     {"miss", impl.counters.miss.load()},
                     {"revalidated", impl.counters.revalidated.load()},
                     {"stale", impl.counters.stale.load()},
                     {"error", impl.counters.error.load()}};
  return out;
}

std::string Service::metrics() const {
  const Counters& k = m_impl->counters;
  std::string out =
    "# HELP npme_uplink_requests_total Reads of packages from the uplink, by how they were served.\n"
    "# TYPE npme_uplink_requests_total counter\n";
  for (const auto& [label, value] : std::vector<std::pair<const char*, std::int64_t>>{
         {"hit", k.hit.load()},
         {"miss", k.miss.load()},
         {"revalidated", k.revalidated.load()},
         {"stale", k.stale.load()},
         {"error", k.error.load()}}) {
    out += std::string("npme_uplink_requests_total{result=\"") + label + "\"} " + std::to_string(value) + "\n";
  }
  out += "# HELP npme_uplink_request_seconds Time of the requests sent to the uplink.\n"
         "# TYPE npme_uplink_request_seconds summary\n"
         "npme_uplink_request_seconds_sum " +
         std::to_string(static_cast<double>(k.latency_us.load()) / 1e6) + "\nnpme_uplink_request_seconds_count " +
         std::to_string(k.requests.load()) + "\n";
  out += "# HELP npme_uplink_up 1 when the uplink is configured and not marked down.\n# TYPE npme_uplink_up gauge\n"
         "npme_uplink_up " +
         std::string(m_impl->config().mode == Mode::uplink && !m_impl->down() ? "1" : "0") + "\n";
  out += "# HELP npme_uplink_tarball_bytes_total Bytes of tarballs fetched from the uplink.\n"
         "# TYPE npme_uplink_tarball_bytes_total counter\nnpme_uplink_tarball_bytes_total " +
         std::to_string(k.tarball_bytes.load()) + "\n";
  return out;
}

void Service::forward_audit(const std::string& path, const std::string& body, const std::string& content_encoding,
                            std::function<void(int, std::string)> done) {
  Impl& impl = *m_impl;
  const Config c = impl.config();
  if (c.mode == Mode::off || (c.mode == Mode::uplink && c.audit == "off")) {
    done(404, json{{"error", "npm audit is not available from this registry (no uplink, or uplink.audit=off)"}}.dump());
    return;
  }
  std::string sent = body;
  std::string encoding = content_encoding;
  if (c.mode == Mode::uplink && c.audit == "public-only") {
    // Names published here (and private scopes) never leave the building.
    auto text = encoding == "gzip" ? util::gunzip(body, 64u << 20) : Expected<std::string>(body);
    auto doc = text ? json::parse(*text, nullptr, false) : json();
    if (!text || !doc.is_object()) {
      done(400, json{{"error", "audit: the request body is not a (gzipped) JSON object"}}.dump());
      return;
    }
    std::function<void(json&)> strip = [&](json& node) {
      for (const char* key : {"requires", "dependencies"}) {
        if (auto it = node.find(key); it != node.end() && it->is_object()) {
          for (auto dep = it->begin(); dep != it->end();) {
            if (is_private(dep.key())) {
              dep = it->erase(dep);
            } else {
              if (dep->is_object()) {
                strip(*dep);
              }
              ++dep;
            }
          }
        }
      }
    };
    if (path.ends_with("/bulk")) {
      for (auto it = doc.begin(); it != doc.end();) {
        it = is_private(it.key()) ? doc.erase(it) : std::next(it);
      }
    } else {
      strip(doc);
    }
    sent = doc.dump();
    encoding.clear();
  }
  impl.fetcher->post([&impl, c, path, body = std::move(sent), content_encoding = std::move(encoding),
                      done](http::Client& client) {
    impl.configure(client, c, milliseconds(30000));
    client.options().max_bytes = 0;
    http::Headers headers;
    headers.add("Content-Type", "application/json");
    if (!content_encoding.empty()) {
      headers.add("Content-Encoding", content_encoding);
    }
    auto response = client.request("POST", c.url + path, body, headers);
    if (!response) {
      done(response.error().code == Errc::timeout ? 504 : 502,
           json{{"error", "audit: " + response.error().message}}.dump());
      return;
    }
    done(response->status, response->body);
  });
}

} // namespace npme::uplink
