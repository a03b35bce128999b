#pragma once
// Internals shared by snapshot creation, verification and restore: entry
// names, the integrity strings of package versions, the database reader,
// RAII holders for libarchive handles and file descriptors. archive.h stays
// out of this header.

#include "core/snapshot/snapshot.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

struct archive;

namespace npme::snapshot::detail {

class OutputFile;

inline constexpr std::string_view k_manifest_entry = "snapshot.json";
inline constexpr std::string_view k_sums_entry = "SHA256SUMS";
inline constexpr std::string_view k_database_entry = "metadata/registry.sqlite";
inline constexpr std::string_view k_packages_prefix = "packages/";
inline constexpr std::string_view k_data_prefix = "data/";
inline constexpr std::string_view k_database_file = "registry.sqlite";
// The data files a snapshot carries; the lock and runtime file are not state.
inline const std::vector<std::string_view> k_data_files = {"sequence", "whitelist", "instance-id"};
inline constexpr std::size_t k_io_buffer = 1 << 20;

// Checks that `rel_path` is a relative path of plain segments (no "", ".",
// "..", backslash, NUL, newline, and not inside ".staging"): safe to join to
// a directory. Returns the reason when it is not.
std::optional<std::string> unsafe_path_reason(std::string_view rel_path);

// The expected digest of one tarball, from its version's dist.integrity
// (strongest of sha512, sha256, sha1) or dist.shasum.
struct Integrity {
  util::Hasher::Algorithm algorithm = util::Hasher::Algorithm::sha512;
  // Raw bytes: every acceptable digest of `algorithm`, concatenated (SRI
  // may list several).
  std::string digest;
  std::string text; // as written in the packument, for messages

  // True when raw `actual` is one of the acceptable digests.
  bool matches(std::string_view actual) const;
};

// One version's tarball as the database refers to it.
struct TarballRef {
  std::string package;
  std::string version;
  std::optional<Integrity> integrity;
  // What the store recorded when it committed the file, after checking its
  // bytes against `integrity` (store::Store::tarball_digest); nullopt when
  // nothing was. A file with the same SHA-256, or the same tag
  // (store::file_tag), holds those checked bytes: the slower integrity
  // hash need not run again.
  std::optional<store::FileDigest> stored;
  // A version of a document cached from an uplink (one with an "_uplink"
  // object member): its tarball is fetched lazily, so the store may lack
  // the file and a snapshot may lack the entry. When either holds it, it is
  // checked like any other.
  bool optional = false;
};

// Which tarballs Catalog::for_each() walks.
enum class Walk {
  all,             // every tarball the catalog holds
  unseen_required, // those not met yet, but for optional ones (see TarballRef)
};

// The bookkeeping of one pass over a snapshot, kept in a scratch SQLite
// file so that memory stays flat however large the registry: every local
// tarball the snapshot's database refers to (by relative path, with its
// version, integrity, the store's record and whether it is optional), and
// the entries and SHA256SUMS lines met so far. Used from one thread.
class Catalog {
public:
  // Creates the scratch database `scratch` (a file that must not exist, in
  // a temp directory; removed with it).
  static Expected<std::unique_ptr<Catalog>> create(const fs::path& scratch);
  ~Catalog();
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  // Reads the package documents of the snapshot database `db_file` (opened
  // read-only) and its records of tarballs: the counts below, the problems
  // (malformed documents), every local tarball. The versions of a document
  // with an "_uplink" object member are optional (TarballRef::optional),
  // unless a version of another document refers to the same path.
  Expected<void> load(const fs::path& db_file);
  std::int64_t packages = 0;
  std::int64_t versions = 0;
  std::int64_t update_seq = 0;
  std::vector<std::string> problems; // the first 100 only
  // The tarballs the catalog holds: after load(), every one referred to;
  // after drop_absent(), those left.
  std::int64_t tarballs = 0;

  // The tarball at `path`; nullopt when no version refers to it.
  Expected<std::optional<TarballRef>> find(const std::string& path);
  // Marks the tarball at `path` as met; false when it was met before.
  Expected<bool> mark_seen(const std::string& path);
  // Calls `each` for the tarballs `which` selects, in path order; an error
  // from `each` stops the walk and is returned. `each` may call
  // mark_absent(), not drop_absent().
  Expected<void> for_each(const std::function<Expected<void>(const std::string& path, const TarballRef& ref)>& each,
                          Walk which = Walk::all);
  // Notes that the optional tarball at `path` has no file (create(): the
  // store has not fetched it), for drop_absent().
  Expected<void> mark_absent(const std::string& path);
  // Removes the tarballs noted by mark_absent() and recounts `tarballs`:
  // the catalog then lists exactly what the snapshot carries.
  Expected<void> drop_absent();

  // An archive entry met (false when its name was met before), its SHA-256.
  Expected<bool> add_entry(const std::string& name);
  Expected<void> set_digest(const std::string& name, std::string_view sha256);
  // A line of SHA256SUMS; false when it names an entry listed before.
  Expected<bool> add_sum(const std::string& name, std::string_view sha256);
  std::int64_t sums = 0;
  // Reports, in archive order, every entry (but SHA256SUMS) that SHA256SUMS
  // does not list or lists with another digest, then every listed one the
  // archive lacks.
  Expected<void> compare_sums(const std::function<void(std::string)>& problem);

private:
  struct Impl;
  explicit Catalog(std::unique_ptr<Impl> impl);
  Expected<void> count_tarballs();
  std::unique_ptr<Impl> m_impl;
};

// Parses SHA256SUMS ("<64 hex>  <entry name>\n" per entry) as it streams,
// into `catalog` (or, without one, only checks the syntax and counts).
class SumsParser {
public:
  explicit SumsParser(Catalog* catalog) : m_catalog(catalog) {}
  // Feeds more bytes; fails on a malformed or duplicate line (Errc::verify).
  Expected<void> feed(std::string_view data);
  // After the last bytes: fails when the last line is not terminated.
  Expected<void> finish();
  std::int64_t lines() const { return m_line_no; }

private:
  Expected<void> line(std::string_view text);
  Catalog* m_catalog;
  std::string m_partial;
  int m_line_no = 0;
};

// Runs `PRAGMA integrity_check` on `db_file`; returns its complaints (empty when "ok").
Expected<std::vector<std::string>> check_database(const fs::path& db_file);

// Copies the live database `source` (WAL) to the new file `target` with
// SQLite's online backup, without creating or cleaning anything in the
// instance's directories (Store::open would clean the live staging area).
Expected<void> backup_database(const fs::path& source, const fs::path& target);

// Returns the SHA256SUMS line of the entry `name` with the raw `sha256`.
std::string sums_line(std::string_view name, std::string_view sha256);

using util::Fd;

// "cannot <verb> '<path>': <strerror(err)>" (core/util/fs.hpp).
using util::io_error;

// libarchive handles, freed on destruction.
struct ArchiveReadDeleter {
  void operator()(::archive* a) const;
};
struct ArchiveWriteDeleter {
  void operator()(::archive* a) const;
};
using ArchiveReader = std::unique_ptr<::archive, ArchiveReadDeleter>;
using ArchiveWriter = std::unique_ptr<::archive, ArchiveWriteDeleter>;

// Opens `file` for reading as a tar stream (zstd, gzip or none).
Expected<ArchiveReader> open_reader(const fs::path& file);
// Returns libarchive's message for `a` (or "unknown error").
std::string archive_message(::archive* a);

// Hashes on a second thread while the calling thread works on the same
// bytes (a tarball's hashes beside its read and write). Jobs run in
// the order posted; post() returns a ticket that wait() takes. The bytes a
// job reads must stay valid until its ticket is waited for. When no thread
// can be started, jobs run at once on the caller's thread.
class HashWorker {
public:
  using Ticket = std::uint64_t;

  HashWorker();
  // Waits for every job, then stops the thread.
  ~HashWorker();
  HashWorker(const HashWorker&) = delete;
  HashWorker& operator=(const HashWorker&) = delete;

  // Queues `job`; an exception it throws is swallowed, so a job that
  // checks something must treat an unfinished check as a failure.
  Ticket post(std::function<void()> job);
  // Queues feeding `data` to `hasher` (small pieces are hashed at once, on
  // the calling thread, after every job queued before).
  Ticket post(util::Hasher& hasher, std::string_view data);
  // Returns once the job of `ticket` (and every earlier one) is done.
  void wait(Ticket ticket);
  // Returns once every job posted so far is done.
  void wait_all();

private:
  void run();

  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<std::function<void()>> m_jobs;
  Ticket m_posted = 0;
  Ticket m_done = 0;
  bool m_stop = false;
  std::thread m_thread;
};

using util::Checksum;

// What create() wrote for one entry, for its read-back check.
struct WrittenEntry {
  std::string name;
  std::int64_t size = 0;
  std::uint64_t checksum = 0; // util::xxh3 of the entry's bytes
};

// The entries create() wrote, in order, handed to its read-back check on
// another thread: the writer pushes, the check takes them as it reads, so
// only the entries between the two are held.
class WrittenLog {
public:
  void push(WrittenEntry entry);
  // No more entries (the write ended or failed).
  void close();
  // The next entry, waiting for the writer; nullopt once closed and empty.
  std::optional<WrittenEntry> next();
  // The number of entries pushed.
  std::int64_t pushed() const;

private:
  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<WrittenEntry> m_entries;
  std::int64_t m_pushed = 0;
  bool m_closed = false;
};

// Starts writing back the dirty pages of `fd` without waiting, so that the
// final fsync finds little left to do.
void start_writeback(int fd);

// Returns the current UTC time as "YYYYMMDDTHHMMSSZ".
std::string compact_utc(std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// The shared reading pass of verify() and restore(): walks every entry of
// the snapshot, refusing unsafe entries, hashing each one, checking the
// database and every tarball. The database always goes to
// `database_dir`; tarballs and data files are written only when
// `packages_dir` / `data_dir` are set (they must exist and be empty).
struct ReadPlan {
  fs::path database_dir;
  fs::path scratch_dir; // an empty temp directory for the pass's Catalog
  // Set for the read-back check of create(): the archive must hold exactly
  // these entries in this order, with these sizes and checksums. create()
  // took each entry's SHA-256 (and each tarball's dist.integrity) from the
  // very bytes it wrote, so byte-equal entries carry those checks over and
  // the pass skips the slow hashes; the archive's structure, SHA256SUMS's
  // syntax, the database's integrity and the tarball list are still checked.
  WrittenLog* written = nullptr;
  // Set for that check too: the bytes come from the file as it is being
  // written (OutputFile::read_written()), the check runs beside the write.
  OutputFile* follow = nullptr;
  std::optional<fs::path> packages_dir;
  std::optional<fs::path> data_dir;
  Progress progress;
  // Polled per entry and per chunk (may be empty): true stops the pass
  // with Errc::interrupted.
  std::function<bool()> interrupted;
};

struct ReadOutcome {
  VerifyReport report;
  bool manifest_read = false;
  std::map<std::string, std::string> data_files; // name -> content
};

Expected<ReadOutcome> read_snapshot(const fs::path& file, const ReadPlan& plan);

// verify(), or with `written` set the read-back check of create() (see
// ReadPlan; with `follow` it reads the file as it is written); the database
// copy goes to a temp directory under `temp_dir`.
Expected<VerifyReport> check_snapshot(const fs::path& file, const fs::path& temp_dir, WrittenLog* written,
                                      const Progress& progress, OutputFile* follow = nullptr);

} // namespace npme::snapshot::detail
