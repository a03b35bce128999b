// The audit log (core/audit): the line format, appending with rotation by
// size, reading back across rotated files with --since and --limit, and
// settings changes that never show a secret's value.
#include "core/audit/audit.hpp"
#include "core/util/fs.hpp"
#include "core/util/time.hpp"
#include "temp_dir.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>

using namespace npme;
using nlohmann::json;

TEST_CASE("audit line: one JSON object a line, read back field for field") {
  audit::Event event{"2026-12-04T10:00:00.000Z", "alice", "10.1.2.3", "login", "alice", "failed",
                     json{{"retry_after", 2}}};
  const std::string line = audit::to_line(event);
  CHECK(line.find('\n') == std::string::npos);
  CHECK(line == R"({"action":"login","actor":"alice","address":"10.1.2.3","detail":{"retry_after":2},)"
                R"("result":"failed","target":"alice","time":"2026-12-04T10:00:00.000Z"})");
  auto back = audit::parse_line(line);
  REQUIRE(back);
  CHECK(back->actor == "alice");
  CHECK(back->detail["retry_after"] == 2);

  // No detail: no "detail" member. A name with a newline or invalid UTF-8
  // stays on its line.
  audit::Event odd{"t", "bad\nname\xff", "", "login", "x", "failed", nullptr};
  const std::string odd_line = audit::to_line(odd);
  CHECK(odd_line.find("detail") == std::string::npos);
  CHECK(odd_line.find('\n') == std::string::npos);
  CHECK(audit::parse_line(odd_line));
  CHECK_FALSE(audit::parse_line("not json"));
  CHECK_FALSE(audit::parse_line(R"({"time":"x"})"));
}

TEST_CASE("audit log: 0600, rotated by size into audit.keep files, read back oldest first") {
  test::TempDir dir;
  const audit::Limits limits{1000, 2};
  for (int i = 0; i < 40; ++i) {
    audit::Event event{"2026-12-04T10:00:" + std::string(i < 10 ? "0" : "") + std::to_string(i) + ".000Z", "admin token",
                       "127.0.0.1", "user.add", "user" + std::to_string(i), "ok", nullptr};
    REQUIRE(audit::append(dir.path, event, limits));
  }
  const auto log = audit::log_path(dir.path);
  struct stat info {};
  REQUIRE(::stat(log.c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0600);
  CHECK(std::filesystem::file_size(log) <= 1000);
  CHECK(std::filesystem::exists(log.string() + ".1"));
  CHECK(std::filesystem::exists(log.string() + ".2"));
  CHECK_FALSE(std::filesystem::exists(log.string() + ".3"));

  auto all = audit::read(dir.path, std::nullopt, 0);
  REQUIRE(all);
  REQUIRE(all->size() >= 10);
  CHECK(all->back().target == "user39");
  for (std::size_t i = 1; i < all->size(); ++i) {
    CHECK((*all)[i - 1].time < (*all)[i].time); // oldest first, across files
  }
  auto newest = audit::read(dir.path, std::nullopt, 3);
  REQUIRE(newest);
  REQUIRE(newest->size() == 3);
  CHECK(newest->front().target == "user37");
  auto since = audit::read(dir.path, util::parse_iso8601("2026-12-04T10:00:35Z"), 0);
  REQUIRE(since);
  CHECK(since->size() == 5);

  // A line torn by a crash is skipped, not fatal.
  {
    util::Fd fd(::open(log.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
    REQUIRE(util::write_all(fd.get(), "{\"time\":\"2026", log));
  }
  auto torn = audit::read(dir.path, std::nullopt, 0);
  REQUIRE(torn);
  CHECK(torn->size() == all->size());
  // The next event starts on a line of its own.
  REQUIRE(audit::append(dir.path, audit::Event{"2026-12-04T10:01:00.000Z", "a", "", "user.add", "after", "ok", nullptr},
                        audit::Limits{1u << 20, 2}));
  auto after = audit::read(dir.path, std::nullopt, 1);
  REQUIRE(after);
  REQUIRE(after->size() == 1);
  CHECK(after->front().target == "after");
}

TEST_CASE("audit settings changes: old and new values, a secret only as changed") {
  settings::Settings before(settings::Layout::from_root("/nonexistent"), {{"publication", "all"}, {"secret", "s3cret-value-0123456789"}});
  settings::Settings after(settings::Layout::from_root("/nonexistent"),
                           {{"publication", "read-only"}, {"secret", "n3w-secret-value-0123456789"}});
  const auto changes = audit::settings_changes(before, after, {"publication", "secret"});
  CHECK(changes.dump() ==
        R"([{"key":"publication","new":"read-only","old":"all"},{"changed":true,"key":"secret"}])");
  CHECK(changes.dump().find("s3cret") == std::string::npos);
}
