#pragma once
// A small RAII layer over the sqlite3 C API: connections, prepared statements
// (owned or cached per connection) and transaction guards. Errors carry
// sqlite3_errmsg() verbatim. sqlite3.h stays out of this header.

#include "core/util/error.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

struct sqlite3;
struct sqlite3_stmt;

namespace npme::store::sqlite {

class Database;

// A prepared statement. An owned statement is finalized on destruction; a
// statement borrowed from a connection's cache (Database::cached()) is reset
// and its bindings cleared instead, ending any read it had open.
class Statement {
public:
  enum class Ownership { owned, borrowed };
  enum class Step { row, done };

  Statement() = default;
  Statement(Database& db, sqlite3_stmt* stmt, Ownership ownership);
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Binds `value` to the 1-based parameter `index`.
  Expected<void> bind_text(int index, std::string_view value);
  Expected<void> bind_blob(int index, std::string_view value);
  Expected<void> bind_int64(int index, std::int64_t value);
  Expected<void> bind_null(int index);

  // Runs the statement to its next row (Step::row) or to its end (Step::done).
  Expected<Step> step();

  // Reads column `index` (0-based) of the current row.
  std::string column_text(int index) const;
  std::string column_blob(int index) const;
  std::int64_t column_int64(int index) const;
  bool column_is_null(int index) const;

  // Rewinds the statement so that it can run again with new bindings; keeps
  // the bindings.
  void reset();

private:
  void release();
  Error error(std::string_view what) const;
  Expected<void> bind_bytes(int index, std::string_view value, bool blob);

  Database* m_db = nullptr;
  sqlite3_stmt* m_stmt = nullptr;
  Ownership m_ownership = Ownership::owned;
};

// One connection. Not thread-safe: use a connection from one thread at a time.
class Database {
public:
  enum class Mode { read_only, read_write, read_write_create };

  // Opens the database file at `path` in `mode`, failing with Errc::io that
  // names the path and SQLite's reason.
  static Expected<std::unique_ptr<Database>> open(const std::filesystem::path& path, Mode mode);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs `sql` (one or more statements, results ignored).
  Expected<void> exec(std::string_view sql);

  // Prepares `sql` as a statement owned by the caller.
  Expected<Statement> prepare(std::string_view sql);

  // Returns the connection's cached statement for `sql`, preparing it on first
  // use; the returned handle resets it when it goes out of scope. While one
  // handle for `sql` is alive, another call gets a freshly prepared statement.
  Expected<Statement> cached(const std::string& sql);

  // Runs `sql`, which must return one row of one column, and returns it as text.
  Expected<std::string> query_text(std::string_view sql);

  std::int64_t last_insert_rowid() const;
  int changes() const;

  const std::filesystem::path& path() const { return m_path; }
  sqlite3* handle() const { return m_db; }

  // Returns "<what> '<path>': <sqlite3_errmsg>" as an Errc::io error.
  Error error(std::string_view what) const;

private:
  friend class Statement;
  struct CacheEntry {
    sqlite3_stmt* stmt = nullptr;
    bool in_use = false;
  };
  Database(sqlite3* db, std::filesystem::path path);
  // Resets the borrowed `stmt` and makes it available again.
  void give_back(sqlite3_stmt* stmt);
  sqlite3* m_db;
  std::filesystem::path m_path;
  std::unordered_map<std::string, CacheEntry> m_cache;
  std::unordered_map<sqlite3_stmt*, CacheEntry*> m_borrowed;
};

// Runs a transaction for its lifetime: rolls back on destruction unless
// commit() succeeded.
class Transaction {
public:
  enum class Mode { deferred, immediate };

  // Begins a transaction on `db`; Mode::immediate takes the write lock at once.
  static Expected<Transaction> begin(Database& db, Mode mode);
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  Expected<void> commit();
  // Rolls back now; the guard then does nothing.
  void rollback();

private:
  explicit Transaction(Database& db) : m_db(&db) {}
  Database* m_db;
};

// Copies the database `source` into the new file `target` with SQLite's online
// backup (one step: a consistent copy while a writer goes on in WAL mode),
// then switches the copy to a rollback journal so that it is one
// self-contained file. On failure nothing is left at `target`.
Expected<void> copy_database(Database& source, const std::filesystem::path& target);

} // namespace npme::store::sqlite
