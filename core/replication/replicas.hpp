#pragma once
// The upstream's view of its followers, and synchronous replication on top
// of it (DESIGN.md §10; `npme replicas`, PostgreSQL's pg_stat_replication).
//
// Every "/_changes" request of a follower names it (k_instance_header,
// k_instance_url_header) and carries its `since`: the position the follower
// has durably applied (it asks for changes after S only once everything up
// to S is committed and fsynced). Requests without an instance header are
// readers of the feed, not followers: they are not listed and never count.
//
// What a follower has *acknowledged* is the smaller of its `since` and the
// highest sequence this instance actually sent it, so a follower that claims
// a position it never fetched confirms nothing.
//
// With replication.sync_replicas = N > 0, every write that changes the feed
// goes through write():
// - before it commits, at least N followers must count as synchronous
//   (connected and caught up); if not, `strict` refuses it (503, nothing
//   written) and `relaxed` writes it asynchronously and marks the instance
//   degraded;
// - after it commits, its answer is deferred (Request::defer(), no thread
//   waits) until N followers acknowledged its sequence, or
//   replication.sync_timeout passes: then it is sent anyway with an
//   `npm-notice` header, because the write is committed and an error would
//   only make a client's retry fail.
// One timer thread answers the writes whose time is up.

#include "core/http/message.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace npme::replication {

// One follower as the table shows it.
struct ReplicaView {
  std::string instance;
  std::string url;              // its registry.url, as it said
  std::string address;          // the peer address of its last request
  std::int64_t applied_seq = 0; // the `since` of its last feed request
  std::int64_t lag_changes = 0;
  double lag_seconds = 0; // age of the oldest change it has not applied
  std::string last_seen;  // ISO 8601; now while a long poll is open
  double seen_seconds_ago = 0;
  std::string state;        // streaming, catching-up, gone
  bool synchronous = false; // counts toward replication.sync_replicas now
};

// Synchronous replication as configured and as it went.
struct SyncView {
  std::int64_t required = 0; // replication.sync_replicas
  std::string mode;          // strict, relaxed
  std::int64_t timeout_seconds = 0;
  std::int64_t connected = 0;    // followers that count as synchronous now
  bool degraded = false;         // relaxed, and fewer than `required` connected
  std::int64_t waiting = 0;      // writes waiting for acknowledgements now
  std::int64_t confirmed = 0;    // acknowledged by `required` followers in time
  std::int64_t unconfirmed = 0;  // acknowledged with the npm-notice after the timeout
  std::int64_t refused = 0;      // refused with 503 (strict)
  std::int64_t asynchronous = 0; // written without waiting while degraded (relaxed)
  double wait_seconds_sum = 0;   // time writes waited, confirmed or not
  std::int64_t wait_count = 0;
};

class Replicas {
public:
  using SettingsSource = std::function<std::shared_ptr<const settings::Settings>()>;

  Replicas(store::Store& store, SettingsSource settings);
  ~Replicas();
  Replicas(const Replicas&) = delete;
  Replicas& operator=(const Replicas&) = delete;

  // --- the feed's side ---
  // Records a "/_changes" request asking for changes after `since`: the
  // follower's acknowledgement. Returns its key ("" for an anonymous reader).
  std::string on_request(const http::Request& request, std::int64_t since);
  // The feed answers follower `key` with changes up to `last_seq` (`sent`:
  // the answer holds changes). Closes the request opened by on_request().
  void on_answer(const std::string& key, std::int64_t last_seq, bool sent);
  // Whether follower `key` counts as synchronous now (the Npme-Sync header).
  bool is_synchronous(const std::string& key) const;
  // The highest sequence of a write confirmed by synchronous followers (the
  // Npme-Sync-Confirmed header): a replica that applied it holds every
  // write acknowledged without an npm-notice up to there.
  std::int64_t confirmed_seq() const;

  // --- the writers' side ---
  // Runs `commit` (a handler that writes the store) under synchronous
  // replication, as described above. `refuse` turns the refusal into the
  // caller's error shape (registry or admin API).
  http::Response write(http::Request& request, const std::function<http::Response()>& commit,
                       const std::function<http::Response(const Error&)>& refuse);

  // Makes every write() ask `check` first: an error refuses the write with
  // nothing written (automatic failover: only the leader, within its lease,
  // takes writes; core/ha/ha.hpp). Set before serving.
  void set_write_check(std::function<Expected<void>()> check);

  // The instance's term of leadership (core/ha/ha.hpp, Ha::term()): a write
  // is acknowledged only if the term it was checked in still holds when it
  // is answered (after its commit, and after its synchronous wait). A leader
  // that lost its lease meanwhile (frozen between the check and the
  // commit, or deposed while its write waited for a replica) answers 503:
  // the write may not be kept. Null: always acknowledged. Set before serving.
  void set_term(std::function<std::int64_t()> term);

  // Waits until no write is between its check and the end of its commit
  // (a leader handing over: a write that passed the check before the
  // hand-over began must be committed, and so counted, before the target's
  // position is compared); false after `limit`.
  bool wait_writes_idle(std::chrono::milliseconds limit);

  // --- views ---
  std::vector<ReplicaView> table() const;
  SyncView sync() const;
  nlohmann::json table_json() const;  // GET /api/v1/replicas
  nlohmann::json status_json() const; // the short form in `npme status`
  std::string metrics() const;        // Prometheus text

  // Answers every waiting write now (with the npm-notice): before the
  // server stops. Later writes do not wait.
  void stop();

private:
  std::function<Expected<void>()> m_write_check;
  std::function<std::int64_t()> m_term;
  bool term_holds(std::int64_t term) const { return !m_term || m_term() == term; }
  std::atomic<int> m_writing{0}; // writes between their check and the end of their commit
  struct Follower {
    std::string instance;
    std::string url;
    std::string address;
    std::int64_t since = 0; // as it said
    std::int64_t sent = 0;  // highest sequence sent to it
    int open = 0;           // requests of it being answered now
    std::chrono::steady_clock::time_point seen;
    std::chrono::system_clock::time_point seen_wall;
  };
  struct Waiter {
    std::int64_t seq = 0;
    std::int64_t required = 0;
    http::Responder responder;
    http::Response response;
    std::string what; // "published", "saved"
    std::chrono::steady_clock::time_point start;
    std::chrono::steady_clock::time_point deadline;
    std::int64_t term = 0; // the leadership term it was checked in
    http::Response lost{}; // its answer if that term has ended
  };
  struct Config {
    std::int64_t required = 0;
    bool strict = true;
    std::chrono::seconds timeout{10};
    std::chrono::seconds follower_timeout{60};
  };

  Config config() const;
  // Under m_mutex.
  double lag_seconds_locked(std::int64_t since, std::int64_t update_seq) const;
  bool connected_locked(const Follower& follower, std::chrono::steady_clock::time_point now) const;
  bool synchronous_locked(const Follower& follower, const Config& config, std::chrono::steady_clock::time_point now,
                          std::int64_t update_seq) const;
  std::int64_t synchronous_count_locked(const Config& config) const;
  // Sends the waiting writes that `required` followers acknowledged.
  void release_locked(std::vector<Waiter>& done);
  void timer_loop();
  void send(Waiter& waiter, bool confirmed) const;

  store::Store& m_store;
  SettingsSource m_settings;
  mutable std::mutex m_mutex;
  std::map<std::string, Follower> m_followers;
  // When recent changes were committed (fed by the store; shared with its
  // listener, which may outlive this object).
  struct CommitLog;
  std::shared_ptr<CommitLog> m_commits;
  std::vector<Waiter> m_waiting; // ordered by seq
  SyncView m_counters;
  std::int64_t m_confirmed_seq = 0;
  bool m_stopping = false;
  std::condition_variable m_wake;
  std::thread m_timer;
};

} // namespace npme::replication
