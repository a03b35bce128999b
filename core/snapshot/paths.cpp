// Path safety of archive entries, and integrity matching.

#include "core/snapshot/format.hpp"

#include "core/util/crypto.hpp"
#include "core/util/integrity.hpp"

namespace npme::snapshot {

namespace detail {

bool Integrity::matches(std::string_view actual) const {
  const std::size_t size = util::digest_size(algorithm);
  if (size == 0 || actual.size() != size) {
    return false;
  }
  bool found = false;
  for (std::size_t at = 0; at + size <= digest.size(); at += size) {
    found = util::constant_time_equal(std::string_view(digest).substr(at, size), actual) || found;
  }
  return found;
}

std::optional<std::string> unsafe_path_reason(std::string_view rel_path) {
  if (rel_path.empty()) {
    return "empty path";
  }
  if (rel_path.front() == '/') {
    return "absolute path";
  }
  for (char c : rel_path) {
    if (c == '\\' || c == '\0' || c == '\n' || c == '\r') {
      return "forbidden character in path";
    }
  }
  std::size_t start = 0;
  bool first = true;
  while (start <= rel_path.size()) {
    auto end = rel_path.find('/', start);
    if (end == std::string_view::npos) {
      end = rel_path.size();
    }
    const auto segment = rel_path.substr(start, end - start);
    if (segment.empty()) {
      return "empty path segment";
    }
    if (segment == "." || segment == "..") {
      return "'" + std::string(segment) + "' path segment";
    }
    if (first && segment == ".staging") {
      return "path inside the staging directory";
    }
    first = false;
    start = end + 1;
  }
  return std::nullopt;
}

} // namespace detail

} // namespace npme::snapshot
