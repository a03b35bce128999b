// Path safety of archive entries, and integrity matching.

#include "core/snapshot/format.hpp"

#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
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
  return util::unsafe_relative_path(rel_path, ".staging");
}

} // namespace detail

} // namespace npme::snapshot
