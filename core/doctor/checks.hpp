#pragma once
// The parts of one doctor run, shared by the files of core/doctor; not part
// of its API (see doctor.hpp).

#include "core/doctor/doctor.hpp"
#include "core/store/sqlite.hpp"

#include <set>
#include <string>
#include <string_view>
#include <unordered_set>

namespace npme::doctor::detail {

// Where a run puts what it takes out of the way: one folder per run,
// `<data>/quarantine/<UTC time>/`, made on first use. Nothing in it is ever
// read back by npme; the operator decides.
class Quarantine {
public:
  Quarantine(fs::path data_dir, std::function<std::string()> now_utc);
  // Moves `source` to `<folder>/<area>/<rel_path>` (rename, or copy then
  // unlink across file systems); returns the new path.
  Expected<fs::path> move(const fs::path& source, std::string_view area, std::string_view rel_path);
  // Puts a copy of `source` there (a hard link when it can), leaving
  // `source` in place for a repair to replace atomically.
  Expected<fs::path> keep_copy(const fs::path& source, std::string_view area, std::string_view rel_path);
  // The folder, once something went into it; empty before.
  const fs::path& folder() const { return m_folder; }

private:
  Expected<fs::path> target(std::string_view area, std::string_view rel_path);
  fs::path m_data_dir;
  std::function<std::string()> m_now_utc;
  fs::path m_folder;
};

// The state of one run.
struct Run {
  const Options& options;
  Report& report;
  Quarantine quarantine;
  store::Store* store = nullptr;           // for repairs (options.store or one opened by run())
  std::unique_ptr<store::Store> own_store; // the one run() opened
  // The database, read-only, or null when it does not exist or is damaged.
  std::unique_ptr<store::sqlite::Database> db;
  // Every path in the packages directory a version refers to.
  std::unordered_set<std::string> referenced;

  Run(const Options& o, Report& r);
  bool repairing() const { return options.repair == Repair::yes; }
  Expected<void> check_cancelled() const;
  void add(Defect defect) { report.defects.push_back(std::move(defect)); }
  void changed(const std::string& package) const;
  // The store to repair through: the running instance's, or one opened now.
  Expected<store::Store*> writable_store();
};

// The package a file of the packages directory belongs to ("@s/a" for
// "@s/a/-/a-1.0.0.tgz"); empty when the path has no "/-/".
std::string package_of_path(std::string_view rel_path);

// database.cpp: opens the database and runs PRAGMA integrity_check; leaves
// run.db null (and says why in report.skipped) when it is missing or damaged.
Expected<void> check_database(Run& run);
// database.cpp: the change log against the documents.
Expected<void> check_changelog(Run& run);

// tarballs.cpp: every version of every package document against its file.
Expected<void> check_tarballs(Run& run);
// tarballs.cpp: files of the packages directory no version refers to.
Expected<void> check_orphans(Run& run);

// files.cpp: data/sequence, data/whitelist and the settings file.
void check_sequence(Run& run);
void check_whitelist(Run& run);
void check_settings(Run& run);

// repair.cpp: fetches `wanted` from the source, checks it against
// dist.integrity and puts it in place for document `id` at revision `rev`.
// Returns what was done, or an error saying why not.
Expected<std::string> refetch(Run& run, const Wanted& wanted, const std::string& rev);
// repair.cpp: rewrites the tarball `rel_path` of document `id` (at `rev`)
// with `bytes` (already checked against dist.integrity) through the store,
// which records its digest.
Expected<void> rewrite_with_record(Run& run, const std::string& id, const std::string& rev, const std::string& rel_path,
                                   std::string_view bytes);

} // namespace npme::doctor::detail
