// The console's sessions and CSRF checks (core/console/sessions).
#include "core/console/sessions.hpp"

#include <doctest/doctest.h>

using namespace npme;
using namespace std::chrono_literals;
using Clock = console::Sessions::Clock;

TEST_CASE("console sessions: created, found while used, ended by sign-out or idleness") {
  console::Sessions sessions([] { return std::chrono::seconds(900); });
  const auto t0 = Clock::time_point{} + 1000h;
  const auto one = sessions.create(t0);
  const auto two = sessions.create(t0);
  CHECK(one.id.size() >= 40);
  CHECK(one.csrf.size() >= 40);
  CHECK(one.id != two.id);
  CHECK(one.csrf != one.id);

  auto found = sessions.touch(one.id, t0 + 800s);
  REQUIRE(found);
  CHECK(found->csrf == one.csrf);
  // Each use starts the idle time again.
  CHECK(sessions.touch(one.id, t0 + 1600s));
  CHECK_FALSE(sessions.touch(two.id, t0 + 1600s)); // unused for more than 900 s
  CHECK_FALSE(sessions.touch("", t0));
  CHECK_FALSE(sessions.touch("forged", t0));

  sessions.end(one.id);
  CHECK_FALSE(sessions.touch(one.id, t0 + 1601s));
  CHECK(sessions.size() == 0);
}

TEST_CASE("console sessions: the idle time is read at each use; the number of sessions is bounded") {
  std::chrono::seconds idle = 900s;
  console::Sessions sessions([&idle] { return idle; }, 3);
  const auto t0 = Clock::time_point{} + 1000h;
  const auto first = sessions.create(t0);
  idle = 60s;
  CHECK_FALSE(sessions.touch(first.id, t0 + 61s));
  std::vector<console::Session> made;
  for (int i = 0; i < 5; ++i) {
    made.push_back(sessions.create(t0 + std::chrono::seconds(i)));
  }
  CHECK(sessions.size() <= 3);
  CHECK(sessions.touch(made.back().id, t0 + 5s)); // the newest are kept
  CHECK_FALSE(sessions.touch(made.front().id, t0 + 5s));
}

TEST_CASE("cookie values") {
  CHECK(console::cookie_value("npme_console=abc", "npme_console") == "abc");
  CHECK(console::cookie_value("a=1; npme_console=abc; b=2", "npme_console") == "abc");
  CHECK(console::cookie_value("xnpme_console=abc", "npme_console") == "");
  CHECK(console::cookie_value("npme_console", "npme_console") == "");
  CHECK(console::cookie_value("", "npme_console") == "");
}

TEST_CASE("CSRF: state changes need the session's header and the console's own origin") {
  const std::string own = "https://admin.example:8800";
  using console::Csrf;
  // Reads change nothing: nothing to check.
  CHECK(console::check_csrf("GET", std::nullopt, "t", "https://evil.example", "cross-site", own) == Csrf::ok);
  CHECK(console::check_csrf("HEAD", std::nullopt, "t", std::nullopt, std::nullopt, own) == Csrf::ok);
  // A form from another site: no header.
  CHECK(console::check_csrf("POST", std::nullopt, "t", std::nullopt, std::nullopt, own) == Csrf::missing_header);
  CHECK(console::check_csrf("POST", "", "t", std::nullopt, std::nullopt, own) == Csrf::missing_header);
  CHECK(console::check_csrf("PATCH", "other", "t", std::nullopt, std::nullopt, own) == Csrf::wrong_header);
  CHECK(console::check_csrf("DELETE", "t", "t", "https://evil.example", std::nullopt, own) == Csrf::cross_origin);
  CHECK(console::check_csrf("DELETE", "t", "t", "http://admin.example:8800", std::nullopt, own) == Csrf::cross_origin);
  CHECK(console::check_csrf("POST", "t", "t", std::nullopt, "cross-site", own) == Csrf::cross_origin);
  CHECK(console::check_csrf("POST", "t", "t", std::nullopt, "same-site", own) == Csrf::cross_origin);
  // The console itself.
  CHECK(console::check_csrf("POST", "t", "t", own, "same-origin", own) == Csrf::ok);
  CHECK(console::check_csrf("PATCH", "t", "t", std::nullopt, std::nullopt, own) == Csrf::ok);
  CHECK(console::describe(Csrf::missing_header).find("X-NPME-CSRF") != std::string::npos);
}
