#include "core/snapshot/format.hpp"

#include "core/audit/audit.hpp"
#include "core/hostdirs/dir_swap.hpp"
#include "core/hostdirs/lock.hpp"
#include "core/util/fs.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::snapshot {

namespace {

using namespace detail;

using hostdirs::DirState;

fs::path with_suffix(const fs::path& dir, std::string_view suffix) {
  fs::path path = dir;
  path += std::string(suffix);
  return path;
}

// Makes every file below `dir` durable before it is renamed into place.
Expected<void> sync_tree(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return util::Unexpected<Error>{io_error("open", dir, errno)};
  }
  Fd holder(fd);
  if (::syncfs(fd) != 0) {
    return util::Unexpected<Error>{io_error("sync", dir, errno)};
  }
  return {};
}

// Copies the audit log and its rotated files from `from` (the data
// directory being replaced) into `to` (the one restored); nothing when
// there is none.
Expected<void> carry_audit_log(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  if (!fs::is_directory(from, ec)) {
    return {};
  }
  const std::string base = audit::log_path(from).filename().string();
  for (const auto& entry : fs::directory_iterator(from, ec)) {
    const std::string name = entry.path().filename().string();
    if (name != base && !name.starts_with(base + ".")) {
      continue;
    }
    fs::copy_file(entry.path(), to / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return make_error(Errc::io, "cannot carry the audit log " + entry.path().string() + " over: " + ec.message());
    }
    fs::permissions(to / name, fs::perms::owner_read | fs::perms::owner_write, ec);
  }
  if (ec) {
    return make_error(Errc::io, "cannot read " + from.string() + ": " + ec.message());
  }
  return {};
}

void remove_tree(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

} // namespace

Expected<RestoreResult> restore(const RestoreOptions& options) {
  const auto& targets = options.targets;
  const std::vector<fs::path> dirs = {targets.metadata, targets.packages, targets.data};
  RestoreResult result;
  result.dry_run = options.dry_run == DryRun::yes;

  struct stat st {};
  if (::stat(options.file.c_str(), &st) != 0) {
    return make_error(Errc::not_found, "cannot open snapshot '" + options.file.string() + "': " + std::strerror(errno));
  }

  // The lock keeps `npme serve` (and a second restore) away until the new
  // directories are in place; a dry run changes nothing, so it only checks.
  std::optional<hostdirs::Lock> lock;
  if (result.dry_run) {
    if (hostdirs::is_locked(targets.data)) {
      return make_error(Errc::precondition,
                        "instance in '" + targets.data.string() + "' is running; stop it before restoring");
    }
  } else {
    auto acquired = hostdirs::Lock::acquire(targets.data);
    if (!acquired) {
      return util::Unexpected<Error>{acquired.error()};
    }
    lock.emplace(std::move(*acquired));
  }

  std::vector<DirState> states;
  for (const auto& dir : dirs) {
    NPME_TRY_ASSIGN(const DirState state, hostdirs::dir_state(dir));
    if (state == DirState::holds_data && options.force == Force::no) {
      return make_error(Errc::precondition, "restore target '" + dir.string() +
                                              "' is not empty; use --force to restore anyway (the old "
                                              "directories are kept aside)");
    }
    states.push_back(state);
  }
  // Where the old directories go: named by the time, and never onto the
  // leftovers of an earlier restore in the same second.
  std::string stamp = compact_utc();
  for (int n = 2;; ++n) {
    const bool taken = std::any_of(dirs.begin(), dirs.end(), [&](const fs::path& dir) {
      std::error_code ec;
      return fs::symlink_status(with_suffix(dir, ".pre-restore-" + stamp), ec).type() != fs::file_type::not_found;
    });
    if (!taken) {
      break;
    }
    stamp = compact_utc() + "-" + std::to_string(n);
  }

  if (result.dry_run) {
    NPME_TRY_ASSIGN(auto report, verify(options.file, options.progress));
    if (!report.ok()) {
      std::string text = "snapshot '" + options.file.string() + "' failed verification: ";
      for (std::size_t i = 0; i < report.problems.size() && i < 10; ++i) {
        text += (i == 0 ? "" : "; ") + report.problems[i];
      }
      return make_error(Errc::verify, text);
    }
    result.manifest = report.manifest;
    for (std::size_t i = 0; i < dirs.size(); ++i) {
      if (states[i] == DirState::holds_data) {
        result.would_keep_aside.push_back(with_suffix(dirs[i], ".pre-restore-" + stamp));
      }
    }
    if (options.as_replica == AsReplica::yes) {
      result.sequence_written = report.manifest.update_seq;
    } else if (report.manifest.sequence) {
      result.sequence_written = *report.manifest.sequence;
    }
    return result;
  }

  // Extract beside each target (same file system, so the swap is a rename).
  std::vector<fs::path> partials;
  for (const auto& dir : dirs) {
    const fs::path partial = with_suffix(dir, ".restore-partial");
    remove_tree(partial); // left by a restore killed earlier; we hold the lock
    NPME_TRY(util::create_dirs(partial.parent_path()));
    if (::mkdir(partial.c_str(), 0755) != 0) {
      return util::Unexpected<Error>{io_error("create directory", partial, errno)};
    }
    partials.push_back(partial);
  }
  struct Cleanup {
    std::vector<fs::path>* paths;
    ~Cleanup() {
      for (const auto& path : *paths) {
        remove_tree(path);
      }
    }
  } cleanup{&partials};

  // The pass's bookkeeping (see Catalog), beside the targets too.
  std::vector<fs::path> scratch{with_suffix(dirs[0], ".restore-scratch")};
  remove_tree(scratch[0]);
  if (::mkdir(scratch[0].c_str(), 0700) != 0) {
    return util::Unexpected<Error>{io_error("create directory", scratch[0], errno)};
  }
  Cleanup scratch_cleanup{&scratch};

  ReadPlan plan;
  plan.scratch_dir = scratch[0];
  plan.database_dir = partials[0];
  plan.packages_dir = partials[1];
  plan.data_dir = partials[2];
  plan.progress = options.progress;
  plan.interrupted = options.interrupted;
  auto read = read_snapshot(options.file, plan);
  if (!read && read.error().code == Errc::interrupted) {
    return make_error(Errc::interrupted, "restore of '" + options.file.string() + "' interrupted: nothing restored");
  }
  NPME_TRY_ASSIGN(auto outcome, std::move(read));
  if (!outcome.report.ok()) {
    std::string text = "snapshot '" + options.file.string() + "' failed verification, nothing restored: ";
    for (std::size_t i = 0; i < outcome.report.problems.size() && i < 10; ++i) {
      text += (i == 0 ? "" : "; ") + outcome.report.problems[i];
    }
    return make_error(Errc::verify, text);
  }
  result.manifest = outcome.report.manifest;

  const fs::path new_data = partials[2];
  if (options.as_replica == AsReplica::yes) {
    // A seeded replica continues from the primary's position at the snapshot,
    // under its own identity (kept when the old data directory had one).
    const std::string seq = std::to_string(result.manifest.update_seq) + "\n";
    NPME_TRY(util::write_file_atomic(new_data / "sequence", seq));
    result.sequence_written = result.manifest.update_seq;
    ::unlink((new_data / "instance-id").c_str());
    if (auto own_id = util::read_file(targets.data / "instance-id")) {
      NPME_TRY(util::write_file_atomic(new_data / "instance-id", *own_id));
    }
  } else if (result.manifest.sequence) {
    result.sequence_written = *result.manifest.sequence;
  }
  // The audit log is the instance's history, not the snapshot's: it goes on
  // in the restored data directory (the old one is kept aside with a copy).
  NPME_TRY(carry_audit_log(targets.data, new_data));
  for (const auto& partial : partials) {
    NPME_TRY(sync_tree(partial));
  }
  // The last moment to stop: the swap below is a few renames, never cut short.
  if (options.interrupted && options.interrupted()) {
    return make_error(Errc::interrupted, "restore of '" + options.file.string() + "' interrupted: nothing restored");
  }

  // Everything verified: swap each directory in, through a journal, so
  // that a kill between two renames is finished by the next command that
  // takes the instance lock. The data directory goes last.
  std::vector<hostdirs::DirSwap> swaps;
  for (std::size_t i = 0; i < dirs.size(); ++i) {
    const bool keep = states[i] == DirState::holds_data;
    swaps.push_back({dirs[i], partials[i], keep ? with_suffix(dirs[i], ".pre-restore-" + stamp) : fs::path()});
    if (keep) {
      result.kept_aside.push_back(swaps.back().aside);
    }
  }
  auto swapped = hostdirs::swap_dirs(targets.data, swaps);
  std::error_code ec;
  if (swapped || fs::exists(hostdirs::swap_journal_path(targets.data), ec)) {
    // Moved into place, or the journal's to finish: nothing to clean up.
    for (auto& partial : partials) {
      partial.clear();
    }
  }
  NPME_TRY(std::move(swapped));
  return result;
}

} // namespace npme::snapshot
