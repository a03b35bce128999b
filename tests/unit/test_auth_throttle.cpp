// Login throttling (core/auth/throttle): five free failures per user and
// per address, then blocks doubling from 1 s to 15 minutes; a success or
// the 15-minute window clears them; parallel attempts cannot outrun the
// count. And the bounded pool that hashes the passwords.
#include "core/auth/throttle.hpp"
#include "core/util/bounded_pool.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <future>

using namespace npme;
using namespace std::chrono_literals;
using Clock = auth::LoginThrottle::Clock;

namespace {

// One failed attempt at `now`; checks it was allowed.
void fail_once(auth::LoginThrottle& throttle, const std::string& user, const std::string& address,
               Clock::time_point now) {
  auto verdict = throttle.begin(user, address, now);
  REQUIRE(verdict.allowed);
  throttle.finish(user, address, false, now);
}

} // namespace

TEST_CASE("throttle: five failures are free, then blocks double up to 15 minutes") {
  auth::LoginThrottle throttle;
  const auto t0 = Clock::time_point{} + 1000h;
  for (int i = 0; i < 5; ++i) {
    fail_once(throttle, "alice", "10.0.0.1", t0);
  }
  auto refused = throttle.begin("alice", "10.0.0.1", t0);
  CHECK_FALSE(refused.allowed);
  CHECK(refused.retry_after == 1s);
  CHECK(refused.reason == "too many failed logins for user 'alice'; retry in 1 s");
  CHECK(throttle.refused() == 1);

  // After each block one attempt is let through; failing it doubles the block.
  auto now = t0;
  std::chrono::seconds block = 1s;
  for (const auto expected : {2s, 4s, 8s, 16s, 32s, 64s, 128s, 256s, 512s, 900s, 900s}) {
    now += block; // the block has run out; the failures are still remembered
    block = expected;
    fail_once(throttle, "alice", "10.0.0.1", now);
    auto verdict = throttle.begin("alice", "10.0.0.1", now);
    CHECK_FALSE(verdict.allowed);
    CHECK(verdict.retry_after == expected);
    CHECK_FALSE(throttle.begin("alice", "10.0.0.1", now + expected - 1s).allowed);
  }
}

TEST_CASE("throttle: a success clears the user and the address") {
  auth::LoginThrottle throttle;
  const auto t0 = Clock::time_point{} + 1000h;
  for (int i = 0; i < 4; ++i) {
    fail_once(throttle, "alice", "10.0.0.1", t0);
  }
  REQUIRE(throttle.begin("alice", "10.0.0.1", t0).allowed);
  throttle.finish("alice", "10.0.0.1", true, t0);
  for (int i = 0; i < 5; ++i) {
    fail_once(throttle, "alice", "10.0.0.1", t0); // five free again
  }
  CHECK_FALSE(throttle.begin("alice", "10.0.0.1", t0).allowed);
}

TEST_CASE("throttle: per address across users, per user across addresses") {
  auth::LoginThrottle throttle;
  const auto t0 = Clock::time_point{} + 1000h;
  for (int i = 0; i < 5; ++i) {
    fail_once(throttle, "user" + std::to_string(i), "10.0.0.1", t0);
  }
  auto by_address = throttle.begin("bob", "10.0.0.1", t0);
  CHECK_FALSE(by_address.allowed);
  CHECK(by_address.reason == "too many failed logins from 10.0.0.1; retry in 1 s");
  CHECK(throttle.begin("bob", "10.0.0.2", t0).allowed); // bob elsewhere is fine
  throttle.cancel("bob", "10.0.0.2");

  for (int i = 0; i < 5; ++i) {
    fail_once(throttle, "carol", "192.168.0." + std::to_string(i), t0);
  }
  auto by_user = throttle.begin("carol", "192.168.1.1", t0);
  CHECK_FALSE(by_user.allowed);
  CHECK(by_user.reason == "too many failed logins for user 'carol'; retry in 1 s");
}

TEST_CASE("throttle: the window forgets failures; parallel attempts cannot outrun the count") {
  auth::LoginThrottle throttle;
  const auto t0 = Clock::time_point{} + 1000h;
  for (int i = 0; i < 4; ++i) {
    fail_once(throttle, "alice", "10.0.0.1", t0);
  }
  const auto later = t0 + 15min + 1s;
  for (int i = 0; i < 5; ++i) {
    fail_once(throttle, "alice", "10.0.0.1", later); // forgotten: five free again
  }
  CHECK_FALSE(throttle.begin("alice", "10.0.0.1", later).allowed);

  // Five reservations at once, for a fresh user: the sixth waits for an outcome.
  for (int i = 0; i < 5; ++i) {
    REQUIRE(throttle.begin("dave", "10.0.0.9", t0).allowed);
  }
  auto sixth = throttle.begin("dave", "10.0.0.9", t0);
  CHECK_FALSE(sixth.allowed);
  CHECK(sixth.retry_after == 1s);
  throttle.cancel("dave", "10.0.0.9"); // one not made: a slot is free again
  CHECK(throttle.begin("dave", "10.0.0.9", t0).allowed);
  // Reservations whose outcome never comes stop counting after a minute.
  CHECK(throttle.begin("dave", "10.0.0.9", t0 + 61s).allowed);
}

TEST_CASE("throttle: a flood of distinct names keeps the map bounded and the blocked keys") {
  auth::ThrottleConfig config;
  config.max_keys = 100;
  auth::LoginThrottle throttle(config);
  const auto t0 = Clock::time_point{} + 1000h;
  for (int i = 0; i < 5; ++i) {
    fail_once(throttle, "alice", "10.0.0." + std::to_string(i), t0);
  }
  for (int i = 0; i < 1000; ++i) {
    fail_once(throttle, "name" + std::to_string(i), "172.16." + std::to_string(i / 256) + "." + std::to_string(i % 256),
              t0);
  }
  CHECK(throttle.size() <= 100);
  CHECK_FALSE(throttle.begin("alice", "10.9.9.9", t0).allowed);
}

TEST_CASE("bounded pool: runs jobs, refuses beyond its queue, finishes queued jobs on destruction") {
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::atomic<int> ran{0};
  {
    util::BoundedPool pool(1, 2);
    CHECK(pool.try_post([&] { gate.wait(); ++ran; })); // running
    // Wait until the first job runs, so the queue holds only what follows.
    while (pool.queued() != 0) {
      std::this_thread::yield();
    }
    CHECK(pool.try_post([&] { ++ran; }));
    CHECK(pool.try_post([&] { ++ran; }));
    CHECK_FALSE(pool.try_post([&] { ++ran; })); // full
    CHECK(pool.queued() == 2);
    release.set_value();
  }
  CHECK(ran == 3);

  util::BoundedPool pool(2, 4);
  auto result = pool.run([] { return 42; });
  REQUIRE(result);
  CHECK(*result == 42);
}
