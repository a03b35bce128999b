#include "core/store/sqlite.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/store_fixture.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace npme;
using store::Store;
using store::Write;
using Json = nlohmann::json;

using test::TempDir;

store::Mutation put(std::string body) {
  return [body = std::move(body)](const std::optional<store::Document>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::put;
    write.body = body;
    return write;
  };
}

store::Mutation remove_doc(std::vector<std::string> files = {}) {
  return [files = std::move(files)](const std::optional<store::Document>&) -> Expected<Write> {
    Write write;
    write.kind = Write::Kind::remove;
    write.remove_files = files;
    return write;
  };
}

std::size_t files_in(const fs::path& dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir)) {
    ++n;
  }
  return n;
}

bool is_rev(const std::string& rev, int n) {
  const std::string prefix = std::to_string(n) + "-";
  if (rev.rfind(prefix, 0) != 0 || rev.size() != prefix.size() + 32) {
    return false;
  }
  return rev.find_first_not_of("0123456789abcdef", prefix.size()) == std::string::npos;
}

} // namespace

TEST_CASE("store::Store::open creates the directories and an empty database") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  CHECK(fs::is_regular_file(dir.path / "couchdb" / "registry.sqlite"));
  CHECK(fs::is_directory(dir.path / "packages"));
  CHECK(fs::is_directory(dir.path / "data"));
  CHECK(store->update_seq() == 0);
  CHECK_FALSE(store->get("lodash").value().has_value());
  CHECK(store->list("").value().empty());
  CHECK(store->changes_since(0, 100).value().empty());
}

TEST_CASE("store::Store::apply puts documents and increments revisions") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto first = store->apply("lodash", put(R"({"name":"lodash","versions":{}})"));
  REQUIRE(first);
  CHECK(first->id == "lodash");
  CHECK(is_rev(first->rev, 1));
  CHECK(first->seq == 1);
  CHECK(store->update_seq() == 1);

  const auto got = store->get("lodash").value();
  REQUIRE(got);
  CHECK(got->rev == first->rev);
  CHECK(got->body == first->body);
  CHECK(got->seq == 1);

  const auto second = store->apply("lodash", put(R"({"name":"lodash","description":"x"})"));
  REQUIRE(second);
  CHECK(is_rev(second->rev, 2));
  CHECK(second->seq == 2);
  CHECK(store->get("lodash").value()->rev == second->rev);
}

TEST_CASE("store::Store::apply keeps _id and _rev inside the body") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  // Stale or wrong _id/_rev from the caller are replaced; other members keep
  // their order.
  const auto doc =
    store->apply("@scope/pkg", put(R"({"zeta":1,"_rev":"9-old","_id":"wrong","alpha":{"b":2}})"));
  REQUIRE(doc);
  const auto body = Json::parse(doc->body);
  CHECK(body["_id"] == "@scope/pkg");
  CHECK(body["_rev"] == doc->rev);
  CHECK(body["alpha"]["b"] == 2);
  CHECK(doc->body.rfind("{\"_id\":\"@scope/pkg\",\"_rev\":\"" + doc->rev + "\",\"zeta\":1", 0) ==
        0);
  CHECK(Json::parse(store->get("@scope/pkg").value()->body) == body);
}

TEST_CASE("store::Store::apply rejects a body that is not a JSON object") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  for (const char* body : {"[1,2]", "{\"a\":", "\"text\"", ""}) {
    const auto result = store->apply("pkg", put(body));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::invalid);
  }
  CHECK(store->update_seq() == 0);
  CHECK_FALSE(store->get("pkg").value().has_value());
}

TEST_CASE("store::Store::changes_since lists one change per document in seq order") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  REQUIRE(store->apply("a", put("{}")));
  REQUIRE(store->apply("b", put("{}")));
  REQUIRE(store->apply("a", put(R"({"v":2})")));

  auto changes = store->changes_since(0, 100).value();
  REQUIRE(changes.size() == 2);
  CHECK(changes[0].id == "b");
  CHECK(changes[0].seq == 2);
  CHECK(changes[1].id == "a");
  CHECK(changes[1].seq == 3);
  CHECK(is_rev(changes[1].rev, 2));
  CHECK_FALSE(changes[1].deleted);
  CHECK(changes[1].time.size() == 24);

  const auto removed = store->apply("b", remove_doc());
  REQUIRE(removed);
  CHECK(removed->seq == 4);
  CHECK(removed->body.empty());
  CHECK(is_rev(removed->rev, 2));
  CHECK_FALSE(store->get("b").value().has_value());

  changes = store->changes_since(0, 100).value();
  REQUIRE(changes.size() == 2);
  CHECK(changes[0].id == "a");
  CHECK(changes[1].id == "b");
  CHECK(changes[1].seq == 4);
  CHECK(changes[1].deleted);

  CHECK(store->changes_since(3, 100).value().size() == 1);
  CHECK(store->changes_since(4, 100).value().empty());
  const auto limited = store->changes_since(0, 1).value();
  REQUIRE(limited.size() == 1);
  CHECK(limited[0].id == "a");
  CHECK(store->changes_since(0, 0).value().empty());

  // Recreating a deleted document continues its revision count and never
  // reuses a sequence number.
  const auto again = store->apply("b", put("{}"));
  REQUIRE(again);
  CHECK(again->seq == 5);
  CHECK(is_rev(again->rev, 3));
}

TEST_CASE("store::Store::apply removing a missing document is not_found") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto result = store->apply("ghost", remove_doc());
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::not_found);
  CHECK(store->update_seq() == 0);
}

TEST_CASE("store::Store::apply with Kind::none changes nothing") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto written = store->apply("pkg", put(R"({"a":1})")).value();
  bool saw_current = false;
  const auto result = store->apply("pkg", [&](const std::optional<store::Document>& current) {
    saw_current = current && current->rev == written.rev;
    return Expected<Write>(Write{});
  });
  REQUIRE(result);
  CHECK(saw_current);
  CHECK(result->rev == written.rev);
  CHECK(result->body == written.body);
  CHECK(store->update_seq() == 1);
}

TEST_CASE("store::Store::apply commits staged files under their path") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const std::string bytes = util::random_bytes(5000);
  auto staged = store->stage_file("pkg/-/pkg-1.0.0.tgz", bytes);
  REQUIRE(staged);
  CHECK(fs::exists(staged->temp()));
  CHECK(staged->temp().parent_path() == dir.path / "packages" / ".staging");

  auto file = std::make_shared<store::StagedFile>(std::move(*staged));
  const auto result = store->apply("pkg", [&](const std::optional<store::Document>&) {
    Write write;
    write.kind = Write::Kind::put;
    write.body = R"({"versions":{"1.0.0":{}}})";
    write.add_files.push_back(std::move(*file));
    return Expected<Write>(std::move(write));
  });
  REQUIRE(result);
  const fs::path target = store->file_path("pkg/-/pkg-1.0.0.tgz");
  CHECK(target == dir.path / "packages" / "pkg" / "-" / "pkg-1.0.0.tgz");
  CHECK(util::read_file(target).value() == bytes);
  CHECK(files_in(dir.path / "packages" / ".staging") == 0);
}

TEST_CASE("store::FileStage writes a file in pieces with the digest stage_file gives the whole") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const std::string bytes = util::random_bytes(700000);
  auto whole = store->stage_file("pkg/-/pkg-1.0.0.tgz", bytes);
  REQUIRE(whole);

  auto stage = store->begin_stage();
  REQUIRE(stage);
  for (std::size_t at = 0; at < bytes.size(); at += 65536) {
    REQUIRE(stage->write(std::string_view(bytes).substr(at, 65536)));
  }
  CHECK(stage->size() == bytes.size());
  auto staged = stage->finish("pkg/-/pkg-1.0.1.tgz");
  REQUIRE(staged);
  CHECK(staged->rel_path() == "pkg/-/pkg-1.0.1.tgz");
  CHECK(staged->digest().sha256 == whole->digest().sha256);
  CHECK(staged->digest().tag == whole->digest().tag);
  CHECK(staged->digest().size == static_cast<std::int64_t>(bytes.size()));
  CHECK(staged->synced());
  CHECK(util::read_file(staged->temp()).value() == bytes);
  CHECK((fs::status(staged->temp()).permissions() & fs::perms::all) == fs::perms(0644));
  // Spent: a second finish or write is refused.
  CHECK_FALSE(stage->finish("pkg/-/pkg-1.0.2.tgz"));
  CHECK_FALSE(stage->write("x"));

  // A stage dropped unfinished leaves nothing in the staging directory.
  const std::size_t before = files_in(dir.path / "packages" / ".staging");
  {
    auto dropped = store->begin_stage();
    REQUIRE(dropped);
    REQUIRE(dropped->write("partial"));
    CHECK(files_in(dir.path / "packages" / ".staging") == before + 1);
  }
  CHECK(files_in(dir.path / "packages" / ".staging") == before);
}

TEST_CASE("store::Store::sync_staged marks deferred files synced, and apply_batch commits them") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  std::vector<store::StagedFile> files;
  for (const char* version : {"1.0.0", "1.0.1"}) {
    auto staged = store->stage_file(std::string("pkg/-/pkg-") + version + ".tgz", version, store::Sync::deferred);
    REQUIRE(staged);
    CHECK(!staged->synced());
    files.push_back(std::move(*staged));
  }
  REQUIRE(store->sync_staged({&files[0], &files[1]}));
  CHECK(files[0].synced());
  CHECK(files[1].synced());
  REQUIRE(store->apply_batch({Store::BatchItem{"pkg", [&](const std::optional<store::Document>&) {
                                                 Write write;
                                                 write.kind = Write::Kind::put;
                                                 write.body = R"({"versions":{}})";
                                                 write.add_files = std::move(files);
                                                 return Expected<Write>(std::move(write));
                                               }}}));
  CHECK(util::read_file(store->file_path("pkg/-/pkg-1.0.1.tgz")).value() == "1.0.1");
  CHECK(files_in(dir.path / "packages" / ".staging") == 0);
}

TEST_CASE("store::Store::apply deletes removed files after commit") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  for (const char* version : {"1.0.0", "2.0.0"}) {
    const std::string rel = std::string("@s/p/-/p-") + version + ".tgz";
    auto staged = store->stage_file(rel, version);
    REQUIRE(staged);
    auto file = std::make_shared<store::StagedFile>(std::move(*staged));
    REQUIRE(store->apply("@s/p", [&](const std::optional<store::Document>&) {
      Write write;
      write.kind = Write::Kind::put;
      write.body = "{}";
      write.add_files.push_back(std::move(*file));
      return Expected<Write>(std::move(write));
    }));
  }
  REQUIRE(store->apply("@s/p", [](const std::optional<store::Document>&) {
    Write write;
    write.kind = Write::Kind::put;
    write.body = "{}";
    write.remove_files = {"@s/p/-/p-1.0.0.tgz"};
    return Expected<Write>(std::move(write));
  }));
  CHECK_FALSE(fs::exists(store->file_path("@s/p/-/p-1.0.0.tgz")));
  CHECK(fs::exists(store->file_path("@s/p/-/p-2.0.0.tgz")));

  // Removing the last file also removes the directories it leaves empty; a
  // file that is already gone is ignored.
  REQUIRE(store->apply("@s/p", remove_doc({"@s/p/-/p-2.0.0.tgz", "@s/p/-/p-9.9.9.tgz"})));
  CHECK_FALSE(fs::exists(dir.path / "packages" / "@s"));
  CHECK(fs::is_directory(dir.path / "packages"));
}

TEST_CASE("store::Store records the digest of each committed tarball and drops it with the file") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const std::string rel = "pkg/-/pkg-1.0.0.tgz";
  const std::string bytes = util::random_bytes(70000);
  const auto commit = [&](const std::string& content) {
    auto file = std::make_shared<store::StagedFile>(store->stage_file(rel, content).value());
    CHECK(file->digest().sha256 == util::sha256(content));
    CHECK(file->digest().tag == store::file_tag(util::sha256(content), content));
    CHECK(file->digest().tag == util::xxh3(util::sha256(content) + content));
    CHECK(file->digest().size == static_cast<std::int64_t>(content.size()));
    REQUIRE(store->apply("pkg", [&](const std::optional<store::Document>&) {
      Write write;
      write.kind = Write::Kind::put;
      write.body = "{}";
      write.add_files.push_back(std::move(*file));
      return Expected<Write>(std::move(write));
    }));
  };
  CHECK_FALSE(store->tarball_digest(rel).value().has_value());
  commit(bytes);
  auto digest = store->tarball_digest(rel).value();
  REQUIRE(digest);
  CHECK(digest->sha256 == util::sha256(bytes));
  CHECK(digest->tag == store::file_tag(digest->sha256, bytes));
  CHECK(digest->size == 70000);
  // A path written again (a follower repairing a file) gets the new digest.
  commit("other bytes");
  CHECK(store->tarball_digest(rel).value()->sha256 == util::sha256("other bytes"));
  // A write that removes the file removes its digest in the same commit.
  REQUIRE(store->apply("pkg", remove_doc({rel})));
  CHECK_FALSE(store->tarball_digest(rel).value().has_value());
  CHECK_FALSE(fs::exists(store->file_path(rel)));
}

TEST_CASE("store::Store::open upgrades a schema 1 database in place") {
  TempDir dir;
  {
    auto store = test::open_store(dir.path);
    REQUIRE(store->apply("pkg", put(R"({"a":1})")));
  }
  {
    // What npme 0.1 left: no tarballs table, schema_version 1.
    auto db = store::sqlite::Database::open(dir.path / "couchdb" / "registry.sqlite",
                                            store::sqlite::Database::Mode::read_write);
    REQUIRE(db);
    REQUIRE((*db)->exec("DROP TABLE tarballs; UPDATE meta SET value = '1' WHERE key = 'schema_version'"));
  }
  auto store = test::open_store(dir.path);
  CHECK(store->get_meta("schema_version").value() == std::optional<std::string>("4"));
  CHECK(store->get("pkg").value()->body.find("\"a\":1") != std::string::npos);
  CHECK_FALSE(store->tarball_digest("pkg/-/pkg-1.0.0.tgz").value().has_value());
}

TEST_CASE("store::Store::apply leaves nothing changed when the mutation fails") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto before = store->apply("pkg", put(R"({"a":1})")).value();
  const auto result =
    store->apply("pkg", [&](const std::optional<store::Document>&) -> Expected<Write> {
      // The staged file dies with the mutation's scope, as in a handler that
      // stages, then finds a problem.
      auto staged = store->stage_file("pkg/-/pkg-2.0.0.tgz", "bytes");
      REQUIRE(staged);
      CHECK(files_in(dir.path / "packages" / ".staging") == 1);
      return make_error(Errc::conflict, "pkg: version 2.0.0 exists");
    });
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::conflict);
  CHECK(result.error().message == "pkg: version 2.0.0 exists");
  CHECK(store->get("pkg").value()->rev == before.rev);
  CHECK(store->update_seq() == 1);
  CHECK(store->changes_since(0, 10).value().size() == 1);
  CHECK(files_in(dir.path / "packages" / ".staging") == 0);
  CHECK_FALSE(fs::exists(store->file_path("pkg/-/pkg-2.0.0.tgz")));
}

TEST_CASE("store::Store::apply turns an exception in the mutation into an error") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto result =
    store->apply("pkg", [](const std::optional<store::Document>&) -> Expected<Write> {
      throw std::runtime_error("unexpected end of input");
    });
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::failed);
  CHECK(result.error().message.rfind("document 'pkg': ", 0) == 0);
  // The write lock was released: the store still works.
  CHECK(store->apply("pkg", put("{}")));
}

TEST_CASE("store::Store::apply serializes read-modify-write from 8 threads") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  constexpr int k_threads = 8;
  constexpr int k_rounds = 5;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < k_rounds; ++round) {
        const auto result =
          store->apply("counter", [&](const std::optional<store::Document>& current) {
            Json body = current ? Json::parse(current->body) : Json{{"writers", Json::array()}};
            body["writers"].push_back(std::to_string(t) + "." + std::to_string(round));
            Write write;
            write.kind = Write::Kind::put;
            write.body = body.dump();
            return Expected<Write>(std::move(write));
          });
        if (!result) {
          ++failures;
        }
        // Readers run beside the writers.
        if (!store->get("counter")) {
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  CHECK(failures.load() == 0);
  const auto doc = store->get("counter").value();
  REQUIRE(doc);
  const auto writers = Json::parse(doc->body)["writers"];
  CHECK(writers.size() == k_threads * k_rounds);
  std::set<std::string> unique(writers.begin(), writers.end());
  CHECK(unique.size() == k_threads * k_rounds);
  CHECK(is_rev(doc->rev, k_threads * k_rounds));
  CHECK(store->update_seq() == k_threads * k_rounds);
}

TEST_CASE("store::Store::wait_for_change wakes up on a commit") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  CHECK(store->wait_for_change(0, std::chrono::milliseconds(20)) == 0);

  // The commit starts only once the waiter is about to block (the hook runs
  // under the lock the commit needs), so only a wake-up can end its wait
  // in time: its timeout is 120 s, and the test gives up after 30 s.
  std::promise<void> blocking;
  store->set_before_wait_hook([&blocking] { blocking.set_value(); });
  auto seen = std::async(std::launch::async, [&] { return store->wait_for_change(0, std::chrono::seconds(120)); });
  REQUIRE(blocking.get_future().wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  REQUIRE(store->apply("pkg", put("{}")));
  REQUIRE(seen.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  CHECK(seen.get() == 1);
  // Already past: returns at once.
  CHECK(store->wait_for_change(0, std::chrono::seconds(30)) == 1);
}

TEST_CASE("store::Store::on_change reports every commit") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  std::vector<store::Change> seen;
  store->on_change([&](const store::Change& change) { seen.push_back(change); });
  const auto doc = store->apply("pkg", put("{}")).value();
  REQUIRE(store->apply("pkg", remove_doc()));
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].id == "pkg");
  CHECK(seen[0].seq == 1);
  CHECK(seen[0].rev == doc.rev);
  CHECK_FALSE(seen[0].deleted);
  CHECK(seen[1].seq == 2);
  CHECK(seen[1].deleted);
  CHECK(seen[1].time == store->changes_since(1, 1).value().at(0).time);
}

TEST_CASE("store::Store::open keeps documents and update_seq across reopening") {
  TempDir dir;
  std::string rev;
  {
    auto store = test::open_store(dir.path);
    REQUIRE(store->apply("a", put("{}")));
    REQUIRE(store->apply("b", put("{}")));
    rev = store->apply("a", put(R"({"x":1})")).value().rev;
    REQUIRE(store->set_meta("epoch", "3"));
  }
  auto store = test::open_store(dir.path);
  CHECK(store->update_seq() == 3);
  CHECK(store->get("a").value()->rev == rev);
  CHECK(store->get_meta("epoch").value() == std::optional<std::string>("3"));
  CHECK(store->apply("c", put("{}")).value().seq == 4);
}

TEST_CASE("store::Store::open removes stale staged files") {
  TempDir dir;
  {
    auto store = test::open_store(dir.path);
    auto staged = store->stage_file("pkg/-/pkg-1.0.0.tgz", "x");
    REQUIRE(staged);
    // A crash: the staged file is never committed nor cleaned up.
    staged->release();
  }
  CHECK(files_in(dir.path / "packages" / ".staging") == 1);
  auto store = test::open_store(dir.path);
  CHECK(files_in(dir.path / "packages" / ".staging") == 0);
}

TEST_CASE("store::Store::stage_file rejects paths outside the packages directory") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  for (const char* rel :
       {"../x", "/etc/passwd", "a//b", "a/../b", "a\\b", "", "a/", "./a", ".staging/x", "a/."}) {
    CAPTURE(rel);
    const auto staged = store->stage_file(rel, "x");
    REQUIRE_FALSE(staged);
    CHECK(staged.error().code == Errc::invalid);
  }
  CHECK(files_in(dir.path / "packages" / ".staging") == 0);
  CHECK(store->stage_file("a/-/a-1.0.0.tgz", "x"));
}

TEST_CASE("store::Store::apply rejects removed files outside the packages directory") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  REQUIRE(util::write_file_atomic(dir.path / "victim", "keep"));
  const auto result = store->apply("pkg", [](const std::optional<store::Document>&) {
    Write write;
    write.kind = Write::Kind::put;
    write.body = "{}";
    write.remove_files = {"../victim"};
    return Expected<Write>(std::move(write));
  });
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid);
  CHECK(fs::exists(dir.path / "victim"));
  CHECK(store->update_seq() == 0);
}

TEST_CASE("store::Store::list selects by prefix and list_packages skips internal documents") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  for (const char* id : {"_user:alice", "_user:bob", "_token:1", "@scope/pkg", "JSONStream",
                         "lodash", "a_b", "_users"}) {
    REQUIRE(store->apply(id, put("{}")));
  }
  const auto users = store->list("_user:").value();
  REQUIRE(users.size() == 2);
  CHECK(users[0].id == "_user:alice");
  CHECK(users[1].id == "_user:bob");
  CHECK(store->list("").value().size() == 8);
  CHECK(store->list("nothing").value().empty());

  std::vector<std::string> ids;
  const auto packages = store->list_packages().value();
  for (const auto& doc : packages) {
    ids.push_back(doc.id);
  }
  CHECK(ids == std::vector<std::string>{"@scope/pkg", "JSONStream", "a_b", "lodash"});
}

TEST_CASE("store::Store::counts counts packages, versions and tarballs") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  REQUIRE(store->apply("a", put(R"({"versions":{"1.0.0":{},"1.1.0":{}}})")));
  REQUIRE(store->apply("@s/b", put(R"({"versions":{"2.0.0":{}}})")));
  REQUIRE(store->apply("c", put(R"({"name":"c"})")));
  REQUIRE(store->apply("_user:alice", put(R"({"versions":{"x":1}})")));
  for (const auto& [rel, bytes] :
       {std::pair{"a/-/a-1.0.0.tgz", "12345"}, std::pair{"@s/b/-/b-2.0.0.tgz", "123"}}) {
    auto staged = store->stage_file(rel, bytes);
    REQUIRE(staged);
    auto file = std::make_shared<store::StagedFile>(std::move(*staged));
    REQUIRE(store->apply(rel[0] == 'a' ? "a" : "@s/b",
                         [&](const std::optional<store::Document>& current) {
                           Write write;
                           write.kind = Write::Kind::put;
                           write.body = current->body;
                           write.add_files.push_back(std::move(*file));
                           return Expected<Write>(std::move(write));
                         }));
  }
  // A staged, uncommitted file is not a tarball yet.
  auto pending = store->stage_file("c/-/c-1.0.0.tgz", "1234567");
  REQUIRE(pending);

  const auto counts = store->counts().value();
  CHECK(counts.packages == 3);
  CHECK(counts.versions == 3);
  CHECK(counts.tarballs == 2);
  CHECK(counts.tarball_bytes == 8);
}

TEST_CASE("store::Store::backup_to writes a database that opens and has the documents") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  REQUIRE(store->apply("a", put(R"({"n":1})")));
  REQUIRE(store->apply("b", put(R"({"n":2})")));
  REQUIRE(store->apply("b", remove_doc()));
  const fs::path target = dir.path / "backup.sqlite";
  REQUIRE(store->backup_to(target));
  CHECK_FALSE(fs::exists(dir.path / "backup.sqlite-wal"));

  // The copy is a complete store of its own.
  TempDir other;
  fs::create_directories(other.path / "couchdb");
  fs::copy_file(target, other.path / "couchdb" / "registry.sqlite");
  auto copy = test::open_store(other.path);
  CHECK(copy->update_seq() == 3);
  CHECK(copy->get("a").value()->body == store->get("a").value()->body);
  CHECK_FALSE(copy->get("b").value().has_value());
  CHECK(copy->changes_since(0, 10).value().size() == 2);

  const auto again = store->backup_to(target);
  REQUIRE_FALSE(again);
  CHECK(again.error().code == Errc::conflict);
}

TEST_CASE("store::Store::backup_to a missing directory fails and leaves nothing") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  const auto result = store->backup_to(dir.path / "missing" / "backup.sqlite");
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::io);
  CHECK(result.error().message.find("missing/backup.sqlite") != std::string::npos);
}

TEST_CASE("store::Store::set_meta stores values and refuses the schema version") {
  TempDir dir;
  auto store = test::open_store(dir.path);
  CHECK_FALSE(store->get_meta("instance").value().has_value());
  REQUIRE(store->set_meta("instance", "one"));
  REQUIRE(store->set_meta("instance", "two"));
  CHECK(store->get_meta("instance").value() == std::optional<std::string>("two"));
  CHECK(store->get_meta("schema_version").value() == std::optional<std::string>("4"));
  auto reserved = store->set_meta("schema_version", "9");
  REQUIRE_FALSE(reserved);
  CHECK(reserved.error().code == Errc::invalid);
}

TEST_CASE("store::Store::open refuses a database from a newer npme") {
  TempDir dir;
  { auto store = test::open_store(dir.path); }
  {
    auto db = store::sqlite::Database::open(dir.path / "couchdb" / "registry.sqlite",
                                            store::sqlite::Database::Mode::read_write);
    REQUIRE(db);
    REQUIRE((*db)->exec("UPDATE meta SET value = '99' WHERE key = 'schema_version'"));
  }
  const auto opened = Store::open(test::store_paths(dir.path));
  REQUIRE_FALSE(opened);
  CHECK(opened.error().code == Errc::io);
  CHECK(opened.error().message.find("schema version 99") != std::string::npos);
}

TEST_CASE("store::Store::open fails on a file that is not a database") {
  TempDir dir;
  fs::create_directories(dir.path / "couchdb");
  REQUIRE(
    util::write_file_atomic(dir.path / "couchdb" / "registry.sqlite", std::string(4096, 'x')));
  const auto opened = Store::open(test::store_paths(dir.path));
  REQUIRE_FALSE(opened);
  CHECK(opened.error().code == Errc::io);
  CHECK(opened.error().message.find("registry.sqlite") != std::string::npos);
  CHECK(opened.error().message.find("file is not a database") != std::string::npos);
}

TEST_CASE("store::sqlite::Transaction rolls back unless committed") {
  TempDir dir;
  auto opened = store::sqlite::Database::open(dir.path / "t.sqlite",
                                              store::sqlite::Database::Mode::read_write_create);
  REQUIRE(opened);
  auto& db = **opened;
  REQUIRE(db.exec("CREATE TABLE t(x INTEGER)"));
  {
    auto tx = store::sqlite::Transaction::begin(db, store::sqlite::Transaction::Mode::immediate);
    REQUIRE(tx);
    REQUIRE(db.exec("INSERT INTO t VALUES(1)"));
  }
  CHECK(db.query_text("SELECT COUNT(*) FROM t").value() == "0");
  {
    auto tx = store::sqlite::Transaction::begin(db, store::sqlite::Transaction::Mode::deferred);
    REQUIRE(tx);
    REQUIRE(db.exec("INSERT INTO t VALUES(2)"));
    REQUIRE(tx->commit());
  }
  CHECK(db.query_text("SELECT COUNT(*) FROM t").value() == "1");
}

TEST_CASE("store::sqlite::Database reports SQLite's message and reuses cached statements") {
  TempDir dir;
  auto opened = store::sqlite::Database::open(dir.path / "t.sqlite",
                                              store::sqlite::Database::Mode::read_write_create);
  REQUIRE(opened);
  auto& db = **opened;
  const auto bad = db.exec("SELEC 1");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message.find("near \"SELEC\": syntax error") != std::string::npos);
  CHECK(bad.error().message.find("t.sqlite") != std::string::npos);

  REQUIRE(db.exec("CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER)"));
  {
    auto insert = db.cached("INSERT INTO t VALUES(?1, ?2)");
    REQUIRE(insert);
    REQUIRE(insert->bind_text(1, "a"));
    REQUIRE(insert->bind_int64(2, 7));
    CHECK(insert->step().value() == store::sqlite::Statement::Step::done);
  }
  {
    auto insert = db.cached("INSERT INTO t VALUES(?1, ?2)");
    REQUIRE(insert);
    REQUIRE(insert->bind_text(1, "a"));
    REQUIRE(insert->bind_null(2));
    const auto duplicate = insert->step();
    REQUIRE_FALSE(duplicate);
    CHECK(duplicate.error().code == Errc::conflict);
    CHECK(duplicate.error().message.find("UNIQUE constraint failed: t.k") != std::string::npos);
  }
  auto outer = db.cached("SELECT v FROM t WHERE k = ?1");
  REQUIRE(outer);
  REQUIRE(outer->bind_text(1, "a"));
  REQUIRE(outer->step().value() == store::sqlite::Statement::Step::row);
  // The same SQL while the first handle is still in use gets its own statement.
  auto inner = db.cached("SELECT v FROM t WHERE k = ?1");
  REQUIRE(inner);
  REQUIRE(inner->bind_text(1, "missing"));
  CHECK(inner->step().value() == store::sqlite::Statement::Step::done);
  CHECK(outer->column_int64(0) == 7);
  CHECK_FALSE(outer->column_is_null(0));
}

TEST_CASE("store::Store::apply_batch commits every item in one transaction, in order") {
  const auto root = std::filesystem::temp_directory_path() / ("npme-batch-test-" + std::to_string(std::random_device{}()));
  {
    auto opened = npme::store::Store::open(npme::store::Paths{root / "couchdb", root / "packages", root / "data"});
    REQUIRE(opened);
    auto& store = **opened;
    std::vector<npme::store::StagedFile> files;
    for (int i = 0; i < 3; ++i) {
      auto staged = store.stage_file("b" + std::to_string(i) + "/-/b" + std::to_string(i) + "-1.0.0.tgz",
                                     "bytes " + std::to_string(i), npme::store::Sync::deferred);
      REQUIRE(staged);
      CHECK(!staged->synced());
      files.push_back(std::move(*staged));
    }
    std::vector<npme::store::Store::BatchItem> items;
    for (int i = 0; i < 3; ++i) {
      auto* file = &files[static_cast<std::size_t>(i)];
      items.push_back({"b" + std::to_string(i), [file, i](const std::optional<npme::store::Document>&)
                                                  -> npme::Expected<npme::store::Write> {
                         npme::store::Write write;
                         write.kind = npme::store::Write::Kind::put;
                         write.body = "{\"n\":" + std::to_string(i) + "}";
                         write.add_files.push_back(std::move(*file));
                         return write;
                       }});
    }
    // A removal of a missing document is skipped in a batch, not an error.
    items.push_back({"missing", [](const std::optional<npme::store::Document>&) -> npme::Expected<npme::store::Write> {
                       npme::store::Write write;
                       write.kind = npme::store::Write::Kind::remove;
                       return write;
                     }});
    auto written = store.apply_batch(items);
    REQUIRE(written);
    REQUIRE(written->size() == 4);
    CHECK((*written)[0].seq == 1);
    CHECK((*written)[2].seq == 3);
    CHECK(store.update_seq() == 3);
    for (int i = 0; i < 3; ++i) {
      CHECK(std::filesystem::exists(store.file_path("b" + std::to_string(i) + "/-/b" + std::to_string(i) + "-1.0.0.tgz")));
    }
    auto changes = store.changes_since(0, 10);
    REQUIRE(changes);
    REQUIRE(changes->size() == 3);
    CHECK((*changes)[0].id == "b0");
    CHECK((*changes)[2].id == "b2");

    // One failing item: nothing of the batch is written, its staged file is gone.
    auto staged = store.stage_file("c/-/c-1.0.0.tgz", "c", npme::store::Sync::deferred);
    REQUIRE(staged);
    const auto temp = staged->temp();
    auto shared = std::make_shared<npme::store::StagedFile>(std::move(*staged));
    npme::store::Mutation put_c = [shared](const std::optional<npme::store::Document>&)
      -> npme::Expected<npme::store::Write> {
      npme::store::Write write;
      write.kind = npme::store::Write::Kind::put;
      write.body = "{}";
      write.add_files.push_back(std::move(*shared));
      return write;
    };
    npme::store::Mutation refuse_d = [](const std::optional<npme::store::Document>&)
      -> npme::Expected<npme::store::Write> { return npme::make_error(npme::Errc::invalid, "refused"); };
    std::vector<npme::store::Store::BatchItem> failing{{"c", put_c}, {"d", refuse_d}};
    auto refused = store.apply_batch(failing);
    REQUIRE(!refused);
    CHECK(store.update_seq() == 3);
    CHECK(!std::filesystem::exists(store.file_path("c/-/c-1.0.0.tgz")));
    CHECK(!std::filesystem::exists(temp));
    CHECK(!*store.get("c"));
  }
  std::filesystem::remove_all(root);
}
