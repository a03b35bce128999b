#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace npme::util {

// Returns `t` as an ISO 8601 UTC timestamp with milliseconds
// ("2026-11-26T01:14:03.123Z"), the format npm uses in packuments.
std::string iso8601(std::chrono::system_clock::time_point t = std::chrono::system_clock::now());

// Parses a UTC timestamp made by iso8601() (fractional seconds optional);
// nullopt for anything else.
std::optional<std::chrono::system_clock::time_point> parse_iso8601(std::string_view text);

} // namespace npme::util
