#pragma once
// Promotion of a replica to primary (DESIGN.md §8): stop the follower, clear
// the upstream, accept publishes, raise the epoch — after checking that the
// old primary can't still take writes and that nothing it has is missing here.

#include "core/replication/follower.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace npme::replication {

struct PromoteOptions {
  bool force = false;                       // skip the old-primary and lag checks
  std::chrono::seconds wait_timeout{30};    // how long to wait for catch-up
};

struct PromoteResult {
  std::int64_t epoch = 0;         // the new epoch
  std::string old_upstream;       // the upstream.url it followed
  bool upstream_reachable = false;
  std::int64_t sequence = 0;      // the follower's position at promotion
  std::int64_t upstream_seq = -1; // the old primary's update_seq, when reachable
  // What the follower last knew before the promotion (DESIGN.md §10): whether
  // the old primary counted it as synchronous (then every write it
  // acknowledged without an npm-notice is here), and the old primary's
  // update_seq as last seen (-1 unknown).
  bool was_synchronous = false;
  std::int64_t last_known_upstream_seq = -1;
  // The highest write the old primary's synchronous followers had confirmed,
  // as last known here (0 none): this replica holds every write acknowledged
  // without an npm-notice up to there when `sequence` reaches it.
  std::int64_t last_known_confirmed_seq = 0;
};

// Returns the epoch an instance keeps in `store` (1 when never set).
std::int64_t read_epoch(const store::Store& store);

// Promotes the replica that `settings`, `store` and `follower` make up.
// Errc::precondition when it is not a replica; when the old primary answers
// and accepts publishes (fence it, or force); when it lags a reachable old
// primary after `options.wait_timeout` (unless forced).
Expected<PromoteResult> promote(store::Store& store, settings::LiveSettings& settings, Follower& follower,
                                const PromoteOptions& options);

} // namespace npme::replication
