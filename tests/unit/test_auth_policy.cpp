#include "core/auth/policy.hpp"

#include <doctest/doctest.h>

using namespace npme;
using namespace std::chrono_literals;

namespace {

util::Cidr range(std::string_view text) {
  auto parsed = util::parse_cidr(text);
  REQUIRE_MESSAGE(parsed, text);
  return *parsed;
}

std::string refusal(std::string_view text) {
  auto parsed = util::parse_cidr(text);
  REQUIRE_FALSE_MESSAGE(parsed, text);
  CHECK(parsed.error().code == Errc::invalid);
  return parsed.error().message;
}

} // namespace

TEST_CASE("CIDR ranges: IPv4 and IPv6, prefixes, single addresses") {
  auto ten = range("10.0.0.0/8");
  CHECK(ten.text == "10.0.0.0/8");
  CHECK(util::contains(ten, "10.255.1.2"));
  CHECK(util::contains(ten, "::ffff:10.1.2.3")); // an IPv4 peer reported as mapped IPv6
  CHECK_FALSE(util::contains(ten, "11.0.0.1"));
  CHECK_FALSE(util::contains(ten, "::a00:1")); // IPv4-compatible, not mapped: another address
  CHECK_FALSE(util::contains(ten, "not an address"));
  CHECK_FALSE(util::contains(ten, ""));

  auto lan = range("192.168.1.0/24");
  CHECK(util::contains(lan, "192.168.1.254"));
  CHECK_FALSE(util::contains(lan, "192.168.2.1"));

  auto odd = range("172.16.0.0/12"); // a prefix that is not a byte boundary
  CHECK(util::contains(odd, "172.31.255.255"));
  CHECK_FALSE(util::contains(odd, "172.32.0.0"));

  auto host = range("127.0.0.1");
  CHECK(host.text == "127.0.0.1/32");
  CHECK(util::contains(host, "127.0.0.1"));
  CHECK_FALSE(util::contains(host, "127.0.0.2"));

  auto all4 = range("0.0.0.0/0");
  CHECK(util::contains(all4, "8.8.8.8"));
  CHECK_FALSE(util::contains(all4, "2001:db8::1")); // IPv4's /0 is not every IPv6 address

  auto doc = range("2001:DB8::/32");
  CHECK(doc.text == "2001:db8::/32");
  CHECK(util::contains(doc, "2001:db8:ffff::1"));
  CHECK_FALSE(util::contains(doc, "2001:db9::1"));
  CHECK(util::contains(range("::1/128"), "::1"));
  CHECK(util::contains(range("fe80::/10"), "fe80::1%eth0"));
  CHECK(util::contains(range("::/0"), "10.0.0.1")); // every address, mapped IPv4 included

  auto list = util::parse_cidrs(" 10.0.0.0/8, 192.168.1.0/24 ,fd00::/8");
  REQUIRE(list);
  CHECK(list->size() == 3);
  CHECK(util::contains_any(*list, "fd12::5"));
  CHECK(util::contains_any(*list, "192.168.1.7"));
  CHECK_FALSE(util::contains_any(*list, "8.8.8.8"));
  auto none = util::parse_cidrs("");
  REQUIRE(none);
  CHECK(none->empty());
  CHECK(util::is_address("::1"));
  CHECK_FALSE(util::is_address("example.com"));
}

TEST_CASE("CIDR ranges: bad input is refused with the reason") {
  CHECK(refusal("10.0.0.0/33").find("prefix length must be 0 to 32") != std::string::npos);
  CHECK(refusal("2001:db8::/129").find("0 to 128") != std::string::npos);
  CHECK(refusal("10.0.0.0/").find("prefix length") != std::string::npos);
  CHECK(refusal("10.0.0.0/8x").find("prefix length") != std::string::npos);
  CHECK(refusal("10.0.0.0/-1").find("prefix length") != std::string::npos);
  CHECK(refusal("10.0.0/8").find("not an IPv4 or IPv6 address") != std::string::npos);
  CHECK(refusal("example.com/8").find("not an IPv4 or IPv6 address") != std::string::npos);
  CHECK(refusal("").find("not an IPv4 or IPv6 address") != std::string::npos);
  CHECK(refusal("10.1.0.0/8").find("did you mean 10.0.0.0/8?") != std::string::npos);
  CHECK(refusal("2001:db8::1/32").find("did you mean 2001:db8::/32?") != std::string::npos);
  auto list = util::parse_cidrs("10.0.0.0/8,bogus");
  REQUIRE_FALSE(list);
  CHECK(list.error().message.find("'bogus'") != std::string::npos);
}

TEST_CASE("token expiry durations") {
  CHECK(*auth::parse_duration("90d") == 90 * 24h);
  CHECK(*auth::parse_duration("12h") == 12h);
  CHECK(*auth::parse_duration("30m") == 30min);
  CHECK(*auth::parse_duration("45s") == 45s);
  CHECK(*auth::parse_duration("2w") == 14 * 24h);
  CHECK(*auth::parse_duration(" 1d ") == 24h);
  for (const char* bad : {"", "d", "90", "0d", "-1d", "1.5d", "1y", "d90", "1 d", "99999999999999999999d"}) {
    auto parsed = auth::parse_duration(bad);
    CHECK_FALSE_MESSAGE(parsed, bad);
    if (!parsed) {
      CHECK(parsed.error().code == Errc::invalid);
    }
  }
  CHECK(auth::parse_duration("40000d").error().message.find("more than 100 years") != std::string::npos);
}

TEST_CASE("client address behind trusted proxies") {
  auto proxies = *util::parse_cidrs("10.0.0.0/8,::1/128");
  // No trusted proxies, or a peer that is not one: the header is ignored.
  CHECK(auth::client_address("10.0.0.5", "1.2.3.4", {}) == "10.0.0.5");
  CHECK(auth::client_address("8.8.8.8", "1.2.3.4", proxies) == "8.8.8.8");
  CHECK(auth::client_address("10.0.0.5", "", proxies) == "10.0.0.5");
  // The right-most entry that is not a trusted proxy: what the client wrote
  // left of it is not believed.
  CHECK(auth::client_address("10.0.0.5", "1.2.3.4", proxies) == "1.2.3.4");
  CHECK(auth::client_address("10.0.0.5", "6.6.6.6, 1.2.3.4", proxies) == "1.2.3.4");
  CHECK(auth::client_address("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.9.9.9", proxies) == "1.2.3.4");
  CHECK(auth::client_address("::1", "2001:db8::7", proxies) == "2001:db8::7");
  // Every hop a proxy: the left-most one.
  CHECK(auth::client_address("10.0.0.5", "10.1.1.1,10.2.2.2", proxies) == "10.1.1.1");
  // Garbage ends the walk at the last address that was believed.
  CHECK(auth::client_address("10.0.0.5", "1.2.3.4, garbage", proxies) == "10.0.0.5");
  CHECK(auth::client_address("10.0.0.5", "garbage, 1.2.3.4", proxies) == "1.2.3.4");
}

TEST_CASE("a token's limits: expiry (401) and address ranges (403)") {
  const auto now = std::chrono::system_clock::now();
  const auto in_an_hour = std::chrono::system_clock::to_time_t(now + 1h);
  const auto an_hour_ago = std::chrono::system_clock::to_time_t(now - 1h);
  CHECK(auth::check_token_use(0, {}, "1.2.3.4", now));
  CHECK(auth::check_token_use(in_an_hour, {}, "", now));
  auto expired = auth::check_token_use(an_hour_ago, {}, "", now);
  REQUIRE_FALSE(expired);
  CHECK(expired.error().code == Errc::unauthorized);
  CHECK(expired.error().message.starts_with("token expired at "));

  auto ranges = *util::parse_cidrs("10.0.0.0/8,192.168.1.0/24");
  CHECK(auth::check_token_use(0, ranges, "192.168.1.9", now));
  auto outside = auth::check_token_use(0, ranges, "8.8.4.4", now);
  REQUIRE_FALSE(outside);
  CHECK(outside.error().code == Errc::forbidden);
  CHECK(outside.error().message == "token not allowed from 8.8.4.4 (its ranges: 10.0.0.0/8, 192.168.1.0/24)");
  // Expiry is told first: a new token is what the user needs either way.
  CHECK(auth::check_token_use(an_hour_ago, ranges, "8.8.4.4", now).error().code == Errc::unauthorized);
}
