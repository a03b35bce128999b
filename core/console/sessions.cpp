#include "core/console/sessions.hpp"

#include "core/util/crypto.hpp"

#include <algorithm>
#include <vector>

namespace npme::console {

Sessions::Sessions(std::function<std::chrono::seconds()> idle, std::size_t max_sessions)
  : m_idle(std::move(idle)), m_max(std::max<std::size_t>(1, max_sessions)) {}

std::chrono::seconds Sessions::idle() const {
  return m_idle ? m_idle() : std::chrono::seconds(900);
}

void Sessions::prune_locked(Clock::time_point now) {
  const auto limit = idle();
  std::erase_if(m_sessions, [&](const auto& entry) { return now - entry.second.last_used > limit; });
  while (m_sessions.size() >= m_max) {
    // The least recently used goes first.
    auto oldest = std::min_element(m_sessions.begin(), m_sessions.end(), [](const auto& a, const auto& b) {
      return a.second.last_used < b.second.last_used;
    });
    m_sessions.erase(oldest);
  }
}

Session Sessions::create(Clock::time_point now) {
  Session made{util::random_token(43), util::random_token(43)};
  std::lock_guard lock(m_mutex);
  prune_locked(now);
  m_sessions[made.id] = Entry{made.csrf, now};
  return made;
}

std::optional<Session> Sessions::touch(std::string_view id, Clock::time_point now) {
  if (id.empty()) {
    return std::nullopt;
  }
  std::lock_guard lock(m_mutex);
  auto it = m_sessions.find(id);
  if (it == m_sessions.end()) {
    return std::nullopt;
  }
  if (now - it->second.last_used > idle()) {
    m_sessions.erase(it);
    return std::nullopt;
  }
  it->second.last_used = now;
  return Session{it->first, it->second.csrf};
}

void Sessions::end(std::string_view id) {
  std::lock_guard lock(m_mutex);
  if (auto it = m_sessions.find(id); it != m_sessions.end()) {
    m_sessions.erase(it);
  }
}

std::size_t Sessions::size() const {
  std::lock_guard lock(m_mutex);
  return m_sessions.size();
}

std::string cookie_value(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    const auto end = header.find(';');
    std::string_view pair = header.substr(0, end);
    header = end == std::string_view::npos ? std::string_view() : header.substr(end + 1);
    while (!pair.empty() && pair.front() == ' ') {
      pair.remove_prefix(1);
    }
    const auto equals = pair.find('=');
    if (equals != std::string_view::npos && pair.substr(0, equals) == name) {
      std::string_view value = pair.substr(equals + 1);
      while (!value.empty() && value.back() == ' ') {
        value.remove_suffix(1);
      }
      return std::string(value);
    }
  }
  return "";
}

bool is_safe_method(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS";
}

Csrf check_csrf(std::string_view method, std::optional<std::string_view> header, std::string_view csrf,
                std::optional<std::string_view> origin, std::optional<std::string_view> fetch_site,
                std::string_view own_origin) {
  if (is_safe_method(method)) {
    return Csrf::ok;
  }
  // A browser that says where the request comes from is believed first.
  if (fetch_site && *fetch_site != "same-origin" && *fetch_site != "none") {
    return Csrf::cross_origin;
  }
  if (origin && *origin != own_origin) {
    return Csrf::cross_origin;
  }
  if (!header || header->empty()) {
    return Csrf::missing_header;
  }
  if (!util::constant_time_equal(*header, csrf)) {
    return Csrf::wrong_header;
  }
  return Csrf::ok;
}

std::string describe(Csrf result) {
  switch (result) {
  case Csrf::ok:
    return "ok";
  case Csrf::missing_header:
    return "a console request that changes something must carry the X-NPME-CSRF header (cross-site request refused)";
  case Csrf::wrong_header:
    return "the X-NPME-CSRF header does not match this console session";
  case Csrf::cross_origin:
    return "a request from another site cannot change this instance (cross-site request refused)";
  }
  return "refused";
}

} // namespace npme::console
