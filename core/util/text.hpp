#pragma once
// Small text helpers.

#include <string>
#include <string_view>
#include <vector>

namespace npme::util {

// `text` without the ASCII white space (space, tab, CR, LF, VT, FF) at its
// ends: a line read from a file, a header value, a token from the
// environment.
inline std::string_view trim(std::string_view text) {
  constexpr std::string_view k_space = " \t\r\n\v\f";
  const auto first = text.find_first_not_of(k_space);
  if (first == std::string_view::npos) {
    return {};
  }
  return text.substr(first, text.find_last_not_of(k_space) - first + 1);
}

// Splits `text` at each `separator` and returns the items with spaces
// around them (white space) removed; empty items are dropped ("a, b,,c " → a, b, c).
inline std::vector<std::string> split_list(std::string_view text, char separator = ',') {
  std::vector<std::string> items;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(separator, start);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    const std::string_view item = trim(text.substr(start, end - start));
    if (!item.empty()) {
      items.emplace_back(item);
    }
    start = end + 1;
  }
  return items;
}

} // namespace npme::util
