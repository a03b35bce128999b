#include "core/snapshot/output.hpp"

#include <archive.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

namespace npme::snapshot::detail {

namespace {

constexpr std::size_t k_max_blocks = 4;
constexpr std::uint64_t k_page = 4096;

} // namespace

Expected<std::unique_ptr<OutputFile>> OutputFile::create(const fs::path& path) {
  const int raw = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (raw < 0) {
    return util::Unexpected<Error>{io_error("create", path, errno)};
  }
  util::Fd fd(raw);
  util::Fd read_fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!read_fd) {
    const int err = errno;
    ::unlink(path.c_str());
    return util::Unexpected<Error>{io_error("read", path, err)};
  }
  std::unique_ptr<OutputFile> file(new OutputFile(path, std::move(fd), std::move(read_fd)));
  try {
    file->m_thread = std::thread([raw_file = file.get()] { raw_file->run(); });
  } catch (const std::system_error& e) {
    ::unlink(path.c_str());
    return make_error(Errc::failed, "cannot write snapshot '" + path.string() + "': cannot start a thread: " + e.what());
  }
  return file;
}

OutputFile::OutputFile(fs::path path, util::Fd fd, util::Fd read_fd)
  : m_path(std::move(path)), m_fd(std::move(fd)), m_read_fd(std::move(read_fd)), m_current(k_block), m_blocks(1) {}

OutputFile::~OutputFile() {
  {
    std::lock_guard lock(m_mutex);
    m_stop = true;
  }
  m_cv.notify_all();
  if (m_thread.joinable()) {
    m_thread.join();
  }
  // Clean pages go; any still dirty (a failed run) stay until written back.
  ::posix_fadvise(m_fd.get(), 0, 0, POSIX_FADV_DONTNEED);
}

Expected<void> OutputFile::failure() const {
  if (m_error != 0) {
    return util::Unexpected<Error>{io_error("write snapshot", m_path, m_error)};
  }
  return make_error(Errc::failed, "snapshot '" + m_path.string() + "': writing was stopped");
}

Expected<void> OutputFile::append(std::string_view bytes) {
  while (!bytes.empty()) {
    const std::size_t n = std::min(bytes.size(), k_block - m_fill);
    std::memcpy(m_current.data() + m_fill, bytes.data(), n);
    m_fill += n;
    bytes.remove_prefix(n);
    if (m_fill == k_block) {
      NPME_TRY(hand_over(false));
    }
  }
  return {};
}

Expected<void> OutputFile::hand_over(bool last) {
  std::unique_lock lock(m_mutex);
  if (m_error != 0 || m_aborted) {
    return failure();
  }
  m_jobs.push_back(Job{std::move(m_current), m_fill, last});
  m_fill = 0;
  m_cv.notify_all();
  if (last) {
    return {};
  }
  m_cv.wait(lock, [&] { return !m_free.empty() || m_blocks < k_max_blocks || m_error != 0 || m_aborted; });
  if (m_error != 0 || m_aborted) {
    return failure();
  }
  if (!m_free.empty()) {
    m_current = std::move(m_free.back());
    m_free.pop_back();
    return {};
  }
  ++m_blocks;
  lock.unlock();
  m_current = std::vector<char>(k_block);
  return {};
}

Expected<void> OutputFile::finish() {
  NPME_TRY(hand_over(true));
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [&] { return m_finished || m_error != 0 || m_aborted; });
  if (!m_finished) {
    return failure();
  }
  return {};
}

void OutputFile::abort() {
  {
    std::lock_guard lock(m_mutex);
    m_aborted = true;
  }
  m_cv.notify_all();
}

Expected<void> OutputFile::sync() {
  if (::fsync(m_fd.get()) != 0) {
    return util::Unexpected<Error>{io_error("fsync", m_path, errno)};
  }
  return {};
}

int OutputFile::write_block(const char* data, std::size_t length) {
  while (length > 0) {
    const ssize_t n = ::pwrite(m_fd.get(), data, length, static_cast<off_t>(m_offset));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    if (n == 0) {
      return EIO;
    }
    m_offset += static_cast<std::uint64_t>(n);
    data += n;
    length -= static_cast<std::size_t>(n);
  }
  return 0;
}

void OutputFile::drop_behind() {
  // What the read-back check has read, and the disk has, leaves the page
  // cache: the registry's own pages stay, and the next blocks reuse these
  // pages instead of taking fresh memory. Two blocks stay behind the write.
  const std::uint64_t lag = 2 * k_block;
  std::uint64_t limit = std::min<std::uint64_t>(m_read_offset.load(), m_offset > lag ? m_offset - lag : 0);
  limit = limit / k_page * k_page;
  if (limit <= m_dropped) {
    return;
  }
  const auto from = static_cast<off_t>(m_dropped);
  const auto length = static_cast<off_t>(limit - m_dropped);
  ::sync_file_range(m_fd.get(), from, length,
                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
  ::posix_fadvise(m_fd.get(), from, length, POSIX_FADV_DONTNEED);
  m_dropped = limit;
}

void OutputFile::run() {
  std::unique_lock lock(m_mutex);
  while (true) {
    m_cv.wait(lock, [&] { return m_stop || !m_jobs.empty(); });
    if (m_jobs.empty()) {
      return;
    }
    Job job = std::move(m_jobs.front());
    m_jobs.pop_front();
    const bool skip = m_error != 0 || m_aborted;
    lock.unlock();
    int err = 0;
    if (!skip) {
      const std::uint64_t start = m_offset;
      err = write_block(job.buffer.data(), job.length);
      if (err == 0) {
        // Readers may go on at once; the writeback below can wait.
        {
          std::lock_guard published(m_mutex);
          m_written = m_offset;
          m_finished = job.last;
        }
        m_cv.notify_all();
      }
      if (err == 0 && m_offset > start) {
        // The disk works while we go on; the final fsync then waits less.
        ::sync_file_range(m_fd.get(), static_cast<off_t>(start), static_cast<off_t>(m_offset - start),
                          SYNC_FILE_RANGE_WRITE);
        drop_behind();
      }
    }
    lock.lock();
    if (err != 0 && m_error == 0) {
      m_error = err;
    }
    m_free.push_back(std::move(job.buffer));
    m_cv.notify_all();
  }
}

Expected<std::size_t> OutputFile::read_written(std::int64_t offset, char* buffer, std::size_t size) {
  std::unique_lock lock(m_mutex);
  const auto at = static_cast<std::uint64_t>(offset);
  m_cv.wait(lock, [&] { return m_written > at || m_finished || m_error != 0 || m_aborted; });
  if (m_error != 0 || m_aborted) {
    return util::Unexpected<Error>{failure().error()};
  }
  if (at >= m_written) {
    return std::size_t{0};
  }
  const std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(size, m_written - at));
  lock.unlock();
  while (true) {
    const ssize_t n = ::pread(m_read_fd.get(), buffer, length, static_cast<off_t>(at));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return util::Unexpected<Error>{io_error("read back", m_path, errno)};
    }
    const std::size_t got = std::min(static_cast<std::size_t>(n), length);
    m_read_offset.store(at + got);
    return got;
  }
}

namespace {

la_ssize_t follow_read(::archive* a, void* client, const void** out) {
  auto& input = *static_cast<FollowInput*>(client);
  std::vector<char>& buffer = input.buffers[input.next];
  // libarchive may still look at the block it got last: alternate two.
  input.next = (input.next + 1) % input.buffers.size();
  auto n = input.file.read_written(input.offset, buffer.data(), buffer.size());
  if (!n) {
    archive_set_error(a, EIO, "%s", n.error().message.c_str());
    return -1;
  }
  input.offset += static_cast<std::int64_t>(*n);
  *out = buffer.data();
  return static_cast<la_ssize_t>(*n);
}

} // namespace

Expected<ArchiveReader> open_following(FollowInput& input) {
  const fs::path& file = input.file.path();
  ArchiveReader reader(archive_read_new());
  if (!reader) {
    return make_error(Errc::failed, "cannot read '" + file.string() + "': out of memory");
  }
  input.buffers.clear();
  input.buffers.emplace_back(OutputFile::k_block);
  input.buffers.emplace_back(OutputFile::k_block);
  archive_read_support_filter_zstd(reader.get());
  archive_read_support_filter_gzip(reader.get());
  archive_read_support_format_tar(reader.get());
  if (archive_read_open(reader.get(), &input, nullptr, follow_read, nullptr) != ARCHIVE_OK) {
    return make_error(Errc::verify, "cannot read back snapshot '" + file.string() + "': " +
                                      archive_message(reader.get()));
  }
  return reader;
}

} // namespace npme::snapshot::detail
