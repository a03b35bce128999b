#include "core/replication/sequence.hpp"

#include "core/util/fs.hpp"
#include "core/util/text.hpp"

#include <algorithm>
#include <charconv>
#include <mutex>
#include <sstream>

namespace npme::replication {

namespace {

std::filesystem::path sequence_path(const std::filesystem::path& data_dir) {
  return data_dir / "sequence";
}

std::filesystem::path whitelist_path(const std::filesystem::path& data_dir) {
  return data_dir / "whitelist";
}

} // namespace

Expected<std::int64_t> read_sequence(const std::filesystem::path& data_dir) {
  auto text = util::read_file(sequence_path(data_dir));
  if (!text) {
    if (text.error().code == Errc::not_found) {
      return std::int64_t{0};
    }
    return util::Unexpected<Error>{text.error()};
  }
  auto value = util::trim(*text);
  if (value.empty()) {
    return std::int64_t{0};
  }
  std::int64_t seq = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seq);
  if (ec != std::errc() || end != value.data() + value.size() || seq < 0) {
    return make_error(Errc::invalid, "'" + sequence_path(data_dir).string() + "' must hold a sequence number, not '" +
                                       std::string(value) + "'");
  }
  return seq;
}

Expected<void> write_sequence(const std::filesystem::path& data_dir, std::int64_t seq, util::Durability durability) {
  return util::write_file_atomic(sequence_path(data_dir), std::to_string(seq) + "\n", std::filesystem::perms(0644),
                                 durability);
}

Expected<void> truncate_sequence(const std::filesystem::path& data_dir) {
  return util::write_file_atomic(sequence_path(data_dir), "");
}

Expected<std::vector<std::string>> read_whitelist(const std::filesystem::path& data_dir) {
  auto text = util::read_file(whitelist_path(data_dir));
  if (!text) {
    if (text.error().code == Errc::not_found) {
      return std::vector<std::string>{};
    }
    return util::Unexpected<Error>{text.error()};
  }
  std::vector<std::string> names;
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    auto name = util::trim(line);
    if (!name.empty() && name.front() != '#') {
      names.emplace_back(name);
    }
  }
  return names;
}

Expected<void> write_whitelist(const std::filesystem::path& data_dir, std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  std::string text;
  for (const auto& name : names) {
    text += name + "\n";
  }
  return util::write_file_atomic(whitelist_path(data_dir), text);
}

Expected<std::vector<std::string>>
update_whitelist(const std::filesystem::path& data_dir,
                 const std::function<Expected<void>(std::vector<std::string>& names)>& change) {
  // One process may change the list from several threads (the admin API,
  // the uplink's read-through): each change reads the file it rewrites.
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  NPME_TRY_ASSIGN(auto names, read_whitelist(data_dir));
  const auto before = names;
  NPME_TRY(change(names));
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  if (names != before) {
    NPME_TRY(write_whitelist(data_dir, names));
  }
  return names;
}

} // namespace npme::replication
