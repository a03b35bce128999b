// The counts `npme status` shows come from one row the database keeps in the
// transactions that change what it counts (store::Store::counts).

#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "tests/unit/store_fixture.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <memory>

namespace {

namespace fs = std::filesystem;
using namespace npme;
using store::Store;
using store::Write;
using test::TempDir;

// Puts `body` as `id`, with the tarball `rel` (holding `bytes`) when given,
// and removes the tarballs `drop`.
void put(Store& store, const std::string& id, const std::string& body, const std::string& rel = "",
         const std::string& bytes = "", std::vector<std::string> drop = {}) {
  std::vector<store::StagedFile> files;
  if (!rel.empty()) {
    auto staged = store.stage_file(rel, bytes);
    REQUIRE(staged);
    files.push_back(std::move(*staged));
  }
  auto shared = std::make_shared<std::vector<store::StagedFile>>(std::move(files));
  auto written = store.apply(id, [&](const std::optional<store::Document>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::put;
    write.body = body;
    write.add_files = std::move(*shared);
    write.remove_files = drop;
    return write;
  });
  REQUIRE_MESSAGE(written, (written ? "" : written.error().message));
}

void remove(Store& store, const std::string& id, std::vector<std::string> files) {
  auto removed = store.apply(id, [&](const std::optional<store::Document>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::remove;
    write.remove_files = files;
    return write;
  });
  REQUIRE(removed);
}

void check_counts(const Store& store, std::int64_t packages, std::int64_t versions, std::int64_t tarballs,
                  std::int64_t bytes, std::int64_t uplink_packages = 0) {
  auto counts = store.counts();
  REQUIRE_MESSAGE(counts, (counts ? "" : counts.error().message));
  CHECK(counts->packages == packages);
  CHECK(counts->versions == versions);
  CHECK(counts->tarballs == tarballs);
  CHECK(counts->tarball_bytes == bytes);
  CHECK(counts->uplink_packages == uplink_packages);
}

// Runs `sql` on the closed store's database (to make it an older one).
void rewrite_database(const TempDir& dir, const char* sql) {
  auto db =
    store::sqlite::Database::open(dir.path / "couchdb" / "registry.sqlite", store::sqlite::Database::Mode::read_write);
  REQUIRE(db);
  REQUIRE((*db)->exec(sql));
}

} // namespace

TEST_CASE("store counts follow every put, update and removal, and never count an orphan file") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  check_counts(*store, 0, 0, 0, 0);

  put(*store, "a", R"({"versions":{"1.0.0":{}}})", "a/-/a-1.0.0.tgz", "12345");
  check_counts(*store, 1, 1, 1, 5);
  put(*store, "a", R"({"versions":{"1.0.0":{},"1.1.0":{}}})", "a/-/a-1.1.0.tgz", "123");
  check_counts(*store, 1, 2, 2, 8);
  // A version unpublished: one fewer version and tarball.
  put(*store, "a", R"({"versions":{"1.1.0":{}}})", "", "", {"a/-/a-1.0.0.tgz"});
  check_counts(*store, 1, 1, 1, 3);
  // A tarball replaced in place (same path, other size).
  put(*store, "a", R"({"versions":{"1.1.0":{}}})", "a/-/a-1.1.0.tgz", "1234567");
  check_counts(*store, 1, 1, 1, 7);
  // Users and tokens are no packages, whatever they hold.
  put(*store, "_user:alice", R"({"versions":{"x":1}})");
  put(*store, "@s/b", R"({"name":"@s/b"})");
  check_counts(*store, 2, 1, 1, 7);

  // A file no write committed (a publish killed between its rename and its
  // commit leaves one) is not a tarball of the registry.
  fs::create_directories(dir.path / "packages" / "z" / "-");
  std::ofstream(dir.path / "packages" / "z" / "-" / "z-1.0.0.tgz") << "orphan";
  check_counts(*store, 2, 1, 1, 7);

  remove(*store, "a", {"a/-/a-1.1.0.tgz"});
  check_counts(*store, 1, 0, 0, 0);
  auto again = store->recount();
  REQUIRE(again);
  CHECK(again->packages == 1);
  CHECK(again->tarballs == 0);
}

TEST_CASE("store counts of a database from before they were kept are counted once at open") {
  TempDir dir;
  {
    auto store = test::open_store(dir.path);
    put(*store, "a", R"({"versions":{"1.0.0":{},"2.0.0":{}}})", "a/-/a-1.0.0.tgz", "12345");
    put(*store, "b", R"({"versions":{"1.0.0":{}}})", "b/-/b-1.0.0.tgz", "12");
    put(*store, "c", R"({"versions":{},"_uplink":{"url":"https://u.example"}})");
  }
  // Make it a schema-2 database: no counts, no docs.versions.
  rewrite_database(dir, "DROP TRIGGER counts_doc_insert; DROP TRIGGER counts_doc_update; "
                        "DROP TRIGGER counts_doc_delete; DROP TRIGGER counts_tarball_insert; "
                        "DROP TRIGGER counts_tarball_update; DROP TRIGGER counts_tarball_delete; "
                        "DROP TABLE counts; ALTER TABLE docs DROP COLUMN versions; "
                        "ALTER TABLE docs DROP COLUMN uplink; "
                        "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
  auto store = test::open_store(dir.path);
  check_counts(*store, 3, 3, 2, 7, 1);
  put(*store, "b", R"({"versions":{"1.0.0":{},"1.0.1":{}}})", "b/-/b-1.0.1.tgz", "1");
  check_counts(*store, 3, 4, 3, 8, 1);
}

TEST_CASE("store counts the packages that are uplink copies by their top-level \"_uplink\" object") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  put(*store, "lodash", R"({"versions":{"1.0.0":{}},"_uplink":{"url":"https://u.example","digest":"x"}})");
  check_counts(*store, 1, 1, 0, 0, 1);
  // Only an object member at the top marks a copy: not a string, not a
  // member of a version, not the text in a description.
  put(*store, "a", R"({"_uplink":"no","versions":{"1.0.0":{"_uplink":{}}},"description":"\"_uplink\":{}"})");
  check_counts(*store, 2, 2, 0, 0, 1);
  // A copy published over locally (the member dropped) is no copy any more.
  put(*store, "lodash", R"({"versions":{"1.0.0":{},"2.0.0":{}}})");
  check_counts(*store, 2, 3, 0, 0, 0);
  put(*store, "lodash", R"({"versions":{"1.0.0":{}},"_uplink":{"url":"https://u.example"}})");
  check_counts(*store, 2, 2, 0, 0, 1);
  // Users are no packages.
  put(*store, "_user:bob", R"({"_uplink":{}})");
  check_counts(*store, 2, 2, 0, 0, 1);
  remove(*store, "lodash", {});
  check_counts(*store, 1, 1, 0, 0, 0);
  auto again = store->recount();
  REQUIRE(again);
  CHECK(again->uplink_packages == 0);
}

TEST_CASE("store counts of a schema-3 database made before docs.uplink existed are counted again at open") {
  TempDir dir;
  {
    auto store = test::open_store(dir.path);
    put(*store, "a", R"({"versions":{"1.0.0":{}},"_uplink":{"url":"https://u.example"}})");
  }
  // The counts and triggers of before docs.uplink.
  rewrite_database(dir, "DROP TRIGGER counts_doc_insert; DROP TRIGGER counts_doc_update; "
                        "DROP TRIGGER counts_doc_delete; DROP TABLE counts; "
                        "CREATE TABLE counts(id INTEGER PRIMARY KEY, packages INTEGER NOT NULL, "
                        "versions INTEGER NOT NULL, tarballs INTEGER NOT NULL, tarball_bytes INTEGER NOT NULL); "
                        "INSERT INTO counts VALUES(1, 1, 1, 0, 0); ALTER TABLE docs DROP COLUMN uplink");
  auto store = test::open_store(dir.path);
  check_counts(*store, 1, 1, 0, 0, 1);
  put(*store, "b", R"({"_uplink":{}})");
  check_counts(*store, 2, 1, 0, 0, 2);
}
