#include "core/snapshot/format.hpp"
#include "core/snapshot/output.hpp"

#include "core/hostdirs/lock.hpp"
#include "core/util/fs.hpp"
#include "core/util/time.hpp"
#include "core/util/text.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::snapshot {

namespace {

using namespace detail;

constexpr int k_max_attempts = 8;
constexpr const char* k_staging_dir = ".staging";
constexpr const char* k_link_dir_prefix = "snapshot-";
constexpr std::size_t k_ring_slots = 4; // read buffers of k_io_buffer bytes

// Removes a directory tree when it goes out of scope.
class TempTree {
public:
  explicit TempTree(fs::path path) : m_path(std::move(path)) {}
  TempTree(const TempTree&) = delete;
  TempTree& operator=(const TempTree&) = delete;
  ~TempTree() { remove(); }
  const fs::path& path() const { return m_path; }
  void remove() {
    if (!m_path.empty()) {
      std::error_code ec;
      fs::remove_all(m_path, ec);
    }
  }

private:
  fs::path m_path;
};

// Ends create() with Errc::interrupted once its caller asks it to stop
// (CreateOptions::interrupted); checked between steps and between chunks.
struct StopCheck {
  const std::function<bool()>& interrupted;
  std::string message;
  Expected<void> operator()() const {
    if (interrupted && interrupted()) {
      return make_error(Errc::interrupted, message);
    }
    return {};
  }
};

constexpr std::string_view k_work_suffix = ".part-work";

// The work directory of a create() is flocked for as long as that run
// lives: one that nobody holds was left by a run that was killed. Those in
// `dir` are removed whatever their snapshot's name (a default name carries
// the time, so no later run has the same one).
void remove_stale_work_dirs(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.ends_with(k_work_suffix) || !it->is_directory(ec)) {
      continue;
    }
    Fd held(::open(it->path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (held && ::flock(held.get(), LOCK_EX | LOCK_NB) == 0) {
      std::error_code remove_ec;
      fs::remove_all(it->path(), remove_ec);
    }
  }
}

// Creates the work directory `path` and returns it flocked (see
// remove_stale_work_dirs()). Errc::conflict when a live run holds it.
Expected<Fd> make_work_dir(const fs::path& path) {
  const auto in_use = [&path] {
    return make_error(Errc::conflict,
                      "cannot write snapshot: '" + path.string() + "' is in use by another 'npme snapshot create'");
  };
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (::mkdir(path.c_str(), 0700) != 0) {
      if (errno != EEXIST) {
        return util::Unexpected<Error>{io_error("create directory", path, errno)};
      }
      // A live run holds it, or one that died left it: then it goes.
      Fd other(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (other && ::flock(other.get(), LOCK_EX | LOCK_NB) != 0) {
        return in_use();
      }
      std::error_code ec;
      fs::remove_all(path, ec);
      continue;
    }
    Fd held(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!held || ::flock(held.get(), LOCK_EX | LOCK_NB) != 0) {
      continue; // another run's sweep got to it first and removes it
    }
    struct stat st {};
    if (::fstat(held.get(), &st) == 0 && st.st_nlink > 0) {
      return held;
    }
    // Removed by that sweep between our mkdir and our lock: make it again.
  }
  return in_use();
}

// Reads a small file; nullopt when it does not exist.
Expected<std::optional<std::string>> read_optional(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return std::optional<std::string>{};
    }
    return util::Unexpected<Error>{io_error("read", path, errno)};
  }
  NPME_TRY_ASSIGN(auto text, util::read_file(path));
  return std::optional<std::string>{std::move(text)};
}

std::optional<std::int64_t> parse_sequence(const std::optional<std::string>& text) {
  if (!text) {
    return std::nullopt;
  }
  std::string_view value(*text);
  while (!value.empty() && (value.back() == '\n' || value.back() == ' ' || value.back() == '\r')) {
    value.remove_suffix(1);
  }
  std::int64_t seq = 0;
  const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), seq);
  if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() || seq < 0) {
    return std::nullopt;
  }
  return seq;
}

// Link directories of snapshots whose process died (kill -9) are garbage;
// the instance also clears them from .staging when it starts.
void remove_stale_link_dirs(const fs::path& staging) {
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(k_link_dir_prefix, 0) != 0) {
      continue;
    }
    const auto rest = name.substr(std::strlen(k_link_dir_prefix));
    long pid = 0;
    const auto [ptr, pec] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
    if (pec != std::errc() || *ptr != '-' || pid <= 0) {
      continue;
    }
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::error_code remove_ec;
      fs::remove_all(it->path(), remove_ec);
    }
  }
}

// Link i is <dir>/<i / k_links_per_dir>/<i>: directories of a thousand
// entries, as one with a hundred thousand makes each new link slow on file
// systems without hashed directories.
constexpr std::int64_t k_links_per_dir = 1024;

fs::path link_path(const fs::path& dir, std::int64_t index) {
  return dir / std::to_string(index / k_links_per_dir) / std::to_string(index);
}

// The database copy, its catalog and the hard links that pin every tarball
// it carries: link i is the i-th tarball of the catalog in path order. The
// catalog no longer lists the optional tarballs the store lacks.
struct Secured {
  std::unique_ptr<Catalog> catalog;
  std::optional<std::string> sequence_text;
  std::int64_t tarball_bytes = 0;
  std::unique_ptr<TempTree> links;
  int attempts = 0;
};

// Takes the sequence, then the database backup, then links every tarball the
// backup refers to. A tarball may be deleted between the backup and its link
// (an unpublish committed meanwhile): then the whole step is repeated with a
// fresh backup, in which that version is gone too. An optional tarball (of a
// document cached from an uplink, fetched on first download) that has no
// file is left out instead: the snapshot carries what the store holds.
Expected<Secured> secure(const store::Paths& paths, const fs::path& work, const StopCheck& stop) {
  const fs::path source = paths.metadata / k_database_file;
  const fs::path db_copy = work / k_database_file;
  const fs::path scratch = work / "catalog.sqlite";
  const fs::path staging = paths.packages / k_staging_dir;
  NPME_TRY(util::create_dirs(staging));
  remove_stale_link_dirs(staging);
  std::string missing;
  for (int attempt = 1; attempt <= k_max_attempts; ++attempt) {
    Secured secured;
    secured.attempts = attempt;
    // The follower's position first: it may only be behind the metadata.
    NPME_TRY_ASSIGN(secured.sequence_text, read_optional(paths.data / "sequence"));
    ::unlink(db_copy.c_str());
    ::unlink(scratch.c_str());
    NPME_TRY(stop());
    NPME_TRY(backup_database(source, db_copy));
    NPME_TRY_ASSIGN(secured.catalog, Catalog::create(scratch));
    NPME_TRY(secured.catalog->load(db_copy));
    const fs::path link_dir =
      staging / (std::string(k_link_dir_prefix) + std::to_string(::getpid()) + "-" + util::random_token(8));
    if (::mkdir(link_dir.c_str(), 0700) != 0) {
      return util::Unexpected<Error>{io_error("create directory", link_dir, errno)};
    }
    secured.links = std::make_unique<TempTree>(link_dir);
    missing.clear();
    std::int64_t index = 0;
    std::int64_t dirs = 0; // link directories made so far
    const std::string k_missing = "missing";
    auto linked = secured.catalog->for_each([&](const std::string& rel, const TarballRef& ref) -> Expected<void> {
      NPME_TRY(stop());
      const fs::path source_file = paths.packages / rel;
      const fs::path link = link_path(link_dir, index);
      // Made when its first link is: an absent optional tarball takes no
      // index, so the same index may be tried again.
      if (index / k_links_per_dir == dirs) {
        if (::mkdir(link.parent_path().c_str(), 0700) != 0) {
          return util::Unexpected<Error>{io_error("create directory", link.parent_path(), errno)};
        }
        ++dirs;
      }
      if (::link(source_file.c_str(), link.c_str()) != 0) {
        if (errno == ENOENT && ref.optional) {
          return secured.catalog->mark_absent(rel);
        }
        if (errno == ENOENT) {
          missing = "'" + rel + "' of " + ref.package + "@" + ref.version;
          return make_error(Errc::not_found, k_missing);
        }
        return util::Unexpected<Error>{io_error("link", source_file, errno)};
      }
      struct stat st {};
      if (::lstat(link.c_str(), &st) != 0) {
        return util::Unexpected<Error>{io_error("stat", link, errno)};
      }
      if (!S_ISREG(st.st_mode)) {
        return make_error(Errc::failed, "tarball '" + source_file.string() + "' is not a regular file");
      }
      secured.tarball_bytes += static_cast<std::int64_t>(st.st_size);
      ++index;
      return {};
    });
    if (linked) {
      NPME_TRY(secured.catalog->drop_absent());
      return secured;
    }
    if (missing.empty()) {
      return util::Unexpected<Error>{linked.error()};
    }
    // Back off a little so that a burst of unpublishes can finish.
    std::this_thread::sleep_for(std::chrono::milliseconds(20 * attempt));
  }
  return make_error(Errc::failed, "cannot take a consistent snapshot: tarball " + missing + " is missing from '" +
                                    paths.packages.string() + "' after " + std::to_string(k_max_attempts) +
                                    " attempts");
}

// Writes entries into a tar stream on `fd`, hashing each in the same pass.
class Writer {
public:
  // `sums` is the file where SHA256SUMS is gathered; `log` gets every
  // entry written, for the read-back check.
  // `stop` is checked before each chunk.
  Writer(fs::path path, const Progress& progress, std::uint64_t total, fs::path sums, WrittenLog& log,
         const StopCheck& stop)
    : m_path(std::move(path)), m_progress(progress), m_total(total),
      m_ring(k_ring_slots, std::vector<char>(k_io_buffer)), m_slot_ticket(k_ring_slots, 0),
      m_sums_path(std::move(sums)), m_log(log), m_stop(stop) {}

  Expected<void> open(OutputFile& output, Compression compression) {
    m_archive.reset(archive_write_new());
    auto* a = m_archive.get();
    if (a == nullptr) {
      return make_error(Errc::failed, "cannot write '" + m_path.string() + "': out of memory");
    }
    int r = archive_write_set_format_pax_restricted(a);
    switch (compression) {
    case Compression::zstd: {
      if (r == ARCHIVE_OK) {
        r = archive_write_add_filter_zstd(a);
      }
      // Level 1 and one worker per core: the fast setting of `zstd -1 -T0`.
      const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
      if (r == ARCHIVE_OK) {
        r = archive_write_set_filter_option(a, "zstd", "compression-level", "1");
      }
      if (r == ARCHIVE_OK) {
        // Older libarchive lacks the option; compressing on one thread is fine.
        archive_write_set_filter_option(a, "zstd", "threads", std::to_string(cores).c_str());
      }
      break;
    }
    case Compression::gzip:
      if (r == ARCHIVE_OK) {
        r = archive_write_add_filter_gzip(a);
      }
      if (r == ARCHIVE_OK) {
        r = archive_write_set_filter_option(a, "gzip", "compression-level", "1");
      }
      break;
    case Compression::none:
      break;
    }
    if (r == ARCHIVE_OK) {
      r = archive_write_set_bytes_per_block(a, static_cast<int>(k_io_buffer));
    }
    if (r == ARCHIVE_OK) {
      r = archive_write_set_bytes_in_last_block(a, 1);
    }
    if (r == ARCHIVE_OK) {
      r = archive_write_open2(a, &output, nullptr, &Writer::write_output, nullptr, nullptr);
    }
    if (r != ARCHIVE_OK) {
      return fail();
    }
    return {};
  }

  Expected<void> add_bytes(const std::string& name, std::string_view bytes, mode_t mode) {
    NPME_TRY(header(name, static_cast<std::int64_t>(bytes.size()), mode, std::time(nullptr)));
    util::Hasher hasher(util::Hasher::Algorithm::sha256);
    hasher.update(bytes);
    Checksum checksum;
    checksum.update(bytes);
    NPME_TRY(data(bytes));
    NPME_TRY(written(name, hasher.finish(), static_cast<std::int64_t>(bytes.size()), checksum.value()));
    return {};
  }

  // Adds the file `file` as entry `name`. With `tarball`, the same pass
  // checks its bytes against the version's dist.integrity: a tarball that
  // rotted in the store fails here, before a snapshot that could not
  // restore is written. When the store recorded a digest as it committed
  // the checked bytes, their tag (store::file_tag, XXH3 at memory speed)
  // shows they are unchanged, and SHA256SUMS takes the recorded SHA-256.
  // Otherwise (or when the tag differs) the bytes are hashed: SHA-256 for
  // SHA256SUMS and the integrity's own algorithm, usually SHA-512.
  Expected<void> add_file(const std::string& name, const fs::path& file, mode_t mode,
                          const TarballRef* tarball = nullptr) {
    const int raw = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (raw < 0) {
      return util::Unexpected<Error>{io_error("read", file, errno)};
    }
    Fd fd(raw);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      return util::Unexpected<Error>{io_error("stat", file, errno)};
    }
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    const auto size = static_cast<std::int64_t>(st.st_size);
    NPME_TRY(header(name, size, mode, st.st_mtime));
    const Integrity* integrity = tarball != nullptr && tarball->integrity ? &*tarball->integrity : nullptr;
    const store::FileDigest* stored = integrity != nullptr && tarball->stored ? &*tarball->stored : nullptr;
    util::Hasher sha256(util::Hasher::Algorithm::sha256);
    std::optional<util::Hasher> expected;
    if (integrity != nullptr && stored == nullptr) {
      expected.emplace(integrity->algorithm);
    }
    Checksum checksum; // of the entry, for the read-back check
    Checksum tag;
    if (stored != nullptr) {
      store::start_file_tag(tag, stored->sha256);
    }
    // The worker's jobs read the ring's buffers and update the hashers:
    // every one must be done before this function returns.
    struct WaitAll {
      HashWorker& worker;
      ~WaitAll() { worker.wait_all(); }
    } wait_all{m_worker};
    std::int64_t done = 0;
    while (done < size) {
      // A ring of buffers lets this thread read and archive ahead while the
      // worker still hashes an earlier chunk; a slot is reused only once
      // the worker is done with it.
      const std::size_t slot = m_next_slot++ % m_ring.size();
      m_worker.wait(m_slot_ticket[slot]);
      std::vector<char>& buffer = m_ring[slot];
      const ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        return util::Unexpected<Error>{io_error("read", file, errno)};
      }
      if (n == 0 || done + n > size) {
        return make_error(Errc::failed, "cannot read '" + file.string() + "': its size changed while reading");
      }
      const std::string_view chunk(buffer.data(), static_cast<std::size_t>(n));
      if (stored != nullptr) {
        // Two XXH3s cost less than a handover to the worker.
        checksum.update(chunk);
        tag.update(chunk);
      } else if (expected) {
        // About even shares: the worker takes the SHA-512, this thread the
        // SHA-256 and the archive.
        m_slot_ticket[slot] = m_worker.post([&expected, &checksum, chunk] {
          expected->update(chunk);
          checksum.update(chunk);
        });
        sha256.update(chunk);
      } else {
        m_slot_ticket[slot] = m_worker.post([&sha256, &checksum, chunk] {
          sha256.update(chunk);
          checksum.update(chunk);
        });
      }
      NPME_TRY(data(chunk));
      done += n;
    }
    m_worker.wait_all();
    std::string digest;
    bool matches = true;
    if (stored != nullptr) {
      if (tag.value() == stored->tag) {
        digest = stored->sha256;
      } else {
        // Changed since its commit (or the record is damaged): the slow
        // check decides, on the same bytes.
        auto rehashed = rehash(fd.get(), *integrity, checksum.value());
        matches = rehashed.has_value();
        digest = rehashed.value_or("");
      }
    } else {
      digest = sha256.finish();
      matches = !expected || integrity->matches(expected->finish());
    }
    if (!matches) {
      return make_error(Errc::verify, "tarball '" + name.substr(k_packages_prefix.size()) + "' of " +
                                        tarball->package + "@" + tarball->version + " does not match its " +
                                        "dist.integrity " + integrity->text + ": the store's copy is damaged");
    }
    NPME_TRY(written(name, digest, size, checksum.value()));
    return {};
  }

  Expected<void> close() {
    if (!m_sums) {
      return make_error(Errc::failed, "snapshot '" + m_path.string() + "': no entries");
    }
    NPME_TRY(util::write_all(m_sums.get(), m_sums_buffer, m_sums_path));
    m_sums_buffer.clear();
    NPME_TRY(m_sums.close(m_sums_path));
    // SHA256SUMS, last, does not list itself.
    m_sums_done = true;
    NPME_TRY(add_file(std::string(k_sums_entry), m_sums_path, 0644));
    if (archive_write_close(m_archive.get()) != ARCHIVE_OK) {
      return fail();
    }
    return {};
  }

private:
  // Records a finished entry: its SHA256SUMS line, and the read-back log.
  Expected<void> written(const std::string& name, const std::string& sha256, std::int64_t size,
                         std::uint64_t checksum) {
    if (!m_sums_done) {
      if (!m_sums) {
        const int raw = ::open(m_sums_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (raw < 0) {
          return util::Unexpected<Error>{io_error("create", m_sums_path, errno)};
        }
        m_sums = Fd(raw);
      }
      // Buffered: a line per entry, written out 1 MiB at a time.
      m_sums_buffer += sums_line(name, sha256);
      if (m_sums_buffer.size() >= k_io_buffer) {
        NPME_TRY(util::write_all(m_sums.get(), m_sums_buffer, m_sums_path));
        m_sums_buffer.clear();
      }
    }
    m_log.push(WrittenEntry{name, size, checksum});
    return {};
  }

  // libarchive's output callback: the compressed stream goes to the file.
  static la_ssize_t write_output(::archive* a, void* client, const void* buffer, std::size_t length) {
    auto written = static_cast<OutputFile*>(client)->append(std::string_view(static_cast<const char*>(buffer), length));
    if (!written) {
      archive_set_error(a, EIO, "%s", written.error().message.c_str());
      return -1;
    }
    return static_cast<la_ssize_t>(length);
  }

  // The slow path of add_file() for a tarball whose tag differs from the
  // one the store recorded (a file repaired by hand, a damaged record):
  // reads `fd` again, checks it against `integrity` and that it still has
  // the `checksum` of the bytes archived, and returns its SHA-256; nullopt
  // when either check fails.
  std::optional<std::string> rehash(int fd, const Integrity& integrity, std::uint64_t checksum) {
    util::Hasher expected(integrity.algorithm);
    util::Hasher sha256(util::Hasher::Algorithm::sha256);
    Checksum again;
    std::vector<char>& buffer = m_ring.front();
    off_t offset = 0;
    while (true) {
      const ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0) {
        return std::nullopt;
      }
      if (n == 0) {
        break;
      }
      const std::string_view chunk(buffer.data(), static_cast<std::size_t>(n));
      expected.update(chunk);
      sha256.update(chunk);
      again.update(chunk);
      offset += n;
    }
    if (!integrity.matches(expected.finish()) || again.value() != checksum) {
      return std::nullopt;
    }
    return sha256.finish();
  }

  Expected<void> header(const std::string& name, std::int64_t size, mode_t mode, std::time_t mtime) {
    std::unique_ptr<::archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(), archive_entry_free);
    archive_entry_set_pathname(entry.get(), name.c_str());
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    archive_entry_set_perm(entry.get(), mode);
    archive_entry_set_size(entry.get(), size);
    archive_entry_set_mtime(entry.get(), mtime, 0);
    archive_entry_set_uid(entry.get(), 0);
    archive_entry_set_gid(entry.get(), 0);
    if (archive_write_header(m_archive.get(), entry.get()) != ARCHIVE_OK) {
      return fail();
    }
    return {};
  }

  Expected<void> data(std::string_view bytes) {
    NPME_TRY(m_stop());
    while (!bytes.empty()) {
      const la_ssize_t n = archive_write_data(m_archive.get(), bytes.data(), bytes.size());
      if (n <= 0) {
        return fail();
      }
      bytes.remove_prefix(static_cast<std::size_t>(n));
      m_done += static_cast<std::uint64_t>(n);
    }
    if (m_progress) {
      m_progress(m_done, m_total);
    }
    return {};
  }

  util::Unexpected<Error> fail() {
    const int err = archive_errno(m_archive.get());
    std::string reason = archive_message(m_archive.get());
    if (err > 0 && reason.find(std::strerror(err)) == std::string::npos) {
      reason += ": ";
      reason += std::strerror(err);
    }
    return make_error(Errc::io, "cannot write snapshot '" + m_path.string() + "': " + reason);
  }

  fs::path m_path;
  const Progress& m_progress;
  std::uint64_t m_total = 0;
  std::uint64_t m_done = 0;
  std::vector<std::vector<char>> m_ring;
  std::vector<HashWorker::Ticket> m_slot_ticket; // the last job reading each slot
  std::size_t m_next_slot = 0;
  HashWorker m_worker;
  ArchiveWriter m_archive;
  fs::path m_sums_path;
  Fd m_sums;
  std::string m_sums_buffer;
  bool m_sums_done = false;
  WrittenLog& m_log;
  const StopCheck& m_stop;
};

} // namespace

Expected<CreateResult> create(const CreateOptions& options) {
  fs::path output = options.output;
  if (output.empty()) {
    NPME_TRY_ASSIGN(const auto id_text, read_optional(options.paths.data / "instance-id"));
    output = options.output_dir / default_file_name(id_text ? std::string(util::trim(*id_text)) : "", options.compression);
    // A cron job's first run: the snapshot directory may not exist yet.
    NPME_TRY(util::create_dirs(options.output_dir, fs::perms(0700)));
  }
  struct stat st {};
  if (::lstat(output.c_str(), &st) == 0) {
    return make_error(Errc::conflict, "cannot write snapshot '" + output.string() + "': file exists");
  }
  const fs::path db_source = options.paths.metadata / k_database_file;
  if (::stat(db_source.c_str(), &st) != 0) {
    return make_error(Errc::not_found, "cannot snapshot '" + options.paths.metadata.string() +
                                         "': no metadata database (" + std::strerror(errno) + ")");
  }
  const StopCheck stop{options.interrupted, "snapshot '" + output.string() + "' not written: interrupted"};
  fs::path part = output;
  part += ".part";
  fs::path work_path = output;
  work_path += std::string(k_work_suffix);
  // Leftovers of runs killed earlier: the part file under the same name,
  // the work directories of any name.
  ::unlink(part.c_str());
  const fs::path output_dir = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  remove_stale_work_dirs(output_dir);
  NPME_TRY_ASSIGN(const Fd work_lock, make_work_dir(work_path));
  TempTree work(work_path);
  const fs::path db_copy = work_path / k_database_file;

  // The admin API's view, asked before the backup so that the update_seq it
  // reports is never ahead of the snapshot's. Optional: a stopped, hung or
  // unreachable instance leaves the manifest to what the files say.
  std::optional<ReportedState> reported;
  if (options.status) {
    if (auto state = state_from_status(options.status(), options.admin_url)) {
      reported = std::move(*state);
    }
  } else if (!options.admin_url.empty()) {
    if (auto state = query_state(options.admin_url, options.admin_token, options.admin_ca_file)) {
      reported = std::move(*state);
    }
  }

  NPME_TRY_ASSIGN(Secured secured, secure(options.paths, work_path, stop));

  Manifest manifest;
  manifest.npme_version = NPME_VERSION;
  manifest.created = util::iso8601();
  NPME_TRY_ASSIGN(const auto id_text, read_optional(options.paths.data / "instance-id"));
  manifest.instance_id = id_text ? std::string(util::trim(*id_text)) : "";
  manifest.role = options.role.empty() ? "primary" : options.role;
  if (reported && (reported->role == "primary" || reported->role == "replica")) {
    manifest.role = reported->role;
  }
  manifest.reported = std::move(reported);
  manifest.update_seq = secured.catalog->update_seq;
  manifest.sequence = parse_sequence(secured.sequence_text);
  manifest.packages = secured.catalog->packages;
  manifest.versions = secured.catalog->versions;
  // What the archive holds: the optional tarballs the store lacks are not counted.
  manifest.tarballs = secured.catalog->tarballs;
  manifest.tarball_bytes = secured.tarball_bytes;
  manifest.compression = std::string(compression_name(options.compression));
  manifest.instance_running = hostdirs::is_locked(options.paths.data);

  std::uint64_t total = static_cast<std::uint64_t>(manifest.tarball_bytes);
  if (::stat(db_copy.c_str(), &st) == 0) {
    total += static_cast<std::uint64_t>(st.st_size);
  }

  NPME_TRY_ASSIGN(std::unique_ptr<OutputFile> out, OutputFile::create(part));
  // From here on a failure must not leave the partial file behind.
  struct RemoveOnFailure {
    fs::path path;
    bool armed = true;
    ~RemoveOnFailure() {
      if (armed) {
        ::unlink(path.c_str());
      }
    }
  } remove_part{part};

  Progress write_progress;
  if (options.progress) {
    // Headers and the small entries count too: the estimate can be
    // exceeded. The end is reported once the read-back check passed.
    const std::uint64_t before_end = total > 0 ? total - 1 : 0;
    write_progress = [&options, total, before_end](std::uint64_t done, std::uint64_t) {
      options.progress(std::min(done, before_end), total);
    };
  }
  WrittenLog log;
  Writer writer(part, write_progress, total, work_path / "SHA256SUMS", log, stop);
  NPME_TRY(writer.open(*out, options.compression));

  // The read-back check reads the file on its own thread while it is
  // written (see OutputFile), so it ends soon after the write. It compares
  // each entry with the log as it reads it.
  Expected<VerifyReport> checked = make_error(Errc::failed, "the read-back check did not run");
  const auto check = [&] { checked = check_snapshot(part, work_path, &log, {}, out.get()); };
  std::thread checker;
  // A failure below ends the file early: the check stops, then the thread is joined.
  struct StopChecker {
    OutputFile& out;
    WrittenLog& log;
    std::thread& thread;
    ~StopChecker() {
      if (thread.joinable()) {
        log.close();
        out.abort();
        thread.join();
      }
    }
  } stop_checker{*out, log, checker};
  try {
    checker = std::thread(check);
  } catch (const std::system_error&) {
    // No second thread: the check reads the finished file below.
  }

  NPME_TRY(writer.add_bytes(std::string(k_manifest_entry), manifest.to_json().dump(2) + "\n", 0644));
  NPME_TRY(writer.add_file(std::string(k_database_entry), db_copy, 0600));
  std::int64_t index = 0;
  NPME_TRY(secured.catalog->for_each([&](const std::string& rel, const TarballRef& ref) -> Expected<void> {
    // The same walk as secure()'s, without the absent optional tarballs:
    // link i is this tarball.
    return writer.add_file(std::string(k_packages_prefix) + rel, link_path(secured.links->path(), index++), 0644,
                           &ref);
  }));
  if (secured.sequence_text) {
    NPME_TRY(writer.add_bytes(std::string(k_data_prefix) + "sequence", *secured.sequence_text, 0644));
  }
  for (const char* name : {"whitelist", "instance-id"}) {
    NPME_TRY_ASSIGN(const auto text, read_optional(options.paths.data / name));
    if (text) {
      NPME_TRY(writer.add_bytes(std::string(k_data_prefix) + name, *text, 0644));
    }
  }
  NPME_TRY(writer.close());
  log.close();
  NPME_TRY(out->finish());
  secured.links.reset();
  ::unlink(db_copy.c_str());

  // The fsync waits for the disk while the check finishes; the file is
  // renamed only when both succeeded.
  auto synced = out->sync();
  if (checker.joinable()) {
    checker.join();
  } else {
    check();
  }
  NPME_TRY(synced);
  out.reset();
  if (!checked) {
    return util::Unexpected<Error>{checked.error()};
  }
  const VerifyReport& report = *checked;
  if (!report.ok()) {
    std::string text = "snapshot '" + part.string() + "' failed its read-back check: " + report.problems.front();
    if (report.problems.size() > 1) {
      text += " (and " + std::to_string(report.problems.size() - 1) + " more)";
    }
    return make_error(Errc::verify, text);
  }
  if (options.progress) {
    options.progress(total, total);
  }
  NPME_TRY(stop());
  if (::rename(part.c_str(), output.c_str()) != 0) {
    return util::Unexpected<Error>{io_error("rename", part, errno)};
  }
  remove_part.armed = false;
  fs::path dir = output.parent_path();
  NPME_TRY(util::fsync_dir(dir.empty() ? fs::path(".") : dir));

  CreateResult result;
  result.file = output;
  if (::stat(output.c_str(), &st) == 0) {
    result.file_bytes = static_cast<std::uint64_t>(st.st_size);
  }
  result.manifest = std::move(manifest);
  result.attempts = secured.attempts;
  return result;
}

} // namespace npme::snapshot
