#pragma once
// Address ranges in CIDR notation, IPv4 and IPv6: for tokens limited to
// client networks and for the proxies whose X-Forwarded-For is trusted.

#include "core/util/error.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace npme::util {

// An address range: "10.0.0.0/8", "2001:db8::/32", or one address ("10.1.2.3"
// is 10.1.2.3/32). IPv4 ranges are kept as IPv4-mapped IPv6 (::ffff:a.b.c.d)
// so that one comparison covers peers reported either way.
struct Cidr {
  std::array<std::uint8_t, 16> address{};
  int prefix = 128; // in bits of the 16-byte form
  std::string text; // as normalized for display: "10.0.0.0/8"
};

// Errc::invalid naming the range and why: a bad address, a prefix out of
// range, or host bits set below the prefix ("10.1.0.0/8": did you mean
// 10.0.0.0/8?).
Expected<Cidr> parse_cidr(std::string_view text);
// A comma-separated list ("10.0.0.0/8, 192.168.1.0/24"); spaces around items
// are ignored, an empty item is an error; an empty text is an empty list.
Expected<std::vector<Cidr>> parse_cidrs(std::string_view text);
// Whether `address` ("127.0.0.1", "::1", "::ffff:10.0.0.1") lies in `range`;
// false for text that is not an address.
bool contains(const Cidr& range, std::string_view address);
bool contains_any(const std::vector<Cidr>& ranges, std::string_view address);
// Whether `text` is an IPv4 or IPv6 address.
bool is_address(std::string_view text);

} // namespace npme::util
