#pragma once
// Internals shared by snapshot creation, verification and restore: entry
// names, the integrity strings of package versions, the database reader,
// RAII holders for libarchive handles and file descriptors. archive.h stays
// out of this header.

#include "core/snapshot/snapshot.hpp"
#include "core/util/crypto.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct archive;

namespace npme::snapshot::detail {

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
  std::string digest; // raw bytes
  std::string text;   // as written in the packument, for messages
};

// One version's tarball as the database refers to it.
struct TarballRef {
  std::string package;
  std::string version;
  std::optional<Integrity> integrity;
};

// What a snapshot's database says: every local tarball (by relative path)
// with its expected integrity, and the counts for the manifest.
struct DatabaseContent {
  std::map<std::string, TarballRef> tarballs;
  std::int64_t packages = 0;
  std::int64_t versions = 0;
  std::int64_t update_seq = 0;
  std::vector<std::string> problems; // malformed documents
};

// Reads the package documents of the SQLite file `db_file` (opened read-only).
Expected<DatabaseContent> read_database(const fs::path& db_file);

// Runs `PRAGMA integrity_check` on `db_file`; returns its complaints (empty when "ok").
Expected<std::vector<std::string>> check_database(const fs::path& db_file);

// Copies the live database `source` (WAL) to the new file `target` with
// SQLite's online backup, without creating or cleaning anything in the
// instance's directories (Store::open would clean the live staging area).
Expected<void> backup_database(const fs::path& source, const fs::path& target);

// Formats / parses `SHA256SUMS`: "<64 hex>  <entry name>\n" per entry.
std::string format_sums(const std::vector<std::pair<std::string, std::string>>& entries);
Expected<std::map<std::string, std::string>> parse_sums(std::string_view text);

// An owned file descriptor.
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
  // Closes now, returning the error of close().
  Expected<void> close(const fs::path& path);

private:
  int m_fd = -1;
};

// Writes all of `data` to `fd`; Errc::io naming `path` on failure.
Expected<void> write_all(int fd, std::string_view data, const fs::path& path);

// Returns "cannot <verb> '<path>': <strerror(err)>" as Errc::io.
Error io_error(std::string_view verb, const fs::path& path, int err);

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

// Returns the current UTC time as "YYYYMMDDTHHMMSSZ".
std::string compact_utc(std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// The shared reading pass of verify() and restore(): walks every entry of
// the snapshot, refusing unsafe entries, hashing each one, checking the
// database and every tarball. The database always goes to
// `database_dir`; tarballs and data files are written only when
// `packages_dir` / `data_dir` are set (they must exist and be empty).
struct ReadPlan {
  fs::path database_dir;
  std::optional<fs::path> packages_dir;
  std::optional<fs::path> data_dir;
  Progress progress;
};

struct ReadOutcome {
  VerifyReport report;
  bool manifest_read = false;
  std::map<std::string, std::string> data_files; // name -> content
};

Expected<ReadOutcome> read_snapshot(const fs::path& file, const ReadPlan& plan);

} // namespace npme::snapshot::detail
