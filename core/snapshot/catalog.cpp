// The catalog: a pass's per-tarball bookkeeping in a scratch SQLite file,
// and the checks and copies of the snapshot's database.

#include "core/snapshot/format.hpp"

#include "core/store/documents.hpp"
#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "core/util/integrity.hpp"

#include <sqlite3.h>

#include <cerrno>

#include <sys/stat.h>

namespace npme::snapshot {

namespace {

using Json = nlohmann::json;
using store::sqlite::Database;
using store::sqlite::Statement;

constexpr int k_busy_timeout_ms = 10000;

} // namespace

namespace detail {

namespace {

// Returns the strongest integrity of a version's `dist` (util::expected_digest
// decides, as for publishes and followers).
std::optional<Integrity> integrity_of(const Json& dist) {
  auto text_of = [&dist](const char* key) -> std::string_view {
    auto it = dist.find(key);
    return it != dist.end() && it->is_string() ? std::string_view(it->get_ref<const std::string&>())
                                               : std::string_view();
  };
  auto expected = util::expected_digest(text_of("integrity"), text_of("shasum"));
  if (!expected) {
    return std::nullopt;
  }
  Integrity integrity{expected->algorithm, {}, expected->text};
  for (const auto& digest : expected->digests) {
    integrity.digest += digest;
  }
  return integrity;
}

} // namespace

struct Catalog::Impl {
  std::unique_ptr<Database> db;
};

Catalog::Catalog(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

Catalog::~Catalog() = default;

Expected<std::unique_ptr<Catalog>> Catalog::create(const fs::path& scratch) {
  auto impl = std::make_unique<Impl>();
  NPME_TRY_ASSIGN(impl->db, Database::open(scratch, Database::Mode::read_write_create));
  // Scratch: nothing here must survive a crash, and its page cache is
  // bounded (8 MiB); the rest stays on disk.
  NPME_TRY(
    impl->db->exec("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE;"
                   "PRAGMA cache_size=-8192; PRAGMA temp_store=FILE;"
                   "CREATE TABLE refs(path TEXT PRIMARY KEY, package TEXT NOT NULL, version TEXT NOT NULL,"
                   " algorithm INTEGER, digest BLOB, text TEXT, sha256 BLOB, tag INTEGER, size INTEGER,"
                   " optional INTEGER NOT NULL DEFAULT 0, seen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
                   "CREATE TABLE absent(path TEXT PRIMARY KEY) WITHOUT ROWID;"
                   "CREATE TABLE entries(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, sha256 BLOB);"
                   "CREATE TABLE sums(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, sha256 BLOB NOT NULL);"));
  return std::unique_ptr<Catalog>(new Catalog(std::move(impl)));
}

Expected<void> Catalog::load(const fs::path& db_file) {
  NPME_TRY_ASSIGN(auto source, Database::open(db_file, Database::Mode::read_only));
  sqlite3_busy_timeout(source->handle(), k_busy_timeout_ms);
  Database& db = *m_impl->db;
  NPME_TRY_ASSIGN(auto tx, store::sqlite::Transaction::begin(db, store::sqlite::Transaction::Mode::immediate));
  {
    NPME_TRY_ASSIGN(Statement stmt, source->prepare("SELECT COALESCE(MAX(seq), 0) FROM changes"));
    NPME_TRY(stmt.step());
    update_seq = stmt.column_int64(0);
  }
  const auto note = [this](std::string text) {
    if (problems.size() < 100) {
      problems.push_back(std::move(text));
    }
  };
  // A path that two versions name is optional only when both are: the
  // replaced row's flag is kept in the new one.
  NPME_TRY_ASSIGN(Statement insert,
                  db.prepare("INSERT OR REPLACE INTO refs(path, package, version, algorithm, digest, text, optional) "
                             "VALUES(?1, ?2, ?3, ?4, ?5, ?6, "
                             "MIN(?7, COALESCE((SELECT optional FROM refs WHERE path = ?1), 1)))"));
  NPME_TRY_ASSIGN(auto reader, store::documents::Reader::open(*source));
  auto visited = reader.each_package([&](const std::string& id, const std::string&, std::string body) -> Expected<void> {
    ++packages;
    Json doc;
    try {
      doc = Json::parse(body);
    } catch (const std::exception& e) {
      note("package '" + id + "': invalid JSON: " + e.what());
      return {};
    }
    if (!doc.is_object()) {
      note("package '" + id + "': not a JSON object");
      return {};
    }
    const auto versions_it = doc.find("versions");
    if (versions_it == doc.end() || !versions_it->is_object()) {
      return {};
    }
    // A copy of an uplink's packument: its tarballs are fetched on first
    // download, so most versions have no file, and that is normal.
    const auto uplink = doc.find(std::string(store::k_uplink_member));
    const bool optional = uplink != doc.end() && uplink->is_object();
    for (const auto& [version, manifest] : versions_it->items()) {
      ++versions;
      if (!manifest.is_object()) {
        continue;
      }
      const auto dist = manifest.find("dist");
      if (dist == manifest.end() || !dist->is_object()) {
        continue;
      }
      const auto tarball = dist->find("tarball");
      if (tarball == dist->end() || !tarball->is_string()) {
        continue;
      }
      // Only relative paths name files of this instance; an absolute URL
      // (or anything unsafe) has no local tarball to carry.
      const std::string& rel = tarball->get_ref<const std::string&>();
      if (unsafe_path_reason(rel) || rel.find("://") != std::string::npos) {
        continue;
      }
      const auto integrity = integrity_of(*dist);
      NPME_TRY(insert.bind_text(1, rel));
      NPME_TRY(insert.bind_text(2, id));
      NPME_TRY(insert.bind_text(3, version));
      if (integrity) {
        NPME_TRY(insert.bind_int64(4, static_cast<std::int64_t>(integrity->algorithm)));
        NPME_TRY(insert.bind_blob(5, integrity->digest));
        NPME_TRY(insert.bind_text(6, integrity->text));
      } else {
        NPME_TRY(insert.bind_null(4));
        NPME_TRY(insert.bind_null(5));
        NPME_TRY(insert.bind_null(6));
      }
      NPME_TRY(insert.bind_int64(7, optional ? 1 : 0));
      NPME_TRY(insert.step());
      insert.reset();
    }
    return {};
  });
  NPME_TRY(visited);
  // The records the store kept when it committed each tarball (schema 2
  // and later; a database of an older npme has none).
  NPME_TRY_ASSIGN(Statement has_records,
                  source->prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tarballs'"));
  NPME_TRY_ASSIGN(const auto found, has_records.step());
  if (found == Statement::Step::row) {
    NPME_TRY_ASSIGN(Statement records, source->prepare("SELECT path, sha256, tag, size FROM tarballs"));
    NPME_TRY_ASSIGN(Statement update, db.prepare("UPDATE refs SET sha256 = ?2, tag = ?3, size = ?4 WHERE path = ?1"));
    while (true) {
      NPME_TRY_ASSIGN(const auto step, records.step());
      if (step == Statement::Step::done) {
        break;
      }
      const std::string sha256 = records.column_blob(1);
      if (sha256.size() != 32) {
        continue;
      }
      NPME_TRY(update.bind_text(1, records.column_text(0)));
      NPME_TRY(update.bind_blob(2, sha256));
      NPME_TRY(update.bind_int64(3, records.column_int64(2)));
      NPME_TRY(update.bind_int64(4, records.column_int64(3)));
      NPME_TRY(update.step());
      update.reset();
    }
  }
  NPME_TRY(tx.commit());
  return count_tarballs();
}

Expected<void> Catalog::count_tarballs() {
  NPME_TRY_ASSIGN(Statement count, m_impl->db->prepare("SELECT COUNT(*) FROM refs"));
  NPME_TRY(count.step());
  tarballs = count.column_int64(0);
  return {};
}

namespace {

constexpr const char* k_ref_columns = "path, package, version, algorithm, digest, text, sha256, tag, size, optional";

TarballRef ref_of(const Statement& row) {
  TarballRef ref;
  ref.package = row.column_text(1);
  ref.version = row.column_text(2);
  if (!row.column_is_null(3)) {
    ref.integrity =
      Integrity{static_cast<util::Hasher::Algorithm>(row.column_int64(3)), row.column_blob(4), row.column_text(5)};
  }
  if (!row.column_is_null(6)) {
    ref.stored =
      store::FileDigest{row.column_blob(6), static_cast<std::uint64_t>(row.column_int64(7)), row.column_int64(8)};
  }
  ref.optional = row.column_int64(9) != 0;
  return ref;
}

} // namespace

Expected<std::optional<TarballRef>> Catalog::find(const std::string& path) {
  NPME_TRY_ASSIGN(Statement stmt,
                  m_impl->db->cached(std::string("SELECT ") + k_ref_columns + " FROM refs WHERE path = ?1"));
  NPME_TRY(stmt.bind_text(1, path));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step == Statement::Step::done) {
    return std::optional<TarballRef>{};
  }
  return std::optional<TarballRef>{ref_of(stmt)};
}

Expected<bool> Catalog::mark_seen(const std::string& path) {
  NPME_TRY_ASSIGN(Statement stmt, m_impl->db->cached("UPDATE refs SET seen = 1 WHERE path = ?1 AND seen = 0"));
  NPME_TRY(stmt.bind_text(1, path));
  NPME_TRY(stmt.step());
  return m_impl->db->changes() == 1;
}

Expected<void>
Catalog::for_each(const std::function<Expected<void>(const std::string& path, const TarballRef& ref)>& each,
                  Walk which) {
  const char* where = which == Walk::unseen_required ? " WHERE seen = 0 AND optional = 0" : "";
  NPME_TRY_ASSIGN(Statement stmt, m_impl->db->prepare(std::string("SELECT ") + k_ref_columns + " FROM refs" + where +
                                                      " ORDER BY path"));
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step == Statement::Step::done) {
      return {};
    }
    NPME_TRY(each(stmt.column_text(0), ref_of(stmt)));
  }
}

Expected<void> Catalog::mark_absent(const std::string& path) {
  // A table of its own: changing `refs` while for_each() walks it would
  // leave the walk's order to SQLite.
  NPME_TRY_ASSIGN(Statement stmt, m_impl->db->cached("INSERT OR IGNORE INTO absent(path) VALUES(?1)"));
  NPME_TRY(stmt.bind_text(1, path));
  NPME_TRY(stmt.step());
  return {};
}

Expected<void> Catalog::drop_absent() {
  NPME_TRY(m_impl->db->exec("DELETE FROM refs WHERE optional = 1 AND path IN (SELECT path FROM absent);"
                            "DELETE FROM absent;"));
  return count_tarballs();
}

Expected<bool> Catalog::add_entry(const std::string& name) {
  NPME_TRY_ASSIGN(Statement stmt, m_impl->db->cached("INSERT OR IGNORE INTO entries(name) VALUES(?1)"));
  NPME_TRY(stmt.bind_text(1, name));
  NPME_TRY(stmt.step());
  return m_impl->db->changes() == 1;
}

Expected<void> Catalog::set_digest(const std::string& name, std::string_view sha256) {
  NPME_TRY_ASSIGN(Statement stmt, m_impl->db->cached("UPDATE entries SET sha256 = ?2 WHERE name = ?1"));
  NPME_TRY(stmt.bind_text(1, name));
  NPME_TRY(stmt.bind_blob(2, sha256));
  NPME_TRY(stmt.step());
  return {};
}

Expected<bool> Catalog::add_sum(const std::string& name, std::string_view sha256) {
  NPME_TRY_ASSIGN(Statement stmt, m_impl->db->cached("INSERT OR IGNORE INTO sums(name, sha256) VALUES(?1, ?2)"));
  NPME_TRY(stmt.bind_text(1, name));
  NPME_TRY(stmt.bind_blob(2, sha256));
  NPME_TRY(stmt.step());
  const bool added = m_impl->db->changes() == 1;
  sums += added ? 1 : 0;
  return added;
}

Expected<void> Catalog::compare_sums(const std::function<void(std::string)>& problem) {
  Database& db = *m_impl->db;
  const std::string sums_name(k_sums_entry);
  {
    NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT e.name, s.sha256 IS NULL FROM entries e "
                                               "LEFT JOIN sums s ON s.name = e.name WHERE e.name != ?1 AND "
                                               "(s.sha256 IS NULL OR e.sha256 IS NULL OR e.sha256 != s.sha256) "
                                               "ORDER BY e.id"));
    NPME_TRY(stmt.bind_text(1, sums_name));
    while (true) {
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::done) {
        break;
      }
      if (stmt.column_int64(1) != 0) {
        problem("entry '" + stmt.column_text(0) + "' is not listed in SHA256SUMS");
      } else {
        problem("checksum mismatch: '" + stmt.column_text(0) + "'");
      }
    }
  }
  NPME_TRY_ASSIGN(Statement missing, db.prepare("SELECT s.name FROM sums s LEFT JOIN entries e ON e.name = s.name "
                                                "WHERE e.name IS NULL ORDER BY s.id"));
  while (true) {
    NPME_TRY_ASSIGN(const auto step, missing.step());
    if (step == Statement::Step::done) {
      return {};
    }
    problem("entry '" + missing.column_text(0) + "' listed in SHA256SUMS is missing from the archive");
  }
}

Expected<std::vector<std::string>> check_database(const fs::path& db_file) {
  NPME_TRY_ASSIGN(auto db, Database::open(db_file, Database::Mode::read_only));
  std::vector<std::string> complaints;
  NPME_TRY_ASSIGN(Statement stmt, db->prepare("PRAGMA integrity_check"));
  while (true) {
    auto step = stmt.step();
    if (!step) {
      complaints.push_back(step.error().message);
      break;
    }
    if (*step == Statement::Step::done) {
      break;
    }
    std::string line = stmt.column_text(0);
    if (line != "ok") {
      complaints.push_back(std::move(line));
    }
  }
  // A database without the tables npme reads is not one of ours.
  for (const char* table : {"docs", "changes", "meta"}) {
    NPME_TRY_ASSIGN(Statement check,
                    db->prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1"));
    NPME_TRY(check.bind_text(1, table));
    auto step = check.step();
    if (!step) {
      complaints.push_back(step.error().message);
      break;
    }
    if (check.column_int64(0) != 1) {
      complaints.push_back(std::string("table '") + table + "' is missing");
    }
  }
  return complaints;
}

Expected<void> backup_database(const fs::path& source, const fs::path& target) {
  struct stat st {};
  if (::stat(source.c_str(), &st) != 0) {
    return util::Unexpected<Error>{io_error("read database", source, errno)};
  }
  NPME_TRY_ASSIGN(auto src, Database::open(source, Database::Mode::read_only));
  sqlite3_busy_timeout(src->handle(), k_busy_timeout_ms);
  return store::sqlite::copy_database(*src, target);
}

} // namespace detail

} // namespace npme::snapshot
