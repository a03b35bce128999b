#include "core/store/store.hpp"

#include "core/store/documents.hpp"
#include "core/store/sqlite.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/time.hpp"

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <mutex>
#include <set>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace npme::store {

namespace {

using sqlite::Database;
using sqlite::Statement;
using sqlite::Transaction;

// 1: meta, docs, changes. 2: + tarballs (digests of committed tarballs).
// 3: + docs.versions, docs.uplink and the table `counts`, kept by triggers.
// 4: + docs.split and the table `doc_versions`: package documents split into
// a head and one row per version (core/store/documents.hpp).
constexpr std::int64_t k_schema_version = 4;
constexpr int k_busy_timeout_ms = 10000;
constexpr const char* k_staging_dir = ".staging";
// Readers beyond the number of HTTP threads only cost memory; eight covers
// the server's threads plus background work (snapshots, status).
constexpr std::size_t k_max_readers = 8;

constexpr const char* k_schema = R"sql(
CREATE TABLE IF NOT EXISTS meta(
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
  id TEXT PRIMARY KEY,
  rev TEXT NOT NULL,
  body TEXT NOT NULL,
  seq INTEGER NOT NULL,
  versions INTEGER NOT NULL DEFAULT 0,
  uplink INTEGER NOT NULL DEFAULT 0,
  split INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS doc_versions(
  id TEXT NOT NULL,
  version TEXT NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY(id, version));
CREATE TABLE IF NOT EXISTS changes(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  rev TEXT NOT NULL,
  deleted INTEGER NOT NULL,
  time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tarballs(
  path TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  sha256 BLOB NOT NULL,
  tag INTEGER NOT NULL) WITHOUT ROWID;
)sql";

// What `npme status` shows, kept in the same transactions as the rows it
// counts, so that reading it costs one row however large the registry is:
// package documents (ids not starting with '_') and their versions (the
// count of members of "versions", docs.versions), and the tarballs the
// store committed (table `tarballs`: files it wrote, never an orphan).
constexpr const char* k_counts_schema = R"sql(
CREATE TABLE IF NOT EXISTS counts(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  packages INTEGER NOT NULL,
  versions INTEGER NOT NULL,
  tarballs INTEGER NOT NULL,
  tarball_bytes INTEGER NOT NULL,
  uplink_packages INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS counts_doc_insert AFTER INSERT ON docs WHEN NEW.id < '_' OR NEW.id >= '`'
BEGIN UPDATE counts SET packages = packages + 1, versions = versions + NEW.versions,
  uplink_packages = uplink_packages + NEW.uplink; END;
CREATE TRIGGER IF NOT EXISTS counts_doc_update AFTER UPDATE OF versions, uplink ON docs
  WHEN NEW.id < '_' OR NEW.id >= '`'
BEGIN UPDATE counts SET versions = versions + NEW.versions - OLD.versions,
  uplink_packages = uplink_packages + NEW.uplink - OLD.uplink; END;
CREATE TRIGGER IF NOT EXISTS counts_doc_delete AFTER DELETE ON docs WHEN OLD.id < '_' OR OLD.id >= '`'
BEGIN UPDATE counts SET packages = packages - 1, versions = versions - OLD.versions,
  uplink_packages = uplink_packages - OLD.uplink; END;
CREATE TRIGGER IF NOT EXISTS counts_tarball_insert AFTER INSERT ON tarballs
BEGIN UPDATE counts SET tarballs = tarballs + 1, tarball_bytes = tarball_bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS counts_tarball_update AFTER UPDATE OF size ON tarballs
BEGIN UPDATE counts SET tarball_bytes = tarball_bytes + NEW.size - OLD.size; END;
CREATE TRIGGER IF NOT EXISTS counts_tarball_delete AFTER DELETE ON tarballs
BEGIN UPDATE counts SET tarballs = tarballs - 1, tarball_bytes = tarball_bytes - OLD.size; END;
)sql";

constexpr const char* k_drop_counts = R"sql(
DROP TRIGGER IF EXISTS counts_doc_insert;
DROP TRIGGER IF EXISTS counts_doc_update;
DROP TRIGGER IF EXISTS counts_doc_delete;
DROP TRIGGER IF EXISTS counts_tarball_insert;
DROP TRIGGER IF EXISTS counts_tarball_update;
DROP TRIGGER IF EXISTS counts_tarball_delete;
DROP TABLE IF EXISTS counts;
)sql";

// Counts everything again from the rows (an upgraded database, or one
// whose counts were found wrong). The triggers keep them from then on.
constexpr const char* k_recount = R"sql(
DELETE FROM counts;
UPDATE docs SET versions = CASE WHEN split THEN (SELECT COUNT(*) FROM doc_versions v WHERE v.id = docs.id)
  WHEN NOT json_valid(body) THEN 0
  WHEN json_type(body, '$.versions') = 'object' THEN (SELECT COUNT(*) FROM json_each(body, '$.versions')) ELSE 0 END,
  uplink = CASE WHEN json_valid(body) THEN json_type(body, '$._uplink') IS 'object' ELSE 0 END;
INSERT INTO counts(id, packages, versions, tarballs, tarball_bytes, uplink_packages) VALUES(1,
  (SELECT COUNT(*) FROM docs WHERE id < '_' OR id >= '`'),
  (SELECT COALESCE(SUM(versions), 0) FROM docs WHERE id < '_' OR id >= '`'),
  (SELECT COUNT(*) FROM tarballs),
  (SELECT COALESCE(SUM(size), 0) FROM tarballs),
  (SELECT COALESCE(SUM(uplink), 0) FROM docs WHERE id < '_' OR id >= '`'));
)sql";

constexpr const char* k_select_doc = "SELECT rev, body, seq, split FROM docs WHERE id = ?1";

using util::io_error;

// Checks that `rel_path` names a file strictly inside the packages directory
// and outside its staging area.
Expected<void> check_rel_path(std::string_view rel_path) {
  if (auto reason = util::unsafe_relative_path(rel_path, k_staging_dir)) {
    return make_error(Errc::invalid, "invalid file path '" + std::string(rel_path) + "': " + *reason);
  }
  return {};
}

// Creates the parent directories of `rel_path` under `root` where missing,
// adding to `dirty` every directory whose entries change (the parent of each
// created directory and the file's own directory) so they can be fsynced.
Expected<void> make_parent_dirs(const fs::path& root, std::string_view rel_path, std::set<fs::path>& dirty) {
  // `dirty` holds the own directory of every file placed before in this
  // commit, all of its parents made: the versions of one package need one
  // mkdir per directory, not one per file (an initial sync places thousands).
  if (const auto slash = rel_path.rfind('/');
      slash != std::string_view::npos && dirty.count(root / std::string(rel_path.substr(0, slash))) != 0) {
    return {};
  }
  fs::path current = root;
  std::size_t start = 0;
  while (true) {
    const auto end = rel_path.find('/', start);
    if (end == std::string_view::npos) {
      break;
    }
    fs::path next = current / std::string(rel_path.substr(start, end - start));
    if (::mkdir(next.c_str(), 0755) == 0) {
      dirty.insert(current);
    } else {
      const int err = errno;
      struct stat st {};
      if (err != EEXIST || ::stat(next.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        return util::Unexpected<Error>{io_error("create directory", next, err == EEXIST ? ENOTDIR : err)};
      }
    }
    current = std::move(next);
    start = end + 1;
  }
  dirty.insert(current);
  return {};
}

// Flushes every dirty page and inode of the file system holding `dir` (syncfs).
Expected<void> sync_file_system_of(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return util::Unexpected<Error>{io_error("open", dir, errno)};
  }
  const int rc = ::syncfs(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    return util::Unexpected<Error>{io_error("sync the file system of", dir, err)};
  }
  return {};
}

// Returns the write count <n> of a revision "<n>-<hash>" (0 when malformed).
std::int64_t rev_number(std::string_view rev) {
  std::int64_t n = 0;
  const auto dash = rev.find('-');
  const auto digits = rev.substr(0, dash);
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (ec != std::errc() || ptr != digits.data() + digits.size() || n < 0) {
    return 0;
  }
  return n;
}

std::string make_rev_from_digest(std::int64_t n, std::string_view sha256) {
  return std::to_string(n) + "-" + util::hex(sha256).substr(0, 32);
}

std::string make_rev(std::int64_t n, std::string_view hashed) {
  return make_rev_from_digest(n, util::sha256(hashed));
}

// Records what the store knows of committed file `file` in table
// `tarballs` (its digest; or drops a stale record when it knows none).
Expected<void> record_digest(Database& db, const StagedFile& file) {
  if (file.digest().sha256.empty()) {
    NPME_TRY_ASSIGN(Statement stmt, db.cached("DELETE FROM tarballs WHERE path = ?1"));
    NPME_TRY(stmt.bind_text(1, file.rel_path()));
    NPME_TRY(stmt.step());
    return {};
  }
  NPME_TRY_ASSIGN(Statement stmt, db.cached("INSERT INTO tarballs(path, size, sha256, tag) VALUES(?1, ?2, ?3, ?4) "
                                            "ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                                            "sha256 = excluded.sha256, tag = excluded.tag"));
  NPME_TRY(stmt.bind_text(1, file.rel_path()));
  NPME_TRY(stmt.bind_int64(2, file.digest().size));
  NPME_TRY(stmt.bind_blob(3, file.digest().sha256));
  NPME_TRY(stmt.bind_int64(4, static_cast<std::int64_t>(file.digest().tag)));
  NPME_TRY(stmt.step());
  return {};
}

// Reads document `id` whole; `split` (when given) learns how it is kept.
Expected<std::optional<Document>> read_doc(Database& db, std::string_view id, bool* split = nullptr) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached(k_select_doc));
  NPME_TRY(stmt.bind_text(1, id));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step == Statement::Step::done) {
    return std::optional<Document>{};
  }
  Document doc;
  doc.id = std::string(id);
  doc.rev = stmt.column_text(0);
  doc.body = stmt.column_text(1);
  doc.seq = stmt.column_int64(2);
  const bool is_split = stmt.column_int64(3) != 0;
  stmt.reset();
  if (split != nullptr) {
    *split = is_split;
  }
  if (is_split) {
    NPME_TRY_ASSIGN(const auto versions, documents::read_versions(db, id));
    doc.body = documents::assemble(doc.body, versions);
  }
  return std::optional<Document>{std::move(doc)};
}

// Reads the head of package document `id` (see Store::get_head()). A
// package document kept whole with versions (written into the database by
// other means) is split here: `whole` (when given) receives its versions,
// for the write to store them beside the change.
Expected<std::optional<Head>> read_head(Database& db, std::string_view id, bool* split,
                                        std::vector<documents::Version>* whole = nullptr) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT rev, body, seq, split, uplink FROM docs WHERE id = ?1"));
  NPME_TRY(stmt.bind_text(1, id));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step == Statement::Step::done) {
    *split = false;
    return std::optional<Head>{};
  }
  Head head;
  head.id = std::string(id);
  head.rev = stmt.column_text(0);
  head.body = stmt.column_text(1);
  head.seq = stmt.column_int64(2);
  *split = stmt.column_int64(3) != 0;
  head.uplink = stmt.column_int64(4) != 0;
  stmt.reset();
  if (*split) {
    NPME_TRY_ASSIGN(head.versions, documents::read_version_keys(db, id));
  } else {
    // Kept whole: a package document without a "versions" object (npme
    // splits every other one when it writes it or upgrades the database).
    if (head.body.find("\"versions\"") != std::string::npos) {
      NPME_TRY_ASSIGN(auto prepared, documents::prepare(head.id, head.body, documents::Form::whole));
      if (prepared.split) {
        prepared.text.insert(documents::rev_offset(head.id), head.rev);
        head.body = std::move(prepared.text);
        for (const auto& [version, manifest] : prepared.versions) {
          head.versions.push_back(version);
        }
        if (whole != nullptr) {
          *whole = std::move(prepared.versions);
        }
      }
    }
  }
  return std::optional<Head>{std::move(head)};
}

// Reads rows of (id, rev, body, seq, split) into documents.
Expected<std::vector<Document>> read_docs(Database& db, Statement& stmt) {
  std::vector<Document> docs;
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step == Statement::Step::done) {
      return docs;
    }
    Document doc;
    doc.id = stmt.column_text(0);
    doc.rev = stmt.column_text(1);
    doc.body = stmt.column_text(2);
    doc.seq = stmt.column_int64(3);
    if (stmt.column_int64(4) != 0) {
      NPME_TRY_ASSIGN(const auto versions, documents::read_versions(db, doc.id));
      doc.body = documents::assemble(doc.body, versions);
    }
    docs.push_back(std::move(doc));
  }
}

// Returns the smallest string greater than every string starting with
// `prefix` (nullopt when there is none: the prefix is all 0xff bytes).
std::optional<std::string> prefix_upper_bound(std::string_view prefix) {
  std::string upper(prefix);
  while (!upper.empty() && static_cast<unsigned char>(upper.back()) == 0xff) {
    upper.pop_back();
  }
  if (upper.empty()) {
    return std::nullopt;
  }
  upper.back() = static_cast<char>(static_cast<unsigned char>(upper.back()) + 1);
  return upper;
}

template <typename M, typename Current>
Expected<Write> call_mutation(const M& mutation, const std::optional<Current>& current, const std::string& id) {
  try {
    return mutation(current);
  } catch (const std::exception& e) {
    return make_error(Errc::failed, "document '" + id + "': " + e.what());
  } catch (...) {
    return make_error(Errc::failed, "document '" + id + "': unknown exception in mutation");
  }
}

// Removes `rel_path` under `root`, then its directories while they are empty
// (an unpublished package leaves no empty "<name>/-/" behind).
void remove_file_and_empty_parents(const fs::path& root, const std::string& rel_path) {
  fs::path path = root / rel_path;
  if (::unlink(path.c_str()) != 0) {
    return;
  }
  // `rel_path` was checked: one directory per '/', none of them "." or "..".
  auto parents = std::count(rel_path.begin(), rel_path.end(), '/');
  for (fs::path dir = path.parent_path(); parents > 0; --parents, dir = dir.parent_path()) {
    if (::rmdir(dir.c_str()) != 0) {
      break;
    }
  }
}

Expected<void> delete_versions(Database& db, std::string_view id) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached("DELETE FROM doc_versions WHERE id = ?1"));
  NPME_TRY(stmt.bind_text(1, id));
  NPME_TRY(stmt.step());
  return {};
}

Expected<void> put_version(Database& db, std::string_view id, std::string_view version, std::string_view manifest) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached("INSERT INTO doc_versions(id, version, body) VALUES(?1, ?2, ?3) "
                                            "ON CONFLICT(id, version) DO UPDATE SET body = excluded.body"));
  NPME_TRY(stmt.bind_text(1, id));
  NPME_TRY(stmt.bind_text(2, version));
  NPME_TRY(stmt.bind_text(3, manifest));
  NPME_TRY(stmt.step());
  return {};
}

Expected<void> remove_version(Database& db, std::string_view id, std::string_view version) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached("DELETE FROM doc_versions WHERE id = ?1 AND version = ?2"));
  NPME_TRY(stmt.bind_text(1, id));
  NPME_TRY(stmt.bind_text(2, version));
  NPME_TRY(stmt.step());
  return {};
}

// Brings the rows of `doc_versions` of document `id` to what a put decided:
// the changed versions of a head write; for a whole document, the rows that
// differ from its versions (a follower's copy of a publish adds one row).
Expected<void> write_versions(Database& db, const std::string& id, bool head_write, bool current_split,
                              const Write& write, const documents::Prepared& prepared) {
  if (head_write) {
    for (const auto& version : write.remove_versions) {
      NPME_TRY(remove_version(db, id, version));
    }
    for (const auto& [version, manifest] : write.put_versions) {
      NPME_TRY(put_version(db, id, version, manifest));
    }
    return {};
  }
  if (!prepared.split) {
    return current_split ? delete_versions(db, id) : Expected<void>{};
  }
  std::vector<documents::Version> existing;
  if (current_split) {
    NPME_TRY_ASSIGN(existing, documents::read_versions(db, id));
  }
  // Both lists are sorted by key: one merge pass.
  auto old = existing.begin();
  for (const auto& [version, manifest] : prepared.versions) {
    while (old != existing.end() && old->first < version) {
      NPME_TRY(remove_version(db, id, old->first));
      ++old;
    }
    if (old != existing.end() && old->first == version) {
      if (old->second != manifest) {
        NPME_TRY(put_version(db, id, version, manifest));
      }
      ++old;
      continue;
    }
    NPME_TRY(put_version(db, id, version, manifest));
  }
  for (; old != existing.end(); ++old) {
    NPME_TRY(remove_version(db, id, old->first));
  }
  return {};
}

// Splits every package document still kept whole (a database from before
// schema 4). A document that does not parse stays as it is, for npme doctor
// to report.
Expected<void> split_documents(Database& db) {
  std::vector<std::string> ids;
  {
    NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT id FROM docs WHERE (id < '_' OR id >= '`') AND split = 0"));
    while (true) {
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::done) {
        break;
      }
      ids.push_back(stmt.column_text(0));
    }
  }
  for (const auto& id : ids) {
    NPME_TRY_ASSIGN(Statement read, db.prepare("SELECT rev, body FROM docs WHERE id = ?1"));
    NPME_TRY(read.bind_text(1, id));
    NPME_TRY(read.step());
    const std::string rev = read.column_text(0);
    auto prepared = documents::prepare(id, read.column_text(1), documents::Form::whole);
    if (!prepared || !prepared->split) {
      continue;
    }
    prepared->text.insert(documents::rev_offset(id), rev);
    NPME_TRY(write_versions(db, id, false, false, Write{}, *prepared));
    NPME_TRY_ASSIGN(Statement update, db.prepare("UPDATE docs SET body = ?2, split = 1 WHERE id = ?1"));
    NPME_TRY(update.bind_text(1, id));
    NPME_TRY(update.bind_text(2, prepared->text));
    NPME_TRY(update.step());
  }
  return {};
}

} // namespace

struct Store::Impl {
  fs::path db_path;

  std::mutex write_mutex;
  std::unique_ptr<Database> writer;

  std::mutex readers_mutex;
  std::condition_variable readers_cv;
  std::vector<std::unique_ptr<Database>> idle_readers;
  std::size_t open_readers = 0;

  std::mutex seq_mutex;
  std::condition_variable seq_cv;
  std::function<void()> before_wait; // test seam, see set_before_wait_hook()

  std::mutex listeners_mutex;
  std::vector<std::function<void(const Change&)>> listeners;

  // A reader connection borrowed from the pool, returned on destruction.
  class Reader {
  public:
    Reader(Impl& impl, std::unique_ptr<Database> db) : m_impl(&impl), m_db(std::move(db)) {}
    Reader(Reader&& other) noexcept = default;
    Reader& operator=(Reader&&) = delete;
    ~Reader() {
      if (m_db) {
        m_impl->give_back(std::move(m_db));
      }
    }
    Database& db() { return *m_db; }

  private:
    Impl* m_impl;
    std::unique_ptr<Database> m_db;
  };

  Expected<Reader> reader() {
    std::unique_lock lock(readers_mutex);
    readers_cv.wait(lock, [&] { return !idle_readers.empty() || open_readers < k_max_readers; });
    if (!idle_readers.empty()) {
      auto db = std::move(idle_readers.back());
      idle_readers.pop_back();
      return Reader(*this, std::move(db));
    }
    ++open_readers;
    lock.unlock();
    auto opened = open_reader();
    if (!opened) {
      lock.lock();
      --open_readers;
      readers_cv.notify_one();
      return util::Unexpected<Error>{std::move(opened).error()};
    }
    return Reader(*this, std::move(*opened));
  }

  void give_back(std::unique_ptr<Database> db) {
    {
      std::lock_guard lock(readers_mutex);
      idle_readers.push_back(std::move(db));
    }
    readers_cv.notify_one();
  }

  Expected<std::unique_ptr<Database>> open_reader() const {
    NPME_TRY_ASSIGN(auto db, Database::open(db_path, Database::Mode::read_only));
    NPME_TRY(db->exec("PRAGMA busy_timeout=" + std::to_string(k_busy_timeout_ms)));
    return db;
  }

  Expected<std::int64_t> open_writer() {
    NPME_TRY_ASSIGN(writer, Database::open(db_path, Database::Mode::read_write_create));
    NPME_TRY(writer->exec("PRAGMA busy_timeout=" + std::to_string(k_busy_timeout_ms)));
    NPME_TRY_ASSIGN(const std::string mode, writer->query_text("PRAGMA journal_mode=WAL"));
    if (mode != "wal") {
      return make_error(Errc::io, "cannot use write-ahead logging in database '" + db_path.string() +
                                    "': journal mode stays '" + mode + "'");
    }
    // Every acknowledged publish must survive a power loss: sync the WAL on
    // each commit, not only at checkpoints.
    NPME_TRY(writer->exec("PRAGMA synchronous=FULL"));
    NPME_TRY_ASSIGN(auto tx, Transaction::begin(*writer, Transaction::Mode::immediate));
    NPME_TRY(writer->exec(k_schema));
    bool upgrade = false;
    {
      NPME_TRY_ASSIGN(Statement stmt, writer->prepare("SELECT value FROM meta WHERE key = 'schema_version'"));
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::row) {
        const std::string text = stmt.column_text(0);
        std::int64_t version = 0;
        const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), version);
        if (ec != std::errc() || ptr != text.data() + text.size() || version < 1) {
          return make_error(Errc::io, "database '" + db_path.string() + "': invalid schema version '" + text + "'");
        }
        if (version > k_schema_version) {
          return make_error(Errc::io, "database '" + db_path.string() + "': schema version " + text +
                                        " is newer than this npme supports (" + std::to_string(k_schema_version) + ")");
        }
        // Older versions lack only tables, which k_schema has just created.
        upgrade = version < k_schema_version;
      } else {
        upgrade = true;
      }
    }
    // Versions 3 and 4 added columns to a table that older databases have.
    bool added_column = false;
    for (const char* column : {"versions", "uplink", "split"}) {
      NPME_TRY_ASSIGN(Statement has_column,
                      writer->prepare("SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = ?1"));
      NPME_TRY(has_column.bind_text(1, column));
      NPME_TRY(has_column.step());
      if (has_column.column_int64(0) == 0) {
        NPME_TRY(writer->exec("ALTER TABLE docs ADD COLUMN " + std::string(column) + " INTEGER NOT NULL DEFAULT 0"));
        added_column = added_column || std::string_view(column) != "split";
      }
    }
    if (upgrade) {
      NPME_TRY(split_documents(*writer));
    }
    if (added_column) {
      // Counts and triggers made before the columns existed count less.
      NPME_TRY(writer->exec(k_drop_counts));
      upgrade = true;
    }
    NPME_TRY(writer->exec(k_counts_schema));
    NPME_TRY_ASSIGN(Statement counted, writer->prepare("SELECT COUNT(*) FROM counts"));
    NPME_TRY(counted.step());
    if (upgrade || counted.column_int64(0) != 1) {
      NPME_TRY(writer->exec(k_recount));
    }
    if (upgrade) {
      NPME_TRY_ASSIGN(Statement set_version,
                      writer->prepare("INSERT INTO meta(key, value) VALUES('schema_version', ?1) "
                                      "ON CONFLICT(key) DO UPDATE SET value = excluded.value"));
      NPME_TRY(set_version.bind_text(1, std::to_string(k_schema_version)));
      NPME_TRY(set_version.step());
    }
    NPME_TRY(tx.commit());
    NPME_TRY_ASSIGN(Statement max_seq, writer->prepare("SELECT COALESCE(MAX(seq), 0) FROM changes"));
    NPME_TRY(max_seq.step());
    return max_seq.column_int64(0);
  }
};

Store::Store(Paths paths) : m_paths(std::move(paths)), m_impl(std::make_unique<Impl>()) {}

Store::~Store() = default;

namespace {
thread_local CommitScope* t_commit_scope = nullptr;
} // namespace

CommitScope::CommitScope() : m_outer(t_commit_scope) {
  t_commit_scope = this;
}

CommitScope::~CommitScope() {
  t_commit_scope = m_outer;
}

Expected<std::unique_ptr<Store>> Store::open(const Paths& paths) {
  NPME_TRY(util::create_dirs(paths.metadata));
  NPME_TRY(util::create_dirs(paths.packages));
  NPME_TRY(util::create_dirs(paths.data));
  const fs::path staging = paths.packages / k_staging_dir;
  NPME_TRY(util::create_dirs(staging));
  // Staged files that were never committed belong to writes that died with a
  // previous process; nothing refers to them.
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code remove_ec;
    fs::remove_all(it->path(), remove_ec);
  }
  if (ec) {
    return make_error(Errc::io, "cannot clean '" + staging.string() + "': " + ec.message());
  }

  std::unique_ptr<Store> store(new Store(paths));
  store->m_impl->db_path = paths.metadata / "registry.sqlite";
  NPME_TRY_ASSIGN(const std::int64_t seq, store->m_impl->open_writer());
  store->m_update_seq.store(seq);
  return store;
}

Expected<std::optional<Document>> Store::get(std::string_view id) const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  return read_doc(reader.db(), id);
}

Expected<std::vector<Document>> Store::list(std::string_view prefix) const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  auto& db = reader.db();
  if (prefix.empty()) {
    NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT id, rev, body, seq, split FROM docs ORDER BY id"));
    return read_docs(db, stmt);
  }
  // A range on the primary key instead of LIKE: uses the index and treats
  // '%' and '_' in the prefix literally.
  const auto upper = prefix_upper_bound(prefix);
  if (!upper) {
    NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT id, rev, body, seq, split FROM docs WHERE id >= ?1 ORDER BY id"));
    NPME_TRY(stmt.bind_text(1, prefix));
    return read_docs(db, stmt);
  }
  NPME_TRY_ASSIGN(Statement stmt,
                  db.cached("SELECT id, rev, body, seq, split FROM docs WHERE id >= ?1 AND id < ?2 ORDER BY id"));
  NPME_TRY(stmt.bind_text(1, prefix));
  NPME_TRY(stmt.bind_text(2, *upper));
  return read_docs(db, stmt);
}

Expected<std::vector<std::string>> Store::list_ids() const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY_ASSIGN(Statement stmt, reader.db().cached("SELECT id FROM docs ORDER BY id"));
  std::vector<std::string> ids;
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step != Statement::Step::row) {
      break;
    }
    ids.push_back(stmt.column_text(0));
  }
  return ids;
}

Expected<std::int64_t> Store::count_packages() const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY_ASSIGN(Statement stmt, reader.db().cached("SELECT count(*) FROM docs WHERE id < '_' OR id >= '`'"));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step != Statement::Step::row) {
    return std::int64_t{0};
  }
  return stmt.column_int64(0);
}

Expected<void> Store::add_file(const std::string& id, const std::string& rev, StagedFile file) {
  NPME_TRY(check_rel_path(file.rel_path()));
  if (file.temp().empty()) {
    return make_error(Errc::invalid, "staged file for '" + file.rel_path() + "': already committed");
  }
  Impl& impl = *m_impl;
  std::unique_lock write_lock(impl.write_mutex);
  Database& db = *impl.writer;
  NPME_TRY_ASSIGN(const std::optional<Document> current, read_doc(db, id));
  if (!current || current->rev != rev) {
    return make_error(Errc::conflict,
                      "document '" + id + "' changed while its tarball " + file.rel_path() + " was fetched");
  }
  if (!file.synced()) {
    return make_error(Errc::invalid, "staged file for '" + file.rel_path() + "': stage it with Sync::now");
  }
  std::set<fs::path> dirty;
  NPME_TRY(make_parent_dirs(m_paths.packages, file.rel_path(), dirty));
  const fs::path target = m_paths.packages / file.rel_path();
  if (::rename(file.temp().c_str(), target.c_str()) != 0) {
    return util::Unexpected<Error>{io_error("move a staged file to", target, errno)};
  }
  file.release();
  dirty.insert(target.parent_path());
  for (const auto& dir : dirty) {
    NPME_TRY(util::fsync_dir(dir));
  }
  return record_digest(db, file);
}

Expected<std::vector<Document>> Store::list_packages() const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  // '`' is the character after '_': every id outside ['_', '`') is a package.
  NPME_TRY_ASSIGN(Statement stmt, reader.db().cached("SELECT id, rev, body, seq, split FROM docs "
                                                     "WHERE id < '_' OR id >= '`' ORDER BY id"));
  return read_docs(reader.db(), stmt);
}

struct Store::Item {
  const std::string* id = nullptr;
  const Mutation* mutation = nullptr;          // decides from the whole document, or
  const HeadMutation* head_mutation = nullptr; // from its head (Store::apply_head)
};

Expected<std::optional<Head>> Store::get_head(std::string_view id) const {
  if (!documents::is_package_id(id)) {
    return make_error(Errc::invalid, "document '" + std::string(id) + "' is not a package's");
  }
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  bool split = false;
  return read_head(reader.db(), id, &split);
}

Expected<Document> Store::apply(const std::string& id, const Mutation& mutation) {
  NPME_TRY_ASSIGN(auto written, commit({Item{&id, &mutation, nullptr}}, Batch::single));
  return std::move(written.front());
}

Expected<Document> Store::apply_head(const std::string& id, const HeadMutation& mutation) {
  if (!documents::is_package_id(id)) {
    return make_error(Errc::invalid, "document '" + id + "' is not a package's");
  }
  NPME_TRY_ASSIGN(auto written, commit({Item{&id, nullptr, &mutation}}, Batch::single));
  return std::move(written.front());
}

Expected<std::vector<Document>> Store::apply_batch(const std::vector<BatchItem>& items) {
  std::vector<Item> list;
  list.reserve(items.size());
  for (const auto& item : items) {
    list.push_back(Item{&item.id, &item.mutation, nullptr});
  }
  return commit(list, Batch::many);
}

// The one write path. For each item: read, decide, check; then files into
// place (durable first), then every document and change record in one
// transaction. `Batch::single` keeps apply()'s contract (a no-op or a removal
// of a missing document is an error; fsync per directory); `Batch::many`
// skips those items and makes the files durable with syncfs, once before the
// renames and once after, whatever the number of files.
Expected<std::vector<Document>> Store::commit(const std::vector<Item>& items, Batch batch) {
  for (const auto& item : items) {
    if (item.id->empty()) {
      return make_error(Errc::invalid, "document id: empty");
    }
  }
  Impl& impl = *m_impl;
  std::unique_lock write_lock(impl.write_mutex);
  Database& db = *impl.writer;
  NPME_TRY_ASSIGN(Transaction tx, Transaction::begin(db, Transaction::Mode::immediate));

  struct Pending {
    const std::string* id = nullptr;
    Write write;
    Document result;
    bool skip = false;
    std::int64_t versions = 0; // of a put: docs.versions
    bool uplink = false;       // of a put: docs.uplink
    bool head_write = false;   // decided by a HeadMutation: Write::put_versions etc.
    bool current_split = false; // the current revision's rows are in doc_versions
    std::vector<documents::Version> current_whole; // a head write's current versions, kept whole until now
    documents::Prepared prepared; // of a put
  };
  std::vector<Pending> pending;
  pending.reserve(items.size());
  bool deferred_files = false;
  for (const auto& item : items) {
    const std::string& id = *item.id;
    bool current_split = false;
    std::vector<documents::Version> current_whole;
    std::optional<Document> current;
    Write write;
    if (item.head_mutation != nullptr) {
      NPME_TRY_ASSIGN(const std::optional<Head> head, read_head(db, id, &current_split, &current_whole));
      if (head) {
        current = Document{head->id, head->rev, "", head->seq};
      }
      NPME_TRY_ASSIGN(write, call_mutation(*item.head_mutation, head, id));
    } else {
      NPME_TRY_ASSIGN(current, read_doc(db, id, &current_split));
      NPME_TRY_ASSIGN(write, call_mutation(*item.mutation, current, id));
      if (!write.put_versions.empty() || !write.remove_versions.empty()) {
        return make_error(Errc::invalid, "document '" + id + "': single versions are written through apply_head()");
      }
    }
    Pending entry;
    entry.id = &id;
    entry.write = std::move(write);
    entry.head_write = item.head_mutation != nullptr;
    entry.current_split = current_split;
    entry.current_whole = std::move(current_whole);
    if (entry.write.kind == Write::Kind::none || (entry.write.kind == Write::Kind::remove && !current)) {
      if (batch == Batch::single) {
        tx.rollback();
        if (current && entry.write.kind == Write::Kind::none) {
          return std::vector<Document>{*current};
        }
        return make_error(Errc::not_found, "document '" + id + "' does not exist");
      }
      entry.skip = true;
      entry.result = current.value_or(Document{id, "", "", 0});
      pending.push_back(std::move(entry));
      continue;
    }
    for (const auto& file : entry.write.add_files) {
      NPME_TRY(check_rel_path(file.rel_path()));
      if (file.temp().empty()) {
        return make_error(Errc::invalid, "staged file for '" + file.rel_path() + "': already committed");
      }
      deferred_files = deferred_files || !file.synced();
    }
    for (const auto& rel_path : entry.write.remove_files) {
      NPME_TRY(check_rel_path(rel_path));
    }
    const Write& decided = entry.write;
    if (!decided.rev.empty()) {
      // The kept revision goes into the JSON text verbatim: only "<n>-<hex>".
      const auto dash = decided.rev.find('-');
      const bool hex_tail = dash != std::string::npos && dash + 1 < decided.rev.size() &&
                            decided.rev.size() - dash <= 65 &&
                            decided.rev.find_first_not_of("0123456789abcdef", dash + 1) == std::string::npos;
      if (rev_number(decided.rev) <= 0 || !hex_tail) {
        return make_error(Errc::invalid, "document '" + id + "': malformed revision '" + decided.rev + "'");
      }
    }
    std::int64_t n = 1;
    if (current) {
      n = rev_number(current->rev) + 1;
    } else {
      // A document deleted before continues from its tombstone's revision, so
      // a recreated package never repeats an old revision (caches key on it).
      NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT rev FROM changes WHERE id = ?1"));
      NPME_TRY(stmt.bind_text(1, id));
      NPME_TRY_ASSIGN(const auto step, stmt.step());
      if (step == Statement::Step::row) {
        n = rev_number(stmt.column_text(0)) + 1;
      }
    }
    entry.result.id = id;
    if (decided.kind == Write::Kind::put) {
      using documents::Form;
      NPME_TRY_ASSIGN(entry.prepared, documents::prepare(id, decided.body, entry.head_write ? Form::head : Form::whole));
      documents::Prepared& prepared = entry.prepared;
      std::string rev = decided.rev;
      if (entry.head_write) {
        for (const auto& [version, manifest] : decided.put_versions) {
          if (version.empty() || manifest.empty() || manifest.front() != '{' || !nlohmann::json::accept(manifest)) {
            return make_error(Errc::invalid, "document '" + id + "': the manifest of version '" + version +
                                               "' is not a JSON object");
          }
        }
        if (rev.empty()) {
          // Derived from the previous revision and the change: hashing the
          // whole document would cost what the head write saves.
          util::Hasher hasher(util::Hasher::Algorithm::sha256);
          hasher.update(current ? current->rev : "");
          hasher.update("\n");
          hasher.update(prepared.text);
          for (const auto& [version, manifest] : decided.put_versions) {
            hasher.update("\n+");
            hasher.update(version);
            hasher.update("\n");
            hasher.update(manifest);
          }
          for (const auto& version : decided.remove_versions) {
            hasher.update("\n-");
            hasher.update(version);
          }
          rev = make_rev_from_digest(n, hasher.finish());
        }
      } else if (rev.empty()) {
        rev = make_rev_from_digest(n, documents::whole_digest(prepared));
      }
      prepared.text.insert(documents::rev_offset(id), rev);
      entry.result.rev = std::move(rev);
      if (!entry.head_write) {
        entry.result.body = prepared.split ? documents::assemble(prepared.text, prepared.versions) : prepared.text;
      }
      entry.versions = prepared.version_count;
      entry.uplink = prepared.uplink;
    } else {
      entry.result.rev = make_rev(n, "");
    }
    pending.push_back(std::move(entry));
  }

  // Files go into place before the metadata that names them commits. Files
  // that did not exist before are removed again if the commit fails, so a
  // failed write leaves the packages directory as it was.
  std::vector<fs::path> created;
  const auto fail = [&](Error error) -> Expected<std::vector<Document>> {
    for (const auto& path : created) {
      ::unlink(path.c_str());
    }
    return util::Unexpected<Error>{std::move(error)};
  };
  const auto sync_filesystem = [&]() -> Expected<void> { return sync_file_system_of(m_paths.packages); };
  if (deferred_files) {
    if (auto synced = sync_filesystem(); !synced) {
      return fail(std::move(synced).error());
    }
  }
  std::set<fs::path> dirty;
  for (auto& entry : pending) {
    if (entry.skip) {
      continue;
    }
    for (auto& file : entry.write.add_files) {
      auto made = make_parent_dirs(m_paths.packages, file.rel_path(), dirty);
      if (!made) {
        return fail(std::move(made).error());
      }
      const fs::path target = m_paths.packages / file.rel_path();
      struct stat st {};
      const bool existed = ::lstat(target.c_str(), &st) == 0;
      if (::rename(file.temp().c_str(), target.c_str()) != 0) {
        return fail(io_error("move a staged file to", target, errno));
      }
      file.release();
      if (!existed) {
        created.push_back(target);
      }
    }
  }
  // One syncfs beats many directory fsyncs for a large batch; for a few
  // directories the fsyncs are cheaper than flushing the whole file system.
  constexpr std::size_t k_syncfs_threshold = 16;
  if (batch == Batch::many && dirty.size() > k_syncfs_threshold) {
    if (auto synced = sync_filesystem(); !synced) {
      return fail(std::move(synced).error());
    }
  } else {
    for (const auto& dir : dirty) {
      auto synced = util::fsync_dir(dir);
      if (!synced) {
        return fail(std::move(synced).error());
      }
    }
  }

  const std::string time = util::iso8601();
  const auto write_metadata = [&]() -> Expected<void> {
    for (auto& entry : pending) {
      if (entry.skip) {
        continue;
      }
      const std::string& id = *entry.id;
      {
        NPME_TRY_ASSIGN(Statement stmt, db.cached("DELETE FROM changes WHERE id = ?1"));
        NPME_TRY(stmt.bind_text(1, id));
        NPME_TRY(stmt.step());
      }
      {
        NPME_TRY_ASSIGN(Statement stmt, db.cached("INSERT INTO changes(id, rev, deleted, time) "
                                                  "VALUES(?1, ?2, ?3, ?4)"));
        NPME_TRY(stmt.bind_text(1, id));
        NPME_TRY(stmt.bind_text(2, entry.result.rev));
        NPME_TRY(stmt.bind_int64(3, entry.write.kind == Write::Kind::remove ? 1 : 0));
        NPME_TRY(stmt.bind_text(4, time));
        NPME_TRY(stmt.step());
        entry.result.seq = db.last_insert_rowid();
      }
      // The digests follow the files: dropped with a removed file, set
      // for each file put in place (a path both removed and added stays).
      for (const auto& rel_path : entry.write.remove_files) {
        NPME_TRY_ASSIGN(Statement stmt, db.cached("DELETE FROM tarballs WHERE path = ?1"));
        NPME_TRY(stmt.bind_text(1, rel_path));
        NPME_TRY(stmt.step());
      }
      for (const auto& file : entry.write.add_files) {
        NPME_TRY(record_digest(db, file));
      }
      if (entry.write.kind == Write::Kind::put) {
        for (const auto& [version, manifest] : entry.current_whole) {
          NPME_TRY(put_version(db, id, version, manifest));
        }
        NPME_TRY(write_versions(db, id, entry.head_write, entry.current_split, entry.write, entry.prepared));
        if (entry.head_write) {
          NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT COUNT(*) FROM doc_versions WHERE id = ?1"));
          NPME_TRY(stmt.bind_text(1, id));
          NPME_TRY(stmt.step());
          entry.versions = stmt.column_int64(0);
        }
        NPME_TRY_ASSIGN(Statement stmt, db.cached("INSERT INTO docs(id, rev, body, seq, versions, uplink, split) "
                                                  "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) "
                                                  "ON CONFLICT(id) DO UPDATE SET rev = excluded.rev, "
                                                  "body = excluded.body, seq = excluded.seq, "
                                                  "versions = excluded.versions, uplink = excluded.uplink, "
                                                  "split = excluded.split"));
        NPME_TRY(stmt.bind_text(1, id));
        NPME_TRY(stmt.bind_text(2, entry.result.rev));
        NPME_TRY(stmt.bind_text(3, entry.prepared.text));
        NPME_TRY(stmt.bind_int64(4, entry.result.seq));
        NPME_TRY(stmt.bind_int64(5, entry.versions));
        NPME_TRY(stmt.bind_int64(6, entry.uplink ? 1 : 0));
        NPME_TRY(stmt.bind_int64(7, entry.prepared.split ? 1 : 0));
        NPME_TRY(stmt.step());
      } else {
        if (entry.current_split) {
          NPME_TRY(delete_versions(db, id));
        }
        NPME_TRY_ASSIGN(Statement stmt, db.cached("DELETE FROM docs WHERE id = ?1"));
        NPME_TRY(stmt.bind_text(1, id));
        NPME_TRY(stmt.step());
      }
    }
    NPME_TRY(tx.commit());
    return {};
  };
  auto committed = write_metadata();
  if (!committed) {
    tx.rollback();
    return fail(std::move(committed).error());
  }

  // Committed: the old files are no longer referenced. Deleting them under
  // the write lock keeps a concurrent write of the same path from losing its
  // new file. A file that cannot be deleted is only wasted space.
  std::vector<Change> changes;
  std::vector<Document> results;
  results.reserve(pending.size());
  for (auto& entry : pending) {
    if (!entry.skip) {
      std::set<std::string> added;
      for (const auto& file : entry.write.add_files) {
        added.insert(file.rel_path());
      }
      for (const auto& rel_path : entry.write.remove_files) {
        if (added.count(rel_path) == 0) {
          remove_file_and_empty_parents(m_paths.packages, rel_path);
        }
      }
      changes.push_back(
        Change{entry.result.seq, *entry.id, entry.result.rev, entry.write.kind == Write::Kind::remove, time});
    }
    results.push_back(std::move(entry.result));
  }

  write_lock.unlock();

  std::vector<std::function<void(const Change&)>> listeners;
  {
    std::lock_guard lock(impl.listeners_mutex);
    listeners = impl.listeners;
  }
  // Listeners run outside the write lock so that one may read (or even write)
  // the store; an exception from one cannot undo the commit, so it is dropped.
  for (const auto& change : changes) {
    for (const auto& listener : listeners) {
      try {
        listener(change);
      } catch (...) {
      }
    }
  }
  if (!changes.empty() && t_commit_scope != nullptr) {
    t_commit_scope->m_last_seq = changes.back().seq;
  }
  // Waiters (the feed's long polls) wake only after the listeners have
  // invalidated caches: a follower that reads the feed and then the
  // packument never gets the previous version. Commits may finish their
  // listeners out of order, so the sequence only ever moves forward.
  if (!changes.empty()) {
    {
      std::lock_guard lock(impl.seq_mutex);
      if (m_update_seq.load() < changes.back().seq) {
        m_update_seq.store(changes.back().seq);
      }
    }
    impl.seq_cv.notify_all();
  }
  return results;
}

Expected<StagedFile> Store::stage_file(const std::string& rel_path, std::string_view bytes, Sync sync) {
  NPME_TRY(check_rel_path(rel_path));
  NPME_TRY_ASSIGN(FileStage stage, begin_stage());
  NPME_TRY(stage.write(bytes));
  return stage.finish(rel_path, sync);
}

fs::path Store::staging_dir() const {
  return m_paths.packages / k_staging_dir;
}

Expected<FileStage> Store::begin_stage() {
  const fs::path temp = staging_dir() / (util::random_token(24) + ".tmp");
  util::Fd fd(::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) {
    return util::Unexpected<Error>{io_error("write", temp, errno)};
  }
  return FileStage(temp, std::move(fd));
}

Expected<void> Store::sync_staged(const std::vector<StagedFile*>& files) {
  NPME_TRY(sync_file_system_of(m_paths.packages));
  for (auto* file : files) {
    file->set_synced(true);
  }
  return {};
}

Expected<std::optional<FileDigest>> Store::tarball_digest(std::string_view rel_path) const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY_ASSIGN(Statement stmt, reader.db().cached("SELECT sha256, tag, size FROM tarballs WHERE path = ?1"));
  NPME_TRY(stmt.bind_text(1, rel_path));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step == Statement::Step::done) {
    return std::optional<FileDigest>{};
  }
  return std::optional<FileDigest>{
    FileDigest{stmt.column_blob(0), static_cast<std::uint64_t>(stmt.column_int64(1)), stmt.column_int64(2)}};
}

Expected<Store::FileState> Store::check_file(std::string_view rel_path) const {
  const fs::path path = file_path(rel_path);
  const int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (raw < 0) {
    if (errno == ENOENT) {
      return FileState::missing;
    }
    return util::Unexpected<Error>{io_error("read", path, errno)};
  }
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{raw};
  struct stat st {};
  if (::fstat(raw, &st) != 0) {
    return util::Unexpected<Error>{io_error("stat", path, errno)};
  }
  if (!S_ISREG(st.st_mode)) {
    return FileState::missing;
  }
  NPME_TRY_ASSIGN(const auto record, tarball_digest(rel_path));
  if (!record) {
    return FileState::unrecorded;
  }
  if (st.st_size != record->size) {
    return FileState::wrong_size;
  }
  ::posix_fadvise(raw, 0, 0, POSIX_FADV_SEQUENTIAL);
  util::Checksum tag;
  start_file_tag(tag, record->sha256);
  NPME_TRY(util::read_chunks(raw, path, 1 << 20, [&](std::string_view chunk) { tag.update(chunk); }));
  return tag.value() == record->tag ? FileState::intact : FileState::wrong_tag;
}

fs::path Store::file_path(std::string_view rel_path) const {
  return m_paths.packages / std::string(rel_path);
}

std::string Store::file_path_native(std::string_view rel_path) const {
  const std::string& dir = m_paths.packages.native();
  std::string out;
  out.reserve(dir.size() + 1 + rel_path.size());
  out += dir;
  if (!out.empty() && out.back() != '/') {
    out += '/';
  }
  out += rel_path;
  return out;
}

Expected<std::vector<Change>> Store::changes_since(std::int64_t since, std::size_t limit) const {
  std::vector<Change> changes;
  if (limit == 0) {
    return changes;
  }
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY_ASSIGN(Statement stmt, reader.db().cached("SELECT seq, id, rev, deleted, time FROM changes "
                                                     "WHERE seq > ?1 ORDER BY seq LIMIT ?2"));
  NPME_TRY(stmt.bind_int64(1, since));
  const auto max = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  NPME_TRY(stmt.bind_int64(2, static_cast<std::int64_t>(std::min(limit, max))));
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step == Statement::Step::done) {
      return changes;
    }
    Change change;
    change.seq = stmt.column_int64(0);
    change.id = stmt.column_text(1);
    change.rev = stmt.column_text(2);
    change.deleted = stmt.column_int64(3) != 0;
    change.time = stmt.column_text(4);
    changes.push_back(std::move(change));
  }
}

std::int64_t Store::wait_for_change(std::int64_t seq, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(m_impl->seq_mutex);
  if (m_impl->before_wait && m_update_seq.load() <= seq) {
    m_impl->before_wait();
  }
  m_impl->seq_cv.wait_for(lock, timeout, [&] { return m_update_seq.load() > seq; });
  return m_update_seq.load();
}

void Store::set_before_wait_hook(std::function<void()> hook) {
  m_impl->before_wait = std::move(hook);
}

void Store::on_change(std::function<void(const Change&)> listener) {
  std::lock_guard lock(m_impl->listeners_mutex);
  m_impl->listeners.push_back(std::move(listener));
}

Expected<Counts> Store::counts() const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY_ASSIGN(Statement stmt,
                  reader.db().cached("SELECT packages, versions, tarballs, tarball_bytes, uplink_packages "
                                     "FROM counts WHERE id = 1"));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step != Statement::Step::row) {
    return make_error(Errc::io, "database '" + m_impl->db_path.string() + "': the counts are missing");
  }
  return Counts{stmt.column_int64(0), stmt.column_int64(1), stmt.column_int64(2), stmt.column_int64(3),
                stmt.column_int64(4)};
}

Expected<Counts> Store::recount() {
  std::lock_guard write_lock(m_impl->write_mutex);
  Database& db = *m_impl->writer;
  NPME_TRY_ASSIGN(Transaction tx, Transaction::begin(db, Transaction::Mode::immediate));
  NPME_TRY(db.exec(k_recount));
  NPME_TRY(tx.commit());
  return counts();
}

Expected<void> Store::backup_to(const fs::path& target) const {
  struct stat st {};
  if (::lstat(target.c_str(), &st) == 0) {
    return make_error(Errc::conflict, "cannot back up to '" + target.string() + "': file exists");
  }
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY(sqlite::copy_database(reader.db(), target));
  fs::path dir = target.parent_path();
  if (dir.empty()) {
    dir = ".";
  }
  return util::fsync_dir(dir);
}

Expected<std::optional<std::string>> Store::get_meta(std::string_view key) const {
  NPME_TRY_ASSIGN(auto reader, m_impl->reader());
  NPME_TRY_ASSIGN(Statement stmt, reader.db().cached("SELECT value FROM meta WHERE key = ?1"));
  NPME_TRY(stmt.bind_text(1, key));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step == Statement::Step::done) {
    return std::optional<std::string>{};
  }
  return std::optional<std::string>{stmt.column_text(0)};
}

Expected<void> Store::set_meta(std::string_view key, std::string_view value) {
  if (key == "schema_version") {
    return make_error(Errc::invalid, "meta key 'schema_version': reserved for the store");
  }
  std::lock_guard lock(m_impl->write_mutex);
  NPME_TRY_ASSIGN(Statement stmt, m_impl->writer->cached("INSERT INTO meta(key, value) VALUES(?1, ?2) "
                                                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value"));
  NPME_TRY(stmt.bind_text(1, key));
  NPME_TRY(stmt.bind_text(2, value));
  NPME_TRY(stmt.step());
  return {};
}

} // namespace npme::store
