// npme doctor on damaged stores made here: each defect is found, named, and
// repaired or reported lost; the scrub and the jobs of a running instance;
// the registry's memory never serves a file repaired on disk.

#include "core/auth/auth.hpp"
#include "core/doctor/doctor.hpp"
#include "core/doctor/service.hpp"
#include "core/registry/names.hpp"
#include "core/registry/registry.hpp"
#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

namespace {

namespace fs = std::filesystem;
using namespace npme;
using nlohmann::json;
using test::TempDir;

std::string tarball_bytes(const std::string& name, const std::string& version) {
  return std::string("\x1f\x8b\x08\x00", 4) + "tarball of " + name + "@" + version + std::string(200, 'x');
}

void write_file(const fs::path& path, std::string_view bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read(const fs::path& path) {
  auto bytes = util::read_file(path);
  REQUIRE_MESSAGE(bytes, (bytes ? "" : bytes.error().message));
  return *bytes;
}

// Runs `sql` on the database of a store that is not open.
void sql(const fs::path& db_file, const std::string& text) {
  auto db = store::sqlite::Database::open(db_file, store::sqlite::Database::Mode::read_write);
  REQUIRE(db);
  REQUIRE((*db)->exec(text));
}

// A source that holds good copies of some tarballs, and counts the asks.
class FakeSource : public doctor::TarballSource {
public:
  std::map<std::string, std::string> files; // rel path -> bytes
  int asked = 0;
  std::string describe() const override { return "the test source"; }
  Expected<std::string> fetch(const doctor::Wanted& wanted) override {
    ++asked;
    auto it = files.find(wanted.rel_path);
    if (it == files.end()) {
      return make_error(Errc::not_found, "not held");
    }
    return it->second;
  }
};

// A store in a temp directory with packages published into it the way the
// registry does (dist.tarball a relative path, integrity of the bytes).
struct Instance {
  TempDir dir;
  store::Paths paths{dir.path / "couchdb", dir.path / "packages", dir.path / "data"};
  settings::Layout layout = settings::Layout::from_root(dir.path);
  std::unique_ptr<store::Store> store;
  std::vector<std::string> changed;

  Instance() {
    open();
    REQUIRE(settings::load_or_create(layout));
  }

  void open() {
    auto opened = store::Store::open(paths);
    REQUIRE_MESSAGE(opened, (opened ? "" : opened.error().message));
    store = std::move(*opened);
  }

  fs::path db_file() const { return paths.metadata / "registry.sqlite"; }
  fs::path file(const std::string& name, const std::string& version) const {
    return paths.packages / registry::tarball_rel_path(name, version);
  }

  void publish(const std::string& name, const std::string& version, bool uplink_copy = false) {
    const std::string bytes = tarball_bytes(name, version);
    const std::string rel = registry::tarball_rel_path(name, version);
    auto staged = store->stage_file(rel, bytes);
    REQUIRE(staged);
    auto shared = std::make_shared<store::StagedFile>(std::move(*staged));
    auto written = store->apply(name, [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
      json doc = current ? json::parse(current->body) : json{{"name", name}, {"versions", json::object()}};
      doc["versions"][version] = {
        {"name", name},
        {"version", version},
        {"dist", {{"tarball", rel}, {"integrity", util::sri_sha512(bytes)}, {"shasum", util::hex(util::sha1(bytes))}}}};
      if (uplink_copy) {
        doc["_uplink"] = json{{"tarballs", json::object()}};
      }
      store::Write write;
      write.kind = store::Write::Kind::put;
      write.body = doc.dump();
      if (!uplink_copy) {
        write.add_files.push_back(std::move(*shared));
      }
      return write;
    });
    REQUIRE_MESSAGE(written, (written ? "" : written.error().message));
  }

  doctor::Options options(doctor::Depth depth = doctor::Depth::records, doctor::Repair repair = doctor::Repair::no,
                          doctor::TarballSource* source = nullptr) {
    doctor::Options o;
    o.depth = depth;
    o.repair = repair;
    o.paths = paths;
    o.layout = layout;
    o.settings_file = layout.config_file;
    o.store = store.get();
    o.source = source;
    o.changed = [this](const std::string& name) { changed.push_back(name); };
    o.now_utc = [] { return std::string("20250101T000000Z"); };
    return o;
  }

  doctor::Report run(const doctor::Options& o) {
    auto report = doctor::run(o);
    REQUIRE_MESSAGE(report, (report ? "" : report.error().message));
    return std::move(*report);
  }
};

const doctor::Defect& only_defect(const doctor::Report& report) {
  REQUIRE(report.defects.size() == 1);
  return report.defects.front();
}

} // namespace

TEST_CASE("doctor::run finds nothing wrong in a sound store and trusts its records") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  instance.publish("left-pad", "1.1.0");
  instance.publish("@s/util", "2.0.0");
  const auto report = instance.run(instance.options());
  CHECK(report.defects.empty());
  CHECK(report.counts.packages == 2);
  CHECK(report.counts.versions == 3);
  CHECK(report.counts.tarballs == 3);
  CHECK(report.counts.hashed == 0);
  CHECK(report.summary() == "checked 2 packages, 3 versions and 3 tarballs (0 hashed in full); no defects");
  CHECK(report.to_json()["ok"] == true);

  const auto full = instance.run(instance.options(doctor::Depth::full));
  CHECK(full.defects.empty());
  CHECK(full.counts.hashed == 3);
}

TEST_CASE("doctor::run reports a truncated tarball and fetches it again from the source") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  const std::string good = read(instance.file("left-pad", "1.0.0"));
  write_file(instance.file("left-pad", "1.0.0"), good.substr(0, 20));

  const auto report = instance.run(instance.options());
  const auto& defect = only_defect(report);
  CHECK(defect.kind == "damaged");
  CHECK(defect.id == "left-pad@1.0.0");
  CHECK(defect.path == "left-pad/-/left-pad-1.0.0.tgz");
  CHECK(defect.detail == "20 bytes, but " + std::to_string(good.size()) + " were committed (the store's record)");
  CHECK_FALSE(defect.repaired);
  CHECK(report.remaining() == 1);

  FakeSource source;
  source.files["left-pad/-/left-pad-1.0.0.tgz"] = good;
  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes, &source));
  const auto& fixed = only_defect(repaired);
  CHECK(fixed.repaired);
  CHECK(fixed.action.starts_with("fetched again from the test source and checked against dist.integrity"));
  CHECK(read(instance.file("left-pad", "1.0.0")) == good);
  // The damaged copy is kept, never deleted.
  const fs::path kept =
    instance.paths.data / "quarantine" / "20250101T000000Z" / "packages" / "left-pad/-/left-pad-1.0.0.tgz";
  CHECK(read(kept) == good.substr(0, 20));
  CHECK(instance.changed == std::vector<std::string>{"left-pad"});
  CHECK(repaired.remaining() == 0);

  CHECK(instance.run(instance.options()).defects.empty());
}

TEST_CASE("doctor::run finds a flipped byte by its tag, and with Depth::full by dist.integrity") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  std::string bytes = read(instance.file("left-pad", "1.0.0"));
  bytes[50] = static_cast<char>(bytes[50] ^ 0x01);
  write_file(instance.file("left-pad", "1.0.0"), bytes);

  // Same size: the tag (an XXH3 over the recorded SHA-256 and every byte) differs.
  const auto report = instance.run(instance.options());
  CHECK(only_defect(report).kind == "damaged");
  CHECK(only_defect(report).detail.starts_with("its bytes do not match dist.integrity sha512-"));
  CHECK(report.counts.hashed == 1);

  const auto full = instance.run(instance.options(doctor::Depth::full));
  CHECK(only_defect(full).kind == "damaged");
}

TEST_CASE("doctor::run reports a deleted tarball lost when nothing can bring it back") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  fs::remove(instance.file("left-pad", "1.0.0"));

  const auto report = instance.run(instance.options());
  CHECK(only_defect(report).kind == "missing");
  CHECK(only_defect(report).detail == "the tarball does not exist");

  const auto no_source = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  CHECK(only_defect(no_source).lost);
  CHECK(only_defect(no_source).action.starts_with("lost: this instance has no upstream and no uplink"));
  CHECK(no_source.summary().ends_with("1 defect: 0 repaired, 1 remaining (1 lost)"));

  FakeSource empty;
  const auto not_held = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes, &empty));
  CHECK(only_defect(not_held).lost);
  CHECK(only_defect(not_held).action == "lost: cannot fetch it from the test source: not held");
  CHECK(empty.asked == 1);
}

TEST_CASE("doctor::run puts nothing in place that does not match dist.integrity") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  fs::remove(instance.file("left-pad", "1.0.0"));
  FakeSource source;
  source.files["left-pad/-/left-pad-1.0.0.tgz"] = "other bytes";
  const auto report = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes, &source));
  CHECK(only_defect(report).lost);
  CHECK(only_defect(report).action.find("does not match") != std::string::npos);
  CHECK_FALSE(fs::exists(instance.file("left-pad", "1.0.0")));
}

TEST_CASE("doctor::run quarantines orphans, never deletes them, and leaves .staging alone") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  write_file(instance.paths.packages / "junk/-/junk-9.9.9.tgz", "extra");
  write_file(instance.paths.packages / "left-pad/-/left-pad-0.0.1.tgz", "kill -9 during a publish");
  write_file(instance.paths.packages / ".staging/abc.tmp", "a write under way");

  const auto report = instance.run(instance.options());
  REQUIRE(report.defects.size() == 2);
  CHECK(report.defects[0].kind == "orphan");
  CHECK(report.defects[0].path == "junk/-/junk-9.9.9.tgz");
  CHECK(report.defects[0].detail == "no version refers to this file (5 bytes)");
  CHECK(report.defects[1].path == "left-pad/-/left-pad-0.0.1.tgz");

  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  REQUIRE(repaired.defects.size() == 2);
  const fs::path folder = instance.paths.data / "quarantine" / "20250101T000000Z";
  CHECK(repaired.quarantine == folder.string());
  CHECK(repaired.defects[0].repaired);
  CHECK(repaired.defects[0].action == "moved to " + (folder / "packages/junk/-/junk-9.9.9.tgz").string());
  CHECK(read(folder / "packages/junk/-/junk-9.9.9.tgz") == "extra");
  CHECK_FALSE(fs::exists(instance.paths.packages / "junk")); // emptied directories go too
  CHECK(fs::exists(instance.file("left-pad", "1.0.0")));
  CHECK(fs::exists(instance.paths.packages / ".staging/abc.tmp"));
  CHECK(instance.run(instance.options()).defects.empty());
}

TEST_CASE("doctor::run hashes tarballs without a record and writes their records on repair") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  instance.publish("left-pad", "1.1.0");
  instance.store.reset();
  sql(instance.db_file(), "DELETE FROM tarballs WHERE path = 'left-pad/-/left-pad-1.0.0.tgz'");
  instance.open();

  const auto report = instance.run(instance.options());
  CHECK(report.defects.empty()); // an upgraded store, not a damaged one
  CHECK(report.counts.unrecorded == 1);
  CHECK(report.counts.hashed == 1);

  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  CHECK(repaired.counts.records_written == 1);
  CHECK(repaired.summary() ==
        "checked 1 package, 2 versions and 2 tarballs (1 hashed in full), 1 without a record (1 written); no defects");
  auto record = instance.store->tarball_digest("left-pad/-/left-pad-1.0.0.tgz");
  REQUIRE(record);
  CHECK(record->has_value());

  const auto after = instance.run(instance.options());
  CHECK(after.counts.unrecorded == 0);
  CHECK(after.counts.hashed == 0);
}

TEST_CASE("doctor::run reports a record that disagrees with a good file and writes it again") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  instance.store.reset();
  sql(instance.db_file(), "UPDATE tarballs SET tag = tag + 1");
  instance.open();

  const auto report = instance.run(instance.options());
  CHECK(only_defect(report).kind == "record");
  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  CHECK(only_defect(repaired).repaired);
  CHECK(only_defect(repaired).action == "record written again from the file");
  CHECK(instance.run(instance.options()).defects.empty());
}

TEST_CASE("doctor::run leaves the absent tarballs of uplink copies alone") {
  Instance instance;
  instance.publish("express", "4.21.2", true);
  const auto report = instance.run(instance.options());
  CHECK(report.defects.empty());
  CHECK(report.counts.absent_lazy == 1);
}

TEST_CASE("doctor::run checks the change log against the documents") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  instance.publish("is-odd", "1.0.0");
  instance.store.reset();
  sql(instance.db_file(), "UPDATE changes SET rev = '7-abc' WHERE id = 'left-pad'; DELETE FROM changes WHERE id = "
                          "'is-odd'");
  instance.open();
  const auto report = instance.run(instance.options());
  REQUIRE(report.defects.size() == 2);
  CHECK(report.defects[0].kind == "changelog");
  CHECK(report.defects[0].id == "is-odd");
  CHECK(report.defects[0].detail.ends_with(") has no change record: followers never learn of it"));
  CHECK(report.defects[1].id == "left-pad");
  CHECK(report.defects[1].detail.find("but its change record says revision 7-abc") != std::string::npos);
}

TEST_CASE("doctor::run reports a damaged database and skips what would trust it") {
  Instance instance;
  for (int i = 0; i < 200; ++i) {
    instance.publish("pkg-" + std::to_string(i), "1.0.0");
  }
  instance.store.reset();
  {
    // Garbage over a page in the middle of the file (the store is closed:
    // everything is in the main file).
    std::fstream db(instance.db_file(), std::ios::in | std::ios::out | std::ios::binary);
    db.seekp(4096 * 8);
    const std::string garbage = util::random_bytes(4096);
    db.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  auto options = instance.options(doctor::Depth::records, doctor::Repair::yes);
  options.store = nullptr; // a stopped instance
  const auto report = instance.run(options);
  const auto& defect = only_defect(report);
  CHECK(defect.kind == "database");
  CHECK(defect.path == instance.db_file().string());
  CHECK(defect.detail.starts_with("SQLite's integrity check failed: "));
  CHECK(defect.detail.ends_with("; see the README runbook 'Check and repair an instance'"));
  CHECK_FALSE(defect.repaired);
  CHECK(defect.action.starts_with("not repaired: a damaged database is never repaired in place"));
  CHECK(report.skipped == std::vector<std::string>{"the change log, tarball and orphan checks: the database is "
                                                   "damaged"});
  CHECK(report.counts.packages == 0);
}

TEST_CASE("doctor::run reports a malformed sequence and empties it on repair") {
  Instance instance;
  write_file(instance.paths.data / "sequence", "12abc\n");
  const auto report = instance.run(instance.options());
  CHECK(only_defect(report).kind == "sequence");
  CHECK(only_defect(report).detail ==
        "holds '12abc\\x0a', not a change number and a newline (or nothing): the follower cannot start");
  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  CHECK(only_defect(repaired).repaired);
  CHECK(read(instance.paths.data / "sequence").empty());
  CHECK(read(instance.paths.data / "quarantine/20250101T000000Z/data/sequence") == "12abc\n");
  write_file(instance.paths.data / "sequence", "42\n");
  CHECK(instance.run(instance.options()).defects.empty());
}

TEST_CASE("doctor::run reports invalid white-list lines and drops them on repair") {
  Instance instance;
  write_file(instance.paths.data / "whitelist", "# names\nleft-pad\nnot a name\n\n@s/util\n../etc\n");
  const auto report = instance.run(instance.options());
  CHECK(only_defect(report).kind == "whitelist");
  CHECK(only_defect(report).detail == "line 3 'not a name' is not a package name (and 1 more lines)");
  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  CHECK(only_defect(repaired).action.starts_with("removed 2 invalid line(s)"));
  CHECK(read(instance.paths.data / "whitelist") == "@s/util\nleft-pad\n");
}

TEST_CASE("doctor::run checks the settings file's mode and validity") {
  Instance instance;
  fs::permissions(instance.layout.config_file, fs::perms(0644));
  const auto report = instance.run(instance.options());
  CHECK(only_defect(report).kind == "settings");
  CHECK(only_defect(report).detail == "mode 0644, but it holds the admin token and the secrets: it must be 0600");
  const auto repaired = instance.run(instance.options(doctor::Depth::records, doctor::Repair::yes));
  CHECK(only_defect(repaired).action == "mode set to 0600");
  CHECK((fs::status(instance.layout.config_file).permissions() & fs::perms::all) == fs::perms(0600));

  write_file(instance.layout.config_file, R"({"publication":"sometimes"})");
  fs::permissions(instance.layout.config_file, fs::perms(0600));
  const auto invalid = instance.run(instance.options());
  CHECK(only_defect(invalid).kind == "settings");
  CHECK(only_defect(invalid).detail.find("invalid value 'sometimes' for publication") != std::string::npos);
}

TEST_CASE("doctor::defect_line names the kind, the subject, what is wrong and what was done") {
  doctor::Report report;
  report.repair = true;
  report.defects.push_back({"damaged", "a@1.0.0", "a/-/a-1.0.0.tgz", "broken", true, "fetched again", false});
  report.defects.push_back(
    {"orphan", "", "x/y", "no version refers to this file (1 bytes)", false, "not repaired: busy", false});
  report.defects.push_back({"missing", "b@1.0.0", "b/-/b-1.0.0.tgz", "gone", false, "lost: nowhere", true});
  const json doc = report.to_json();
  CHECK(doctor::defect_line(doc["defects"][0]) == "damaged a@1.0.0 a/-/a-1.0.0.tgz: broken; repaired: fetched again");
  CHECK(doctor::defect_line(doc["defects"][1]) ==
        "orphan x/y: no version refers to this file (1 bytes); not repaired: busy");
  CHECK(doctor::defect_line(doc["defects"][2]) == "missing b@1.0.0 b/-/b-1.0.0.tgz: gone; lost: nowhere");
  CHECK(doc["counts"]["remaining"] == 2);
  CHECK(doc["counts"]["lost"] == 1);
  CHECK(doc["ok"] == false);
  CHECK(doc["defects"][1]["id"].is_null());
}

TEST_CASE("doctor::Service runs jobs, and the scrub exports what it found") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  auto loaded = settings::load(instance.layout);
  REQUIRE(loaded);
  settings::LiveSettings live(std::move(*loaded));
  std::vector<std::string> logged;
  std::mutex logged_mutex;
  doctor::Service service(doctor::Service::Context{*instance.store, [&live] { return live.get(); },
                                                   [](const std::string&) {},
                                                   [&](const std::string& line) {
                                                     std::lock_guard lock(logged_mutex);
                                                     logged.push_back(line);
                                                   }});
  service.start();
  fs::remove(instance.file("left-pad", "1.0.0"));

  // Polls `done` (bounded): the service's threads decide when.
  const auto wait_for = [](const std::function<bool()>& done) {
    for (int i = 0; i < 1000 && !done(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done();
  };
  auto id = service.start_job(doctor::Depth::records, doctor::Repair::no);
  REQUIRE(id);
  REQUIRE(wait_for([&] { return service.job(*id)->at("state") == "done"; }));
  const json job = *service.job(*id);
  CHECK(job["report"]["counts"]["remaining"] == 1);
  CHECK(job["report"]["defects"][0]["kind"] == "missing");
  CHECK(service.metrics().find("\nnpme_scrub_defects 1\n") != std::string::npos);
  CHECK(service.metrics().find("\nnpme_scrub_runs_total 0\n") != std::string::npos);
  CHECK_FALSE(service.job("nope").has_value());

  REQUIRE(live.update({{"scrub.interval", "1s"}}));
  REQUIRE(wait_for([&] { return service.metrics().find("\nnpme_scrub_runs_total 1\n") != std::string::npos; }));
  const std::string metrics = service.metrics();
  CHECK(metrics.find("\nnpme_scrub_defects 1\n") != std::string::npos);
  CHECK(metrics.find("\nnpme_scrub_interval_seconds 1\n") != std::string::npos);
  CHECK(metrics.find("\nnpme_scrub_last_run_timestamp_seconds 0.000\n") == std::string::npos);
  {
    std::lock_guard lock(logged_mutex);
    REQUIRE(logged.size() >= 2);
    CHECK(logged[0].starts_with("scrub: checked 1 package, 1 version and 0 tarballs"));
    CHECK(logged[1] == "scrub: missing left-pad@1.0.0 left-pad/-/left-pad-1.0.0.tgz: the tarball does not exist");
  }
  service.stop();
  CHECK_FALSE(service.start_job(doctor::Depth::records, doctor::Repair::no));
}

TEST_CASE("registry serves a tarball repaired on disk, not the copy in its memory") {
  Instance instance;
  instance.publish("left-pad", "1.0.0");
  auth::Auth auth(*instance.store);
  const std::map<std::string, std::string> values{{"auth.installs", "none"}};
  registry::Registry registry(*instance.store, auth,
                              [&] { return std::make_shared<const settings::Settings>(instance.layout, values); });
  auto router = registry.router();
  const auto get = [&] {
    http::Request request;
    request.method = "GET";
    request.target = request.path = "/left-pad/-/left-pad-1.0.0.tgz";
    request.remote_address = "127.0.0.1";
    return router->dispatch(request);
  };
  const std::string good = read(instance.file("left-pad", "1.0.0"));
  CHECK(std::string(get().body_view()) == good); // now in memory

  // Damaged by hand, then repaired by npme doctor: each time the file on
  // disk is what is served — a change by hand once the registry looks at
  // the file again (at most a second after it last did, as nginx's
  // open_file_cache_valid), a repair at once (npme doctor drops the copy).
  const std::string damaged = good.substr(0, 10);
  write_file(instance.file("left-pad", "1.0.0"), damaged);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(std::string(get().body_view()) == damaged);
  FakeSource source;
  source.files["left-pad/-/left-pad-1.0.0.tgz"] = good;
  auto options = instance.options(doctor::Depth::records, doctor::Repair::yes, &source);
  options.changed = [&registry](const std::string& name) { registry.invalidate(name); };
  CHECK(only_defect(instance.run(options)).repaired);
  CHECK(std::string(get().body_view()) == good);
}
