#pragma once
// The follower's lag over the last hour, for the admin console's chart
// (GET /api/v1/follower/lag): one point per step (10 s), holding the
// highest lag seen in it, so that a short peak between two looks is not
// lost. `npme serve` records a sample every step and at every status read.
// Thread-safe.

#include "core/replication/follower.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <mutex>

namespace npme::replication {

class LagHistory {
public:
  using Clock = std::chrono::system_clock;

  explicit LagHistory(std::chrono::seconds step = std::chrono::seconds(10),
                      std::chrono::seconds span = std::chrono::seconds(3600));

  // Adds what `status` says at `now`; a follower that is disabled (no
  // upstream) adds nothing.
  void record(const FollowerStatus& status, Clock::time_point now = Clock::now());
  // {"step_seconds": 10, "span_seconds": 3600, "points": [{"time": Unix
  //  seconds (the step's start), "changes", "seconds", "state"}, ...]},
  //  oldest first, none older than the span before `now`.
  nlohmann::json to_json(Clock::time_point now = Clock::now()) const;

private:
  struct Point {
    std::int64_t time = 0; // Unix seconds, a multiple of the step
    std::int64_t changes = 0;
    double seconds = 0;
    std::string state;
  };
  void prune_locked(std::int64_t now_seconds);

  std::int64_t m_step;
  std::int64_t m_span;
  mutable std::mutex m_mutex;
  std::deque<Point> m_points;
};

} // namespace npme::replication
