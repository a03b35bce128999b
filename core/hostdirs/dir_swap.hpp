#pragma once
// Moving new directories into place as one step: a restore replaces the
// metadata, packages and data directories, each with a rename, and a crash
// between two renames must never leave an instance that mixes the old and the
// new. The renames are written first to a journal beside the data directory
// (`<data>.restore-journal`, synced); whatever is killed midway, the next
// process that takes the instance lock (serve, restore, offline commands,
// doctor) finishes the journal's renames before it looks at the directories.
// The new directories are complete and synced before the journal exists, so
// going forward is always right.
//
// The journal (JSON): {"format":"npme-dir-swap","version":1,"dirs":[{"target":
// "/var/lib/npme/couchdb","partial":"/var/lib/npme/couchdb.restore-partial",
// "aside":"/var/lib/npme/couchdb.pre-restore-20261203T120000Z"}, ...]};
// "aside" is null for a target that held no data (it is removed).

#include "core/util/error.hpp"

#include <filesystem>
#include <vector>

namespace npme::hostdirs {

namespace fs = std::filesystem;

struct DirSwap {
  fs::path target;  // the directory being replaced (may be missing)
  fs::path partial; // its complete, synced replacement, beside it
  fs::path aside;   // where the old one goes; empty: it holds no data and is removed
};

enum class DirState { missing, empty, holds_data };

// Whether `dir` is missing, empty (or holds only what a stopped instance
// leaves that is not state: its lock, a stale runtime file, an empty staging
// directory), or holds data. Errc::precondition when it is not a directory.
Expected<DirState> dir_state(const fs::path& dir);

// The journal of the instance whose data directory is `data_dir`.
fs::path swap_journal_path(const fs::path& data_dir);

// Writes the journal for `swaps` (in order; the data directory last, so that
// an instance cannot start between), performs the renames, removes the
// journal. The caller holds the instance lock.
Expected<void> swap_dirs(const fs::path& data_dir, const std::vector<DirSwap>& swaps);

// Finishes the renames of a journal a killed process left (nothing when there
// is none). Errc::precondition while another process is performing it, or
// when a target that should have moved holds data nothing accounts for.
// Returns whether there was a journal to finish.
Expected<bool> finish_interrupted_swap(const fs::path& data_dir);

} // namespace npme::hostdirs
