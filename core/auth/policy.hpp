#pragma once
// What a token may do beyond its user and access: when it expires and which
// client addresses may use it (address ranges in CIDR notation, IPv4 and
// IPv6), and which address a request comes from behind trusted proxies.

#include "core/util/cidr.hpp"
#include "core/util/error.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace npme::auth {

using util::Cidr;

// "90d", "12h", "30m", "45s", "2w" (a positive whole number and one unit);
// Errc::invalid otherwise, and for more than 100 years.
Expected<std::chrono::seconds> parse_duration(std::string_view text);

// The client a request comes from: `peer` unless `peer` is one of
// `trusted_proxies` and `forwarded_for` (the X-Forwarded-For header) is
// present; then the right-most address of it that is not a trusted proxy
// (each proxy appends the address it saw, so entries left of the first
// untrusted one could be forged by the client). An entry that is not an
// address ends the walk at the last good one.
std::string client_address(std::string_view peer, std::string_view forwarded_for,
                           const std::vector<Cidr>& trusted_proxies);

// Why a token cannot be used now from `address`, or nothing when it can.
// `expires` is seconds since the epoch (0: never); `ranges` empty: anywhere.
// Errc::unauthorized "token expired at <ISO time>; create a new one" or
// Errc::forbidden "token not allowed from <address> (allowed: <ranges>)".
Expected<void> check_token_use(std::int64_t expires, const std::vector<Cidr>& ranges, std::string_view address,
                               std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

} // namespace npme::auth
