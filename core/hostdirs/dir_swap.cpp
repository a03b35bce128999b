#include "core/hostdirs/dir_swap.hpp"

#include "core/util/fs.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <string>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::hostdirs {

namespace {

using json = nlohmann::json;
using util::io_error;

constexpr const char* k_format = "npme-dir-swap";
constexpr int k_version = 1;

// Files a stopped instance leaves that are not state.
bool ignorable(const fs::path& entry) {
  const std::string name = entry.filename().string();
  if (name == "instance.lock" || name == "runtime.json") {
    return true;
  }
  std::error_code ec;
  return name == ".staging" && fs::is_directory(entry, ec) && fs::is_empty(entry, ec);
}

bool present(const fs::path& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

fs::path parent_of(const fs::path& path) {
  const fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

std::string journal_text(const std::vector<DirSwap>& swaps) {
  json dirs = json::array();
  for (const auto& swap : swaps) {
    dirs.push_back({{"target", swap.target.string()},
                    {"partial", swap.partial.string()},
                    {"aside", swap.aside.empty() ? json(nullptr) : json(swap.aside.string())}});
  }
  return json{{"format", k_format}, {"version", k_version}, {"dirs", dirs}}.dump(2) + "\n";
}

Expected<std::vector<DirSwap>> parse_journal(const fs::path& path, const std::string& text) {
  const auto unreadable = [&](const std::string& why) {
    return make_error(Errc::io, "the journal of an interrupted restore '" + path.string() + "' is unreadable (" + why +
                                  "); check the instance's directories and their .restore-partial and "
                                  ".pre-restore-* siblings by hand, then remove the journal");
  };
  const json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return unreadable("not a JSON object");
  }
  const auto format = doc.find("format");
  const auto version = doc.find("version");
  if (format == doc.end() || *format != k_format || version == doc.end() || *version != k_version) {
    return unreadable("not format " + std::string(k_format) + " version " + std::to_string(k_version));
  }
  const auto dirs = doc.find("dirs");
  if (dirs == doc.end() || !dirs->is_array()) {
    return unreadable("no \"dirs\" array");
  }
  std::vector<DirSwap> swaps;
  for (const auto& entry : *dirs) {
    const auto target = entry.is_object() ? entry.find("target") : entry.end();
    const auto partial = entry.is_object() ? entry.find("partial") : entry.end();
    const auto aside = entry.is_object() ? entry.find("aside") : entry.end();
    if (!entry.is_object() || target == entry.end() || !target->is_string() || target->get_ref<const std::string&>().empty() ||
        partial == entry.end() || !partial->is_string() || partial->get_ref<const std::string&>().empty() ||
        aside == entry.end() || !(aside->is_null() || aside->is_string())) {
      return unreadable("an entry of \"dirs\" lacks target, partial or aside");
    }
    swaps.push_back({target->get<std::string>(), partial->get<std::string>(),
                     aside->is_null() ? fs::path() : fs::path(aside->get<std::string>())});
  }
  return swaps;
}

// Performs what is left of `swaps`. Each step looks at the directories
// first, so running it again after a crash at any point ends the same way.
Expected<void> apply(const fs::path& journal, const std::vector<DirSwap>& swaps) {
  for (const auto& swap : swaps) {
    if (!present(swap.partial)) {
      if (!present(swap.target)) {
        return make_error(Errc::io, "cannot finish the restore of journal '" + journal.string() + "': both '" +
                                      swap.target.string() + "' and its replacement '" + swap.partial.string() +
                                      "' are missing");
      }
      continue; // moved into place before
    }
    NPME_TRY_ASSIGN(const DirState state, dir_state(swap.target));
    if (state != DirState::missing) {
      if (!swap.aside.empty() && !present(swap.aside)) {
        if (::rename(swap.target.c_str(), swap.aside.c_str()) != 0) {
          return util::Unexpected<Error>{io_error("move aside", swap.target, errno)};
        }
      } else if (state == DirState::holds_data) {
        return make_error(Errc::precondition,
                          "cannot finish the restore of journal '" + journal.string() + "': '" + swap.target.string() +
                            "' holds data, yet its replacement '" + swap.partial.string() +
                            "' is not in place; move one of them away by hand, then run the command again");
      } else {
        // Empty (or made empty by a process that started since): nothing to keep.
        std::error_code ec;
        fs::remove_all(swap.target, ec);
        if (ec) {
          return make_error(Errc::io, "cannot remove '" + swap.target.string() + "': " + ec.message());
        }
      }
    }
    if (::rename(swap.partial.c_str(), swap.target.c_str()) != 0) {
      return util::Unexpected<Error>{io_error("move into place", swap.partial, errno)};
    }
    NPME_TRY(util::fsync_dir(parent_of(swap.target)));
  }
  return {};
}

Expected<void> remove_journal(const fs::path& journal) {
  if (::unlink(journal.c_str()) != 0) {
    return util::Unexpected<Error>{io_error("remove", journal, errno)};
  }
  return util::fsync_dir(parent_of(journal));
}

} // namespace

Expected<DirState> dir_state(const fs::path& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return DirState::missing;
    }
    return util::Unexpected<Error>{io_error("inspect", dir, errno)};
  }
  if (!S_ISDIR(st.st_mode)) {
    return make_error(Errc::precondition, "'" + dir.string() + "' is not a directory");
  }
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!ignorable(it->path())) {
      return DirState::holds_data;
    }
  }
  if (ec) {
    return make_error(Errc::io, "cannot list '" + dir.string() + "': " + ec.message());
  }
  return DirState::empty;
}

fs::path swap_journal_path(const fs::path& data_dir) {
  fs::path path = data_dir.lexically_normal();
  if (!path.has_filename()) {
    path = path.parent_path(); // "data/" names the same directory as "data"
  }
  path += ".restore-journal";
  return path;
}

Expected<void> swap_dirs(const fs::path& data_dir, const std::vector<DirSwap>& swaps) {
  const fs::path journal = swap_journal_path(data_dir);
  if (present(journal)) {
    return make_error(Errc::precondition, "a journal of another restore is in the way: '" + journal.string() + "'");
  }
  // A journal's temp file a kill left before its rename: it never took effect.
  const std::string temp_prefix = journal.filename().string() + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(parent_of(journal), ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind(temp_prefix, 0) == 0) {
      std::error_code remove_ec;
      fs::remove(it->path(), remove_ec);
    }
  }
  // The journal is locked before it is visible, and stays locked until it is
  // removed: a process starting meanwhile waits instead of joining in.
  NPME_TRY_ASSIGN(util::Fd held, util::write_file_atomic_locked(journal, journal_text(swaps)));
  NPME_TRY(apply(journal, swaps));
  return remove_journal(journal);
}

Expected<bool> finish_interrupted_swap(const fs::path& data_dir) {
  const fs::path journal = swap_journal_path(data_dir);
  for (int attempt = 0; attempt < 3; ++attempt) {
    util::Fd fd(::open(journal.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      if (errno == ENOENT) {
        return false;
      }
      return util::Unexpected<Error>{io_error("open", journal, errno)};
    }
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        return make_error(Errc::precondition, "a restore is moving the directories of the instance in '" +
                                                data_dir.string() + "' into place (journal '" + journal.string() +
                                                "'); run the command again when it has finished");
      }
      return util::Unexpected<Error>{io_error("lock", journal, errno)};
    }
    // Locked: but is it still the journal, or one its writer removed?
    struct stat held {};
    struct stat current {};
    if (::fstat(fd.get(), &held) != 0) {
      return util::Unexpected<Error>{io_error("inspect", journal, errno)};
    }
    if (::stat(journal.c_str(), &current) != 0 || current.st_ino != held.st_ino || current.st_dev != held.st_dev) {
      continue;
    }
    NPME_TRY_ASSIGN(const std::string text, util::read_file(journal));
    NPME_TRY_ASSIGN(const auto swaps, parse_journal(journal, text));
    NPME_TRY(apply(journal, swaps));
    NPME_TRY(remove_journal(journal));
    return true;
  }
  return make_error(Errc::precondition, "the journal '" + journal.string() + "' keeps changing; is a restore running?");
}

} // namespace npme::hostdirs
