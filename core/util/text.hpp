#pragma once
// Small text helpers shared by settings and their users.

#include <string>
#include <string_view>
#include <vector>

namespace npme::util {

// Splits `text` at each `separator` and returns the items with spaces
// around them removed; empty items are dropped ("a, b,,c " → a, b, c).
inline std::vector<std::string> split_list(std::string_view text, char separator = ',') {
  std::vector<std::string> items;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(separator, start);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    std::string_view item = text.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') {
      item.remove_prefix(1);
    }
    while (!item.empty() && item.back() == ' ') {
      item.remove_suffix(1);
    }
    if (!item.empty()) {
      items.emplace_back(item);
    }
    start = end + 1;
  }
  return items;
}

} // namespace npme::util
