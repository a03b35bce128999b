// Package documents kept split: a head and one row per version
// (core/store/documents.hpp), written whole or one version at a time.

#include "core/store/documents.hpp"
#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "tests/unit/store_fixture.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace npme;
using store::Store;
using store::Write;
using Json = nlohmann::json;
using test::TempDir;

store::Mutation put_whole(std::string body) {
  return [body = std::move(body)](const std::optional<store::Document>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::put;
    write.body = body;
    return write;
  };
}

store::HeadMutation put_head(std::string head, std::vector<std::pair<std::string, std::string>> versions,
                             std::vector<std::string> removed = {}) {
  return [=](const std::optional<store::Head>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::put;
    write.body = head;
    write.put_versions = versions;
    write.remove_versions = removed;
    return write;
  };
}

fs::path db_path(const TempDir& dir) {
  return dir.path / "couchdb" / "registry.sqlite";
}

std::unique_ptr<store::sqlite::Database> open_db(const TempDir& dir) {
  auto db = store::sqlite::Database::open(db_path(dir), store::sqlite::Database::Mode::read_write);
  REQUIRE(db);
  return std::move(*db);
}

std::int64_t query_int(store::sqlite::Database& db, const std::string& sql) {
  auto stmt = db.prepare(sql);
  REQUIRE(stmt);
  REQUIRE(stmt->step());
  return stmt->column_int64(0);
}

// The document without "_rev" (which each write sets).
Json without_rev(const std::string& body) {
  Json doc = Json::parse(body);
  doc.erase("_rev");
  return doc;
}

const std::string k_doc =
  R"({"name":"p","dist-tags":{"latest":"1.0.1"},"versions":{"1.0.1":{"v":"1.0.1","dist":{"tarball":"p/-/p-1.0.1.tgz"}},)"
  R"("1.0.0":{"v":"1.0.0","deps":{"a":"^1"}}},"time":{"created":"t0","1.0.0":"t1","1.0.1":"t2"},"readme":"é"})";

} // namespace

TEST_CASE("store documents: a package document is kept as a head and a row per version") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto written = store->apply("p", put_whole(k_doc)).value();
  Json expected = Json::parse(k_doc);
  expected["_id"] = "p";
  CHECK(without_rev(store->get("p").value()->body) == expected);
  CHECK(written.body == store->get("p").value()->body);

  auto db = open_db(dir);
  CHECK(query_int(*db, "SELECT split FROM docs WHERE id = 'p'") == 1);
  CHECK(query_int(*db, "SELECT COUNT(*) FROM doc_versions WHERE id = 'p'") == 2);
  CHECK(query_int(*db, "SELECT versions FROM docs WHERE id = 'p'") == 2);
  // The head holds no manifest.
  CHECK(query_int(*db, "SELECT instr(body, 'deps') FROM docs WHERE id = 'p'") == 0);

  const auto head = store->get_head("p").value();
  REQUIRE(head);
  CHECK(head->rev == written.rev);
  CHECK(head->versions == std::vector<std::string>{"1.0.0", "1.0.1"});
  CHECK_FALSE(head->uplink);
  const Json head_doc = Json::parse(head->body);
  CHECK(head_doc["versions"] == Json::object());
  CHECK(head_doc["readme"] == "é");
  CHECK(head_doc["_rev"] == written.rev);

  // Users, tokens and packages without versions stay whole.
  REQUIRE(store->apply("_user:alice", put_whole(R"({"versions":{"x":{}}})")));
  REQUIRE(store->apply("q", put_whole(R"({"name":"q"})")));
  CHECK(query_int(*db, "SELECT COUNT(*) FROM docs WHERE split = 1") == 1);
  CHECK(store->get("_user:alice").value()->body.find("\"x\":{}") != std::string::npos);
  CHECK(store->get_head("q").value()->versions.empty());
  CHECK_FALSE(store->get_head("_user:alice"));
}

TEST_CASE("store documents: a whole document's revision is the same whichever way it is stored") {
  TempDir a;
  TempDir b;
  auto one = test::open_store(a.path);
  auto two = test::open_store(b.path);
  const auto first = one->apply("p", put_whole(k_doc)).value();
  // The same document with its versions in another order.
  const std::string reordered =
    R"({"name":"p","dist-tags":{"latest":"1.0.1"},"versions":{"1.0.0":{"v":"1.0.0","deps":{"a":"^1"}},)"
    R"("1.0.1":{"v":"1.0.1","dist":{"tarball":"p/-/p-1.0.1.tgz"}}},"time":{"created":"t0","1.0.0":"t1","1.0.1":"t2"},"readme":"é"})";
  const auto second = two->apply("p", put_whole(reordered)).value();
  CHECK(first.rev == second.rev);
  CHECK(one->get("p").value()->body == two->get("p").value()->body);
}

TEST_CASE("store documents: apply_head adds, replaces and removes single versions") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto first = store->apply("p", put_whole(k_doc)).value();

  const auto second =
    store->apply_head("p", put_head(R"({"name":"p","dist-tags":{"latest":"2.0.0"},"versions":{"ignored":{}}})",
                                    {{"2.0.0", R"({"v":"2.0.0"})"}}))
      .value();
  CHECK(second.rev.rfind("2-", 0) == 0);
  CHECK(second.rev != first.rev);
  CHECK(second.body.empty());
  Json doc = Json::parse(store->get("p").value()->body);
  CHECK(doc["_rev"] == second.rev);
  CHECK(doc["dist-tags"]["latest"] == "2.0.0");
  CHECK(doc["versions"].size() == 3);
  CHECK(doc["versions"]["2.0.0"] == Json{{"v", "2.0.0"}});
  CHECK(doc["versions"]["1.0.0"]["deps"]["a"] == "^1");
  CHECK_FALSE(doc.contains("time")); // the head replaces the head
  CHECK(store->counts().value().versions == 3);
  CHECK(store->changes_since(0, 10).value().back().rev == second.rev);

  // The mutation sees the head, with the versions' keys.
  std::vector<std::string> seen;
  REQUIRE(store->apply_head("p", [&](const std::optional<store::Head>& current) -> Expected<Write> {
    REQUIRE(current);
    seen = current->versions;
    CHECK(current->rev == second.rev);
    Write write;
    write.kind = Write::Kind::put;
    write.body = current->body;
    write.put_versions = {{"1.0.0", R"({"v":"1.0.0","deprecated":"old"})"}};
    write.remove_versions = {"1.0.1"};
    return write;
  }));
  CHECK(seen == std::vector<std::string>{"1.0.0", "1.0.1", "2.0.0"});
  doc = Json::parse(store->get("p").value()->body);
  CHECK(doc["versions"].size() == 2);
  CHECK(doc["versions"]["1.0.0"]["deprecated"] == "old");
  CHECK(store->counts().value().versions == 2);

  // A new package through apply_head.
  REQUIRE(store->apply_head("n", put_head(R"({"name":"n"})", {{"0.1.0", "{}"}})));
  CHECK(Json::parse(store->get("n").value()->body)["versions"] == Json{{"0.1.0", Json::object()}});
  CHECK(store->counts().value().packages == 2);

  // A whole write over a split document keeps only what it holds.
  REQUIRE(store->apply("p", put_whole(R"({"name":"p","versions":{"3.0.0":{"v":3}}})")));
  doc = Json::parse(store->get("p").value()->body);
  CHECK(doc["versions"] == Json{{"3.0.0", Json{{"v", 3}}}});
  auto db = open_db(dir);
  CHECK(query_int(*db, "SELECT COUNT(*) FROM doc_versions WHERE id = 'p'") == 1);
  // ...or nothing at all of them.
  REQUIRE(store->apply("p", put_whole(R"({"name":"p"})")));
  CHECK(query_int(*db, "SELECT COUNT(*) FROM doc_versions WHERE id = 'p'") == 0);
  CHECK(query_int(*db, "SELECT split FROM docs WHERE id = 'p'") == 0);
  // Removing a document removes its rows.
  REQUIRE(store->apply("n", [](const std::optional<store::Document>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::remove;
    return write;
  }));
  CHECK(query_int(*db, "SELECT COUNT(*) FROM doc_versions") == 0);
  CHECK(store->counts().value().versions == 0);
  CHECK(store->recount().value().versions == 0);
}

TEST_CASE("store documents: bad single-version writes change nothing") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto first = store->apply("p", put_whole(k_doc)).value();
  SUBCASE("a manifest that is not a JSON object") {
    for (const char* manifest : {"[1]", "{", "", "\"s\""}) {
      auto result = store->apply_head("p", put_head(R"({"name":"p"})", {{"9.0.0", manifest}}));
      REQUIRE_FALSE(result);
      CHECK(result.error().code == Errc::invalid);
    }
  }
  SUBCASE("a head that is not a JSON object") {
    auto result = store->apply_head("p", put_head("[]", {{"9.0.0", "{}"}}));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::invalid);
  }
  SUBCASE("single versions through apply()") {
    auto result = store->apply("p", [](const std::optional<store::Document>&) -> Expected<Write> {
      Write write;
      write.kind = Write::Kind::put;
      write.body = "{}";
      write.put_versions = {{"9.0.0", "{}"}};
      return write;
    });
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::invalid);
  }
  SUBCASE("a document that is not a package's") {
    auto result = store->apply_head("_user:x", put_head("{}", {}));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::invalid);
  }
  CHECK(store->get("p").value()->rev == first.rev);
  CHECK(store->update_seq() == 1);
}

TEST_CASE("store documents: concurrent publishes of versions of one package all land") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  constexpr int k_threads = 4;
  constexpr int k_each = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_each; ++i) {
        const std::string version = std::to_string(t) + "." + std::to_string(i) + ".0";
        auto written = store->apply_head("p", [&](const std::optional<store::Head>& current) -> Expected<Write> {
          Json head = current ? Json::parse(current->body) : Json{{"name", "p"}, {"time", Json::object()}};
          head["time"][version] = "now";
          Write write;
          write.kind = Write::Kind::put;
          write.body = head.dump();
          write.put_versions = {{version, Json{{"version", version}}.dump()}};
          return write;
        });
        CHECK(written);
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  const Json doc = Json::parse(store->get("p").value()->body);
  CHECK(doc["versions"].size() == k_threads * k_each);
  CHECK(doc["time"].size() == k_threads * k_each);
  CHECK(store->get("p").value()->rev.rfind(std::to_string(k_threads * k_each) + "-", 0) == 0);
  CHECK(store->counts().value().versions == k_threads * k_each);
}

TEST_CASE("store documents: a database from before split storage is split when opened") {
  TempDir dir;
  std::string before;
  {
    auto store = test::open_store(dir.path);
    REQUIRE(store->apply("p", put_whole(k_doc)));
    REQUIRE(store->apply("bad", put_whole(R"({"name":"bad","versions":{"1.0.0":{}}})")));
    before = store->get("p").value()->body;
  }
  {
    // What schema 3 kept: whole bodies, no split column, no doc_versions.
    auto db = open_db(dir);
    REQUIRE(db->exec("UPDATE docs SET body = '" + before + "' WHERE id = 'p'"));
    REQUIRE(db->exec("UPDATE docs SET body = '{\"name\":\"bad\",\"versions\":' WHERE id = 'bad'"));
    REQUIRE(db->exec("DROP TABLE doc_versions; ALTER TABLE docs DROP COLUMN split; "
                     "UPDATE meta SET value = '3' WHERE key = 'schema_version'"));
    // npme doctor and snapshots read such a database directly.
    auto reader = store::documents::Reader::open(*db);
    REQUIRE(reader);
    CHECK(reader->body("p").value() == std::optional<std::string>(before));
    std::vector<std::string> ids;
    REQUIRE(reader->each_package([&](const std::string& id, const std::string&, std::string) -> Expected<void> {
      ids.push_back(id);
      return {};
    }));
    CHECK(ids == std::vector<std::string>{"bad", "p"});
  }
  auto store = test::open_store(dir.path);
  CHECK(store->get("p").value()->body == before);
  REQUIRE(store->get_head("p").value());
  CHECK(store->get_head("p").value()->versions.size() == 2);
  auto db = open_db(dir);
  CHECK(query_int(*db, "SELECT split FROM docs WHERE id = 'p'") == 1);
  // A document that does not parse stays as it was, for npme doctor.
  CHECK(query_int(*db, "SELECT split FROM docs WHERE id = 'bad'") == 0);
  CHECK(store->counts().value().versions == 2);
  auto reader = store::documents::Reader::open(*db);
  REQUIRE(reader);
  CHECK(reader->body("p").value() == std::optional<std::string>(before));
  CHECK_FALSE(reader->body("missing").value());
}

TEST_CASE("store documents: a package document kept whole by other means is split by its next publish") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  REQUIRE(store->apply("p", put_whole(R"({"name":"p"})")));
  {
    // As a script filling the database with SQL would leave it.
    auto db = open_db(dir);
    REQUIRE(db->exec(R"(UPDATE docs SET body = '{"_id":"p","_rev":"1-x","name":"p","versions":{"1.0.0":{"v":1}}}', )"
                     R"(versions = 1 WHERE id = 'p')"));
  }
  const auto head = store->get_head("p").value();
  REQUIRE(head);
  CHECK(head->versions == std::vector<std::string>{"1.0.0"});
  CHECK(Json::parse(head->body)["versions"] == Json::object());
  REQUIRE(store->apply_head("p", put_head(R"({"name":"p"})", {{"2.0.0", R"({"v":2})"}})));
  const Json doc = Json::parse(store->get("p").value()->body);
  CHECK(doc["versions"] == Json{{"1.0.0", Json{{"v", 1}}}, {"2.0.0", Json{{"v", 2}}}});
  auto db = open_db(dir);
  CHECK(query_int(*db, "SELECT split FROM docs WHERE id = 'p'") == 1);
  CHECK(store->counts().value().versions == 2);
}
