#include "core/util/time.hpp"

#include <cstdio>

namespace npme::util {

std::string iso8601(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  // floor, not duration_cast: times before 1970 must round towards the past
  // so that the day and the milliseconds stay consistent.
  const auto ms = floor<milliseconds>(t);
  const auto day = floor<days>(ms);
  const year_month_day date{day};
  const hh_mm_ss<milliseconds> time{ms - day};
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ",
                static_cast<int>(date.year()), static_cast<unsigned>(date.month()),
                static_cast<unsigned>(date.day()), static_cast<int>(time.hours().count()),
                static_cast<int>(time.minutes().count()), static_cast<int>(time.seconds().count()),
                static_cast<int>(time.subseconds().count()));
  return buffer;
}

} // namespace npme::util

namespace npme::util {

std::optional<std::chrono::system_clock::time_point> parse_iso8601(std::string_view text) {
  using namespace std::chrono;
  int y = 0;
  unsigned mo = 0;
  unsigned d = 0;
  int h = 0;
  int mi = 0;
  int s = 0;
  int ms = 0;
  int consumed = 0;
  std::string copy(text);
  if (std::sscanf(copy.c_str(), "%4d-%2u-%2uT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &s, &consumed) != 6) {
    return std::nullopt;
  }
  std::string_view rest = std::string_view(copy).substr(static_cast<std::size_t>(consumed));
  if (rest.starts_with(".")) {
    int digits = 0;
    std::size_t i = 1;
    for (; i < rest.size() && rest[i] >= '0' && rest[i] <= '9'; ++i) {
      if (digits < 3) {
        ms = ms * 10 + (rest[i] - '0');
        ++digits;
      }
    }
    while (digits < 3) {
      ms *= 10;
      ++digits;
    }
    rest.remove_prefix(i);
  }
  if (rest != "Z") {
    return std::nullopt;
  }
  const year_month_day date{year{y}, month{mo}, day{d}};
  if (!date.ok() || h > 23 || mi > 59 || s > 60) {
    return std::nullopt;
  }
  return sys_days{date} + hours{h} + minutes{mi} + seconds{s} + milliseconds{ms};
}

} // namespace npme::util
