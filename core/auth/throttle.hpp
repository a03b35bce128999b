#pragma once
// Login throttling: failed password logins counted per user name and per
// client address. Five failures in a row are free; after that each key is
// blocked for 1 s, then 2 s, 4 s ... up to 15 minutes after each further
// failure, and attempts meanwhile are refused (429 with Retry-After) before
// any password is hashed. A success clears both keys; failures older than
// the window (15 minutes) are forgotten.
//
// Attempts are reserved before the password is checked, so that a burst
// of parallel attempts cannot all pass the check before the first failure
// is counted: a key has at most as many attempts in flight as it has free
// failures left (one once it is blocked and the block has run out).

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

namespace npme::auth {

struct ThrottleConfig {
  unsigned free_failures = 5;
  std::chrono::seconds first_block{1};
  std::chrono::seconds max_block{15 * 60};
  std::chrono::seconds window{15 * 60};
  // An attempt whose outcome was never reported (its request lost) stops
  // counting as in flight after this long.
  std::chrono::seconds in_flight_limit{60};
  std::size_t max_keys = 100000; // beyond this, keys with nothing to remember are dropped first
};

class LoginThrottle {
public:
  using Clock = std::chrono::steady_clock;

  explicit LoginThrottle(ThrottleConfig config = {});

  struct Verdict {
    bool allowed = true;
    std::chrono::seconds retry_after{0}; // when refused: seconds until an attempt may succeed
    std::string reason;                  // when refused: for the 429's message
  };

  // Reserves an attempt for `user` from `address`; each allowed begin()
  // must be followed by one finish() or cancel().
  Verdict begin(const std::string& user, const std::string& address, Clock::time_point now = Clock::now());
  // The attempt's outcome: a success clears both keys, a failure counts
  // against both.
  void finish(const std::string& user, const std::string& address, bool success, Clock::time_point now = Clock::now());
  // The attempt was not made (the hashing pool was full): nothing counted.
  void cancel(const std::string& user, const std::string& address);

  // Keys remembered now (for tests and metrics).
  std::size_t size() const;
  // Attempts refused since start.
  std::uint64_t refused() const;

private:
  struct State {
    unsigned failures = 0;
    unsigned in_flight = 0;
    Clock::time_point last_failure{};
    Clock::time_point last_begin{};
    Clock::time_point blocked_until{};
  };

  State& state_locked(const std::string& key, Clock::time_point now);
  void prune_locked(Clock::time_point now);

  ThrottleConfig m_config;
  mutable std::mutex m_mutex;
  std::unordered_map<std::string, State> m_states;
  std::uint64_t m_refused = 0;
};

} // namespace npme::auth
