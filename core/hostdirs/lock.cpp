#include "core/hostdirs/lock.hpp"

#include "core/hostdirs/dir_swap.hpp"
#include "core/util/fs.hpp"

#include <cerrno>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace npme::hostdirs {

namespace {

std::filesystem::path lock_path(const std::filesystem::path& data_dir) {
  return data_dir / "instance.lock";
}

} // namespace

Expected<Lock> Lock::acquire(const std::filesystem::path& data_dir) {
  // A restore killed while moving directories into place is finished before
  // anything looks at them (or creates the data directory anew).
  NPME_TRY(finish_interrupted_swap(data_dir));
  NPME_TRY(util::create_dirs(data_dir));
  const auto path = lock_path(data_dir);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return make_error(Errc::io, "cannot open '" + path.string() + "': " + std::strerror(errno));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    std::string holder;
    char buffer[32] = {};
    if (::pread(fd, buffer, sizeof(buffer) - 1, 0) > 0) {
      holder = std::string(buffer);
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) {
        holder.pop_back();
      }
    }
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return make_error(Errc::precondition,
                        "instance in '" + data_dir.string() + "' is running" +
                          (holder.empty() ? std::string() : " (pid " + holder + ")") + "; stop it first");
    }
    return make_error(Errc::io, "cannot lock '" + path.string() + "': " + std::strerror(err));
  }
  // The pid is informational (for messages); the flock is what excludes.
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    int err = errno;
    ::close(fd);
    return make_error(Errc::io, "cannot write '" + path.string() + "': " + std::strerror(err));
  }
  return Lock(util::Fd(fd));
}

bool is_locked(const std::filesystem::path& data_dir) {
  int fd = ::open(lock_path(data_dir).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  bool locked = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return locked;
}

} // namespace npme::hostdirs
