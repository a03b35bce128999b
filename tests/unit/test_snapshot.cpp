#include "core/snapshot/snapshot.hpp"

#include "core/snapshot/format.hpp"
#include "core/snapshot/service.hpp"

#include "core/hostdirs/lock.hpp"
#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace npme;
using Json = nlohmann::json;

using test::TempDir;

store::Paths paths_under(const fs::path& root) {
  return {root / "couchdb", root / "packages", root / "data"};
}

std::string read(const fs::path& path) {
  return util::read_file(path).value();
}

void write(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// Every path below `dir` with its type and content digest.
std::string listing(const fs::path& dir) {
  std::vector<std::string> lines;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string line = fs::relative(it->path(), dir).string();
    if (it->is_symlink()) {
      line += " link";
    } else if (it->is_regular_file()) {
      line += " " + util::hex(util::sha256(read(it->path())));
    } else {
      line += " dir";
    }
    lines.push_back(line);
  }
  std::sort(lines.begin(), lines.end());
  std::string text;
  for (const auto& line : lines) {
    text += line + "\n";
  }
  return text;
}

// An instance with `count` packages of two versions each, published through the store.
struct Instance {
  store::Paths paths;
  std::map<std::string, std::string> tarballs; // rel path -> bytes

  Instance(const fs::path& root, int count) : paths(paths_under(root)) {
    auto store = store::Store::open(paths).value();
    for (int i = 0; i < count; ++i) {
      const std::string name = i == 0 ? "@scope/pkg0" : "pkg" + std::to_string(i);
      const std::string base = name.substr(name.find('/') == std::string::npos ? 0 : name.find('/') + 1);
      Json doc = {{"name", name}, {"versions", Json::object()}, {"dist-tags", {{"latest", "1.0.1"}}}};
      std::vector<std::shared_ptr<store::StagedFile>> files;
      for (const std::string version : {"1.0.0", "1.0.1"}) {
        const std::string rel = name + "/-/" + base + "-" + version + ".tgz";
        const std::string bytes = "TARBALL(" + rel + ")" + util::random_bytes(3000 + i * 100);
        tarballs[rel] = bytes;
        doc["versions"][version] = {{"name", name},
                                    {"version", version},
                                    {"dist", {{"tarball", rel}, {"integrity", util::sri_sha512(bytes)}}}};
        files.push_back(std::make_shared<store::StagedFile>(store->stage_file(rel, bytes).value()));
      }
      REQUIRE(store->apply(name, [&](const std::optional<store::Document>&) {
        store::Write w;
        w.kind = store::Write::Kind::put;
        w.body = doc.dump();
        for (auto& f : files) {
          w.add_files.push_back(std::move(*f));
        }
        return Expected<store::Write>(std::move(w));
      }));
    }
    REQUIRE(util::write_file_atomic(paths.data / "sequence", "7\n"));
    REQUIRE(util::write_file_atomic(paths.data / "instance-id", "0123456789abcdef\n"));
  }
};

// An instance holding a local package and a copy of an uplink's packument
// (with an "_uplink" member) of two versions, of which the store has
// fetched only the first tarball: the second is fetched on first download.
// A second copy, whose one tarball was never fetched, comes first in path
// order.
struct UplinkInstance {
  store::Paths paths;
  std::map<std::string, std::string> tarballs; // rel path -> bytes, of the files the store holds
  const std::string local_rel = "local/-/local-1.0.0.tgz";
  const std::string fetched_rel = "cached/-/cached-1.0.0.tgz";
  const std::string lazy_rel = "cached/-/cached-2.0.0.tgz";

  explicit UplinkInstance(const fs::path& root) : paths(paths_under(root)) {
    auto store = store::Store::open(paths).value();
    const Json uplink = {{"url", "https://registry.npmjs.org"},
                         {"etag", "\"abc\""},
                         {"fetched", "2024-05-01T12:00:00.000Z"},
                         {"tarballs", Json::object()}};
    put(*store, "local", {{"1.0.0", true}}, Json());
    put(*store, "cached", {{"1.0.0", true}, {"2.0.0", false}}, uplink);
    put(*store, "abandoned", {{"1.0.0", false}}, uplink);
    REQUIRE(util::write_file_atomic(paths.data / "sequence", "3\n"));
    REQUIRE(util::write_file_atomic(paths.data / "instance-id", "0123456789abcdef\n"));
  }

  // Puts `name` with `versions` (version, whether its tarball is stored),
  // and `uplink` as its "_uplink" member unless null.
  void put(store::Store& store, const std::string& name, const std::vector<std::pair<std::string, bool>>& versions,
           const Json& uplink) {
    Json doc = {{"name", name}, {"versions", Json::object()}, {"dist-tags", {{"latest", versions.back().first}}}};
    if (!uplink.is_null()) {
      doc["_uplink"] = uplink;
    }
    std::vector<store::StagedFile> files;
    for (const auto& [version, stored] : versions) {
      const std::string rel = name + "/-/" + name + "-" + version + ".tgz";
      const std::string bytes = "TARBALL(" + rel + ")" + util::random_bytes(2000);
      doc["versions"][version] = {{"name", name},
                                  {"version", version},
                                  {"dist", {{"tarball", rel}, {"integrity", util::sri_sha512(bytes)}}}};
      if (stored) {
        tarballs[rel] = bytes;
        files.push_back(store.stage_file(rel, bytes).value());
      }
    }
    REQUIRE(store.apply(name, [&](const std::optional<store::Document>&) {
      store::Write w;
      w.kind = store::Write::Kind::put;
      w.body = doc.dump();
      w.add_files = std::move(files);
      return Expected<store::Write>(std::move(w));
    }));
  }
};

fs::path make_snapshot(const Instance& instance, const fs::path& file,
                       snapshot::Compression compression = snapshot::Compression::none) {
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.role = "primary";
  options.output = file;
  options.compression = compression;
  auto result = snapshot::create(options);
  REQUIRE_MESSAGE(result, (result ? "" : result.error().message));
  return result->file;
}

fs::path make_snapshot_of(const store::Paths& paths, const fs::path& file) {
  snapshot::CreateOptions options;
  options.paths = paths;
  options.output = file;
  options.compression = snapshot::Compression::none;
  auto result = snapshot::create(options);
  REQUIRE_MESSAGE(result, (result ? "" : result.error().message));
  return result->file;
}

// One entry of a hand-built archive.
struct Entry {
  Entry() = default;
  Entry(std::string name_, std::string data_, mode_t type_ = AE_IFREG, std::string link_ = {})
    : name(std::move(name_)), data(std::move(data_)), type(type_), link(std::move(link_)) {}
  std::string name;
  std::string data;
  mode_t type = AE_IFREG;
  std::string link; // symlink target or hardlink source
};

// Reads every entry of an (uncompressed or compressed) archive into memory.
std::vector<Entry> entries_of(const fs::path& file) {
  std::vector<Entry> entries;
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  REQUIRE(archive_read_open_filename(a, file.c_str(), 65536) == ARCHIVE_OK);
  archive_entry* header = nullptr;
  while (archive_read_next_header(a, &header) == ARCHIVE_OK) {
    Entry e;
    e.name = archive_entry_pathname(header);
    char buffer[65536];
    la_ssize_t n = 0;
    while ((n = archive_read_data(a, buffer, sizeof(buffer))) > 0) {
      e.data.append(buffer, static_cast<std::size_t>(n));
    }
    entries.push_back(std::move(e));
  }
  archive_read_free(a);
  return entries;
}

std::string sums_of(const std::vector<Entry>& entries) {
  std::string text;
  for (const auto& e : entries) {
    if (e.name != "SHA256SUMS" && e.type == AE_IFREG && e.link.empty()) {
      text += util::hex(util::sha256(e.data)) + "  " + e.name + "\n";
    }
  }
  return text;
}

// Writes `entries` as an uncompressed pax archive (SHA256SUMS recomputed
// when `fix_sums`, so that only the hostile property is wrong).
void write_archive(const fs::path& file, std::vector<Entry> entries, bool fix_sums = true) {
  if (fix_sums) {
    for (auto& e : entries) {
      if (e.name == "SHA256SUMS") {
        e.data = sums_of(entries);
      }
    }
  }
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  REQUIRE(archive_write_open_filename(a, file.c_str()) == ARCHIVE_OK);
  for (const auto& e : entries) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.name.c_str());
    archive_entry_set_perm(entry, 0644);
    if (e.type == AE_IFREG && !e.link.empty()) {
      archive_entry_set_filetype(entry, AE_IFREG);
      archive_entry_set_hardlink(entry, e.link.c_str());
      archive_entry_set_size(entry, 0);
    } else {
      archive_entry_set_filetype(entry, e.type);
      if (e.type == AE_IFLNK) {
        archive_entry_set_symlink(entry, e.link.c_str());
      }
      archive_entry_set_size(entry, e.type == AE_IFREG ? static_cast<la_int64_t>(e.data.size()) : 0);
    }
    REQUIRE(archive_write_header(a, entry) == ARCHIVE_OK);
    if (e.type == AE_IFREG && e.link.empty() && !e.data.empty()) {
      REQUIRE(archive_write_data(a, e.data.data(), e.data.size()) == static_cast<la_ssize_t>(e.data.size()));
    }
    archive_entry_free(entry);
  }
  archive_write_close(a);
  archive_write_free(a);
}

// A 512-byte ustar header block for `name` with `typeflag` and `size`.
std::string ustar_header(const std::string& name, char typeflag, std::uint64_t size) {
  std::string h(512, '\0');
  std::copy(name.begin(), name.end(), h.begin());
  std::snprintf(&h[100], 8, "%07o", 0644);
  std::snprintf(&h[108], 8, "%07o", 0);
  std::snprintf(&h[116], 8, "%07o", 0);
  std::snprintf(&h[124], 12, "%011llo", static_cast<unsigned long long>(size));
  std::snprintf(&h[136], 12, "%011o", 0);
  h[156] = typeflag;
  std::copy_n("ustar", 6, &h[257]);
  h[263] = '0';
  h[264] = '0';
  std::fill_n(&h[148], 8, ' ');
  unsigned sum = 0;
  for (unsigned char c : h) {
    sum += c;
  }
  std::snprintf(&h[148], 8, "%06o", sum);
  h[155] = ' ';
  return h;
}

std::string padded(std::string data) {
  data.resize((data.size() + 511) / 512 * 512, '\0');
  return data;
}

struct Fixture {
  TempDir dir;
  Instance instance{dir.path / "src", 3};
  fs::path good = make_snapshot(instance, dir.path / "good.tar");
  fs::path target_root = dir.path / "target";
  store::Paths targets = paths_under(target_root);

  // Restores `file` into an existing target instance and checks the
  // refusal left everything as it was, outside the targets too.
  void expect_refused_restore(const fs::path& file) {
    snapshot::RestoreOptions options;
    options.file = file;
    options.targets = targets;
    options.force = snapshot::Force::yes;
    const std::string before = listing(dir.path);
    auto result = snapshot::restore(options);
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::verify);
    // The lock file is the one thing restore may create in the data dir.
    std::string after = listing(dir.path);
    CHECK(after == before);
  }

  void expect_verify_fails(const fs::path& file, const std::string& needle) {
    auto report = snapshot::verify(file);
    REQUIRE(report);
    REQUIRE_FALSE(report->ok());
    std::string all;
    for (const auto& p : report->problems) {
      all += p + "\n";
    }
    INFO(all);
    CHECK(all.find(needle) != std::string::npos);
    expect_refused_restore(file);
  }

  Fixture() {
    // A target instance holding data, with its lock file present, so that
    // "untouched" covers a real install.
    Instance existing(target_root, 1);
    REQUIRE(hostdirs::Lock::acquire(targets.data));
    fs::create_directories(dir.path / "outside");
    write(dir.path / "outside" / "keep", "keep");
  }
};

} // namespace

TEST_CASE("snapshot::create writes a verified snapshot with every tarball") {
  TempDir dir;
  Instance instance(dir.path / "src", 4);
  for (auto compression : {snapshot::Compression::zstd, snapshot::Compression::gzip, snapshot::Compression::none}) {
    const fs::path file = dir.path / ("s" + std::string(snapshot::compression_suffix(compression)));
    make_snapshot(instance, file, compression);
    CHECK((fs::status(file).permissions() & fs::perms::all) == fs::perms(0600));
    CHECK_FALSE(fs::exists(file.string() + ".part"));
    CHECK_FALSE(fs::exists(file.string() + ".part-work"));
    auto report = snapshot::verify(file);
    REQUIRE(report);
    CHECK(report->ok());
    CHECK(report->tarballs == 8);
    CHECK(report->manifest.versions == 8);
    CHECK(report->manifest.packages == 4);
    CHECK(report->manifest.sequence == 7);
    CHECK(report->manifest.instance_id == "0123456789abcdef");
    CHECK(report->manifest.compression == snapshot::compression_name(compression));
    auto manifest = snapshot::inspect(file);
    REQUIRE(manifest);
    CHECK(manifest->update_seq == 4);
  }
  // The link directory in the staging area is gone.
  CHECK(fs::is_empty(instance.paths.packages / ".staging"));
  // The layout: snapshot.json first, the database, tarballs, data, SHA256SUMS last.
  const auto entries = entries_of(dir.path / "s.tar");
  REQUIRE(entries.size() == 1 + 1 + 8 + 2 + 1);
  CHECK(entries.front().name == "snapshot.json");
  CHECK(entries[1].name == "metadata/registry.sqlite");
  CHECK(entries.back().name == "SHA256SUMS");
  CHECK(entries.back().data == sums_of(entries));
}

TEST_CASE("snapshot::create refuses an existing output and leaves no file on failure") {
  TempDir dir;
  Instance instance(dir.path / "src", 1);
  write(dir.path / "exists.tar", "x");
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.output = dir.path / "exists.tar";
  auto result = snapshot::create(options);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::conflict);
  CHECK(read(dir.path / "exists.tar") == "x");

  // A tarball missing from the packages directory can never be secured.
  fs::remove(instance.paths.packages / "@scope/pkg0/-/pkg0-1.0.0.tgz");
  options.output = dir.path / "missing.tar";
  result = snapshot::create(options);
  REQUIRE_FALSE(result);
  CHECK(result.error().message.find("pkg0-1.0.0.tgz") != std::string::npos);
  CHECK_FALSE(fs::exists(options.output));
  CHECK_FALSE(fs::exists(options.output.string() + ".part"));
}

TEST_CASE("snapshot::create fails with a corrupt tarball in the store (read-back check)") {
  TempDir dir;
  Instance instance(dir.path / "src", 1);
  write(instance.paths.packages / "@scope/pkg0/-/pkg0-1.0.1.tgz", "not what was published");
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.output = dir.path / "bad.tar.zst";
  auto result = snapshot::create(options);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::verify);
  CHECK_FALSE(fs::exists(options.output));
  CHECK_FALSE(fs::exists(options.output.string() + ".part"));
}

TEST_CASE("snapshot::restore round trip into empty and non-empty targets") {
  TempDir dir;
  Instance instance(dir.path / "src", 3);
  const auto file = make_snapshot(instance, dir.path / "s.tar.zst", snapshot::Compression::zstd);
  const auto targets = paths_under(dir.path / "dst");
  snapshot::RestoreOptions options;
  options.file = file;
  options.targets = targets;
  auto result = snapshot::restore(options);
  REQUIRE_MESSAGE(result, (result ? "" : result.error().message));
  CHECK(result->kept_aside.empty());
  for (const auto& [rel, bytes] : instance.tarballs) {
    CHECK(read(targets.packages / rel) == bytes);
  }
  CHECK(read(targets.data / "sequence") == "7\n");
  CHECK(read(targets.data / "instance-id") == "0123456789abcdef\n");
  {
    auto store = store::Store::open(targets).value();
    CHECK(store->update_seq() == 3);
    CHECK(store->list_packages().value().size() == 3);
  }

  // Non-empty now: refused without force, kept aside with it.
  auto refused = snapshot::restore(options);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::precondition);
  options.force = snapshot::Force::yes;
  options.as_replica = snapshot::AsReplica::yes;
  write(targets.data / "instance-id", "replica-own-id\n");
  result = snapshot::restore(options);
  REQUIRE(result);
  REQUIRE(result->kept_aside.size() == 3);
  for (const auto& aside : result->kept_aside) {
    CHECK(fs::is_directory(aside));
    CHECK(aside.filename().string().find(".pre-restore-") != std::string::npos);
  }
  CHECK(read(targets.data / "sequence") == "3\n");
  CHECK(read(targets.data / "instance-id") == "replica-own-id\n");
  CHECK(result->sequence_written == 3);
}

TEST_CASE("snapshot::restore refuses while the instance runs") {
  TempDir dir;
  Instance instance(dir.path / "src", 1);
  const auto file = make_snapshot(instance, dir.path / "s.tar");
  const auto targets = paths_under(dir.path / "dst");
  fs::create_directories(targets.data);
  // Another process's lock: flock is per open file description, so a lock
  // taken here through a second descriptor conflicts like a running serve.
  auto lock = hostdirs::Lock::acquire(targets.data);
  REQUIRE(lock);
  snapshot::RestoreOptions options;
  options.file = file;
  options.targets = targets;
  auto result = snapshot::restore(options);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::precondition);
  CHECK_FALSE(fs::exists(targets.metadata));
}

TEST_CASE("snapshot::verify rejects a flipped byte in a tarball, the database and snapshot.json") {
  Fixture f;
  const auto entries = entries_of(f.good);
  for (const std::string victim : {"packages/pkg1/-/pkg1-1.0.0.tgz", "metadata/registry.sqlite", "snapshot.json"}) {
    CAPTURE(victim);
    auto changed = entries;
    for (auto& e : changed) {
      if (e.name == victim) {
        e.data[e.data.size() / 2] = static_cast<char>(e.data[e.data.size() / 2] ^ 0x01);
      }
    }
    const fs::path file = f.dir.path / "flipped.tar";
    write_archive(file, changed, false);
    f.expect_verify_fails(file, victim == "snapshot.json" ? "snapshot.json" : "");
    fs::remove(file);
  }
}

TEST_CASE("snapshot::verify rejects a tarball whose checksum was re-signed but not its integrity") {
  Fixture f;
  auto entries = entries_of(f.good);
  for (auto& e : entries) {
    if (e.name == "packages/pkg2/-/pkg2-1.0.1.tgz") {
      e.data[10] = static_cast<char>(e.data[10] ^ 0x40);
    }
  }
  write_archive(f.dir.path / "resigned.tar", entries, true);
  f.expect_verify_fails(f.dir.path / "resigned.tar", "does not match its dist.integrity");
}

TEST_CASE("snapshot::verify rejects truncated, missing or edited SHA256SUMS") {
  Fixture f;
  const std::string bytes = read(f.good);
  write(f.dir.path / "truncated.tar", bytes.substr(0, bytes.size() / 2));
  f.expect_verify_fails(f.dir.path / "truncated.tar", "truncated");

  auto entries = entries_of(f.good);
  auto without = entries;
  without.pop_back();
  write_archive(f.dir.path / "nosums.tar", without, false);
  f.expect_verify_fails(f.dir.path / "nosums.tar", "SHA256SUMS is missing");

  auto edited = entries;
  edited.back().data[0] = edited.back().data[0] == 'a' ? 'b' : 'a';
  write_archive(f.dir.path / "edited.tar", edited, false);
  f.expect_verify_fails(f.dir.path / "edited.tar", "checksum mismatch");

  auto dropped = entries;
  dropped.erase(std::find_if(dropped.begin(), dropped.end(),
                             [](const Entry& e) { return e.name == "packages/pkg1/-/pkg1-1.0.1.tgz"; }));
  write_archive(f.dir.path / "dropped.tar", dropped, true);
  f.expect_verify_fails(f.dir.path / "dropped.tar", "has no tarball");
}

TEST_CASE("snapshot::restore never writes outside its targets for hostile entries") {
  Fixture f;
  const auto good = entries_of(f.good);
  struct Case {
    const char* what;
    Entry entry;
  };
  const std::vector<Case> cases = {
    {"absolute path", {"/tmp/npme-evil-absolute", "evil"}},
    {"dot-dot", {"packages/../../outside/evil", "evil"}},
    {"leading dot-dot", {"../outside/evil", "evil"}},
    {"symlink", {"packages/pkg1/-/link", "", AE_IFLNK, "../../../outside"}},
    {"hardlink", {"packages/pkg1/-/hard", "", AE_IFREG, "outside/keep"}},
    {"character device", {"packages/pkg1/-/dev", "", AE_IFCHR}},
    {"block device", {"packages/pkg1/-/blk", "", AE_IFBLK}},
    {"fifo", {"packages/pkg1/-/fifo", "", AE_IFIFO}},
    {"directory", {"packages/evil-dir", "", AE_IFDIR}},
    {"staging", {"packages/.staging/x", "x"}},
    {"unknown data file", {"data/instance.lock", "x"}},
    {"unknown top level", {"settings.json", "{}"}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    // The hostile entry goes right after the database, before the tarballs.
    auto entries = good;
    entries.insert(entries.begin() + 2, c.entry);
    const fs::path file = f.dir.path / "hostile.tar";
    write_archive(file, entries, true);
    f.expect_verify_fails(file, "");
    CHECK_FALSE(fs::exists("/tmp/npme-evil-absolute"));
    CHECK(read(f.dir.path / "outside" / "keep") == "keep");
    fs::remove(file);
  }
}

TEST_CASE("snapshot::verify rejects an entry claiming a huge size, non-snapshots and newer formats") {
  Fixture f;
  const auto entries = entries_of(f.good);
  // snapshot.json, then a database entry whose pax header claims 1 PiB.
  std::string raw = ustar_header("snapshot.json", '0', entries[0].data.size()) + padded(entries[0].data);
  const std::string record = "25 size=1125899906842624\n";
  raw += ustar_header("PaxHeader/db", 'x', record.size()) + padded(record);
  raw += ustar_header("metadata/registry.sqlite", '0', 0) + padded(entries[1].data.substr(0, 4096));
  write(f.dir.path / "huge.tar", raw);
  f.expect_verify_fails(f.dir.path / "huge.tar", "size");

  write(f.dir.path / "noise.tar.zst", util::random_bytes(50000));
  f.expect_verify_fails(f.dir.path / "noise.tar.zst", "not an npme snapshot");
  auto inspected = snapshot::inspect(f.dir.path / "noise.tar.zst");
  REQUIRE_FALSE(inspected);
  CHECK(inspected.error().code == Errc::verify);

  write_archive(f.dir.path / "other.tar", {Entry{"README", "hello"}}, false);
  f.expect_verify_fails(f.dir.path / "other.tar", "not an npme snapshot");

  auto newer = entries;
  Json manifest = Json::parse(newer[0].data);
  manifest["format_version"] = snapshot::k_format_version + 1;
  newer[0].data = manifest.dump();
  write_archive(f.dir.path / "newer.tar", newer, true);
  f.expect_verify_fails(f.dir.path / "newer.tar", "is newer than this npme supports");
  inspected = snapshot::inspect(f.dir.path / "newer.tar");
  REQUIRE_FALSE(inspected);
  CHECK(inspected.error().message.find("newer") != std::string::npos);
}

TEST_CASE("snapshot::list and snapshot::prune keep the newest and ignore .part files") {
  TempDir dir;
  Instance instance(dir.path / "src", 1);
  const fs::path snaps = dir.path / "snaps";
  fs::create_directories(snaps);
  std::vector<fs::path> files;
  for (int i = 0; i < 3; ++i) {
    files.push_back(make_snapshot(instance, snaps / ("s" + std::to_string(i) + ".tar")));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  write(snaps / "s9.tar.zst.part", "partial");
  write(snaps / "junk.tar", "not a snapshot");
  auto listed = snapshot::list(snaps);
  REQUIRE(listed);
  REQUIRE(listed->size() == 4);
  int unreadable = 0;
  for (const auto& l : *listed) {
    CHECK(l.file.extension() != ".part");
    unreadable += l.manifest ? 0 : 1;
  }
  CHECK(unreadable == 1);

  snapshot::PruneOptions options;
  options.dir = snaps;
  options.keep = 1;
  options.dry_run = snapshot::DryRun::yes;
  auto pruned = snapshot::prune(options);
  REQUIRE(pruned);
  CHECK(pruned->deleted.size() == 2);
  CHECK(fs::exists(files[0]));
  options.keep_within = std::chrono::hours(1);
  options.dry_run = snapshot::DryRun::no;
  pruned = snapshot::prune(options);
  REQUIRE(pruned);
  CHECK(pruned->deleted.empty());
  options.keep_within.reset();
  pruned = snapshot::prune(options);
  REQUIRE(pruned);
  CHECK(pruned->deleted.size() == 2);
  CHECK_FALSE(fs::exists(files[0]));
  CHECK_FALSE(fs::exists(files[1]));
  CHECK(fs::exists(files[2]));
  CHECK(fs::exists(snaps / "junk.tar"));
  CHECK(fs::exists(snaps / "s9.tar.zst.part"));
}

TEST_CASE("snapshot::parse_duration and default_file_name") {
  CHECK(snapshot::parse_duration("36h").value() == std::chrono::hours(36));
  CHECK(snapshot::parse_duration("7d").value() == std::chrono::hours(168));
  CHECK(snapshot::parse_duration("2w").value() == std::chrono::hours(336));
  CHECK(snapshot::parse_duration("90m").value() == std::chrono::minutes(90));
  CHECK(snapshot::parse_duration("3600").value() == std::chrono::seconds(3600));
  CHECK_FALSE(snapshot::parse_duration("soon"));
  CHECK_FALSE(snapshot::parse_duration("-1h"));
  CHECK_FALSE(snapshot::parse_duration("1y"));
  const auto t = std::chrono::system_clock::from_time_t(1790000000);
  CHECK(snapshot::default_file_name("abc/../x", snapshot::Compression::zstd, t) ==
        "npme-snapshot-20260921T141320Z-abcx.tar.zst");
  CHECK(snapshot::parse_compression("gzip").value() == snapshot::Compression::gzip);
  auto unknown = snapshot::parse_compression("lz4");
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().code == Errc::usage);
}

namespace {
std::uint64_t checksum_of(std::string_view data) {
  return util::xxh3(data);
}
} // namespace

TEST_CASE("snapshot::detail::HashWorker hashes on its thread what the caller hands over") {
  const std::string data = util::random_bytes(5 * 1024 * 1024 + 17);
  util::Hasher sha512(util::Hasher::Algorithm::sha512);
  {
    snapshot::detail::HashWorker worker;
    // Queued without waiting (the bytes stay valid), in order.
    snapshot::detail::HashWorker::Ticket last = 0;
    for (std::size_t at = 0; at < data.size(); at += 1 << 20) {
      const auto chunk = std::string_view(data).substr(at, 1 << 20);
      const auto ticket = worker.post(sha512, chunk);
      CHECK(ticket >= last); // the short last chunk is hashed inline
      last = ticket;
    }
    worker.wait(last);
    // Small chunks are hashed inline; the result is the same.
    util::Hasher small(util::Hasher::Algorithm::sha256);
    worker.post(small, "abc");
    worker.wait_all();
    CHECK(small.finish() == util::sha256("abc"));
    // Any job; the destructor waits for what is still queued.
    int ran = 0;
    for (int i = 0; i < 100; ++i) {
      worker.post([&ran] { ++ran; });
    }
    worker.wait_all();
    CHECK(ran == 100);
  }
  CHECK(sha512.finish() == util::sha512(data));
}

// An instance whose tarballs are large enough to go through the hash worker.
struct LargeInstance {
  TempDir dir;
  store::Paths paths = paths_under(dir.path / "src");
  std::string rel = "big/-/big-1.0.0.tgz";
  std::string bytes = util::random_bytes(3 * 1024 * 1024 + 123);

  LargeInstance() {
    auto store = store::Store::open(paths).value();
    Json doc = {{"name", "big"},
                {"versions",
                 {{"1.0.0",
                   {{"name", "big"},
                    {"version", "1.0.0"},
                    {"dist", {{"tarball", rel}, {"integrity", util::sri_sha512(bytes)}}}}}}},
                {"dist-tags", {{"latest", "1.0.0"}}}};
    auto staged = std::make_shared<store::StagedFile>(store->stage_file(rel, bytes).value());
    REQUIRE(store->apply("big", [&](const std::optional<store::Document>&) {
      store::Write w;
      w.kind = store::Write::Kind::put;
      w.body = doc.dump();
      w.add_files.push_back(std::move(*staged));
      return Expected<store::Write>(std::move(w));
    }));
  }
};

TEST_CASE("snapshot::create, verify and restore hash large tarballs on the worker") {
  LargeInstance big;
  for (auto compression : {snapshot::Compression::zstd, snapshot::Compression::none}) {
    CAPTURE(snapshot::compression_name(compression));
    const fs::path file = big.dir.path / ("big" + std::string(snapshot::compression_suffix(compression)));
    snapshot::CreateOptions options;
    options.paths = big.paths;
    options.output = file;
    options.compression = compression;
    std::uint64_t last_done = 0;
    std::uint64_t last_total = 0;
    options.progress = [&](std::uint64_t done, std::uint64_t total) {
      CHECK(done <= total);
      CHECK(done >= last_done);
      last_done = done;
      last_total = total;
    };
    auto created = snapshot::create(options);
    REQUIRE_MESSAGE(created, (created ? "" : created.error().message));
    CHECK(last_total > big.bytes.size());
    CHECK(last_done == last_total); // the write pass and the read-back check both reported to the end
    auto report = snapshot::verify(file);
    REQUIRE(report);
    CHECK(report->ok());
    CHECK(report->tarballs == 1);

    snapshot::RestoreOptions restore;
    restore.file = file;
    restore.targets = paths_under(big.dir.path / ("restored-" + std::string(snapshot::compression_name(compression))));
    auto restored = snapshot::restore(restore);
    REQUIRE_MESSAGE(restored, (restored ? "" : restored.error().message));
    CHECK(read(restore.targets.packages / big.rel) == big.bytes);
  }

  // One flipped byte in the middle of the store's copy: create refuses.
  std::string damaged = big.bytes;
  damaged[damaged.size() / 2] = static_cast<char>(damaged[damaged.size() / 2] ^ 0x01);
  write(big.paths.packages / big.rel, damaged);
  snapshot::CreateOptions options;
  options.paths = big.paths;
  options.output = big.dir.path / "damaged.tar.zst";
  auto created = snapshot::create(options);
  REQUIRE_FALSE(created);
  CHECK(created.error().code == Errc::verify);
  CHECK(created.error().message.find("big@1.0.0 does not match its dist.integrity") != std::string::npos);
  CHECK_FALSE(fs::exists(options.output));
  CHECK_FALSE(fs::exists(options.output.string() + ".part"));

  // A snapshot whose large tarball was altered: verify and restore refuse.
  const fs::path good = big.dir.path / "big.tar";
  auto entries = entries_of(good);
  for (auto& e : entries) {
    if (e.name == "packages/" + big.rel) {
      e.data[e.data.size() - 10] = static_cast<char>(e.data[e.data.size() - 10] ^ 0x01);
    }
  }
  const fs::path altered = big.dir.path / "altered.tar";
  write_archive(altered, entries, false);
  auto report = snapshot::verify(altered);
  REQUIRE(report);
  REQUIRE_FALSE(report->ok());
  const std::string all = Json(report->problems).dump();
  CHECK(all.find("does not match its dist.integrity") != std::string::npos);
  CHECK(all.find("checksum mismatch") != std::string::npos);

  // Restore checks the extracted file on the worker: refused, nothing left.
  snapshot::RestoreOptions restore;
  restore.file = altered;
  restore.targets = paths_under(big.dir.path / "restored-altered");
  auto restored = snapshot::restore(restore);
  REQUIRE_FALSE(restored);
  CHECK(restored.error().code == Errc::verify);
  CHECK(restored.error().message.find("big@1.0.0 does not match its dist.integrity") != std::string::npos);
  CHECK_FALSE(fs::exists(restore.targets.packages));
  CHECK_FALSE(fs::exists(restore.targets.packages.string() + ".restore-partial"));
}

TEST_CASE("snapshot::create checks tarballs through the store's digests, else against dist.integrity") {
  LargeInstance big;
  const fs::path db_file = big.paths.metadata / "registry.sqlite";
  const auto sql = [&](const std::string& statement) {
    auto db = store::sqlite::Database::open(db_file, store::sqlite::Database::Mode::read_write);
    REQUIRE(db);
    REQUIRE((*db)->exec(statement));
  };
  int n = 0;
  const auto create = [&]() {
    snapshot::CreateOptions options;
    options.paths = big.paths;
    options.output = big.dir.path / ("s" + std::to_string(++n) + ".tar.zst");
    auto created = snapshot::create(options);
    if (!created) {
      CHECK_FALSE(fs::exists(options.output));
      CHECK_FALSE(fs::exists(options.output.string() + ".part"));
    }
    return created;
  };
  const auto damage = [&] {
    std::string damaged = big.bytes;
    damaged[12345] = static_cast<char>(damaged[12345] ^ 0x40);
    write(big.paths.packages / big.rel, damaged);
  };

  SUBCASE("with the store's digest a good tarball passes without its SHA-512") {
    auto created = create();
    REQUIRE_MESSAGE(created, (created ? "" : created.error().message));
    CHECK(snapshot::verify(created->file).value().ok());
  }
  SUBCASE("a damaged digest record sends the tarball to the slow check, which passes a good file") {
    // A wrong SHA-256 in the record must not reach SHA256SUMS: the tag,
    // taken over it, no longer matches, and the file is hashed.
    sql("UPDATE tarballs SET sha256 = zeroblob(32)");
    auto created = create();
    REQUIRE_MESSAGE(created, (created ? "" : created.error().message));
    CHECK(snapshot::verify(created->file).value().ok());
    sql("UPDATE tarballs SET sha256 = X'" + util::hex(util::sha256(big.bytes)) + "', tag = tag + 1");
    auto again = create();
    REQUIRE_MESSAGE(again, (again ? "" : again.error().message));
    CHECK(snapshot::verify(again->file).value().ok());
    // Restore meets the same record in the snapshot's database: the tag
    // does not match, so the extracted file is hashed, and it passes.
    snapshot::RestoreOptions restore;
    restore.file = again->file;
    restore.targets = paths_under(big.dir.path / "restored");
    auto restored = snapshot::restore(restore);
    REQUIRE_MESSAGE(restored, (restored ? "" : restored.error().message));
    CHECK(read(restore.targets.packages / big.rel) == big.bytes);
  }
  SUBCASE("a file changed since its commit fails the slow check") {
    damage();
    auto created = create();
    REQUIRE_FALSE(created);
    CHECK(created.error().code == Errc::verify);
    CHECK(created.error().message.find("big@1.0.0 does not match its dist.integrity") != std::string::npos);
  }
  SUBCASE("without digests (a database of npme 0.1) every tarball gets the integrity check") {
    sql("DROP TABLE tarballs; UPDATE meta SET value = '1' WHERE key = 'schema_version'");
    auto created = create();
    REQUIRE_MESSAGE(created, (created ? "" : created.error().message));
    CHECK(snapshot::verify(created->file).value().ok());
    damage();
    auto refused = create();
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find("big@1.0.0 does not match its dist.integrity") != std::string::npos);
  }
}

TEST_CASE("snapshot read-back check compares every entry with what was written") {
  TempDir dir;
  Instance instance(dir.path / "src", 2);
  const fs::path file = make_snapshot(instance, dir.path / "s.tar");
  // What create() wrote, rebuilt from the archive itself.
  std::vector<snapshot::detail::WrittenEntry> written;
  for (const auto& e : entries_of(file)) {
    written.push_back({e.name, static_cast<std::int64_t>(e.data.size()), checksum_of(e.data)});
  }
  // The log as create() fills it: every entry, then closed.
  const auto check = [&](const std::vector<snapshot::detail::WrittenEntry>& entries) {
    snapshot::detail::WrittenLog log;
    for (const auto& e : entries) {
      log.push(e);
    }
    log.close();
    return snapshot::detail::check_snapshot(file, dir.path, &log, {});
  };
  auto same = check(written);
  REQUIRE(same);
  CHECK(same->ok());

  auto other = written;
  other[2].checksum ^= 1;
  auto changed = check(other);
  REQUIRE(changed);
  REQUIRE_FALSE(changed->ok());
  CHECK(changed->problems.front().find("does not read back as written") != std::string::npos);

  other = written;
  other.pop_back();
  auto shorter = check(other);
  REQUIRE(shorter);
  CHECK_FALSE(shorter->ok());
  CHECK(Json(shorter->problems).dump().find("reads back but was not written") != std::string::npos);

  other = written;
  other.push_back({"data/extra", 1, 0});
  auto longer = check(other);
  REQUIRE(longer);
  CHECK_FALSE(longer->ok());
  CHECK(Json(longer->problems).dump().find("'data/extra' was written but does not read back") != std::string::npos);

  other = written;
  std::swap(other[3], other[4]);
  auto swapped = check(other);
  REQUIRE(swapped);
  CHECK_FALSE(swapped->ok());
  CHECK(Json(swapped->problems).dump().find("entry 4 reads back as") != std::string::npos);
}

TEST_CASE("snapshot::create records the admin API's state and goes on without it") {
  TempDir dir;
  Instance instance(dir.path / "src", 1);
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.role = "primary";
  // Nothing listens there (a port just released): no state, no failure.
  options.admin_url = "http://127.0.0.1:1";
  options.output = dir.path / "unreachable.tar";
  options.compression = snapshot::Compression::none;
  const auto start = std::chrono::steady_clock::now();
  auto created = snapshot::create(options);
  REQUIRE_MESSAGE(created, (created ? "" : created.error().message));
  CHECK_FALSE(created->manifest.reported);
  CHECK(created->manifest.role == "primary");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  auto inspected = snapshot::inspect(options.output);
  REQUIRE(inspected);
  CHECK_FALSE(inspected->reported);

  snapshot::Manifest manifest = created->manifest;
  snapshot::ReportedState state;
  state.admin_url = "http://127.0.0.1:8800";
  state.role = "replica";
  state.instance_id = "abc";
  state.update_seq = 41;
  state.follower_sequence = 40;
  state.follower_state = "caught-up";
  state.epoch = 2;
  manifest.reported = state;
  auto parsed = snapshot::Manifest::from_json(manifest.to_json().dump());
  REQUIRE(parsed);
  REQUIRE(parsed->reported);
  CHECK(parsed->reported->role == "replica");
  CHECK(parsed->reported->update_seq == 41);
  CHECK(parsed->reported->follower_sequence == 40);
  CHECK(parsed->reported->follower_state == "caught-up");
  CHECK(parsed->reported->epoch == 2);
}

TEST_CASE("snapshot::create carries the tarballs of an uplink's packument that the store holds") {
  TempDir dir;
  UplinkInstance instance(dir.path / "src");
  REQUIRE_FALSE(fs::exists(instance.paths.packages / instance.lazy_rel));
  REQUIRE_FALSE(fs::exists(instance.paths.packages / "abandoned"));
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.output = dir.path / "s.tar";
  options.compression = snapshot::Compression::none;
  auto created = snapshot::create(options);
  REQUIRE_MESSAGE(created, (created ? "" : created.error().message));
  CHECK(created->attempts == 1);
  CHECK(created->manifest.packages == 3);
  CHECK(created->manifest.versions == 4);
  CHECK(created->manifest.tarballs == 2);
  CHECK(created->manifest.tarball_bytes ==
        static_cast<std::int64_t>(instance.tarballs.at(instance.local_rel).size() +
                                  instance.tarballs.at(instance.fetched_rel).size()));
  CHECK(fs::is_empty(instance.paths.packages / ".staging"));

  // Exactly the two files the store holds, each listed in SHA256SUMS.
  const auto entries = entries_of(created->file);
  std::vector<std::string> packages;
  for (const auto& e : entries) {
    if (e.name.rfind("packages/", 0) == 0) {
      packages.push_back(e.name);
      CHECK(e.data == instance.tarballs.at(e.name.substr(9)));
    }
  }
  CHECK(packages == std::vector<std::string>{"packages/" + instance.fetched_rel, "packages/" + instance.local_rel});
  CHECK(entries.back().name == "SHA256SUMS");
  CHECK(entries.back().data == sums_of(entries));
  CHECK(Json::parse(entries.front().data)["counts"]["tarballs"] == 2);

  auto report = snapshot::verify(created->file);
  REQUIRE(report);
  INFO(Json(report->problems).dump());
  CHECK(report->ok());
  CHECK(report->tarballs == 2);
  CHECK(report->manifest.tarballs == 2);

  snapshot::RestoreOptions restore;
  restore.file = created->file;
  restore.targets = paths_under(dir.path / "dst");
  auto restored = snapshot::restore(restore);
  REQUIRE_MESSAGE(restored, (restored ? "" : restored.error().message));
  CHECK(restored->manifest.tarballs == 2);
  std::vector<std::string> files;
  for (const auto& it : fs::recursive_directory_iterator(restore.targets.packages)) {
    if (it.is_regular_file()) {
      files.push_back(fs::relative(it.path(), restore.targets.packages).string());
    }
  }
  std::sort(files.begin(), files.end());
  CHECK(files == std::vector<std::string>{instance.fetched_rel, instance.local_rel});
  for (const auto& [rel, bytes] : instance.tarballs) {
    CHECK(read(restore.targets.packages / rel) == bytes);
  }
  auto store = store::Store::open(restore.targets).value();
  auto cached = store->get("cached").value();
  REQUIRE(cached);
  CHECK(Json::parse(cached->body)["versions"].size() == 2);
  CHECK(Json::parse(cached->body)["_uplink"]["url"] == "https://registry.npmjs.org");
}

TEST_CASE("snapshot::create still requires every tarball of a local package") {
  TempDir dir;
  UplinkInstance instance(dir.path / "src");
  fs::remove(instance.paths.packages / instance.local_rel);
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.output = dir.path / "missing.tar";
  auto created = snapshot::create(options);
  REQUIRE_FALSE(created);
  CHECK(created.error().message.find("cannot take a consistent snapshot: tarball '" + instance.local_rel +
                                     "' of local@1.0.0 is missing") != std::string::npos);
  CHECK_FALSE(fs::exists(options.output));
  CHECK_FALSE(fs::exists(options.output.string() + ".part"));
  CHECK_FALSE(fs::exists(options.output.string() + ".part-work"));
}

TEST_CASE("snapshot::create checks the fetched tarballs of an uplink's packument against dist.integrity") {
  TempDir dir;
  UplinkInstance instance(dir.path / "src");
  std::string damaged = instance.tarballs.at(instance.fetched_rel);
  damaged[damaged.size() / 2] = static_cast<char>(damaged[damaged.size() / 2] ^ 0x20);
  write(instance.paths.packages / instance.fetched_rel, damaged);
  snapshot::CreateOptions options;
  options.paths = instance.paths;
  options.output = dir.path / "bad.tar.zst";
  auto created = snapshot::create(options);
  REQUIRE_FALSE(created);
  CHECK(created.error().code == Errc::verify);
  CHECK(created.error().message.find("tarball '" + instance.fetched_rel +
                                     "' of cached@1.0.0 does not match its dist.integrity") != std::string::npos);
  CHECK_FALSE(fs::exists(options.output));
  CHECK_FALSE(fs::exists(options.output.string() + ".part"));
}

TEST_CASE("snapshot::verify accepts an uplink version without its tarball, not a local one") {
  TempDir dir;
  UplinkInstance instance(dir.path / "src");
  const fs::path good = make_snapshot_of(instance.paths, dir.path / "good.tar");
  const auto entries = entries_of(good);
  // Leaves `rel` out of the archive, with SHA256SUMS and the manifest's
  // count of tarballs fixed: only the tarball itself is missing.
  const auto without = [&](const std::string& rel, const fs::path& file) {
    std::vector<Entry> kept;
    for (const auto& e : entries) {
      if (e.name != "packages/" + rel) {
        kept.push_back(e);
      }
    }
    Json manifest = Json::parse(kept.front().data);
    manifest["counts"]["tarballs"] = 1;
    kept.front().data = manifest.dump(2) + "\n";
    write_archive(file, kept, true);
    return snapshot::verify(file).value();
  };
  const auto uplink_dropped = without(instance.fetched_rel, dir.path / "no-fetched.tar");
  INFO(Json(uplink_dropped.problems).dump());
  CHECK(uplink_dropped.ok());
  CHECK(uplink_dropped.tarballs == 1);
  const auto local_dropped = without(instance.local_rel, dir.path / "no-local.tar");
  CHECK_FALSE(local_dropped.ok());
  CHECK(Json(local_dropped.problems).dump().find("version local@1.0.0 has no tarball") != std::string::npos);

  // A tarball the archive holds is checked, optional or not.
  auto flipped = entries;
  for (auto& e : flipped) {
    if (e.name == "packages/" + instance.fetched_rel) {
      e.data[e.data.size() / 2] = static_cast<char>(e.data[e.data.size() / 2] ^ 0x01);
    }
  }
  write_archive(dir.path / "flipped.tar", flipped, true);
  const auto report = snapshot::verify(dir.path / "flipped.tar").value();
  CHECK_FALSE(report.ok());
  CHECK(Json(report.problems).dump().find("cached@1.0.0 does not match its dist.integrity") != std::string::npos);
  snapshot::RestoreOptions restore;
  restore.file = dir.path / "flipped.tar";
  restore.targets = paths_under(dir.path / "dst");
  auto restored = snapshot::restore(restore);
  REQUIRE_FALSE(restored);
  CHECK(restored.error().code == Errc::verify);
  CHECK_FALSE(fs::exists(restore.targets.packages));
}

TEST_CASE("snapshot::Service creates into snapshot.dir as a job, one at a time, and lists what is there") {
  TempDir dir;
  Instance instance(dir.path, 3);
  const auto layout = settings::Layout::from_root(dir.path);
  std::map<std::string, std::string> values;
  std::mutex values_mutex;
  const auto settings_now = [&] {
    std::lock_guard lock(values_mutex);
    return std::make_shared<const settings::Settings>(layout, values);
  };
  const auto status = [] { return Json{{"role", "replica"}, {"instance", "0123456789abcdef"}, {"update_seq", 3}}; };
  snapshot::Service service(snapshot::Service::Context{settings_now, status, nullptr});

  // No snapshot.dir: nothing listed, and a create says what to set.
  auto listed = service.list();
  REQUIRE(listed);
  CHECK((*listed)["dir"] == "");
  CHECK((*listed)["snapshots"].empty());
  CHECK((*listed)["job"].is_null());
  auto refused = service.start_create("admin token", "127.0.0.1");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::precondition);
  CHECK(refused.error().message.find("snapshot.dir") != std::string::npos);
  CHECK_FALSE(service.job("nope"));

  // A directory that does not exist yet is made, private.
  const fs::path snaps = dir.path / "snaps" / "nightly";
  {
    std::lock_guard lock(values_mutex);
    values["snapshot.dir"] = snaps.string();
  }
  listed = service.list();
  REQUIRE(listed);
  CHECK((*listed)["snapshots"].empty());
  auto id = service.start_create("console (admin token)", "127.0.0.1");
  REQUIRE(id);
  // One at a time: refused while the first runs (unless it already ended).
  auto second = service.start_create("admin token", "127.0.0.1");
  if (!second) {
    CHECK(second.error().code == Errc::conflict);
    CHECK(second.error().message.find(*id) != std::string::npos);
  }
  const auto wait = [&](const std::string& job_id) {
    Json state;
    for (int i = 0; i < 600; ++i) {
      state = service.job(job_id).value();
      if (state["state"] != "running") {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return state;
  };
  const Json job = wait(*id);
  if (second) {
    CHECK(wait(*second)["state"] == "done");
  }
  INFO(job.dump());
  REQUIRE(job["state"] == "done");
  CHECK(job["error"].is_null());
  CHECK(job["done_bytes"] == job["total_bytes"]);
  CHECK(job["total_bytes"].get<std::uint64_t>() > 0);
  const fs::path file = job["file"].get<std::string>();
  CHECK(file.parent_path() == snaps);
  CHECK(fs::file_size(file) == job["bytes"].get<std::uint64_t>());
  CHECK((fs::status(snaps).permissions() & fs::perms::all) == fs::perms(0700));
  auto report = snapshot::verify(file);
  REQUIRE(report);
  CHECK(report->ok());
  CHECK(report->manifest.packages == 3);
  // The state it records is the instance's own status, not an HTTP call.
  CHECK(report->manifest.role == "replica");
  REQUIRE(report->manifest.reported);
  CHECK(report->manifest.reported->admin_url == "npme serve");
  CHECK(report->manifest.reported->update_seq == 3);

  listed = service.list();
  REQUIRE(listed);
  const auto& found = (*listed)["snapshots"];
  REQUIRE(found.size() == (second ? 2u : 1u));
  const auto entry = std::find_if(found.begin(), found.end(), [&](const Json& x) { return x["file"] == file.string(); });
  REQUIRE(entry != found.end());
  CHECK((*entry)["counts"]["packages"] == 3);
  CHECK((*listed)["job"]["id"] == (second ? *second : *id));

  // Stopped: no more creates.
  service.stop();
  auto after = service.start_create("admin token", "127.0.0.1");
  REQUIRE_FALSE(after);
  CHECK(after.error().code == Errc::failed);
}
