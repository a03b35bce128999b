#pragma once
// The admin console's sign-in: the operator pastes the admin token once and
// gets a session, an HttpOnly SameSite=Strict cookie naming a random id kept
// here (in memory: a restart signs everyone out). A session ends when the
// operator signs out or after `idle` without a request.
//
// Cross-site request forgery: a request authenticated by the cookie that
// changes state must also carry the session's CSRF token in a header
// (X-NPME-CSRF), which a cross-site form cannot send and a cross-site
// script cannot read, and its Origin, when the browser sends one, must be
// the console's own.

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace npme::console {

inline constexpr std::string_view k_cookie = "npme_console";
inline constexpr std::string_view k_csrf_header = "X-NPME-CSRF";

struct Session {
  std::string id;   // the cookie's value
  std::string csrf; // what state-changing requests repeat in X-NPME-CSRF
};

class Sessions {
public:
  using Clock = std::chrono::steady_clock;

  // `idle`: how long a session lives without a request (read at each use,
  // so a settings change applies at once).
  explicit Sessions(std::function<std::chrono::seconds()> idle, std::size_t max_sessions = 1000);

  Session create(Clock::time_point now = Clock::now());
  // The session `id` names, when it exists and was used within the idle
  // time; its idle time starts again.
  std::optional<Session> touch(std::string_view id, Clock::time_point now = Clock::now());
  void end(std::string_view id);
  std::size_t size() const;
  std::chrono::seconds idle() const;

private:
  struct Entry {
    std::string csrf;
    Clock::time_point last_used;
  };
  void prune_locked(Clock::time_point now);

  std::function<std::chrono::seconds()> m_idle;
  std::size_t m_max;
  mutable std::mutex m_mutex;
  std::map<std::string, Entry, std::less<>> m_sessions;
};

// The value of cookie `name` in a Cookie header ("a=1; npme_console=x");
// "" when absent.
std::string cookie_value(std::string_view header, std::string_view name);

// GET, HEAD and OPTIONS change nothing.
bool is_safe_method(std::string_view method);

enum class Csrf { ok, missing_header, wrong_header, cross_origin };

// The CSRF check of a cookie-authenticated request (see above): `header`
// is its X-NPME-CSRF, `origin` its Origin, `fetch_site` its Sec-Fetch-Site,
// `own_origin` the console's ("https://host:port" as the request's Host
// names it).
Csrf check_csrf(std::string_view method, std::optional<std::string_view> header, std::string_view csrf,
                std::optional<std::string_view> origin, std::optional<std::string_view> fetch_site,
                std::string_view own_origin);

// Why a check failed, for the 403's message.
std::string describe(Csrf result);

} // namespace npme::console
