#include "core/snapshot/format.hpp"

#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "core/util/integrity.hpp"
#include "core/util/time.hpp"

#include <archive.h>
#include <sqlite3.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::snapshot {

namespace {

using Json = nlohmann::json;
using store::sqlite::Database;
using store::sqlite::Statement;

constexpr int k_busy_timeout_ms = 10000;

} // namespace

std::string_view compression_name(Compression compression) {
  switch (compression) {
  case Compression::zstd:
    return "zstd";
  case Compression::gzip:
    return "gzip";
  case Compression::none:
    return "none";
  }
  return "zstd";
}

Expected<Compression> parse_compression(std::string_view name) {
  for (auto c : {Compression::zstd, Compression::gzip, Compression::none}) {
    if (name == compression_name(c)) {
      return c;
    }
  }
  return make_error(Errc::usage, "invalid compression '" + std::string(name) + "': allowed are zstd, gzip, none");
}

std::string_view compression_suffix(Compression compression) {
  switch (compression) {
  case Compression::zstd:
    return ".tar.zst";
  case Compression::gzip:
    return ".tar.gz";
  case Compression::none:
    return ".tar";
  }
  return ".tar.zst";
}

nlohmann::json Manifest::to_json() const {
  Json doc = {
    {"format", "npme-snapshot"},
    {"format_version", format_version},
    {"npme_version", npme_version},
    {"created", created},
    {"instance_id", instance_id},
    {"role", role},
    {"update_seq", update_seq},
    {"sequence", sequence ? Json(*sequence) : Json(nullptr)},
    {"counts",
     {{"packages", packages}, {"versions", versions}, {"tarballs", tarballs}, {"tarball_bytes", tarball_bytes}}},
    {"compression", compression},
    {"instance_running", instance_running},
    {"reported_state", reported ? reported->to_json() : Json(nullptr)},
  };
  return doc;
}

Expected<Manifest> Manifest::from_json(std::string_view text) {
  const auto bad = [](const std::string& reason) {
    return make_error(Errc::verify, "invalid snapshot.json: " + reason);
  };
  Json doc;
  try {
    doc = Json::parse(text);
  } catch (const std::exception& e) {
    return bad(e.what());
  }
  // Not value(): it throws on a "format" of another type.
  const auto format = doc.is_object() ? doc.find("format") : doc.end();
  if (!doc.is_object() || format == doc.end() || !format->is_string() || *format != "npme-snapshot") {
    return bad("not an npme snapshot manifest");
  }
  // Numbers must be integers: get<>() casts a float, and a cast out of
  // range (1e300 to int) is undefined behaviour, not an exception.
  const auto integer = [](const Json& value) {
    if (!value.is_number_integer()) {
      throw std::invalid_argument("expected an integer, got " + std::string(value.type_name()));
    }
    return value.get<std::int64_t>();
  };
  try {
    Manifest m;
    const std::int64_t format_version = integer(doc.at("format_version"));
    if (format_version > k_format_version) {
      return make_error(Errc::verify, "snapshot format version " + std::to_string(format_version) +
                                        " is newer than this npme supports (" + std::to_string(k_format_version) +
                                        "); restore it with a newer npme");
    }
    if (format_version < 1) {
      return bad("format version " + std::to_string(format_version));
    }
    m.format_version = static_cast<int>(format_version);
    m.npme_version = doc.at("npme_version").get<std::string>();
    m.created = doc.at("created").get<std::string>();
    m.instance_id = doc.at("instance_id").get<std::string>();
    m.role = doc.at("role").get<std::string>();
    m.update_seq = integer(doc.at("update_seq"));
    if (!doc.at("sequence").is_null()) {
      m.sequence = integer(doc.at("sequence"));
    }
    const auto& counts = doc.at("counts");
    m.packages = integer(counts.at("packages"));
    m.versions = integer(counts.at("versions"));
    m.tarballs = integer(counts.at("tarballs"));
    m.tarball_bytes = integer(counts.at("tarball_bytes"));
    m.compression = doc.value("compression", "");
    m.instance_running = doc.value("instance_running", false);
    // Older snapshots lack it; it is informational, so a malformed one is dropped.
    if (auto it = doc.find("reported_state"); it != doc.end() && it->is_object()) {
      const auto& r = *it;
      ReportedState state;
      state.admin_url = r.value("admin_url", "");
      state.role = r.value("role", "");
      state.instance_id = r.value("instance_id", "");
      const auto integer_or_zero = [&r](const char* key) {
        auto member = r.find(key);
        return member != r.end() && member->is_number_integer() ? member->get<std::int64_t>() : std::int64_t{0};
      };
      state.update_seq = integer_or_zero("update_seq");
      if (auto seq = r.find("follower_sequence"); seq != r.end() && seq->is_number_integer()) {
        state.follower_sequence = seq->get<std::int64_t>();
      }
      state.follower_state = r.value("follower_state", "");
      state.epoch = integer_or_zero("epoch");
      m.reported = std::move(state);
    }
    return m;
  } catch (const std::exception& e) {
    return bad(e.what());
  }
}

std::string default_file_name(std::string_view instance_id, Compression compression,
                              std::chrono::system_clock::time_point now) {
  std::string id;
  for (char c : instance_id) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
      id += c;
    }
  }
  if (id.empty()) {
    id = "unknown";
  }
  return "npme-snapshot-" + detail::compact_utc(now) + "-" + id + std::string(compression_suffix(compression));
}

Expected<std::chrono::seconds> parse_duration(std::string_view text) {
  const auto bad = [&] {
    return make_error(Errc::usage, "invalid duration '" + std::string(text) +
                                     "': expected a number with s, m, h, d or w (\"36h\", \"7d\")");
  };
  if (text.empty()) {
    return bad();
  }
  std::int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || value < 0) {
    return bad();
  }
  const std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
  std::int64_t factor = 0;
  if (unit.empty() || unit == "s") {
    factor = 1;
  } else if (unit == "m") {
    factor = 60;
  } else if (unit == "h") {
    factor = 3600;
  } else if (unit == "d") {
    factor = 86400;
  } else if (unit == "w") {
    factor = 7 * 86400;
  } else {
    return bad();
  }
  if (value > std::numeric_limits<std::int64_t>::max() / factor) {
    return bad();
  }
  return std::chrono::seconds(value * factor);
}

namespace detail {

bool Integrity::matches(std::string_view actual) const {
  const std::size_t size = util::digest_size(algorithm);
  if (size == 0 || actual.size() != size) {
    return false;
  }
  bool found = false;
  for (std::size_t at = 0; at + size <= digest.size(); at += size) {
    found = util::constant_time_equal(std::string_view(digest).substr(at, size), actual) || found;
  }
  return found;
}

std::optional<std::string> unsafe_path_reason(std::string_view rel_path) {
  if (rel_path.empty()) {
    return "empty path";
  }
  if (rel_path.front() == '/') {
    return "absolute path";
  }
  for (char c : rel_path) {
    if (c == '\\' || c == '\0' || c == '\n' || c == '\r') {
      return "forbidden character in path";
    }
  }
  std::size_t start = 0;
  bool first = true;
  while (start <= rel_path.size()) {
    auto end = rel_path.find('/', start);
    if (end == std::string_view::npos) {
      end = rel_path.size();
    }
    const auto segment = rel_path.substr(start, end - start);
    if (segment.empty()) {
      return "empty path segment";
    }
    if (segment == "." || segment == "..") {
      return "'" + std::string(segment) + "' path segment";
    }
    if (first && segment == ".staging") {
      return "path inside the staging directory";
    }
    first = false;
    start = end + 1;
  }
  return std::nullopt;
}

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
  NPME_TRY_ASSIGN(Statement docs, source->prepare("SELECT id, body FROM docs WHERE id < '_' OR id >= '`' ORDER BY id"));
  // A path that two versions name is optional only when both are: the
  // replaced row's flag is kept in the new one.
  NPME_TRY_ASSIGN(Statement insert,
                  db.prepare("INSERT OR REPLACE INTO refs(path, package, version, algorithm, digest, text, optional) "
                             "VALUES(?1, ?2, ?3, ?4, ?5, ?6, "
                             "MIN(?7, COALESCE((SELECT optional FROM refs WHERE path = ?1), 1)))"));
  while (true) {
    NPME_TRY_ASSIGN(const auto step, docs.step());
    if (step == Statement::Step::done) {
      break;
    }
    const std::string id = docs.column_text(0);
    ++packages;
    Json doc;
    try {
      doc = Json::parse(docs.column_text(1));
    } catch (const std::exception& e) {
      note("package '" + id + "': invalid JSON: " + e.what());
      continue;
    }
    if (!doc.is_object()) {
      note("package '" + id + "': not a JSON object");
      continue;
    }
    const auto versions_it = doc.find("versions");
    if (versions_it == doc.end() || !versions_it->is_object()) {
      continue;
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
  }
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

Expected<void> SumsParser::feed(std::string_view data) {
  while (!data.empty()) {
    const auto newline = data.find('\n');
    if (newline == std::string_view::npos) {
      m_partial.append(data);
      // A line is a digest and an entry name: a few hundred bytes at most.
      if (m_partial.size() > 64 * 1024) {
        return make_error(Errc::verify, "SHA256SUMS: line " + std::to_string(m_line_no + 1) + " is too long");
      }
      return {};
    }
    if (m_partial.empty()) {
      NPME_TRY(line(data.substr(0, newline)));
    } else {
      m_partial.append(data.substr(0, newline));
      std::string whole = std::move(m_partial);
      m_partial.clear();
      NPME_TRY(line(whole));
    }
    data.remove_prefix(newline + 1);
  }
  return {};
}

Expected<void> SumsParser::finish() {
  if (!m_partial.empty()) {
    return make_error(Errc::verify, "SHA256SUMS: last line is not terminated");
  }
  return {};
}

Expected<void> SumsParser::line(std::string_view text) {
  ++m_line_no;
  if (text.size() < 67 || text.substr(64, 2) != "  ") {
    return make_error(Errc::verify, "SHA256SUMS: malformed line " + std::to_string(m_line_no));
  }
  std::string raw;
  for (std::size_t i = 0; i < 64; i += 2) {
    unsigned value = 0;
    const auto [ptr, ec] = std::from_chars(text.data() + i, text.data() + i + 2, value, 16);
    if (ec != std::errc() || ptr != text.data() + i + 2) {
      return make_error(Errc::verify, "SHA256SUMS: malformed digest on line " + std::to_string(m_line_no));
    }
    raw += static_cast<char>(value);
  }
  if (m_catalog == nullptr) {
    return {};
  }
  NPME_TRY_ASSIGN(const bool added, m_catalog->add_sum(std::string(text.substr(66)), raw));
  if (!added) {
    return make_error(Errc::verify, "SHA256SUMS: duplicate entry on line " + std::to_string(m_line_no));
  }
  return {};
}

void WrittenLog::push(WrittenEntry entry) {
  {
    std::lock_guard lock(m_mutex);
    m_entries.push_back(std::move(entry));
    ++m_pushed;
  }
  m_cv.notify_all();
}

void WrittenLog::close() {
  {
    std::lock_guard lock(m_mutex);
    m_closed = true;
  }
  m_cv.notify_all();
}

std::optional<WrittenEntry> WrittenLog::next() {
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [&] { return m_closed || !m_entries.empty(); });
  if (m_entries.empty()) {
    return std::nullopt;
  }
  WrittenEntry entry = std::move(m_entries.front());
  m_entries.pop_front();
  return entry;
}

std::int64_t WrittenLog::pushed() const {
  std::lock_guard lock(m_mutex);
  return m_pushed;
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

std::string sums_line(std::string_view name, std::string_view sha256) {
  std::string text = util::hex(sha256);
  text += "  ";
  text += name;
  text += '\n';
  return text;
}

Expected<void> write_all(int fd, std::string_view data, const fs::path& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return util::Unexpected<Error>{io_error("write", path, errno)};
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

void ArchiveReadDeleter::operator()(::archive* a) const {
  archive_read_free(a);
}

void ArchiveWriteDeleter::operator()(::archive* a) const {
  archive_write_free(a);
}

std::string archive_message(::archive* a) {
  const char* text = a != nullptr ? archive_error_string(a) : nullptr;
  return text != nullptr ? std::string(text) : std::string("unknown error");
}

Expected<ArchiveReader> open_reader(const fs::path& file) {
  ArchiveReader reader(archive_read_new());
  if (!reader) {
    return make_error(Errc::failed, "cannot read '" + file.string() + "': out of memory");
  }
  archive_read_support_filter_zstd(reader.get());
  archive_read_support_filter_gzip(reader.get());
  archive_read_support_format_tar(reader.get());
  if (archive_read_open_filename(reader.get(), file.c_str(), k_io_buffer) != ARCHIVE_OK) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
      return make_error(Errc::not_found, "cannot open snapshot '" + file.string() + "': " + std::strerror(errno));
    }
    return make_error(Errc::verify, "cannot open snapshot '" + file.string() + "': " + archive_message(reader.get()));
  }
  return reader;
}

HashWorker::HashWorker() {
  try {
    m_thread = std::thread([this] { run(); });
  } catch (const std::system_error&) {
    // No second thread: jobs run inline, slower but correct.
  }
}

HashWorker::~HashWorker() {
  if (m_thread.joinable()) {
    {
      std::lock_guard lock(m_mutex);
      m_stop = true;
    }
    m_cv.notify_all();
    m_thread.join();
  }
}

HashWorker::Ticket HashWorker::post(std::function<void()> job) {
  if (!m_thread.joinable()) {
    job();
    return ++m_posted;
  }
  Ticket ticket = 0;
  {
    std::lock_guard lock(m_mutex);
    m_jobs.push_back(std::move(job));
    ticket = ++m_posted;
  }
  m_cv.notify_all();
  return ticket;
}

HashWorker::Ticket HashWorker::post(util::Hasher& hasher, std::string_view data) {
  // Handing over costs a few microseconds: small chunks are hashed here,
  // after what is queued for the same hasher.
  constexpr std::size_t k_min_handoff = 32 * 1024;
  if (!m_thread.joinable() || data.size() < k_min_handoff) {
    wait_all();
    hasher.update(data);
    return m_posted;
  }
  return post([&hasher, data] { hasher.update(data); });
}

void HashWorker::wait(Ticket ticket) {
  if (!m_thread.joinable()) {
    return;
  }
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [this, ticket] { return m_done >= ticket; });
}

void HashWorker::wait_all() {
  if (!m_thread.joinable()) {
    return;
  }
  std::unique_lock lock(m_mutex);
  m_cv.wait(lock, [this] { return m_done >= m_posted; });
}

void HashWorker::run() {
  std::unique_lock lock(m_mutex);
  while (true) {
    m_cv.wait(lock, [this] { return !m_jobs.empty() || m_stop; });
    if (m_jobs.empty()) {
      return; // stopping, and every job is done
    }
    auto job = std::move(m_jobs.front());
    m_jobs.pop_front();
    lock.unlock();
    try {
      job();
    } catch (const std::exception&) {
      // Only allocation can throw here. A job cut short leaves its hasher
      // short of bytes, so the check it feeds fails: closed, not open.
    }
    lock.lock();
    ++m_done;
    m_cv.notify_all();
  }
}

void start_writeback(int fd) {
  // Only a hint: a file system without it still gets the final fsync.
  ::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

std::string compact_utc(std::chrono::system_clock::time_point now) {
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%dT%H%M%SZ", &tm);
  return buffer;
}

} // namespace detail

} // namespace npme::snapshot
