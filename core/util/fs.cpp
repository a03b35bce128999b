#include "core/util/fs.hpp"

#include "core/util/crypto.hpp"

#include <cerrno>
#include <cstring>
#include <vector>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::util {

namespace {

std::string reason(int err) {
  return std::strerror(err);
}

// Writes all of `content`, retrying short writes and EINTR; returns 0 or errno.
int write_fully(int fd, std::string_view content) {
  const char* data = content.data();
  std::size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  return 0;
}

// Writes and fsyncs `temp`, then renames it to `path`; returns 0 or errno.
// With `locked`, the file is flocked before the rename and stays open there.
int write_and_rename(const fs::path& temp, const fs::path& path, std::string_view content, fs::perms mode,
                     Durability durability, Fd* locked = nullptr) {
  Fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.get() < 0) {
    return errno;
  }
  if (int err = write_fully(fd.get(), content); err != 0) {
    return err;
  }
  // fchmod rather than the open mode: the umask must not weaken or widen the
  // mode the caller asked for (0600 for secrets, 0644 for tarballs).
  if (::fchmod(fd.get(), static_cast<mode_t>(mode) & 07777) != 0) {
    return errno;
  }
  if (durability == Durability::durable && ::fsync(fd.get()) != 0) {
    return errno;
  }
  if (locked != nullptr && ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return errno;
  }
  if (locked == nullptr && ::close(fd.release()) != 0) {
    return errno;
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    return errno;
  }
  if (locked != nullptr) {
    *locked = std::move(fd);
  }
  return 0;
}

} // namespace

Error io_error(std::string_view verb, const fs::path& path, int err) {
  const Errc code = err == ENOSPC || err == EDQUOT ? Errc::no_space : Errc::io;
  return Error{code, "cannot " + std::string(verb) + " '" + path.string() + "': " + reason(err)};
}

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    if (m_fd >= 0) {
      ::close(m_fd);
    }
    m_fd = other.m_fd;
    other.m_fd = -1;
  }
  return *this;
}

Fd::~Fd() {
  if (m_fd >= 0) {
    ::close(m_fd);
  }
}

int Fd::release() {
  const int fd = m_fd;
  m_fd = -1;
  return fd;
}

Expected<void> Fd::close(const fs::path& path) {
  const int fd = release();
  if (fd >= 0 && ::close(fd) != 0) {
    return util::Unexpected<Error>{io_error("close", path, errno)};
  }
  return {};
}

namespace {

Expected<void> write_atomic(const fs::path& path, std::string_view content, fs::perms mode, Durability durability,
                            Fd* locked) {
  const fs::path temp = temp_path_beside(path);
  if (int err = write_and_rename(temp, path, content, mode, durability, locked); err != 0) {
    ::unlink(temp.c_str());
    return util::Unexpected<Error>{io_error("write", path, err)};
  }
  if (durability == Durability::relaxed) {
    return {};
  }
  fs::path dir = path.parent_path();
  if (dir.empty()) {
    dir = ".";
  }
  return fsync_dir(dir);
}

} // namespace

Expected<void> write_file_atomic(const fs::path& path, std::string_view content, fs::perms mode,
                                 Durability durability) {
  return write_atomic(path, content, mode, durability, nullptr);
}

Expected<Fd> write_file_atomic_locked(const fs::path& path, std::string_view content, fs::perms mode) {
  Fd locked;
  NPME_TRY(write_atomic(path, content, mode, Durability::durable, &locked));
  return locked;
}

Expected<std::string> read_file(const fs::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    Error error = io_error("read", path, err);
    if (err == ENOENT) {
      error.code = Errc::not_found;
    }
    return util::Unexpected<Error>{std::move(error)};
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return util::Unexpected<Error>{io_error("read", path, errno)};
  }
  if (S_ISDIR(st.st_mode)) {
    return util::Unexpected<Error>{io_error("read", path, EISDIR)};
  }
  std::string content;
  if (S_ISREG(st.st_mode) && st.st_size > 0) {
    content.reserve(static_cast<std::size_t>(st.st_size));
  }
  NPME_TRY(read_chunks(fd.get(), path, 1 << 16, [&](std::string_view chunk) { content.append(chunk); }));
  return content;
}

Expected<void> write_all(int fd, std::string_view content, const fs::path& path) {
  if (const int err = write_fully(fd, content); err != 0) {
    return util::Unexpected<Error>{io_error("write", path, err)};
  }
  return {};
}

Expected<void> read_chunks(int fd, const fs::path& path, std::size_t chunk_size,
                           const std::function<void(std::string_view)>& sink) {
  std::vector<char> buffer(chunk_size);
  while (true) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return util::Unexpected<Error>{io_error("read", path, errno)};
    }
    if (n == 0) {
      return {};
    }
    sink(std::string_view(buffer.data(), static_cast<std::size_t>(n)));
  }
}

Expected<void> fsync_dir(const fs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    return util::Unexpected<Error>{io_error("sync directory", dir, errno)};
  }
  if (::fsync(fd.get()) != 0) {
    return util::Unexpected<Error>{io_error("sync directory", dir, errno)};
  }
  return {};
}

Expected<void> create_dirs(const fs::path& dir, fs::perms mode) {
  if (dir.empty()) {
    return {};
  }
  fs::path current;
  for (const auto& part : dir.lexically_normal()) {
    current /= part;
    if (part.empty() || part == current.root_path()) {
      continue;
    }
    if (::mkdir(current.c_str(), static_cast<mode_t>(mode) & 07777) == 0) {
      continue;
    }
    const int err = errno;
    struct stat st {};
    if (err == EEXIST && ::stat(current.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      continue;
    }
    if (err == EEXIST) {
      return make_error(Errc::io, "cannot create directory '" + dir.string() + "': '" + current.string() +
                                    "' exists and is not a directory");
    }
    return util::Unexpected<Error>{io_error("create directory", current, err)};
  }
  return {};
}

fs::path temp_path_beside(const fs::path& path) {
  fs::path temp = path;
  temp += ".tmp." + std::to_string(::getpid()) + "." + random_token(8);
  return temp;
}

std::optional<std::string> unsafe_relative_path(std::string_view rel_path, std::string_view reserved_top) {
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
    if (first && !reserved_top.empty() && segment == reserved_top) {
      return "path inside '" + std::string(reserved_top) + "'";
    }
    first = false;
    start = end + 1;
  }
  return std::nullopt;
}

} // namespace npme::util
