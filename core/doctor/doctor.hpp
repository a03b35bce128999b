#pragma once
// `npme doctor`: checks an instance's data as a whole and, when asked,
// repairs what can be repaired. The checks, in order:
// - the database: SQLite's own PRAGMA integrity_check (a damaged database is
//   reported, never repaired, and the checks that read it are skipped);
// - the change log against the documents: one change per document, with its
//   revision and sequence, no change after the last sequence handed out;
// - every version of every package document: its tarball exists and holds
//   the bytes of dist.integrity. By default a file with a record in table
//   `tarballs` is checked against that record (size, then the tag: an XXH3
//   over the recorded SHA-256 and every byte), and only a file without one is
//   hashed against dist.integrity; Depth::full hashes every file;
// - files in the packages directory that no version refers to (orphans);
//   `.staging` is the store's own and is left alone;
// - `data/sequence` and `data/whitelist` are well formed;
// - the settings file: mode 0600 and valid.
//
// Repair::yes moves orphans to `<data>/quarantine/<UTC time>/packages/<path>`
// (nothing is ever deleted), fetches missing and damaged tarballs again from
// a TarballSource (the upstream of a replica, the uplink for copies of public
// packages), checks them against dist.integrity and puts them in place with
// the store's atomic write (which records their digest), writes the records
// of tarballs that have none the same way, empties a malformed sequence,
// drops the invalid lines of the white-list (the old files go to the
// quarantine folder too) and sets the settings file's mode to 0600. What
// cannot be fetched is reported lost.
//
// Threads: run() blocks on the disk and the network for as long as the
// registry is large; call it from a thread of its own (doctor::Service does
// for a running instance), never from an HTTP I/O thread.

#include "core/settings/settings.hpp"
#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace npme::doctor {

namespace fs = std::filesystem;

// How tarballs are checked: against the store's records, hashing only the
// files that have none, or every byte against dist.integrity.
enum class Depth { records, full };

// Whether defects are repaired or only reported.
enum class Repair { no, yes };

// One thing found wrong.
struct Defect {
  // "database", "changelog", "document", "missing", "damaged", "record",
  // "orphan", "sequence", "whitelist", "settings".
  std::string kind;
  std::string id;     // "left-pad@1.3.0" for a version, a document id, or empty
  std::string path;   // a tarball's path in the packages directory, another file's absolute path, or empty
  std::string detail; // what is wrong
  bool repaired = false;
  // What the repair did ("fetched again from ..."), or why it did not
  // ("lost: ..."); empty when no repair was asked for.
  std::string action;
  bool lost = false; // a version whose tarball nothing can bring back
};

struct Counts {
  std::int64_t packages = 0;
  std::int64_t versions = 0;
  std::int64_t tarballs = 0;      // tarball files checked
  std::int64_t tarball_bytes = 0; // their bytes
  std::int64_t hashed = 0;        // of those, hashed against dist.integrity
  std::int64_t unrecorded = 0;    // found without a record in table `tarballs`
  std::int64_t records_written = 0;
  std::int64_t absent_lazy = 0; // uplink copies' tarballs not fetched yet (normal)
  std::int64_t files = 0;       // files walked in the packages directory
};

struct Report {
  bool full = false;
  bool repair = false;
  bool offline = false;
  std::vector<Defect> defects;
  Counts counts;
  std::string quarantine;           // the folder this run moved files to; empty when none
  std::vector<std::string> skipped; // checks that could not run, with the reason
  std::string started;
  std::string finished;
  double seconds = 0;

  // Defects not repaired.
  std::int64_t remaining() const;
  std::int64_t repaired() const;
  std::int64_t lost() const;
  // "checked 3 packages, 5 versions, 5 tarballs (2 hashed in full); 2 defects: 1 repaired, 1 remaining".
  std::string summary() const;
  // {"ok","offline","full","repair","defects":[{kind,id,path,detail,repaired,action,lost}],
  //  "counts":{...},"quarantine","skipped","started","finished","seconds","summary"}.
  nlohmann::json to_json() const;
};

// The one line of `defect` ("damaged left-pad@1.3.0 left-pad/-/left-pad-1.3.0.tgz: ...; repaired: ..."),
// from the JSON form of Report::to_json(), so that the CLI prints the same
// for an online and an offline run.
std::string defect_line(const nlohmann::json& defect);

// A version whose tarball a repair wants.
struct Wanted {
  std::string package;
  std::string version;
  std::string rel_path;  // in the packages directory
  std::string integrity; // dist.integrity (may be empty)
  std::string shasum;    // dist.shasum (may be empty)
  // A copy of an uplink's package: `uplink_url` is where the uplink said its
  // tarball is (its own dist.tarball, kept in the document's "_uplink").
  bool uplink_copy = false;
  std::string uplink_url;
};

// Where repairs get good copies of tarballs. fetch() verifies nothing the
// caller relies on: run() checks the bytes against dist.integrity itself.
class TarballSource {
public:
  virtual ~TarballSource() = default;
  // "the upstream http://10.0.0.11:8080", for messages.
  virtual std::string describe() const = 0;
  // The bytes of `wanted`; Errc::not_found when this source cannot have it
  // (a package published on this instance and asked of its uplink).
  virtual Expected<std::string> fetch(const Wanted& wanted) = 0;
};

// The source of an instance with `config`: its upstream when it is a
// replica (upstream.url, with upstream.secret), else its uplink for copies
// of public packages (uplink.url, uplink.token); nullptr when it has
// neither. Uses network.http_proxy and network.ca_file.
std::unique_ptr<TarballSource> make_source(const settings::Settings& config);

struct Options {
  Depth depth = Depth::records;
  Repair repair = Repair::no;
  bool offline = false; // for the report only
  store::Paths paths;
  fs::path settings_file;  // checked for its mode and validity; empty: not checked
  settings::Layout layout; // to load the settings file for the validity check
  // The open store of a running instance (repairs go through it, and
  // orphans are decided under its write lock). Null: run() opens one when
  // it must repair (a stopped instance, whose lock the caller holds).
  store::Store* store = nullptr;
  // Null: nothing can be fetched, missing and damaged tarballs are lost.
  TarballSource* source = nullptr;
  // Called after a file of package `name` changed on disk (repaired,
  // quarantined, its record rewritten): a running instance drops its cached
  // copies.
  std::function<void(const std::string& name)> changed;
  // Polled between files; true stops the run with Errc::interrupted.
  std::function<bool()> cancelled;
  // Now, for the quarantine folder's name (tests fix it).
  std::function<std::string()> now_utc;
};

// Checks (and with Repair::yes repairs) the instance of `options`. Fails
// only when it cannot check at all (Errc::io on an unreadable directory,
// Errc::interrupted); every defect found is in the report.
Expected<Report> run(const Options& options);

} // namespace npme::doctor
