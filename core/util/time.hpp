#pragma once

#include <chrono>
#include <string>

namespace npme::util {

// Returns `t` as an ISO 8601 UTC timestamp with milliseconds
// ("2026-11-26T01:14:03.123Z"), the format npm uses in packuments.
std::string iso8601(std::chrono::system_clock::time_point t = std::chrono::system_clock::now());

} // namespace npme::util
