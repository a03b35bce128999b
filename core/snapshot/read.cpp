// The one reading pass over a snapshot, shared by verify() and restore(): a
// hostile archive must be refused the same way whether it is only checked or
// extracted, so there is exactly one place that decides what an entry may be.

#include "core/snapshot/format.hpp"
#include "core/snapshot/output.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace npme::snapshot::detail {

namespace {

constexpr std::int64_t k_max_entry_bytes = std::int64_t{1} << 40;      // 1 TiB
constexpr std::int64_t k_max_small_entry_bytes = std::int64_t{64} << 20; // manifest, sums, data files
constexpr std::size_t k_max_problems = 200;

// Why an entry that is not a regular file is refused.
std::string type_name(mode_t type) {
  switch (type) {
  case AE_IFLNK:
    return "a symbolic link";
  case AE_IFDIR:
    return "a directory";
  case AE_IFCHR:
    return "a character device";
  case AE_IFBLK:
    return "a block device";
  case AE_IFIFO:
    return "a FIFO";
  case AE_IFSOCK:
    return "a socket";
  default:
    return "not a regular file";
  }
}

// Where the bytes of the current entry go (or nowhere: fd < 0).
struct Sink {
  Fd fd;
  fs::path path;
  std::uint64_t size = 0;
};

// Extracted files stay open until this much is written after them; then
// they are on disk and leave the page cache (Reader::drop_behind).
constexpr std::uint64_t k_behind_bytes = std::uint64_t{32} << 20;
constexpr std::size_t k_behind_files = 64;
// Smaller files are not worth a wait for their writeback (see stream()).
constexpr std::uint64_t k_behind_min_bytes = 256 * 1024;
constexpr std::size_t k_ring_slots = 4;

class Reader {
public:
  Reader(const fs::path& file, const ReadPlan& plan) : m_file(file), m_plan(plan) {}

  // Errc::interrupted once the plan's caller asked to stop.
  Expected<void> check_interrupted() const {
    if (m_plan.interrupted && m_plan.interrupted()) {
      return make_error(Errc::interrupted, "reading snapshot '" + m_file.string() + "' interrupted");
    }
    return {};
  }

  Expected<ReadOutcome> run();

private:
  // Records a problem that does not stop the pass.
  void problem(std::string text) {
    if (m_out.report.problems.size() < k_max_problems) {
      m_out.report.problems.push_back(std::move(text));
    } else {
      ++m_dropped;
    }
  }
  // Records a problem that ends the pass (nothing after it can be trusted).
  void fatal(std::string text) {
    problem(std::move(text));
    m_fatal = true;
  }

  Expected<void> entry(::archive_entry* entry);
  Expected<Sink> open_sink(const fs::path& dir, const std::string& rel, mode_t mode, std::int64_t size);
  // open_sink() into `sink`; false (after recording a fatal problem) when
  // the entry cannot be extracted safely (Errc::verify).
  Expected<bool> open_entry_sink(const fs::path& dir, const std::string& rel, mode_t mode, std::int64_t size,
                                 Sink& sink);
  // Streams the current entry's data to `sink`, hashing it; returns false
  // (after recording a fatal problem) when the archive is broken.
  // With `stored` (a tarball the store recorded), the bytes' tag is taken
  // instead of their SHA-256: when it matches, the entry's SHA-256 is the
  // recorded one and m_tag_matched is set; otherwise its digest is left
  // empty for check_file() to fill in.
  // `consume` gets the entry's bytes too (small entries, SHA256SUMS).
  using Consumer = std::function<Expected<void>(std::string_view)>;
  Expected<bool> stream(const std::string& name, std::int64_t size, Sink& sink, util::Hasher* integrity,
                        const Consumer& consume, const store::FileDigest* stored = nullptr);
  Expected<void> finish();
  // Hands the extracted files written before the last k_behind_bytes (all
  // with `all`, then waits) to the worker, which waits until they are on
  // disk, drops their pages from the page cache and closes them: the next
  // files reuse those pages instead of taking fresh memory, which costs more
  // than the copy itself (notably in a VM).
  Expected<void> drop_behind(bool all);
  // Queues on the worker the check of the extracted file `path` against
  // `integrity`; `mismatch` is the problem to report when it fails. With
  // `digest_of`, the file's SHA-256 becomes the digest of that entry.
  void check_file(const fs::path& path, const Integrity& integrity, const std::string& mismatch,
                  std::optional<std::string> digest_of = std::nullopt);
  // The read-back check: entry `name` (nullopt: the end) is the next one written.
  void check_written(const std::optional<WrittenEntry>& read);

  fs::path m_file;
  const ReadPlan& m_plan;
  ReadOutcome m_out;
  std::unique_ptr<FollowInput> m_follow; // the input of m_archive when following a write
  ArchiveReader m_archive;
  std::unique_ptr<Catalog> m_catalog; // tarballs, entries and SHA256SUMS met
  bool m_database_read = false;
  bool m_sums_read = false;
  std::int64_t m_sums_listed = 0;
  std::int64_t m_entries_read = 0; // read-back: entries compared with the log
  std::uint64_t m_total = 0;
  std::size_t m_dropped = 0;
  bool m_fatal = false;
  // Used by the worker's jobs: declared before m_worker, whose destructor
  // waits for them.
  std::vector<char> m_check_buffer;
  std::mutex m_check_mutex;
  std::vector<std::string> m_check_problems;
  std::vector<std::pair<std::string, std::string>> m_late_digests; // check_file()'s SHA-256s
  std::vector<Error> m_close_errors;                               // drop_behind()'s
  bool m_tag_matched = false;
  std::deque<Sink> m_behind;
  std::uint64_t m_behind_bytes = 0;
  // stream()'s buffers; the worker reads them (and the last job reading
  // each is m_ring_tickets[i]).
  std::vector<std::vector<char>> m_ring;
  std::vector<HashWorker::Ticket> m_ring_tickets;
  HashWorker m_worker;
};

Expected<Sink> Reader::open_sink(const fs::path& dir, const std::string& rel, mode_t mode, std::int64_t size) {
  Sink sink;
  sink.path = dir / rel;
  // A claimed size beyond the free space is refused before a byte is written.
  struct statvfs vfs {};
  if (::statvfs(dir.c_str(), &vfs) == 0) {
    const auto avail = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (static_cast<std::uint64_t>(size) > avail) {
      return make_error(Errc::verify, "entry '" + rel + "' claims " + std::to_string(size) +
                                        " bytes, more than the free space of '" + dir.string() + "'");
    }
  }
  // Parents are made one segment at a time below `dir`, which we created
  // empty: every segment was checked, so nothing can point outside.
  fs::path current = dir;
  std::size_t start = 0;
  while (true) {
    const auto slash = rel.find('/', start);
    if (slash == std::string::npos) {
      break;
    }
    current /= rel.substr(start, slash - start);
    if (::mkdir(current.c_str(), 0755) != 0 && errno != EEXIST) {
      return util::Unexpected<Error>{io_error("create directory", current, errno)};
    }
    struct stat st {};
    if (::lstat(current.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return make_error(Errc::verify, "entry '" + rel + "' conflicts with another entry");
    }
    start = slash + 1;
  }
  const int fd = ::open(sink.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST || errno == EISDIR) {
      return make_error(Errc::verify, "entry '" + rel + "' conflicts with another entry");
    }
    return util::Unexpected<Error>{io_error("create", sink.path, errno)};
  }
  sink.fd = Fd(fd);
  return sink;
}

Expected<bool> Reader::open_entry_sink(const fs::path& dir, const std::string& rel, mode_t mode, std::int64_t size,
                                       Sink& sink) {
  auto opened = open_sink(dir, rel, mode, size);
  if (!opened) {
    if (opened.error().code == Errc::verify) {
      fatal(opened.error().message);
      return false;
    }
    return util::Unexpected<Error>{opened.error()};
  }
  sink = std::move(*opened);
  return true;
}

Expected<bool> Reader::stream(const std::string& name, std::int64_t size, Sink& sink, util::Hasher* integrity,
                              const Consumer& consume, const store::FileDigest* stored) {
  // The read-back check of create() compares checksums instead (ReadPlan);
  // a recorded tarball is checked by its tag.
  const bool read_back = m_plan.written != nullptr;
  util::Hasher sha256(util::Hasher::Algorithm::sha256);
  std::optional<Checksum> checksum;
  if (read_back || stored != nullptr) {
    checksum.emplace();
  }
  if (stored != nullptr) {
    store::start_file_tag(*checksum, stored->sha256);
  }
  // libarchive hands out blocks of some 128 KiB, and reuses each on the
  // next call. They are gathered into a ring of larger buffers: the worker
  // hashes one while this thread decompresses (and writes) the next, and a
  // handover costs little against 1 MiB of hashing.
  if (!checksum && m_ring.empty()) {
    m_ring.assign(k_ring_slots, std::vector<char>(k_io_buffer));
    m_ring_tickets.assign(k_ring_slots, 0);
  }
  // The worker's jobs use the hashers above: all must be done on return.
  struct WaitAll {
    HashWorker& worker;
    ~WaitAll() { worker.wait_all(); }
  } wait_all{m_worker};
  std::size_t slot = 0;
  std::size_t fill = 0;
  const auto hand_over = [&]() -> Expected<void> {
    if (fill == 0) {
      return {};
    }
    const std::string_view chunk(m_ring[slot].data(), fill);
    // The slower hash on the worker: the integrity's (verify), else the
    // SHA-256, while this thread takes the other one or writes.
    if (integrity != nullptr) {
      m_ring_tickets[slot] = m_worker.post(*integrity, chunk);
      sha256.update(chunk);
    } else {
      m_ring_tickets[slot] = m_worker.post(sha256, chunk);
    }
    fill = 0;
    slot = (slot + 1) % m_ring.size();
    if (sink.fd) {
      NPME_TRY(util::write_all(sink.fd.get(), chunk, sink.path));
    }
    return {};
  };
  std::int64_t done = 0;
  while (true) {
    const void* buffer = nullptr;
    std::size_t length = 0;
    la_int64_t offset = 0;
    const int r = archive_read_data_block(m_archive.get(), &buffer, &length, &offset);
    if (r == ARCHIVE_EOF) {
      break;
    }
    if (r < ARCHIVE_WARN) {
      fatal("entry '" + name + "': truncated or corrupt archive: " + archive_message(m_archive.get()));
      return false;
    }
    if (offset != done) {
      fatal("entry '" + name + "': sparse entries are not part of a snapshot");
      return false;
    }
    std::string_view data(static_cast<const char*>(buffer), length);
    done += static_cast<std::int64_t>(length);
    if (done > size) {
      fatal("entry '" + name + "': more data than its header claims");
      return false;
    }
    if (consume) {
      if (auto consumed = consume(data); !consumed) {
        if (consumed.error().code != Errc::verify) {
          return util::Unexpected<Error>{consumed.error()};
        }
        fatal(consumed.error().message);
        return false;
      }
    }
    if (checksum) {
      // XXH3 at memory speed: no handover to the worker.
      checksum->update(data);
      if (sink.fd) {
        NPME_TRY(util::write_all(sink.fd.get(), data, sink.path));
      }
      data = {};
    }
    while (!data.empty()) {
      if (fill == 0) {
        // Reuse a buffer only once the worker is done with it.
        m_worker.wait(m_ring_tickets[slot]);
      }
      const std::size_t n = std::min(data.size(), m_ring[slot].size() - fill);
      std::memcpy(m_ring[slot].data() + fill, data.data(), n);
      fill += n;
      data.remove_prefix(n);
      if (fill == m_ring[slot].size()) {
        NPME_TRY(hand_over());
      }
    }
    m_out.report.bytes += length;
    if (m_plan.progress) {
      m_plan.progress(static_cast<std::uint64_t>(archive_filter_bytes(m_archive.get(), -1)), m_total);
    }
    NPME_TRY(check_interrupted());
  }
  NPME_TRY(hand_over());
  m_worker.wait_all();
  if (done != size) {
    fatal("entry '" + name + "': truncated (" + std::to_string(done) + " of " + std::to_string(size) + " bytes)");
    return false;
  }
  if (sink.fd && static_cast<std::uint64_t>(size) < k_behind_min_bytes) {
    // Small files go to disk with the final sync: waiting for each would
    // cost a round trip to the disk per file.
    NPME_TRY(sink.fd.close(sink.path));
  } else if (sink.fd) {
    // Start the disk on this file now; restore's final sync waits less.
    start_writeback(sink.fd.get());
    sink.size = static_cast<std::uint64_t>(size);
    m_behind_bytes += sink.size;
    m_behind.push_back(std::move(sink));
    NPME_TRY(drop_behind(false));
  }
  if (read_back) {
    check_written(WrittenEntry{name, size, checksum->value()});
  } else if (stored != nullptr) {
    m_tag_matched = checksum->value() == stored->tag;
    if (m_tag_matched) {
      NPME_TRY(m_catalog->set_digest(name, stored->sha256));
    }
  } else if (name != k_sums_entry) {
    // SHA256SUMS does not list itself.
    NPME_TRY(m_catalog->set_digest(name, sha256.finish()));
  }
  return true;
}

Expected<void> Reader::drop_behind(bool all) {
  while (!m_behind.empty() && (all || m_behind_bytes > k_behind_bytes || m_behind.size() > k_behind_files)) {
    auto oldest = std::make_shared<Sink>(std::move(m_behind.front()));
    m_behind_bytes -= oldest->size;
    m_behind.pop_front();
    // The worker waits for the disk, this thread goes on extracting. Jobs
    // run in order: a check of this file queued before runs first.
    m_worker.post([this, oldest] {
      ::sync_file_range(oldest->fd.get(), 0, 0,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      ::posix_fadvise(oldest->fd.get(), 0, 0, POSIX_FADV_DONTNEED);
      auto closed = oldest->fd.close(oldest->path);
      if (!closed) {
        std::lock_guard lock(m_check_mutex);
        m_close_errors.push_back(std::move(closed).error());
      }
    });
  }
  if (all) {
    m_worker.wait_all();
    std::lock_guard lock(m_check_mutex);
    if (!m_close_errors.empty()) {
      return util::Unexpected<Error>{m_close_errors.front()};
    }
  }
  return {};
}

Expected<void> Reader::entry(::archive_entry* entry) {
  const char* raw_name = archive_entry_pathname(entry);
  const std::string name = raw_name != nullptr ? raw_name : "";
  const auto index = m_out.report.entries++;
  if (archive_entry_hardlink(entry) != nullptr) {
    fatal("entry '" + name + "' is a hard link");
    return {};
  }
  if (archive_entry_filetype(entry) != AE_IFREG) {
    fatal("entry '" + name + "' is " + type_name(archive_entry_filetype(entry)));
    return {};
  }
  if (auto reason = unsafe_path_reason(name)) {
    fatal("entry '" + name + "': " + *reason);
    return {};
  }
  if (!archive_entry_size_is_set(entry) || archive_entry_size(entry) < 0 ||
      archive_entry_size(entry) > k_max_entry_bytes) {
    fatal("entry '" + name + "' claims an impossible size (" + std::to_string(archive_entry_size(entry)) + " bytes)");
    return {};
  }
  const std::int64_t size = archive_entry_size(entry);
  // The read-back check compares every entry with the log of what was
  // written, which names each once: it keeps no catalog.
  const bool read_back = m_plan.written != nullptr;
  bool first_time = true;
  if (!read_back) {
    NPME_TRY_ASSIGN(first_time, m_catalog->add_entry(name));
  }
  if (!first_time) {
    fatal("entry '" + name + "' appears twice");
    return {};
  }
  if (m_sums_read) {
    fatal("entry '" + name + "' follows SHA256SUMS, which must be last");
    return {};
  }
  Sink none;
  if (index == 0) {
    if (name != k_manifest_entry) {
      fatal("not an npme snapshot: the first entry is '" + name + "', not snapshot.json");
      return {};
    }
  }
  const bool small = name == k_manifest_entry || name.rfind(k_data_prefix, 0) == 0;
  if (small && size > k_max_small_entry_bytes) {
    fatal("entry '" + name + "' claims " + std::to_string(size) + " bytes, too large for its kind");
    return {};
  }

  std::string text;
  const Consumer keep = [&text](std::string_view data) -> Expected<void> {
    text.append(data);
    return {};
  };
  if (name == k_manifest_entry) {
    NPME_TRY_ASSIGN(const bool ok, stream(name, size, none, nullptr, keep));
    if (!ok) {
      return {};
    }
    auto manifest = Manifest::from_json(text);
    if (!manifest) {
      fatal(manifest.error().message);
      return {};
    }
    m_out.report.manifest = std::move(*manifest);
    m_out.manifest_read = true;
    return {};
  }
  if (name == k_sums_entry) {
    // Parsed as it streams: it has a line per entry, however many.
    SumsParser parser(read_back ? nullptr : m_catalog.get());
    const Consumer parse = [&parser](std::string_view data) { return parser.feed(data); };
    NPME_TRY_ASSIGN(const bool ok, stream(name, size, none, nullptr, parse));
    if (ok) {
      if (auto finished = parser.finish(); !finished) {
        problem(finished.error().message);
      }
      m_sums_read = true;
      m_sums_listed = parser.lines();
    }
    return {};
  }
  if (name == k_database_entry) {
    Sink sink;
    NPME_TRY_ASSIGN(const bool opened, open_entry_sink(m_plan.database_dir, std::string(k_database_file), 0600, size,
                                                       sink));
    if (!opened) {
      return {};
    }
    NPME_TRY_ASSIGN(const bool ok, stream(name, size, sink, nullptr, nullptr));
    if (!ok) {
      return {};
    }
    const fs::path db_file = m_plan.database_dir / k_database_file;
    auto complaints = check_database(db_file);
    if (!complaints) {
      fatal("database: " + complaints.error().message);
      return {};
    }
    for (auto& complaint : *complaints) {
      problem("database integrity: " + complaint);
    }
    if (!complaints->empty()) {
      m_fatal = true;
      return {};
    }
    if (read_back) {
      // create() wrote the tarballs from its own catalog of these bytes.
      m_database_read = true;
      return {};
    }
    auto loaded = m_catalog->load(db_file);
    if (!loaded) {
      fatal("database: " + loaded.error().message);
      return {};
    }
    for (auto& complaint : m_catalog->problems) {
      problem("database: " + complaint);
    }
    m_database_read = true;
    return {};
  }
  if (name.rfind(k_packages_prefix, 0) == 0) {
    const std::string rel = name.substr(k_packages_prefix.size());
    if (!m_database_read) {
      fatal("entry '" + name + "' comes before the database");
      return {};
    }
    ++m_out.report.tarballs;
    std::optional<TarballRef> ref;
    if (!read_back) {
      NPME_TRY_ASSIGN(ref, m_catalog->find(rel));
      if (ref) {
        NPME_TRY(m_catalog->mark_seen(rel));
      }
    }
    std::optional<util::Hasher> integrity;
    bool check_extracted = false;
    if (!ref && !read_back) {
      problem("tarball '" + rel + "' belongs to no version in the database");
    } else if (!read_back && ref->integrity) {
      // Extracting: the worker checks the file once written, and this
      // thread goes on at once. Only checking: hashed block by block.
      if (m_plan.packages_dir) {
        check_extracted = true;
      } else {
        integrity.emplace(ref->integrity->algorithm);
      }
    }
    Sink sink;
    if (m_plan.packages_dir) {
      NPME_TRY_ASSIGN(const bool opened, open_entry_sink(*m_plan.packages_dir, rel, 0644, size, sink));
      if (!opened) {
        return {};
      }
    }
    const fs::path extracted = sink.path;
    // Extracting a tarball the store recorded: its tag shows it holds the
    // bytes that were committed after their check against dist.integrity,
    // with the recorded SHA-256 (store::file_tag); no hashing beyond XXH3.
    // `verify` hashes everything.
    const store::FileDigest* stored = check_extracted && ref->stored ? &*ref->stored : nullptr;
    NPME_TRY_ASSIGN(const bool ok, stream(name, size, sink, integrity ? &*integrity : nullptr, {}, stored));
    if (ok && (integrity || check_extracted)) {
      // Both are set only for a version with an integrity (`ref` is set).
      const Integrity& expected = *ref->integrity;
      std::string mismatch = "tarball '" + rel + "' of " + ref->package + "@" + ref->version +
                             " does not match its dist.integrity " + expected.text;
      if (check_extracted) {
        if (stored == nullptr) {
          check_file(extracted, expected, mismatch);
        } else if (!m_tag_matched) {
          // Damaged in the snapshot (or its record is): the file is hashed.
          check_file(extracted, expected, mismatch, name);
        }
      } else if (!expected.matches(integrity->finish())) {
        problem(std::move(mismatch));
      }
    }
    return {};
  }
  if (name.rfind(k_data_prefix, 0) == 0) {
    const std::string file = name.substr(k_data_prefix.size());
    if (std::find(k_data_files.begin(), k_data_files.end(), file) == k_data_files.end()) {
      fatal("entry '" + name + "' is not a data file of a snapshot");
      return {};
    }
    Sink sink;
    if (m_plan.data_dir) {
      NPME_TRY_ASSIGN(const bool opened, open_entry_sink(*m_plan.data_dir, file, 0644, size, sink));
      if (!opened) {
        return {};
      }
    }
    NPME_TRY_ASSIGN(const bool ok, stream(name, size, sink, nullptr, keep));
    if (ok) {
      m_out.data_files[file] = std::move(text);
    }
    return {};
  }
  fatal("entry '" + name + "' is not part of a snapshot");
  return {};
}

void Reader::check_file(const fs::path& path, const Integrity& integrity, const std::string& mismatch,
                        std::optional<std::string> digest_of) {
  m_worker.post([this, path, integrity, mismatch, digest_of] {
    // Fails closed: the problem is recorded first and cleared once the file
    // is known to match, so a job cut short still reports it.
    {
      std::lock_guard lock(m_check_mutex);
      m_check_problems.push_back(mismatch);
    }
    std::string failure;
    const int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (raw < 0) {
      failure = io_error("read back", path, errno).message;
    } else {
      Fd fd(raw);
      m_check_buffer.resize(k_io_buffer);
      util::Hasher hasher(integrity.algorithm);
      util::Hasher sha256(util::Hasher::Algorithm::sha256);
      while (true) {
        const ssize_t n = ::read(fd.get(), m_check_buffer.data(), m_check_buffer.size());
        if (n < 0 && errno == EINTR) {
          continue;
        }
        if (n < 0) {
          failure = io_error("read back", path, errno).message;
          break;
        }
        if (n == 0) {
          if (!integrity.matches(hasher.finish())) {
            failure = mismatch;
          }
          if (digest_of) {
            std::lock_guard lock(m_check_mutex);
            m_late_digests.emplace_back(*digest_of, sha256.finish());
          }
          break;
        }
        const std::string_view chunk(m_check_buffer.data(), static_cast<std::size_t>(n));
        hasher.update(chunk);
        if (digest_of) {
          sha256.update(chunk);
        }
      }
    }
    std::lock_guard lock(m_check_mutex);
    if (failure.empty()) {
      m_check_problems.pop_back();
    } else {
      m_check_problems.back() = std::move(failure);
    }
  });
}

void Reader::check_written(const std::optional<WrittenEntry>& read) {
  WrittenLog& log = *m_plan.written;
  if (!read) {
    // The end: nothing may be left over.
    if (auto extra = log.next()) {
      problem("entry '" + extra->name + "' was written but does not read back");
    }
    const std::int64_t listed = m_sums_listed;
    if (listed + 1 != log.pushed()) {
      problem("SHA256SUMS lists " + std::to_string(listed) + " entries, " + std::to_string(log.pushed() - 1) +
              " were written");
    }
    return;
  }
  ++m_entries_read;
  const auto written = log.next();
  if (!written) {
    problem("entry " + std::to_string(m_entries_read) + " ('" + read->name + "') reads back but was not written");
  } else if (written->name != read->name) {
    problem("entry " + std::to_string(m_entries_read) + " reads back as '" + read->name + "', '" + written->name +
            "' was written");
  } else if (written->size != read->size || written->checksum != read->checksum) {
    problem("entry '" + written->name + "' does not read back as written");
  }
}

Expected<void> Reader::finish() {
  if (!m_out.manifest_read) {
    fatal("not an npme snapshot: snapshot.json is missing");
    return {};
  }
  const auto report = [this](std::string text) { problem(std::move(text)); };
  if (!m_sums_read) {
    problem("SHA256SUMS is missing: the snapshot is incomplete");
  } else if (m_plan.written != nullptr) {
    check_written(std::nullopt);
    return {};
  } else {
    NPME_TRY(m_catalog->compare_sums(report));
  }
  if (!m_database_read) {
    problem("the metadata database is missing");
    return {};
  }
  // A version cached from an uplink may lack its tarball (create() carries
  // only those the store had fetched); any other must have it.
  NPME_TRY(m_catalog->for_each(
    [this](const std::string& rel, const TarballRef& ref) -> Expected<void> {
      problem("version " + ref.package + "@" + ref.version + " has no tarball ('" + rel + "')");
      return {};
    },
    Walk::unseen_required));
  const auto& manifest = m_out.report.manifest;
  if (manifest.update_seq != m_catalog->update_seq) {
    problem("snapshot.json says update_seq " + std::to_string(manifest.update_seq) + ", the database " +
            std::to_string(m_catalog->update_seq));
  }
  if (manifest.tarballs != m_out.report.tarballs) {
    problem("snapshot.json counts " + std::to_string(manifest.tarballs) + " tarballs, the archive holds " +
            std::to_string(m_out.report.tarballs));
  }
  return {};
}

Expected<ReadOutcome> Reader::run() {
  NPME_TRY_ASSIGN(m_catalog, Catalog::create(m_plan.scratch_dir / "catalog.sqlite"));
  Expected<ArchiveReader> reader = util::Unexpected<Error>{Error{Errc::failed, ""}};
  if (m_plan.follow != nullptr) {
    // The file is still being written: no size to stat, no progress.
    m_follow = std::make_unique<FollowInput>(*m_plan.follow);
    reader = open_following(*m_follow);
  } else {
    struct stat st {};
    if (::stat(m_file.c_str(), &st) != 0) {
      return make_error(Errc::not_found, "cannot open snapshot '" + m_file.string() + "': " + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
      return make_error(Errc::verify, "cannot read snapshot '" + m_file.string() + "': not a regular file");
    }
    m_total = static_cast<std::uint64_t>(st.st_size);
    reader = open_reader(m_file);
  }
  if (!reader) {
    if (reader.error().code == Errc::verify) {
      fatal("not an npme snapshot: " + reader.error().message);
      return std::move(m_out);
    }
    return util::Unexpected<Error>{reader.error()};
  }
  m_archive = std::move(*reader);
  while (!m_fatal) {
    ::archive_entry* header = nullptr;
    const int r = archive_read_next_header(m_archive.get(), &header);
    if (r == ARCHIVE_EOF) {
      if (m_out.report.entries == 0) {
        fatal("not an npme snapshot: the archive is empty");
      }
      break;
    }
    if (r < ARCHIVE_WARN) {
      fatal(std::string(m_out.report.entries == 0 ? "not an npme snapshot: " : "truncated or corrupt archive: ") +
            archive_message(m_archive.get()));
      break;
    }
    NPME_TRY(check_interrupted());
    NPME_TRY(entry(header));
  }
  NPME_TRY(drop_behind(true));
  // The checks of extracted tarballs still queued on the worker.
  m_worker.wait_all();
  for (auto& text : m_check_problems) {
    problem(std::move(text));
  }
  for (auto& [name, digest] : m_late_digests) {
    NPME_TRY(m_catalog->set_digest(name, digest));
  }
  if (!m_fatal) {
    NPME_TRY(finish());
  }
  if (m_dropped > 0) {
    m_out.report.problems.push_back("... and " + std::to_string(m_dropped) + " more problems");
  }
  return std::move(m_out);
}

} // namespace

Expected<ReadOutcome> read_snapshot(const fs::path& file, const ReadPlan& plan) {
  Reader reader(file, plan);
  return reader.run();
}

} // namespace npme::snapshot::detail
