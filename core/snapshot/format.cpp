#include "core/snapshot/format.hpp"

#include "core/store/sqlite.hpp"
#include "core/util/time.hpp"

#include <archive.h>
#include <sqlite3.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>
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
  const auto bad = [](const std::string& reason) { return make_error(Errc::verify, "invalid snapshot.json: " + reason); };
  Json doc;
  try {
    doc = Json::parse(text);
  } catch (const std::exception& e) {
    return bad(e.what());
  }
  if (!doc.is_object() || doc.value("format", "") != "npme-snapshot") {
    return bad("not an npme snapshot manifest");
  }
  try {
    Manifest m;
    m.format_version = doc.at("format_version").get<int>();
    if (m.format_version > k_format_version) {
      return make_error(Errc::verify, "snapshot format version " + std::to_string(m.format_version) +
                                        " is newer than this npme supports (" + std::to_string(k_format_version) +
                                        "); restore it with a newer npme");
    }
    if (m.format_version < 1) {
      return bad("format version " + std::to_string(m.format_version));
    }
    m.npme_version = doc.at("npme_version").get<std::string>();
    m.created = doc.at("created").get<std::string>();
    m.instance_id = doc.at("instance_id").get<std::string>();
    m.role = doc.at("role").get<std::string>();
    m.update_seq = doc.at("update_seq").get<std::int64_t>();
    if (!doc.at("sequence").is_null()) {
      m.sequence = doc.at("sequence").get<std::int64_t>();
    }
    const auto& counts = doc.at("counts");
    m.packages = counts.at("packages").get<std::int64_t>();
    m.versions = counts.at("versions").get<std::int64_t>();
    m.tarballs = counts.at("tarballs").get<std::int64_t>();
    m.tarball_bytes = counts.at("tarball_bytes").get<std::int64_t>();
    m.compression = doc.value("compression", "");
    m.instance_running = doc.value("instance_running", false);
    // Older snapshots lack it; it is informational, so a malformed one is dropped.
    if (auto it = doc.find("reported_state"); it != doc.end() && it->is_object()) {
      const auto& r = *it;
      ReportedState state;
      state.admin_url = r.value("admin_url", "");
      state.role = r.value("role", "");
      state.instance_id = r.value("instance_id", "");
      state.update_seq = r.value("update_seq", std::int64_t{0});
      if (auto seq = r.find("follower_sequence"); seq != r.end() && seq->is_number_integer()) {
        state.follower_sequence = seq->get<std::int64_t>();
      }
      state.follower_state = r.value("follower_state", "");
      state.epoch = r.value("epoch", std::int64_t{0});
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

// Returns the strongest integrity of a version's `dist`.
std::optional<Integrity> integrity_of(const Json& dist) {
  std::optional<Integrity> best;
  int best_rank = 0;
  if (auto it = dist.find("integrity"); it != dist.end() && it->is_string()) {
    const std::string& text = it->get_ref<const std::string&>();
    std::size_t start = 0;
    while (start < text.size()) {
      auto end = text.find_first_of(" \t\n", start);
      if (end == std::string::npos) {
        end = text.size();
      }
      std::string_view item(text.data() + start, end - start);
      start = end + 1;
      const auto dash = item.find('-');
      if (dash == std::string_view::npos) {
        continue;
      }
      const auto algo = item.substr(0, dash);
      auto b64 = item.substr(dash + 1);
      b64 = b64.substr(0, b64.find('?'));
      int rank = 0;
      util::Hasher::Algorithm algorithm{};
      if (algo == "sha512") {
        rank = 3;
        algorithm = util::Hasher::Algorithm::sha512;
      } else if (algo == "sha256") {
        rank = 2;
        algorithm = util::Hasher::Algorithm::sha256;
      } else if (algo == "sha1") {
        rank = 1;
        algorithm = util::Hasher::Algorithm::sha1;
      } else {
        continue;
      }
      auto digest = util::base64_decode(b64);
      if (!digest || rank <= best_rank) {
        continue;
      }
      best_rank = rank;
      best = Integrity{algorithm, std::move(*digest), std::string(item)};
    }
  }
  if (!best) {
    if (auto it = dist.find("shasum"); it != dist.end() && it->is_string()) {
      const std::string& hex = it->get_ref<const std::string&>();
      if (hex.size() == 40) {
        std::string raw;
        for (std::size_t i = 0; i < 40; i += 2) {
          unsigned value = 0;
          const auto [ptr, ec] = std::from_chars(hex.data() + i, hex.data() + i + 2, value, 16);
          if (ec != std::errc() || ptr != hex.data() + i + 2) {
            return std::nullopt;
          }
          raw += static_cast<char>(value);
        }
        best = Integrity{util::Hasher::Algorithm::sha1, std::move(raw), "sha1:" + hex};
      }
    }
  }
  return best;
}

} // namespace

Expected<DatabaseContent> read_database(const fs::path& db_file) {
  NPME_TRY_ASSIGN(auto db, Database::open(db_file, Database::Mode::read_only));
  sqlite3_busy_timeout(db->handle(), k_busy_timeout_ms);
  DatabaseContent content;
  {
    NPME_TRY_ASSIGN(Statement stmt, db->prepare("SELECT COALESCE(MAX(seq), 0) FROM changes"));
    NPME_TRY(stmt.step());
    content.update_seq = stmt.column_int64(0);
  }
  NPME_TRY_ASSIGN(Statement stmt, db->prepare("SELECT id, body FROM docs WHERE id < '_' OR id >= '`' ORDER BY id"));
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step == Statement::Step::done) {
      break;
    }
    const std::string id = stmt.column_text(0);
    ++content.packages;
    Json doc;
    try {
      doc = Json::parse(stmt.column_text(1));
    } catch (const std::exception& e) {
      content.problems.push_back("package '" + id + "': invalid JSON: " + e.what());
      continue;
    }
    if (!doc.is_object()) {
      content.problems.push_back("package '" + id + "': not a JSON object");
      continue;
    }
    const auto versions = doc.find("versions");
    if (versions == doc.end() || !versions->is_object()) {
      continue;
    }
    for (const auto& [version, manifest] : versions->items()) {
      ++content.versions;
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
      content.tarballs[rel] = TarballRef{id, version, integrity_of(*dist), {}};
    }
  }
  // The digests the store recorded when it committed each tarball (schema
  // 2 and later; a database of an older npme has none).
  NPME_TRY_ASSIGN(Statement has_digests,
                  db->prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tarballs'"));
  NPME_TRY_ASSIGN(const auto found, has_digests.step());
  if (found == Statement::Step::row) {
    NPME_TRY_ASSIGN(Statement digests, db->prepare("SELECT path, sha256, tag, size FROM tarballs"));
    while (true) {
      NPME_TRY_ASSIGN(const auto step, digests.step());
      if (step == Statement::Step::done) {
        break;
      }
      const auto it = content.tarballs.find(digests.column_text(0));
      std::string sha256 = digests.column_blob(1);
      if (it != content.tarballs.end() && sha256.size() == 32) {
        it->second.stored = store::FileDigest{std::move(sha256), static_cast<std::uint64_t>(digests.column_int64(2)),
                                              digests.column_int64(3)};
      }
    }
  }
  return content;
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
    NPME_TRY_ASSIGN(Statement check, db->prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1"));
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

std::string format_sums(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string text;
  for (const auto& [name, digest] : entries) {
    text += util::hex(digest);
    text += "  ";
    text += name;
    text += '\n';
  }
  return text;
}

Expected<std::map<std::string, std::string>> parse_sums(std::string_view text) {
  std::map<std::string, std::string> sums;
  std::size_t start = 0;
  int line_no = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string_view::npos) {
      return make_error(Errc::verify, "SHA256SUMS: last line is not terminated");
    }
    const auto line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (line.size() < 67 || line.substr(64, 2) != "  ") {
      return make_error(Errc::verify, "SHA256SUMS: malformed line " + std::to_string(line_no));
    }
    std::string raw;
    for (std::size_t i = 0; i < 64; i += 2) {
      unsigned value = 0;
      const auto [ptr, ec] = std::from_chars(line.data() + i, line.data() + i + 2, value, 16);
      if (ec != std::errc() || ptr != line.data() + i + 2) {
        return make_error(Errc::verify, "SHA256SUMS: malformed digest on line " + std::to_string(line_no));
      }
      raw += static_cast<char>(value);
    }
    std::string name(line.substr(66));
    if (!sums.emplace(std::move(name), std::move(raw)).second) {
      return make_error(Errc::verify, "SHA256SUMS: duplicate entry on line " + std::to_string(line_no));
    }
  }
  return sums;
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

Error io_error(std::string_view verb, const fs::path& path, int err) {
  return Error{Errc::io, "cannot " + std::string(verb) + " '" + path.string() + "': " + std::strerror(err)};
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
