#pragma once
// Automatic failover on etcd (README, "Automatic failover with etcd"), the
// way Patroni keeps PostgreSQL's leader: a service inside `npme serve` that,
// when `ha.etcd` is set, registers this instance in etcd, holds or watches
// the leader key, and makes the instance the primary or a replica of the
// leader accordingly.
//
// Keys, under /npme/<cluster>/ (values are JSON, never a secret):
//   leader               {"instance","url","admin_url","epoch","update_seq"}: the
//                        leader, under its lease
//   members/<instance>   this member's record (Member below), under its lease
//   optime               {"instance","update_seq"}: the leader's position as of
//                        its last round, kept without a lease so that it
//                        outlives the leader: a replica further behind it
//                        than ha.max_lag never leads
//   pause                present while automatic failover is paused
//   switchover           {"from","to"}: a planned hand-over under way
//
// Safety: a leader accepts a write only while its lease is provably alive by
// its own clock: until the time it last sent a successful renewal plus the
// lease's TTL minus a margin (core/ha/ha.cpp). etcd counts the TTL from
// when it received that renewal, later, so the leader stops taking writes
// before anyone else can take the key: no two instances accept writes at
// once, even when the leader is frozen (SIGSTOP) or cut off from etcd.

#include "core/replication/follower.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace npme::ha {

// One member as the others see it (its etcd record, or its "/-/ha" answer).
struct Member {
  std::string instance;
  std::string url;       // its registry, reached directly (ha.url)
  std::string admin_url; // its admin API
  std::string role;      // "leader", "replica", "fenced" (a leader that lost its lease), "candidate"
  std::int64_t epoch = 0;
  // Where it is, in the numbering of `position_of`'s changes: a replica's
  // applied upstream seq (position_of = its upstream's instance), a primary's
  // own update_seq (position_of = itself).
  std::string position_of;
  std::int64_t position = 0;
  // The leader's update_seq as this member last read it from the leader key.
  std::int64_t leader_seq_seen = 0;
  bool synchronous = false; // the leader counted it synchronous in its last answer
  bool secret_ok = true;    // false: its secret was refused by the leader
  std::string follower_state;
  std::string last_error;
};

nlohmann::json to_json(const Member& member);
Member member_from_json(const nlohmann::json& doc);

// Who may lead when the leader key is free, given the live members.
struct Election {
  std::string group;          // the numbering compared (the last leader's instance)
  std::int64_t reference = 0; // the most advanced position known in it
  // Members that may lead now, best first (synchronous first when
  // `sync_replicas` > 0, then by position, then by instance id).
  std::vector<std::string> eligible;
  // Why each of the others may not (instance → reason).
  std::vector<std::pair<std::string, std::string>> excluded;
};

// Ranks `members` (their latest records). `leader_seq` is the update_seq
// of instance `leader_of` as last recorded in etcd (the optime key; counts
// only when `leader_of` is the group); `sync_replicas` is the primary's
// replication.sync_replicas; `max_lag` is ha.max_lag. A member is eligible
// when its secret works, it is in the group, and its position is within
// `max_lag` of the reference; with `sync_replicas` > 0 and any synchronous
// member eligible, only synchronous ones are. Only the best position races.
Election elect(const std::vector<Member>& members, const std::string& leader_of, std::int64_t leader_seq,
               std::int64_t sync_replicas, std::int64_t max_lag);

// The key layout of one cluster.
struct Keys {
  std::string prefix; // "/npme/<cluster>/"
  std::string leader() const { return prefix + "leader"; }
  std::string members() const { return prefix + "members/"; }
  std::string member(const std::string& id) const { return members() + id; }
  std::string pause() const { return prefix + "pause"; }
  std::string optime() const { return prefix + "optime"; }
  std::string switchover() const { return prefix + "switchover"; }
};
Keys keys_of(const settings::Settings& config);

// Whether `config` turns automatic failover on (ha.etcd set).
bool enabled(const settings::Settings& config);

// Returns until when the failover loop sleeps, at time `now`: with failover
// on (`on`), until its next round `next_round` or its next probe of the
// leader, whichever comes first; with it off, a second (to notice ha.etcd
// being set), whatever `next_round` says: `next_round` only moves while the
// loop runs rounds, so an instance without failover would otherwise wait
// for a time long past and spin.
std::chrono::steady_clock::time_point loop_deadline(bool on, std::chrono::steady_clock::time_point next_round,
                                                    std::chrono::steady_clock::time_point now);

class Ha {
public:
  struct Context {
    store::Store& store;
    settings::LiveSettings& settings;
    replication::Follower& follower;
    std::string instance_id;
    std::string listen_url; // http://<bound registry address>: the ha.url default
    std::string admin_url;  // http://<bound admin address>
    std::function<void(const std::string&)> log;
    // Waits until no write that passed may_write() is still committing;
    // false after the limit (a hand-over waits for this before it compares
    // positions). Null: writes are not tracked.
    std::function<bool(std::chrono::milliseconds)> writes_idle{};
    // Role changes for the audit log: ("promote" | "fence", what happened).
    // Null: not recorded.
    std::function<void(const std::string& action, const std::string& detail)> audit{};
  };

  explicit Ha(Context context);
  ~Ha();
  Ha(const Ha&) = delete;
  Ha& operator=(const Ha&) = delete;

  // The addresses this instance bound (known once its servers listen);
  // call before start().
  void set_addresses(std::string listen_url, std::string admin_url);

  const std::string& instance_id() const;

  // Starts the loop (it idles while ha.etcd is empty); stop() waits for it.
  void start();
  void stop();

  // Whether this instance may accept a write now. Without HA: yes (the
  // settings decide, as before). With HA: only as the leader, before its
  // lease deadline, and not while handing over; or, while paused, when the
  // settings make it a primary. Cheap: called for every write.
  bool may_write() const;
  // The current term of leadership, for acknowledging writes
  // (Replicas::set_term): while this instance leads within its lease, a
  // number that changes each time it starts leading; 0 when it does not
  // lead or its lease lapsed; -1 without automatic failover (or paused).
  std::int64_t term() const;
  // Why may_write() is false, for the 503 a client gets.
  std::string refusal() const;

  // HA on and not paused: promote-to-primary must go through switchover.
  bool automatic() const;

  // This member's record as of now ("/-/ha" on the registry port).
  Member self() const;

  // The local state for `npme status`: enabled, role, leader, lease left,
  // paused, last error.
  nlohmann::json status_json() const;

  // The cluster as etcd holds it now (`npme ha status`): members with lag,
  // leader and its lease's time left, paused, who would win now.
  Expected<nlohmann::json> cluster_status();

  // Sets or clears the cluster's pause key.
  Expected<void> set_paused(bool paused);

  // A planned hand-over to member `to`: the leader stops taking writes,
  // waits until `to` has applied everything, releases the key for `to`
  // alone, and this call waits until `to` leads (or `timeout`).
  Expected<nlohmann::json> switchover(const std::string& to, std::chrono::seconds timeout);

  struct Impl;

private:
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::ha
