#pragma once
// The instance lock: an exclusive flock on `<data>/instance.lock`, held by a
// running `npme serve`, checked by commands that must not run beside it.

#include "core/util/error.hpp"
#include "core/util/fs.hpp"

#include <filesystem>
#include <utility>

namespace npme::hostdirs {

class Lock {
public:
  // Takes the lock of the instance whose data directory is `data_dir`,
  // after finishing a restore that was killed while it moved directories
  // into place (instance/dir_swap.hpp). Errc::precondition when another
  // process holds it (the message names its pid).
  static Expected<Lock> acquire(const std::filesystem::path& data_dir);

private:
  explicit Lock(util::Fd fd) : m_fd(std::move(fd)) {}
  util::Fd m_fd; // closing it releases the flock
};

// True when a process holds the lock of `data_dir`.
bool is_locked(const std::filesystem::path& data_dir);

} // namespace npme::hostdirs
