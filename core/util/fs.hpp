#pragma once
// File helpers: the one atomic-file-write of npme, reads, fsync.

#include "core/util/error.hpp"

#include <filesystem>
#include <string>
#include <string_view>

namespace npme::util {

namespace fs = std::filesystem;

// Writes `content` to `path` atomically: a temp file beside it, fsync, rename,
// fsync of the directory. The file gets `mode`. Parent directories must exist.
Expected<void> write_file_atomic(const fs::path& path, std::string_view content,
                                 fs::perms mode = fs::perms(0644));

// Reads the whole file at `path`.
Expected<std::string> read_file(const fs::path& path);

// Fsyncs the directory `dir` so that renames and creations in it are durable.
Expected<void> fsync_dir(const fs::path& dir);

// Creates `dir` and its parents with `mode` where missing.
Expected<void> create_dirs(const fs::path& dir, fs::perms mode = fs::perms(0755));

// Returns a unique temp file name beside `path` ("<path>.tmp.<pid>.<random>").
fs::path temp_path_beside(const fs::path& path);

} // namespace npme::util
