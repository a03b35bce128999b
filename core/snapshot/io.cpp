// The I/O of a pass: archives, writes, the hashing worker, write-back.

#include "core/snapshot/format.hpp"

#include "core/util/time.hpp"

#include <archive.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

namespace npme::snapshot {

namespace detail {

void WrittenLog::push(WrittenEntry entry) {
  {
    std::lock_guard lock(m_mutex);
    m_entries.push_back(std::move(entry));
    ++m_pushed;
  }
  m_cv.notify_all();
}

void WrittenLog::close() {
  {
    std::lock_guard lock(m_mutex);
    m_closed = true;
  }
  m_cv.notify_all();
}

std::optional<WrittenEntry> WrittenLog::next() {
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [&] { return m_closed || !m_entries.empty(); });
  if (m_entries.empty()) {
    return std::nullopt;
  }
  WrittenEntry entry = std::move(m_entries.front());
  m_entries.pop_front();
  return entry;
}

std::int64_t WrittenLog::pushed() const {
  std::lock_guard lock(m_mutex);
  return m_pushed;
}

void ArchiveReadDeleter::operator()(::archive* a) const {
  archive_read_free(a);
}

void ArchiveWriteDeleter::operator()(::archive* a) const {
  archive_write_free(a);
}

std::string archive_message(::archive* a) {
  const char* text = a != nullptr ? archive_error_string(a) : nullptr;
  return text != nullptr ? std::string(text) : std::string("unknown error");
}

Expected<ArchiveReader> open_reader(const fs::path& file) {
  ArchiveReader reader(archive_read_new());
  if (!reader) {
    return make_error(Errc::failed, "cannot read '" + file.string() + "': out of memory");
  }
  archive_read_support_filter_zstd(reader.get());
  archive_read_support_filter_gzip(reader.get());
  archive_read_support_format_tar(reader.get());
  if (archive_read_open_filename(reader.get(), file.c_str(), k_io_buffer) != ARCHIVE_OK) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
      return make_error(Errc::not_found, "cannot open snapshot '" + file.string() + "': " + std::strerror(errno));
    }
    return make_error(Errc::verify, "cannot open snapshot '" + file.string() + "': " + archive_message(reader.get()));
  }
  return reader;
}

HashWorker::HashWorker() {
  try {
    m_thread = std::thread([this] { run(); });
  } catch (const std::system_error&) {
    // No second thread: jobs run inline, slower but correct.
  }
}

HashWorker::~HashWorker() {
  if (m_thread.joinable()) {
    {
      std::lock_guard lock(m_mutex);
      m_stop = true;
    }
    m_cv.notify_all();
    m_thread.join();
  }
}

HashWorker::Ticket HashWorker::post(std::function<void()> job) {
  if (!m_thread.joinable()) {
    job();
    return ++m_posted;
  }
  Ticket ticket = 0;
  {
    std::lock_guard lock(m_mutex);
    m_jobs.push_back(std::move(job));
    ticket = ++m_posted;
  }
  m_cv.notify_all();
  return ticket;
}

HashWorker::Ticket HashWorker::post(util::Hasher& hasher, std::string_view data) {
  // Handing over costs a few microseconds: small chunks are hashed here,
  // after what is queued for the same hasher.
  constexpr std::size_t k_min_handoff = 32 * 1024;
  if (!m_thread.joinable() || data.size() < k_min_handoff) {
    wait_all();
    hasher.update(data);
    return m_posted;
  }
  return post([&hasher, data] { hasher.update(data); });
}

void HashWorker::wait(Ticket ticket) {
  if (!m_thread.joinable()) {
    return;
  }
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [this, ticket] { return m_done >= ticket; });
}

void HashWorker::wait_all() {
  if (!m_thread.joinable()) {
    return;
  }
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [this] { return m_done >= m_posted; });
}

void HashWorker::run() {
  std::unique_lock lock(m_mutex);
  while (true) {
    m_cv.wait(lock, [this] { return !m_jobs.empty() || m_stop; });
    if (m_jobs.empty()) {
      return; // stopping, and every job is done
    }
    auto job = std::move(m_jobs.front());
    m_jobs.pop_front();
    lock.unlock();
    try {
      job();
    } catch (const std::exception&) {
      // Only allocation can throw here. A job cut short leaves its hasher
      // short of bytes, so the check it feeds fails: closed, not open.
    }
    lock.lock();
    ++m_done;
    m_cv.notify_all();
  }
}

void start_writeback(int fd) {
  // Only a hint: a file system without it still gets the final fsync.
  ::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

std::string compact_utc(std::chrono::system_clock::time_point now) {
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%dT%H%M%SZ", &tm);
  return buffer;
}

} // namespace detail

} // namespace npme::snapshot
