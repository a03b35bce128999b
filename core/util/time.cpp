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
