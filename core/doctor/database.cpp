// The database as a whole: SQLite's own integrity check, then the change log
// against the documents it describes.

#include "core/doctor/checks.hpp"

#include <charconv>
#include <system_error>

namespace npme::doctor::detail {

namespace {

using store::sqlite::Database;
using store::sqlite::Statement;

constexpr const char* k_database_file = "registry.sqlite";
constexpr const char* k_runbook = "see the README runbook 'Check and repair an instance'";
// Problems listed per query of the change log; the rest are counted.
constexpr int k_max_listed = 100;

// True when the packages directory holds a file outside `.staging`.
bool packages_hold_files(const fs::path& packages) {
  std::error_code ec;
  fs::recursive_directory_iterator it(packages, ec);
  for (const fs::recursive_directory_iterator end; !ec && it != end; it.increment(ec)) {
    if (it.depth() == 0 && it->path().filename() == ".staging") {
      it.disable_recursion_pending();
      continue;
    }
    std::error_code type_ec;
    if (!it->is_directory(type_ec)) {
      return true;
    }
  }
  return false;
}

// The write count of a revision "<n>-<hex>"; 0 when malformed.
std::int64_t rev_number(std::string_view rev) {
  const auto dash = rev.find('-');
  if (dash == std::string_view::npos || dash + 1 == rev.size() ||
      rev.find_first_not_of("0123456789abcdef", dash + 1) != std::string_view::npos) {
    return 0;
  }
  std::int64_t n = 0;
  const auto [ptr, ec] = std::from_chars(rev.data(), rev.data() + dash, n);
  return ec == std::errc() && ptr == rev.data() + dash ? n : 0;
}

Defect database_defect(const Run& run, const fs::path& path, std::string detail) {
  Defect defect{"database", "", path.string(), std::move(detail) + "; " + k_runbook, false, "", false};
  if (run.repairing()) {
    defect.action = "not repaired: a damaged database is never repaired in place (restore a snapshot, or "
                    "resync a replica from its upstream)";
  }
  return defect;
}

Defect changelog_defect(const Run& run, std::string id, std::string detail) {
  Defect defect{"changelog", std::move(id), "", std::move(detail), false, "", false};
  if (run.repairing()) {
    defect.action =
      "not repaired: the change log is only ever written with its documents (" + std::string(k_runbook) + ")";
  }
  return defect;
}

} // namespace

Expected<void> check_database(Run& run) {
  const fs::path path = run.options.paths.metadata / k_database_file;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    if (packages_hold_files(run.options.paths.packages)) {
      run.add(database_defect(run, path,
                              "the metadata database does not exist, but the packages directory holds "
                              "tarballs"));
    }
    run.report.skipped.push_back("the metadata checks: there is no database");
    return {};
  }
  // Read-write only to recover a write-ahead log left by a killed process;
  // nothing is written. A read-only file still gets checked.
  auto opened = Database::open(path, Database::Mode::read_write);
  if (!opened) {
    opened = Database::open(path, Database::Mode::read_only);
  }
  if (!opened) {
    run.add(database_defect(run, path, "cannot open it: " + opened.error().message));
    run.report.skipped.push_back("the metadata checks: the database cannot be opened");
    return {};
  }
  auto db = std::move(*opened);
  NPME_TRY(db->exec("PRAGMA busy_timeout=10000"));
  // integrity_check, not quick_check: only it compares every index with its
  // table, which is where a damaged page often shows.
  std::vector<std::string> problems;
  std::string failure;
  auto stmt = db->prepare("PRAGMA integrity_check(100)");
  if (!stmt) {
    failure = stmt.error().message;
  } else {
    while (true) {
      auto step = stmt->step();
      if (!step) {
        failure = step.error().message;
        break;
      }
      if (*step == Statement::Step::done) {
        break;
      }
      const std::string line = stmt->column_text(0);
      if (line != "ok") {
        problems.push_back(line);
      }
    }
  }
  if (!failure.empty() || !problems.empty()) {
    std::string detail = "SQLite's integrity check failed: " + (failure.empty() ? problems.front() : failure);
    if (problems.size() > 1) {
      detail += " (and " + std::to_string(problems.size() - 1) + " more problems)";
    }
    run.add(database_defect(run, path, detail));
    run.report.skipped.push_back("the change log, tarball and orphan checks: the database is damaged");
    return {};
  }
  run.db = std::move(db);
  return {};
}

Expected<void> check_changelog(Run& run) {
  Database& db = *run.db;
  // Each statement reads one consistent state of the database, also while
  // a running instance commits.
  {
    NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT d.id, d.rev, d.seq, c.seq, c.rev, c.deleted FROM docs d "
                                               "LEFT JOIN changes c ON c.id = d.id "
                                               "WHERE c.seq IS NULL OR c.seq != d.seq OR c.rev != d.rev "
                                               "OR c.deleted != 0 ORDER BY d.id LIMIT ?1"));
    NPME_TRY(stmt.bind_int64(1, k_max_listed));
    while (true) {
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::done) {
        break;
      }
      const std::string id = stmt.column_text(0);
      const std::string rev = stmt.column_text(1);
      const std::string seq = std::to_string(stmt.column_int64(2));
      if (stmt.column_is_null(3)) {
        run.add(changelog_defect(run, id,
                                 "document at revision " + rev + " (sequence " + seq +
                                   ") has no change record: followers never learn of it"));
      } else if (stmt.column_int64(5) != 0) {
        run.add(changelog_defect(run, id,
                                 "document at revision " + rev + " exists, but its change record " +
                                   std::to_string(stmt.column_int64(3)) + " says it was deleted"));
      } else {
        run.add(changelog_defect(run, id,
                                 "document at revision " + rev + " (sequence " + seq +
                                   ") but its change record says revision " + stmt.column_text(4) + " at sequence " +
                                   std::to_string(stmt.column_int64(3))));
      }
    }
  }
  {
    NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT c.id, c.seq, c.rev FROM changes c "
                                               "LEFT JOIN docs d ON d.id = c.id "
                                               "WHERE c.deleted = 0 AND d.id IS NULL ORDER BY c.seq LIMIT ?1"));
    NPME_TRY(stmt.bind_int64(1, k_max_listed));
    while (true) {
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::done) {
        break;
      }
      run.add(changelog_defect(run, stmt.column_text(0),
                               "change record " + std::to_string(stmt.column_int64(1)) + " (revision " +
                                 stmt.column_text(2) + ") names a document that does not exist"));
    }
  }
  {
    // Sequence numbers only ever grow: none may lie beyond the counter
    // SQLite hands them out from (AUTOINCREMENT), nor be 0 or negative.
    NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT COALESCE((SELECT seq FROM sqlite_sequence "
                                               "WHERE name = 'changes'), 0), COALESCE(MAX(seq), 0), "
                                               "COALESCE(MIN(seq), 1) FROM changes"));
    NPME_TRY(stmt.step());
    const std::int64_t counter = stmt.column_int64(0);
    const std::int64_t highest = stmt.column_int64(1);
    if (highest > counter) {
      run.add(changelog_defect(run, "",
                               "the change log reaches sequence " + std::to_string(highest) + " beyond its counter " +
                                 std::to_string(counter) +
                                 ": new changes could reuse sequence numbers followers have seen"));
    }
    if (stmt.column_int64(2) < 1) {
      run.add(changelog_defect(run, "", "the change log holds a sequence number below 1"));
    }
  }
  {
    NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT id, rev FROM changes ORDER BY seq"));
    int listed = 0;
    while (listed < k_max_listed) {
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::done) {
        break;
      }
      const std::string rev = stmt.column_text(1);
      if (rev_number(rev) < 1) {
        run.add(changelog_defect(run, stmt.column_text(0), "malformed revision '" + rev + "' (expected <n>-<hex>)"));
        ++listed;
      }
    }
  }
  return {};
}

} // namespace npme::doctor::detail
