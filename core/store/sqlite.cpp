#include "core/store/sqlite.hpp"

#include <sqlite3.h>

#include <chrono>
#include <thread>

#include <unistd.h>

#include <climits>

namespace npme::store::sqlite {

Statement::Statement(Database& db, sqlite3_stmt* stmt, Ownership ownership)
  : m_db(&db), m_stmt(stmt), m_ownership(ownership) {}

Statement::Statement(Statement&& other) noexcept
  : m_db(other.m_db), m_stmt(other.m_stmt), m_ownership(other.m_ownership) {
  other.m_db = nullptr;
  other.m_stmt = nullptr;
}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    release();
    m_db = other.m_db;
    m_stmt = other.m_stmt;
    m_ownership = other.m_ownership;
    other.m_db = nullptr;
    other.m_stmt = nullptr;
  }
  return *this;
}

Statement::~Statement() {
  release();
}

void Statement::release() {
  if (m_stmt == nullptr) {
    return;
  }
  if (m_ownership == Ownership::borrowed) {
    m_db->give_back(m_stmt);
  } else {
    sqlite3_finalize(m_stmt);
  }
  m_stmt = nullptr;
  m_db = nullptr;
}

Error Statement::error(std::string_view what) const {
  return m_db->error(what);
}

Expected<void> Statement::bind_bytes(int index, std::string_view value, bool blob) {
  if (value.size() > static_cast<std::size_t>(INT_MAX)) {
    return make_error(Errc::too_large, "database '" + m_db->path().string() + "': value of " +
                                         std::to_string(value.size()) + " bytes is too large");
  }
  // An empty view may have a null data(); SQLite would bind NULL for it.
  const char* data = value.data() != nullptr ? value.data() : "";
  const int size = static_cast<int>(value.size());
  const int rc = blob ? sqlite3_bind_blob(m_stmt, index, data, size, SQLITE_TRANSIENT)
                      : sqlite3_bind_text(m_stmt, index, data, size, SQLITE_TRANSIENT);
  if (rc != SQLITE_OK) {
    return util::Unexpected<Error>{error("cannot bind a value in database")};
  }
  return {};
}

Expected<void> Statement::bind_text(int index, std::string_view value) {
  return bind_bytes(index, value, false);
}

Expected<void> Statement::bind_blob(int index, std::string_view value) {
  return bind_bytes(index, value, true);
}

Expected<void> Statement::bind_int64(int index, std::int64_t value) {
  if (sqlite3_bind_int64(m_stmt, index, value) != SQLITE_OK) {
    return util::Unexpected<Error>{error("cannot bind a value in database")};
  }
  return {};
}

Expected<void> Statement::bind_null(int index) {
  if (sqlite3_bind_null(m_stmt, index) != SQLITE_OK) {
    return util::Unexpected<Error>{error("cannot bind a value in database")};
  }
  return {};
}

Expected<Statement::Step> Statement::step() {
  const int rc = sqlite3_step(m_stmt);
  if (rc == SQLITE_ROW) {
    return Step::row;
  }
  if (rc == SQLITE_DONE) {
    return Step::done;
  }
  return util::Unexpected<Error>{error("cannot query database")};
}

std::string Statement::column_text(int index) const {
  const auto* text = sqlite3_column_text(m_stmt, index);
  if (text == nullptr) {
    return {};
  }
  const int size = sqlite3_column_bytes(m_stmt, index);
  return std::string(reinterpret_cast<const char*>(text), static_cast<std::size_t>(size));
}

std::string Statement::column_blob(int index) const {
  const auto* data = sqlite3_column_blob(m_stmt, index);
  if (data == nullptr) {
    return {};
  }
  const int size = sqlite3_column_bytes(m_stmt, index);
  return std::string(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

std::int64_t Statement::column_int64(int index) const {
  return sqlite3_column_int64(m_stmt, index);
}

bool Statement::column_is_null(int index) const {
  return sqlite3_column_type(m_stmt, index) == SQLITE_NULL;
}

void Statement::reset() {
  sqlite3_reset(m_stmt);
}

Database::Database(sqlite3* db, std::filesystem::path path) : m_db(db), m_path(std::move(path)) {}

Database::~Database() {
  for (auto& [sql, entry] : m_cache) {
    sqlite3_finalize(entry.stmt);
  }
  // sqlite3_close_v2 defers the close until any statement still alive is
  // finalized instead of failing with SQLITE_BUSY.
  sqlite3_close_v2(m_db);
}

Expected<std::unique_ptr<Database>> Database::open(const std::filesystem::path& path, Mode mode) {
  int flags = SQLITE_OPEN_NOMUTEX;
  switch (mode) {
  case Mode::read_only:
    flags |= SQLITE_OPEN_READONLY;
    break;
  case Mode::read_write:
    flags |= SQLITE_OPEN_READWRITE;
    break;
  case Mode::read_write_create:
    flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    break;
  }
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string reason = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return make_error(Errc::io, "cannot open database '" + path.string() + "': " + reason);
  }
  // Report constraint violations and the like with extended codes, and make
  // sqlite3_errmsg describe I/O errors precisely.
  sqlite3_extended_result_codes(db, 1);
  return std::unique_ptr<Database>(new Database(db, path));
}

Error Database::error(std::string_view what) const {
  const int code = sqlite3_errcode(m_db);
  Errc errc = Errc::io;
  if ((code & 0xff) == SQLITE_CONSTRAINT) {
    errc = Errc::conflict;
  } else if ((code & 0xff) == SQLITE_TOOBIG) {
    errc = Errc::too_large;
  } else if ((code & 0xff) == SQLITE_FULL) {
    errc = Errc::no_space;
  }
  return Error{errc, std::string(what) + " '" + m_path.string() + "': " + sqlite3_errmsg(m_db)};
}

Expected<void> Database::exec(std::string_view sql) {
  const std::string text(sql);
  if (sqlite3_exec(m_db, text.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    return util::Unexpected<Error>{error("cannot update database")};
  }
  return {};
}

Expected<Statement> Database::prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(m_db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr) != SQLITE_OK) {
    return util::Unexpected<Error>{error("cannot prepare a statement in database")};
  }
  return Statement(*this, stmt, Statement::Ownership::owned);
}

Expected<Statement> Database::cached(const std::string& sql) {
  auto it = m_cache.find(sql);
  if (it == m_cache.end()) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v3(m_db, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) !=
        SQLITE_OK) {
      return util::Unexpected<Error>{error("cannot prepare a statement in database")};
    }
    it = m_cache.emplace(sql, CacheEntry{stmt, false}).first;
  }
  if (it->second.in_use) {
    return prepare(sql);
  }
  it->second.in_use = true;
  m_borrowed[it->second.stmt] = &it->second;
  return Statement(*this, it->second.stmt, Statement::Ownership::borrowed);
}

void Database::give_back(sqlite3_stmt* stmt) {
  sqlite3_reset(stmt);
  sqlite3_clear_bindings(stmt);
  if (auto it = m_borrowed.find(stmt); it != m_borrowed.end()) {
    it->second->in_use = false;
    m_borrowed.erase(it);
  }
}

Expected<std::string> Database::query_text(std::string_view sql) {
  NPME_TRY_ASSIGN(Statement stmt, prepare(sql));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step != Statement::Step::row) {
    return make_error(Errc::io, "database '" + m_path.string() + "': no result for '" + std::string(sql) + "'");
  }
  return stmt.column_text(0);
}

std::int64_t Database::last_insert_rowid() const {
  return sqlite3_last_insert_rowid(m_db);
}

int Database::changes() const {
  return sqlite3_changes(m_db);
}

Expected<Transaction> Transaction::begin(Database& db, Mode mode) {
  NPME_TRY(db.exec(mode == Mode::immediate ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED"));
  return Transaction(db);
}

Transaction::Transaction(Transaction&& other) noexcept : m_db(other.m_db) {
  other.m_db = nullptr;
}

Transaction::~Transaction() {
  rollback();
}

Expected<void> Transaction::commit() {
  if (m_db == nullptr) {
    return make_error(Errc::failed, "transaction: already finished");
  }
  auto result = m_db->exec("COMMIT");
  if (!result) {
    // A failed COMMIT can leave the transaction open (SQLITE_BUSY); the
    // destructor's ROLLBACK then ends it.
    return result;
  }
  m_db = nullptr;
  return {};
}

void Transaction::rollback() {
  if (m_db == nullptr) {
    return;
  }
  // After some errors SQLite has already rolled back; ROLLBACK then fails
  // harmlessly with "no transaction is active".
  if (sqlite3_get_autocommit(m_db->handle()) == 0) {
    sqlite3_exec(m_db->handle(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  m_db = nullptr;
}

Expected<void> copy_database(Database& source, const std::filesystem::path& target) {
  std::unique_ptr<Database> dest;
  const auto attempt = [&]() -> Expected<void> {
    NPME_TRY_ASSIGN(dest, Database::open(target, Database::Mode::read_write_create));
    sqlite3_backup* backup = sqlite3_backup_init(dest->handle(), "main", source.handle(), "main");
    if (backup == nullptr) {
      return util::Unexpected<Error>{dest->error("cannot back up database to")};
    }
    int rc = SQLITE_OK;
    for (int attempts = 0; attempts < 200; ++attempts) {
      rc = sqlite3_backup_step(backup, -1);
      if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    const int finish_rc = sqlite3_backup_finish(backup);
    if (rc != SQLITE_DONE || finish_rc != SQLITE_OK) {
      return make_error(Errc::io, "cannot back up database to '" + target.string() +
                                    "': " + sqlite3_errstr(rc != SQLITE_DONE ? rc : finish_rc));
    }
    NPME_TRY_ASSIGN(const std::string mode, dest->query_text("PRAGMA journal_mode=DELETE"));
    if (mode != "delete") {
      return make_error(Errc::io,
                        "cannot back up database to '" + target.string() + "': journal mode stays '" + mode + "'");
    }
    dest.reset();
    return {};
  };
  auto result = attempt();
  if (!result) {
    dest.reset();
    for (const char* suffix : {"", "-journal", "-wal", "-shm"}) {
      std::filesystem::path path = target;
      path += suffix;
      ::unlink(path.c_str());
    }
  }
  return result;
}

} // namespace npme::store::sqlite
