#include "core/auth/throttle.hpp"

#include <algorithm>

namespace npme::auth {

namespace {

std::string user_key(const std::string& user) {
  return "user " + user;
}

std::string address_key(const std::string& address) {
  return "address " + address;
}

} // namespace

LoginThrottle::LoginThrottle(ThrottleConfig config) : m_config(config) {}

LoginThrottle::State& LoginThrottle::state_locked(const std::string& key, Clock::time_point now) {
  State& state = m_states[key];
  // Forgotten after the window: failures, and an in-flight count whose
  // outcomes never came.
  if (state.failures > 0 && now - state.last_failure > m_config.window && now >= state.blocked_until) {
    state.failures = 0;
  }
  if (state.in_flight > 0 && now - state.last_begin > m_config.in_flight_limit) {
    state.in_flight = 0;
  }
  return state;
}

void LoginThrottle::prune_locked(Clock::time_point now) {
  const auto idle = [&](const State& state) {
    return state.in_flight == 0 && now >= state.blocked_until &&
           (state.failures == 0 || now - state.last_failure > m_config.window);
  };
  std::erase_if(m_states, [&](const auto& entry) { return idle(entry.second); });
  if (m_states.size() >= m_config.max_keys) {
    // A flood of distinct names or addresses: keep the blocked keys, drop
    // the ones that are merely counting.
    std::erase_if(m_states, [&](const auto& entry) { return now >= entry.second.blocked_until; });
  }
}

LoginThrottle::Verdict LoginThrottle::begin(const std::string& user, const std::string& address, Clock::time_point now) {
  std::lock_guard lock(m_mutex);
  // Pruned before any reference into the map is taken (erasing invalidates them).
  if (m_states.size() + 2 > m_config.max_keys) {
    prune_locked(now);
  }
  State& by_user = state_locked(user_key(user), now);
  State& by_address = state_locked(address_key(address), now);
  Verdict verdict;
  const auto refuse = [&](const State& state, const std::string& what) {
    std::chrono::seconds wait{1};
    if (now < state.blocked_until) {
      // Rounded up: a client that waits this long is not refused again.
      wait = std::chrono::ceil<std::chrono::seconds>(state.blocked_until - now);
    }
    if (!verdict.allowed && verdict.retry_after >= wait) {
      return;
    }
    verdict.allowed = false;
    verdict.retry_after = wait;
    verdict.reason = "too many failed logins " + what + "; retry in " + std::to_string(wait.count()) + " s";
  };
  const auto check = [&](const State& state, const std::string& what) {
    if (now < state.blocked_until) {
      refuse(state, what);
      return;
    }
    // Attempts in flight may each fail: no more of them than free failures left.
    const unsigned left = state.failures < m_config.free_failures ? m_config.free_failures - state.failures : 1;
    if (state.in_flight >= left) {
      refuse(state, what);
    }
  };
  check(by_user, "for user '" + user + "'");
  check(by_address, "from " + address);
  if (!verdict.allowed) {
    m_refused += 1;
    return verdict;
  }
  for (State* state : {&by_user, &by_address}) {
    state->in_flight += 1;
    state->last_begin = now;
  }
  return verdict;
}

void LoginThrottle::finish(const std::string& user, const std::string& address, bool success, Clock::time_point now) {
  std::lock_guard lock(m_mutex);
  if (m_states.size() + 2 > m_config.max_keys) {
    prune_locked(now);
  }
  for (const auto& key : {user_key(user), address_key(address)}) {
    State& state = state_locked(key, now);
    state.in_flight = state.in_flight > 0 ? state.in_flight - 1 : 0;
    if (success) {
      state.failures = 0;
      state.blocked_until = {};
      continue;
    }
    state.failures += 1;
    state.last_failure = now;
    if (state.failures >= m_config.free_failures) {
      // 1 s after the fifth failure, doubling with each one after it.
      const unsigned doublings = std::min(30u, state.failures - m_config.free_failures);
      const auto block = std::min<std::chrono::seconds>(m_config.max_block, m_config.first_block * (1LL << doublings));
      state.blocked_until = now + block;
    }
  }
}

void LoginThrottle::cancel(const std::string& user, const std::string& address) {
  std::lock_guard lock(m_mutex);
  for (const auto& key : {user_key(user), address_key(address)}) {
    if (auto it = m_states.find(key); it != m_states.end() && it->second.in_flight > 0) {
      it->second.in_flight -= 1;
    }
  }
}

std::size_t LoginThrottle::size() const {
  std::lock_guard lock(m_mutex);
  return m_states.size();
}

std::uint64_t LoginThrottle::refused() const {
  std::lock_guard lock(m_mutex);
  return m_refused;
}

} // namespace npme::auth
