#include "core/replication/replicas.hpp"

#include "core/replication/feed.hpp"
#include "core/util/time.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <optional>
#include <thread>

namespace npme::replication {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::seconds;

// A follower between two feed requests (applying what it was sent) still
// counts as connected for this long.
constexpr seconds k_poll_gap{5};
// Followers are dropped after this many follower_timeouts without a request.
constexpr int k_drop_factor = 10;
// At most this many followers are tracked (a bound against hostile headers).
constexpr std::size_t k_max_followers = 1000;
// Commit times kept for the lag in seconds.
constexpr std::size_t k_commit_log = 100000;

bool valid_instance(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':';
  });
}

bool printable(std::string_view text) {
  return text.size() <= 512 &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return c > ' ' && c != 0x7f && c != '"'; });
}

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::max(0.0, std::chrono::duration<double>(to - from).count());
}

std::string label(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
    }
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

std::string number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3f", value);
  return buffer;
}

} // namespace

struct Replicas::CommitLog {
  std::mutex mutex;
  std::deque<std::pair<std::int64_t, std::chrono::system_clock::time_point>> entries; // by seq

  void add(std::int64_t seq, std::chrono::system_clock::time_point time) {
    std::lock_guard lock(mutex);
    // Listeners of concurrent commits may run out of order: keep it sorted.
    auto it = entries.end();
    while (it != entries.begin() && std::prev(it)->first > seq) {
      --it;
    }
    entries.insert(it, {seq, time});
    while (entries.size() > k_commit_log) {
      entries.pop_front();
    }
  }

  // When the first change after `since` was committed, if it is still known.
  std::optional<std::chrono::system_clock::time_point> first_after(std::int64_t since) {
    std::lock_guard lock(mutex);
    if (entries.empty() || entries.front().first > since + 1) {
      return std::nullopt;
    }
    auto it = std::upper_bound(entries.begin(), entries.end(), since,
                               [](std::int64_t s, const auto& entry) { return s < entry.first; });
    if (it == entries.end()) {
      return std::nullopt;
    }
    return it->second;
  }
};

Replicas::Replicas(store::Store& store, SettingsSource settings)
  : m_store(store), m_settings(std::move(settings)), m_commits(std::make_shared<CommitLog>()) {
  std::weak_ptr<CommitLog> log = m_commits;
  m_store.on_change([log](const store::Change& change) {
    if (auto alive = log.lock()) {
      alive->add(change.seq, std::chrono::system_clock::now());
    }
  });
  m_timer = std::thread([this] { timer_loop(); });
}

Replicas::~Replicas() {
  stop();
}

Replicas::Config Replicas::config() const {
  auto current = m_settings();
  Config config;
  config.required = std::atoll(current->get("replication.sync_replicas").c_str());
  config.strict = current->get("replication.sync_mode") != "relaxed";
  config.timeout = seconds(std::atoll(current->get("replication.sync_timeout").c_str()));
  config.follower_timeout = seconds(std::max(1LL, std::atoll(current->get("replication.follower_timeout").c_str())));
  return config;
}

std::string Replicas::on_request(const http::Request& request, std::int64_t since) {
  const auto instance = request.headers.get(k_instance_header);
  if (!instance || !valid_instance(*instance)) {
    return "";
  }
  std::string url(request.headers.get(k_instance_url_header).value_or(""));
  if (!printable(url)) {
    url.clear();
  }
  const std::string key(*instance);
  const auto now = Clock::now();
  const auto drop_after = config().follower_timeout * k_drop_factor;
  std::vector<Waiter> done;
  {
    std::lock_guard lock(m_mutex);
    std::erase_if(m_followers,
                  [&](const auto& entry) { return entry.second.open == 0 && now - entry.second.seen > drop_after; });
    auto it = m_followers.find(key);
    if (it == m_followers.end()) {
      if (m_followers.size() >= k_max_followers) {
        return "";
      }
      it = m_followers.emplace(key, Follower{}).first;
      it->second.instance = key;
      // A follower met for the first time (this instance restarted, or it
      // is new) is credited with what it says it applied, but never with a
      // write waiting now: those it must be sent.
      std::int64_t credit = std::min(since, m_store.update_seq());
      if (!m_waiting.empty()) {
        credit = std::min(credit, m_waiting.front().seq - 1);
      }
      it->second.sent = credit;
    }
    Follower& follower = it->second;
    follower.url = url;
    follower.address = request.remote_address;
    follower.since = since;
    follower.open += 1;
    follower.seen = now;
    follower.seen_wall = std::chrono::system_clock::now();
    release_locked(done);
  }
  for (auto& waiter : done) {
    send(waiter, true);
  }
  return key;
}

void Replicas::on_answer(const std::string& key, std::int64_t last_seq, bool sent) {
  if (key.empty()) {
    return;
  }
  std::lock_guard lock(m_mutex);
  auto it = m_followers.find(key);
  if (it == m_followers.end()) {
    return;
  }
  Follower& follower = it->second;
  follower.open = std::max(0, follower.open - 1);
  follower.seen = Clock::now();
  follower.seen_wall = std::chrono::system_clock::now();
  if (sent) {
    follower.sent = std::max(follower.sent, last_seq);
  }
}

double Replicas::lag_seconds_locked(std::int64_t since, std::int64_t update_seq) const {
  if (since >= update_seq) {
    return 0;
  }
  std::optional<std::chrono::system_clock::time_point> first = m_commits->first_after(since);
  if (!first) {
    // Older than this process's memory: ask the store (one row).
    if (auto changes = m_store.changes_since(since, 1); changes && !changes->empty()) {
      first = util::parse_iso8601(changes->front().time);
    }
  }
  if (!first) {
    return 0;
  }
  return std::max(0.0, std::chrono::duration<double>(std::chrono::system_clock::now() - *first).count());
}

bool Replicas::connected_locked(const Follower& follower, Clock::time_point now) const {
  return follower.open > 0 || now - follower.seen < k_poll_gap;
}

bool Replicas::synchronous_locked(const Follower& follower, const Config& config, Clock::time_point now,
                                  std::int64_t update_seq) const {
  if (!connected_locked(follower, now) || (follower.open == 0 && now - follower.seen > config.follower_timeout)) {
    return false;
  }
  const auto applied = std::min(follower.since, follower.sent);
  const double allowed = std::max<double>(1.0, static_cast<double>(config.timeout.count()));
  return applied >= update_seq || lag_seconds_locked(applied, update_seq) < allowed;
}

std::int64_t Replicas::synchronous_count_locked(const Config& config) const {
  const auto now = Clock::now();
  const auto update_seq = m_store.update_seq();
  std::int64_t count = 0;
  for (const auto& [key, follower] : m_followers) {
    if (synchronous_locked(follower, config, now, update_seq)) {
      ++count;
    }
  }
  return count;
}

bool Replicas::is_synchronous(const std::string& key) const {
  if (key.empty()) {
    return false;
  }
  const auto current = config();
  if (current.required == 0) {
    return false;
  }
  std::lock_guard lock(m_mutex);
  auto it = m_followers.find(key);
  return it != m_followers.end() && synchronous_locked(it->second, current, Clock::now(), m_store.update_seq());
}

std::int64_t Replicas::confirmed_seq() const {
  std::lock_guard lock(m_mutex);
  return m_confirmed_seq;
}

void Replicas::release_locked(std::vector<Waiter>& done) {
  if (m_waiting.empty()) {
    return;
  }
  // What each follower acknowledged: its `since`, never past what it was sent.
  std::vector<std::int64_t> acknowledged;
  for (const auto& [key, follower] : m_followers) {
    acknowledged.push_back(std::min(follower.since, follower.sent));
  }
  std::sort(acknowledged.begin(), acknowledged.end(), std::greater<>());
  auto confirmed = [&](const Waiter& waiter) {
    const auto required = static_cast<std::size_t>(waiter.required);
    return required <= acknowledged.size() && acknowledged[required - 1] >= waiter.seq;
  };
  auto it =
    std::stable_partition(m_waiting.begin(), m_waiting.end(), [&](const Waiter& waiter) { return !confirmed(waiter); });
  for (auto moved = it; moved != m_waiting.end(); ++moved) {
    done.push_back(std::move(*moved));
  }
  m_waiting.erase(it, m_waiting.end());
  const auto now = Clock::now();
  for (const auto& waiter : done) {
    m_confirmed_seq = std::max(m_confirmed_seq, waiter.seq);
    m_counters.confirmed += 1;
    m_counters.wait_seconds_sum += seconds_between(waiter.start, now);
    m_counters.wait_count += 1;
  }
}

void Replicas::send(Waiter& waiter, bool confirmed) const {
  if (!term_holds(waiter.term)) {
    waiter.responder.send(std::move(waiter.lost));
    return;
  }
  if (!confirmed) {
    waiter.response.headers.set(
      "npm-notice", waiter.what + ", but not yet confirmed by a synchronous replica (replication.sync_replicas=" +
                      std::to_string(waiter.required) + ", replication.sync_timeout passed); it is committed on " +
                      "the primary and replicates when a replica catches up");
  }
  waiter.responder.send(std::move(waiter.response));
}

void Replicas::set_write_check(std::function<Expected<void>()> check) {
  m_write_check = std::move(check);
}

void Replicas::set_term(std::function<std::int64_t()> term) {
  m_term = std::move(term);
}

bool Replicas::wait_writes_idle(std::chrono::milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (m_writing.load() != 0) {
    if (Clock::now() >= until) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

http::Response Replicas::write(http::Request& request, const std::function<http::Response()>& commit,
                               const std::function<http::Response(const Error&)>& refuse) {
  // Counted before the check (sequentially consistent with the check's
  // flag): wait_writes_idle() sees every write that the check let through.
  struct Writing {
    std::atomic<int>& count;
    explicit Writing(std::atomic<int>& c) : count(c) { count.fetch_add(1); }
    ~Writing() { count.fetch_sub(1); }
    Writing(const Writing&) = delete;
    Writing& operator=(const Writing&) = delete;
  };
  std::optional<Writing> writing(std::in_place, m_writing);
  // The term is read before the check: a term that ends between the two
  // is caught after the commit.
  const std::int64_t term = m_term ? m_term() : 0;
  if (m_write_check) {
    if (auto allowed = m_write_check(); !allowed) {
      return refuse(allowed.error());
    }
  }
  const auto lost = [&refuse] {
    return refuse(Error{Errc::unavailable,
                        "this instance lost the lead while the write was being made (automatic failover on "
                        "etcd): it is not acknowledged and may not be kept. Retry it; if the retry says the "
                        "version exists, it was kept"});
  };
  // A commit after which the term still holds is acknowledged.
  const auto committed = [&](http::Response response) {
    if (response.status < 300 && !term_holds(term)) {
      return lost();
    }
    return response;
  };
  const Config current = config();
  if (current.required == 0) {
    return committed(commit());
  }
  {
    std::unique_lock lock(m_mutex);
    if (m_stopping) {
      lock.unlock();
      return committed(commit());
    }
    const auto connected = synchronous_count_locked(current);
    if (connected < current.required) {
      if (current.strict) {
        m_counters.refused += 1;
        lock.unlock();
        const auto missing = current.required - connected;
        return refuse(Error{Errc::unavailable,
                            "synchronous replication: " + std::to_string(missing) + " of " +
                              std::to_string(current.required) + " required synchronous replica" +
                              (current.required == 1 ? "" : "s") + " missing (" + std::to_string(connected) +
                              " connected and caught up); nothing was written. See 'npme replicas' on this "
                              "instance, or set replication.sync_mode=relaxed to write asynchronously meanwhile"});
      }
      m_counters.asynchronous += 1;
      lock.unlock();
      return committed(commit());
    }
  }

  store::CommitScope scope;
  http::Response response = commit();
  writing.reset(); // committed: what follows only waits for followers
  const std::int64_t seq = scope.last_seq();
  if (response.deferred || seq == 0 || response.status >= 300) {
    return response;
  }
  if (!term_holds(term)) {
    return lost();
  }
  http::Responder responder = request.defer();
  if (!responder) {
    return response; // no server behind the request: nothing to wait with
  }
  const bool package_write = request.method == "PUT" && !request.path.starts_with("/-/");
  const auto now = Clock::now();
  Waiter waiter{seq,
                current.required,
                std::move(responder),
                std::move(response),
                package_write ? "published" : "saved",
                now,
                now + current.timeout,
                term,
                lost()};
  std::vector<Waiter> done;
  std::optional<Waiter> late; // the instance is stopping: answered at once
  {
    std::lock_guard lock(m_mutex);
    if (m_stopping) {
      m_counters.unconfirmed += 1;
      late = std::move(waiter);
    } else {
      auto at = std::upper_bound(m_waiting.begin(), m_waiting.end(), seq,
                                 [](std::int64_t s, const Waiter& w) { return s < w.seq; });
      m_waiting.insert(at, std::move(waiter));
      release_locked(done);
    }
  }
  m_wake.notify_all();
  for (auto& item : done) {
    send(item, true);
  }
  if (late) {
    send(*late, false);
  }
  return http::Response::later();
}

void Replicas::timer_loop() {
  std::unique_lock lock(m_mutex);
  while (!m_stopping) {
    if (m_waiting.empty()) {
      m_wake.wait(lock);
      continue;
    }
    auto next = std::min_element(m_waiting.begin(), m_waiting.end(), [](const Waiter& a, const Waiter& b) {
                  return a.deadline < b.deadline;
                })->deadline;
    m_wake.wait_until(lock, next);
    const auto now = Clock::now();
    std::vector<Waiter> expired;
    auto it = std::stable_partition(m_waiting.begin(), m_waiting.end(),
                                    [&](const Waiter& waiter) { return waiter.deadline > now; });
    for (auto moved = it; moved != m_waiting.end(); ++moved) {
      expired.push_back(std::move(*moved));
    }
    m_waiting.erase(it, m_waiting.end());
    for (const auto& waiter : expired) {
      m_counters.unconfirmed += 1;
      m_counters.wait_seconds_sum += seconds_between(waiter.start, now);
      m_counters.wait_count += 1;
    }
    if (!expired.empty()) {
      lock.unlock();
      for (auto& waiter : expired) {
        send(waiter, false);
      }
      lock.lock();
    }
  }
}

void Replicas::stop() {
  std::vector<Waiter> left;
  {
    std::lock_guard lock(m_mutex);
    if (m_stopping) {
      return;
    }
    m_stopping = true;
    left = std::move(m_waiting);
    m_waiting.clear();
    m_counters.unconfirmed += static_cast<std::int64_t>(left.size());
  }
  m_wake.notify_all();
  if (m_timer.joinable()) {
    m_timer.join();
  }
  for (auto& waiter : left) {
    send(waiter, false);
  }
}

std::vector<ReplicaView> Replicas::table() const {
  const Config current = config();
  const auto now = Clock::now();
  const auto update_seq = m_store.update_seq();
  std::vector<ReplicaView> rows;
  std::lock_guard lock(m_mutex);
  for (const auto& [key, follower] : m_followers) {
    if (follower.open == 0 && now - follower.seen > current.follower_timeout * k_drop_factor) {
      continue;
    }
    ReplicaView row;
    row.instance = follower.instance;
    row.url = follower.url;
    row.address = follower.address;
    const auto applied = std::min(follower.since, follower.sent);
    row.applied_seq = applied;
    row.lag_changes = std::max<std::int64_t>(0, update_seq - applied);
    row.lag_seconds = lag_seconds_locked(applied, update_seq);
    const bool open = follower.open > 0;
    row.seen_seconds_ago = open ? 0 : seconds_between(follower.seen, now);
    row.last_seen = util::iso8601(open ? std::chrono::system_clock::now() : follower.seen_wall);
    const bool gone = !open && now - follower.seen > current.follower_timeout;
    row.synchronous = current.required > 0 && synchronous_locked(follower, current, now, update_seq);
    const double allowed = std::max<double>(1.0, static_cast<double>(current.timeout.count()));
    row.state = gone ? "gone" : row.lag_seconds < allowed ? "streaming" : "catching-up";
    rows.push_back(std::move(row));
  }
  return rows;
}

SyncView Replicas::sync() const {
  const Config current = config();
  std::lock_guard lock(m_mutex);
  SyncView view = m_counters;
  view.required = current.required;
  view.mode = current.strict ? "strict" : "relaxed";
  view.timeout_seconds = current.timeout.count();
  view.connected = synchronous_count_locked(current);
  view.waiting = static_cast<std::int64_t>(m_waiting.size());
  view.degraded = current.required > 0 && !current.strict && view.connected < current.required;
  return view;
}

namespace {

json sync_json(const SyncView& sync) {
  std::string state = "off";
  if (sync.required > 0) {
    state = sync.connected >= sync.required ? "ok" : sync.mode == "strict" ? "refusing-writes" : "degraded";
  }
  return {{"required", sync.required},
          {"mode", sync.mode},
          {"timeout_seconds", sync.timeout_seconds},
          {"connected", sync.connected},
          {"state", state},
          {"degraded", sync.degraded},
          {"waiting", sync.waiting},
          {"confirmed", sync.confirmed},
          {"unconfirmed", sync.unconfirmed},
          {"refused", sync.refused},
          {"asynchronous", sync.asynchronous}};
}

} // namespace

json Replicas::table_json() const {
  json rows = json::array();
  for (const auto& row : table()) {
    rows.push_back({{"instance", row.instance},
                    {"url", row.url},
                    {"address", row.address},
                    {"applied_seq", row.applied_seq},
                    {"lag_changes", row.lag_changes},
                    {"lag_seconds", std::round(row.lag_seconds * 1000) / 1000},
                    {"last_seen", row.last_seen},
                    {"seen_seconds_ago", std::round(row.seen_seconds_ago * 10) / 10},
                    {"state", row.state},
                    {"synchronous", row.synchronous}});
  }
  return {{"update_seq", m_store.update_seq()}, {"sync", sync_json(sync())}, {"replicas", std::move(rows)}};
}

json Replicas::status_json() const {
  std::int64_t connected = 0;
  std::int64_t synchronous = 0;
  std::int64_t gone = 0;
  std::int64_t max_lag_changes = 0;
  double max_lag_seconds = 0;
  for (const auto& row : table()) {
    if (row.state == "gone") {
      ++gone;
      continue;
    }
    ++connected;
    synchronous += row.synchronous ? 1 : 0;
    max_lag_changes = std::max(max_lag_changes, row.lag_changes);
    max_lag_seconds = std::max(max_lag_seconds, row.lag_seconds);
  }
  return {{"replicas",
           {{"connected", connected},
            {"synchronous", synchronous},
            {"gone", gone},
            {"max_lag_changes", max_lag_changes},
            {"max_lag_seconds", std::round(max_lag_seconds * 1000) / 1000}}},
          {"sync", sync_json(sync())}};
}

std::string Replicas::metrics() const {
  const auto rows = table();
  const auto view = sync();
  std::string out = "# HELP npme_replica_lag_changes Changes of this instance a follower has not applied.\n"
                    "# TYPE npme_replica_lag_changes gauge\n";
  for (const auto& row : rows) {
    out +=
      "npme_replica_lag_changes{instance=\"" + label(row.instance) + "\"} " + std::to_string(row.lag_changes) + "\n";
  }
  out += "# HELP npme_replica_lag_seconds Age of the oldest change a follower has not applied.\n"
         "# TYPE npme_replica_lag_seconds gauge\n";
  for (const auto& row : rows) {
    out += "npme_replica_lag_seconds{instance=\"" + label(row.instance) + "\"} " + number(row.lag_seconds) + "\n";
  }
  out += "# HELP npme_sync_replicas_connected Followers connected and caught up (synchronous when sync_replicas > 0).\n"
         "# TYPE npme_sync_replicas_connected gauge\nnpme_sync_replicas_connected " +
         std::to_string(view.connected) + "\n";
  out += "# HELP npme_sync_replicas_required replication.sync_replicas.\n"
         "# TYPE npme_sync_replicas_required gauge\nnpme_sync_replicas_required " +
         std::to_string(view.required) + "\n";
  out += "# HELP npme_sync_degraded 1 when relaxed synchronous replication writes asynchronously.\n"
         "# TYPE npme_sync_degraded gauge\nnpme_sync_degraded " +
         std::string(view.degraded ? "1" : "0") + "\n";
  out += "# HELP npme_sync_writes_total Writes under synchronous replication, by outcome.\n"
         "# TYPE npme_sync_writes_total counter\n";
  for (const auto& [result, count] : {std::pair<const char*, std::int64_t>{"confirmed", view.confirmed},
                                      {"unconfirmed", view.unconfirmed},
                                      {"refused", view.refused},
                                      {"asynchronous", view.asynchronous}}) {
    out += std::string("npme_sync_writes_total{result=\"") + result + "\"} " + std::to_string(count) + "\n";
  }
  out += "# HELP npme_sync_wait_seconds Time writes waited for synchronous followers.\n"
         "# TYPE npme_sync_wait_seconds summary\nnpme_sync_wait_seconds_sum " +
         number(view.wait_seconds_sum) + "\nnpme_sync_wait_seconds_count " + std::to_string(view.wait_count) + "\n";
  return out;
}

} // namespace npme::replication
