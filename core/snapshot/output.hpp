#pragma once
// The snapshot file while create() writes it. libarchive's output is
// gathered into large blocks that a writer thread writes while the caller
// goes on producing the next ones, starting writeback after each.
//
// The read-back check reads the file on another thread while it grows:
// read_written() hands out only bytes whose write has returned. Blocks that
// are on disk and read back leave the page cache at once: a nightly snapshot
// does not push the registry's hot tarballs out of memory, and the next
// blocks reuse those pages instead of taking fresh memory (which costs more
// than the copy itself, notably in a VM).

#include "core/snapshot/format.hpp"
#include "core/util/error.hpp"
#include "core/util/fs.hpp"

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

namespace npme::snapshot::detail {

namespace fs = std::filesystem;

class OutputFile {
public:
  // Blocks handed to the writer thread; four are in flight at most.
  static constexpr std::size_t k_block = std::size_t{4} << 20;

  // Creates `path` (which must not exist) with mode 0600 and starts the
  // writer thread.
  static Expected<std::unique_ptr<OutputFile>> create(const fs::path& path);
  // Stops the writer thread and drops the file's pages from the page cache;
  // the file stays as written.
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Appends `bytes` (from one thread). Fails once a write has failed.
  Expected<void> append(std::string_view bytes);
  // Writes what is still buffered and waits for the writer thread: then the
  // whole file is written (not yet synced). Fails with the first write error.
  Expected<void> finish();
  // Ends the file early (create() failed elsewhere): readers waiting in
  // read_written() get an error, the writer thread stops.
  void abort();
  // fsync(2) of the whole file.
  Expected<void> sync();

  // For the read-back check, on another thread: reads up to `size` bytes at
  // `offset` into `buffer`, waiting until they are written. Returns 0 at the
  // end of a finished file; fails when writing failed or was aborted.
  Expected<std::size_t> read_written(std::int64_t offset, char* buffer, std::size_t size);

  const fs::path& path() const { return m_path; }

private:
  struct Job {
    std::vector<char> buffer;
    std::size_t length = 0;
    bool last = false;
  };

  OutputFile(fs::path path, util::Fd fd, util::Fd read_fd);
  void run();
  // Writes `length` bytes of `data` at m_offset; returns errno or 0.
  int write_block(const char* data, std::size_t length);
  Expected<void> failure() const; // the recorded error, under m_mutex
  // Drops from the page cache what is on disk and read back.
  void drop_behind();
  // Queues the current block (waits for a free one).
  Expected<void> hand_over(bool last);

  fs::path m_path;
  util::Fd m_fd;
  util::Fd m_read_fd;

  std::vector<char> m_current;
  std::size_t m_fill = 0;

  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<Job> m_jobs;
  std::vector<std::vector<char>> m_free;
  std::size_t m_blocks = 0;     // allocated, at most k_max_blocks
  std::uint64_t m_offset = 0;   // written by the writer thread
  std::uint64_t m_dropped = 0;  // the writer thread's: dropped from the page cache below this
  std::atomic<std::uint64_t> m_read_offset{0}; // read back below this
  std::uint64_t m_written = 0;  // published to readers (== m_offset after each block)
  bool m_finished = false;
  bool m_stop = false;
  int m_error = 0;              // errno of the first failed write
  bool m_aborted = false;
  std::thread m_thread;
};

// Opens libarchive on the bytes of `file` as they are written (through
// read_written()): the read-back check's input. `input` holds the read
// buffers and must outlive the reader.
struct FollowInput {
  explicit FollowInput(OutputFile& output) : file(output) {}
  OutputFile& file;
  std::vector<std::vector<char>> buffers;
  std::size_t next = 0;
  std::int64_t offset = 0;
};
Expected<ArchiveReader> open_following(FollowInput& input);

} // namespace npme::snapshot::detail
