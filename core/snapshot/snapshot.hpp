#pragma once
// Snapshots of an instance's host directories (DESIGN.md §7): one tar stream
// (zstd, gzip or uncompressed) holding `snapshot.json` first, then the
// metadata database (an SQLite online backup), the package tarballs, the data
// files, and `SHA256SUMS` last. Creating works beside a running instance;
// verifying checks every checksum, the database's integrity and every tarball
// against its version's `dist.integrity`; restoring verifies while extracting
// into temp directories beside the targets and swaps them in with renames.
// Versions of documents cached from an uplink (with an "_uplink" member) are
// optional: their tarballs are fetched lazily, so a snapshot carries those
// the store holds and may lack the others.

#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace npme::snapshot {

namespace fs = std::filesystem;

// The snapshot format this npme writes and the newest it reads.
constexpr int k_format_version = 1;

enum class Compression { zstd, gzip, none };

// Returns "zstd", "gzip" or "none".
std::string_view compression_name(Compression compression);
// Parses a name made by compression_name(); Errc::usage for anything else.
Expected<Compression> parse_compression(std::string_view name);
// Returns the file name suffix for `compression` (".tar.zst", ".tar.gz", ".tar").
std::string_view compression_suffix(Compression compression);

// A running instance's state as its admin API (GET /api/v1/status)
// reported it just before the snapshot's database backup. Informational:
// the manifest's own `update_seq` and `sequence` come from the files the
// snapshot holds, so that they always match its content.
struct ReportedState {
  std::string admin_url;
  std::string role;        // "primary" or "replica"
  std::string instance_id;
  std::int64_t update_seq = 0;
  std::optional<std::int64_t> follower_sequence;
  std::string follower_state; // "" when the status has no follower state
  std::int64_t epoch = 0;

  nlohmann::json to_json() const;
};

// Asks the admin API at `admin_url` (with `token`) for the instance's
// status, waiting at most `timeout`. Errc::unreachable or Errc::timeout
// when no instance answers there; other errors when it answers wrongly.
// `ca_file`: a CA bundle trusted beside the system's for an https URL.
Expected<ReportedState> query_state(const std::string& admin_url, const std::string& token,
                                    const std::string& ca_file = {},
                                    std::chrono::milliseconds timeout = std::chrono::milliseconds(1000));

// The same from a status document already at hand (`admin_url` names where
// it came from). Errc::failed when it is not one.
Expected<ReportedState> state_from_status(const nlohmann::json& status, const std::string& admin_url);

// What `snapshot.json` records.
struct Manifest {
  int format_version = k_format_version;
  std::string npme_version;
  std::string created;     // ISO 8601 UTC
  std::string instance_id; // "" when the instance never started
  std::string role;        // "primary" or "replica"
  std::int64_t update_seq = 0;               // the metadata's latest change
  std::optional<std::int64_t> sequence;      // the follower's position, when set
  std::int64_t packages = 0;
  std::int64_t versions = 0;
  std::int64_t tarballs = 0;
  std::int64_t tarball_bytes = 0;
  std::string compression;
  bool instance_running = false; // the snapshot was taken beside a running instance
  std::optional<ReportedState> reported; // from the admin API, when it answered

  nlohmann::json to_json() const;
  // Parses `snapshot.json`; Errc::verify when it is not a snapshot manifest
  // or its format version is newer than k_format_version.
  static Expected<Manifest> from_json(std::string_view text);
};

// Called with (bytes done, bytes total) while a long operation runs.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct CreateOptions {
  store::Paths paths;        // the instance's host directories
  std::string role;          // "primary" or "replica", recorded unless the admin API says otherwise
  // The running instance's admin API and token ("" when it is not running):
  // asked for its state with a 1 s timeout; unreachable is not an error.
  std::string admin_url;
  std::string admin_token;
  std::string admin_ca_file; // for an https admin_url (see query_state)
  // Inside npme serve: its status document, asked in place of admin_url
  // (which then only names the source in the manifest). May be empty.
  std::function<nlohmann::json()> status;
  fs::path output;           // the final file; must not exist (empty: use `output_dir`)
  fs::path output_dir = "."; // where a default-named snapshot goes when `output` is empty
  Compression compression = Compression::zstd;
  Progress progress;         // may be empty
  // Polled between steps and chunks (may be empty): once it returns true,
  // create() stops with Errc::interrupted and leaves no file behind.
  std::function<bool()> interrupted;
};

struct CreateResult {
  fs::path file;
  std::uint64_t file_bytes = 0;
  Manifest manifest;
  int attempts = 1; // database backups taken until every tarball was secured
};

// Returns the default file name for a snapshot of instance `instance_id`
// taken at `now`: "npme-snapshot-<YYYYMMDDTHHMMSSZ>-<id><suffix>", sortable.
std::string default_file_name(std::string_view instance_id, Compression compression,
                              std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// Writes a snapshot of the instance at `options.paths` to `options.output`:
// written as "<output>.part" (mode 0600) with a work directory
// "<output>.part-work" beside it, fsynced, verified by reading it back, then
// renamed. A run killed half-way leaves its ".part" file and its work
// directory; the next create() in that directory removes such work
// directories, whatever their name. Safe beside a running instance: the sequence file is
// read before the database backup, and every tarball the backup refers to is
// secured (hard-linked) before any is written; a tarball unpublished between
// the backup and the linking makes it take a new backup. An optional tarball
// the store lacks is left out (and not counted in the manifest).
// Errc::conflict when the output exists, Errc::io on write failures (no file
// is left under the final name), Errc::verify when the read-back check fails,
// Errc::interrupted when `options.interrupted` said so (nothing is left).
Expected<CreateResult> create(const CreateOptions& options);

// Reads `snapshot.json` from the start of `file` without reading the rest.
// Errc::verify when `file` is not a snapshot.
Expected<Manifest> inspect(const fs::path& file);

struct VerifyReport {
  Manifest manifest;
  std::vector<std::string> problems; // empty when the snapshot is sound
  std::int64_t entries = 0;
  std::int64_t tarballs = 0;
  std::uint64_t bytes = 0; // uncompressed bytes of all entries
  bool ok() const { return problems.empty(); }
};

// Checks every entry of `file` against `SHA256SUMS`, the database with
// `PRAGMA integrity_check`, every tarball against its version's
// `dist.integrity`, that every version but the optional ones has its
// tarball, and that the manifest counts the tarballs the archive holds.
// Problems with the content are listed in the report; only failures to run
// the check (unreadable file, no temp space) are errors. `temp_dir` receives the
// database copy while checking (default: the system's temp directory).
Expected<VerifyReport> verify(const fs::path& file, const Progress& progress = {},
                              const std::optional<fs::path>& temp_dir = std::nullopt);

enum class Force { no, yes };
enum class DryRun { no, yes };
enum class AsReplica { no, yes };

struct RestoreOptions {
  fs::path file;
  store::Paths targets; // where the instance keeps its directories
  Force force = Force::no;
  DryRun dry_run = DryRun::no;
  AsReplica as_replica = AsReplica::no;
  Progress progress;
  // Polled while the snapshot is read (may be empty): once it returns true
  // before the directories are swapped, restore() stops with
  // Errc::interrupted, the targets untouched and nothing left beside them.
  std::function<bool()> interrupted;
};

struct RestoreResult {
  Manifest manifest;
  std::vector<fs::path> kept_aside;   // old directories moved to "<dir>.pre-restore-<UTC>"
  std::vector<fs::path> would_keep_aside; // for a dry run
  std::int64_t sequence_written = -1; // the sequence of the restored data dir (-1: none)
  bool dry_run = false;
};

// Restores the snapshot `options.file` into `options.targets`. Refuses with
// Errc::precondition while the instance runs, and when a target holds data
// and `force` is not set. Extracts into "<dir>.restore-partial" beside each
// target, verifying as it goes (Errc::verify on any problem, targets
// untouched), then moves non-empty targets aside and renames the new
// directories in. `as_replica` writes the snapshot's update_seq into the
// sequence file and drops the snapshot's instance identity so that the
// replica keeps its own.
Expected<RestoreResult> restore(const RestoreOptions& options);

// One snapshot file found by list().
struct Listed {
  fs::path file;
  std::uint64_t bytes = 0;
  std::optional<Manifest> manifest; // nullopt when its manifest is unreadable
  std::string problem;              // why, when manifest is nullopt
};

// {"file","bytes","created","instance_id","role","update_seq","counts":
// {"packages","versions","tarballs","tarball_bytes"}}, or {"file","bytes",
// "problem"} when the manifest is unreadable (npme snapshot list --json).
nlohmann::json to_json(const Listed& listed);

// Lists the snapshot files (".tar", ".tar.zst", ".tar.gz"; never ".part")
// of `dir`, oldest first by creation time.
Expected<std::vector<Listed>> list(const fs::path& dir);

struct PruneOptions {
  fs::path dir;
  std::size_t keep = 0; // keep the newest `keep` snapshots
  std::optional<std::chrono::seconds> keep_within; // also keep those younger than this
  DryRun dry_run = DryRun::no;
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
};

struct PruneResult {
  std::vector<fs::path> deleted; // or would be deleted, for a dry run
  std::vector<fs::path> kept;
};

// Deletes the oldest valid snapshots of `dir` beyond the newest `keep`,
// sparing those younger than `keep_within`. Files whose manifest cannot be
// read are never deleted.
Expected<PruneResult> prune(const PruneOptions& options);

// Parses a duration such as "36h", "7d", "2w", "90m", "3600s" or "3600".
Expected<std::chrono::seconds> parse_duration(std::string_view text);

} // namespace npme::snapshot
