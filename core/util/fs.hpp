#pragma once
// File helpers: the one atomic-file-write of npme, reads, fsync.

#include "core/util/error.hpp"

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace npme::util {

namespace fs = std::filesystem;

// An owned file descriptor, closed on destruction. close() reports the error
// of close(2), which on some file systems is where write-back failures show.
class Fd {
public:
  Fd() = default;
  explicit Fd(int fd) : m_fd(fd) {}
  Fd(Fd&& other) noexcept : m_fd(other.m_fd) { other.m_fd = -1; }
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return m_fd; }
  explicit operator bool() const { return m_fd >= 0; }
  // Gives up ownership: the caller closes the returned descriptor.
  int release();
  // Closes now; Errc::io naming `path` when close(2) fails.
  Expected<void> close(const fs::path& path);

private:
  int m_fd = -1;
};

// How a write reaches the disk. `durable`: on stable storage when the call
// returns. `relaxed`: atomic (readers see the old or the new content, never a
// mix) but not flushed, so a power loss may leave the old content, or an
// empty file; for files rewritten often whose loss only costs repeated work.
enum class Durability { durable, relaxed };

// Writes `content` to `path` atomically: a temp file beside it, fsync, rename,
// fsync of the directory (no fsyncs when `durability` is relaxed). The file
// gets `mode`. Parent directories must exist.
Expected<void> write_file_atomic(const fs::path& path, std::string_view content, fs::perms mode = fs::perms(0644),
                                 Durability durability = Durability::durable);

// Like write_file_atomic (durable), but the file is under an exclusive flock
// from before it becomes visible at `path`; the lock lasts as long as the
// returned descriptor (a journal that others must not act on while its
// writer works through it).
Expected<Fd> write_file_atomic_locked(const fs::path& path, std::string_view content,
                                      fs::perms mode = fs::perms(0600));

// Why `rel_path` would not name a file strictly inside the directory it is
// joined to: empty, absolute, a backslash, NUL, CR or LF, an empty, "." or
// ".." segment, or a first segment equal to `reserved_top` (when given).
// nullopt when it is safe. (Tarball paths in the store, entries of a
// snapshot archive.)
std::optional<std::string> unsafe_relative_path(std::string_view rel_path, std::string_view reserved_top = "");

// Reads the whole file at `path`.
Expected<std::string> read_file(const fs::path& path);

// Writes all of `content` to the open file `fd` (named `path` in errors),
// retrying short writes and EINTR.
Expected<void> write_all(int fd, std::string_view content, const fs::path& path);

// Reads the open file `fd` (named `path` in errors) from its offset to its
// end, `chunk_size` bytes at a time, passing each chunk to `sink`.
Expected<void> read_chunks(int fd, const fs::path& path, std::size_t chunk_size,
                           const std::function<void(std::string_view)>& sink);

// The error of a failed file system call on `path` ("cannot <verb> '<path>':
// <strerror>"): Errc::io, or Errc::no_space when the device is full (ENOSPC,
// EDQUOT). The one place that turns an errno into an Error.
Error io_error(std::string_view verb, const fs::path& path, int err);

// Fsyncs the directory `dir` so that renames and creations in it are durable.
Expected<void> fsync_dir(const fs::path& dir);

// Creates `dir` and its parents with `mode` where missing.
Expected<void> create_dirs(const fs::path& dir, fs::perms mode = fs::perms(0755));

// Returns a unique temp file name beside `path` ("<path>.tmp.<pid>.<random>").
fs::path temp_path_beside(const fs::path& path);

} // namespace npme::util
