#include "core/replication/lag_history.hpp"

#include <doctest/doctest.h>

namespace {

using namespace npme;
using replication::FollowerStatus;
using replication::LagHistory;

FollowerStatus lag(std::string state, std::int64_t changes, double seconds) {
  FollowerStatus status;
  status.state = std::move(state);
  status.lag_changes = changes;
  status.lag_seconds = seconds;
  return status;
}

LagHistory::Clock::time_point at(std::int64_t unix_seconds) {
  return LagHistory::Clock::time_point(std::chrono::seconds(unix_seconds));
}

} // namespace

TEST_CASE("LagHistory keeps one point per step with its peak, for the last hour") {
  LagHistory history(std::chrono::seconds(10), std::chrono::seconds(3600));
  const std::int64_t t0 = 1'800'000'000; // a multiple of 10
  history.record(lag("disabled", 5, 1), at(t0));
  CHECK(history.to_json(at(t0))["points"].empty()); // no upstream: nothing recorded

  history.record(lag("following", 3, 1.5), at(t0 + 1));
  history.record(lag("error", 9, 0.5), at(t0 + 4));
  history.record(lag("caught-up", 0, 0), at(t0 + 9));
  history.record(lag("caught-up", 2, 0.2), at(t0 + 10));
  auto doc = history.to_json(at(t0 + 12));
  CHECK(doc["step_seconds"] == 10);
  CHECK(doc["span_seconds"] == 3600);
  REQUIRE(doc["points"].size() == 2);
  // The first step holds its peak and its worst state.
  CHECK(doc["points"][0]["time"] == t0);
  CHECK(doc["points"][0]["changes"] == 9);
  CHECK(doc["points"][0]["seconds"] == 1.5);
  CHECK(doc["points"][0]["state"] == "error");
  CHECK(doc["points"][1]["time"] == t0 + 10);
  CHECK(doc["points"][1]["changes"] == 2);
  CHECK(doc["points"][1]["state"] == "caught-up");

  // A clock stepped back: the sample is dropped, not put out of order.
  history.record(lag("following", 50, 5), at(t0 - 100));
  CHECK(history.to_json(at(t0 + 12))["points"].size() == 2);

  // An hour later the first points have aged out.
  history.record(lag("caught-up", 1, 0), at(t0 + 3605));
  doc = history.to_json(at(t0 + 3605));
  REQUIRE(doc["points"].size() == 2);
  CHECK(doc["points"][0]["time"] == t0 + 10);
  CHECK(doc["points"][1]["time"] == t0 + 3600);
  CHECK(history.to_json(at(t0 + 7300))["points"].empty());
}

TEST_CASE("LagHistory holds at most an hour of steps however often it is fed") {
  LagHistory history(std::chrono::seconds(10), std::chrono::seconds(3600));
  const std::int64_t t0 = 1'800'000'000;
  for (std::int64_t s = 0; s < 3 * 3600; s += 3) {
    history.record(lag("following", s, 0), at(t0 + s));
  }
  const auto doc = history.to_json(at(t0 + 3 * 3600));
  CHECK(doc["points"].size() <= 361);
  CHECK(doc["points"].size() >= 359);
}
