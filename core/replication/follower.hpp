#pragma once
// The follower: a service inside `npme serve` that makes this instance a live
// replica of `upstream.url`. It reads `data/sequence`, pulls the upstream's
// changes feed, and for each document fetches the upstream's copy and every
// tarball it lacks, verifies each tarball against dist.integrity (sha512) or
// dist.shasum (sha1), writes tarballs first and metadata second, and only
// then advances `sequence`. A change it failed to apply is retried (capped
// exponential backoff with jitter), never skipped.
//
// The `since` of every feed request is the applied position, and it is an
// acknowledgement (DESIGN.md §10, synchronous replication): the follower asks
// for changes after S only once every change up to S is durable here —
// tarballs fsynced (or syncfs'd) and renamed before the metadata transaction
// commits with SQLite's synchronous=FULL, and `sequence` written after. Keep
// it so: never ask past a change that is staged but not committed.

#include "core/settings/settings.hpp"
#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "core/http/client.hpp"
#include "core/http/fetcher.hpp"

namespace npme::replication {

struct FollowerStatus {
  std::string state = "disabled"; // disabled, stopped, starting, following, caught-up, error
  std::string upstream_url;
  std::string policy;
  std::int64_t sequence = 0;     // the last change applied (what data/sequence holds)
  std::int64_t upstream_seq = -1; // the upstream's update_seq as last seen; -1 unknown
  std::int64_t lag_changes = 0;
  double lag_seconds = 0;        // age of the oldest unapplied change
  std::string upstream_instance;
  std::int64_t upstream_epoch = 0;
  // Whether the upstream counted this follower as synchronous in its last
  // answer (DESIGN.md §10): what a promotion reports about RPO 0.
  bool synchronous = false;
  // The highest write its synchronous followers had confirmed, as the
  // upstream last said (0: none, or not synchronous).
  std::int64_t upstream_confirmed_seq = 0;
  std::string last_error;
  std::string last_error_time;
  std::string last_applied_time;
  std::int64_t documents_applied = 0; // since start
  std::int64_t tarballs_fetched = 0;
  std::int64_t tarball_bytes_fetched = 0;
};

// What an upstream's "GET /" says about it (DESIGN.md §5).
struct UpstreamRoot {
  std::int64_t update_seq = 0;
  std::string instance;
  std::int64_t epoch = 0;
};

// Parses `body`, an upstream's answer to "GET /". Errc::invalid unless it is
// a JSON object with an integer "update_seq" and "epoch" and a string
// "instance" (an npme instance, not an npm registry).
Expected<UpstreamRoot> parse_upstream_root(std::string_view body);

// One entry of an upstream's changes feed.
struct FeedChange {
  std::int64_t seq = 0;
  std::string id;
  bool deleted = false;
  std::string rev;  // the first of "changes", "" when absent
  std::string time; // when it was made (ISO 8601), "" when absent
};

// An upstream's answer to "GET /_changes?since=S".
struct FeedAnswer {
  std::int64_t update_seq = 0;     // "update_seq", else "last_seq", else S
  std::size_t entries = 0;         // the entries of "results", well formed or not
  std::vector<FeedChange> changes; // the well-formed entries before the first malformed one
  std::string problem;             // why entry changes.size() is malformed ("" when none is)
};

// Parses `body`, an upstream's answer to "GET /_changes?since=`since`".
// Errc::invalid unless it is a JSON object with a "results" array (and
// integer "update_seq" and "last_seq" when present). An entry is well
// formed when it is an object with a string "id", an integer "seq" above
// the one before it (`since` for the first), and a boolean "deleted" when
// present; the entries after a malformed one are not returned, so that
// the follower applies those before it and retries from there.
Expected<FeedAnswer> parse_feed_answer(std::string_view body, std::int64_t since);

class Follower {
public:
  using SettingsSource = std::function<std::shared_ptr<const settings::Settings>()>;

  // Follows the upstream named in `settings` into `store`; keeps its
  // position in `data_dir`/sequence. `instance_id` is sent with every feed
  // request, so that the upstream knows its followers.
  Follower(store::Store& store, SettingsSource settings, std::filesystem::path data_dir,
           std::string instance_id = "");
  ~Follower();
  Follower(const Follower&) = delete;
  Follower& operator=(const Follower&) = delete;

  // Starts following when upstream.url is set; no-op when already running.
  void start();
  // Stops following (interrupting a long poll) and waits for the thread.
  void stop();
  // Stops, empties `sequence`, starts: a full resync that downloads only
  // the tarballs this instance lacks. Errc::precondition without upstream.
  Expected<void> reset();
  // Applies the upstream's current copy of document `id` now (for
  // `npme add-package`). Errc::precondition without upstream.
  Expected<void> fetch_now(const std::string& id);

  FollowerStatus status() const;
  bool running() const { return m_thread.joinable(); }

private:
  void run();
  void set_error(const std::string& message);
  bool sleep_for(std::chrono::milliseconds duration);

  struct Session;
  using Getter = std::function<Expected<http::ClientResponse>(const std::string&, const std::string&)>;
  // Every id the upstream's changes feed lists, read from 0 to its end.
  Expected<std::unordered_set<std::string>> upstream_ids(Session& session, const Getter& get);
  Expected<void> remove_unseen(
    Session& session, const std::unordered_set<std::string>& seen,
    const std::function<Expected<http::ClientResponse>(const std::string&, const std::string&)>& get);
  store::Store& m_store;
  SettingsSource m_settings;
  std::filesystem::path m_data_dir;
  std::string m_instance_id;
  std::thread m_thread;
  std::atomic<bool> m_stop{false};
  std::vector<http::Client*> m_active_clients; // connections of the running session, under m_mutex
  http::Fetcher* m_active_fetcher = nullptr;    // its prefetch pool, under m_mutex
  mutable std::mutex m_mutex;
  std::condition_variable m_wake;
  std::mutex m_control; // serializes start/stop/reset
  FollowerStatus m_status;
};

} // namespace npme::replication
