// A restore moves three directories into place through a journal; a kill
// between any two renames is finished by the next process that takes the
// instance lock (instance/dir_swap.hpp).

#include "core/hostdirs/dir_swap.hpp"
#include "core/hostdirs/lock.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace npme;
using hostdirs::DirSwap;
using test::TempDir;

std::string read(const fs::path& path) {
  auto text = util::read_file(path);
  return text ? *text : "<missing>";
}

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// An instance whose three directories hold "old", with complete
// replacements holding "new" beside them.
struct Instance {
  TempDir dir;
  std::vector<DirSwap> swaps;
  fs::path data() const { return dir.path / "data"; }
  Instance() {
    for (const char* name : {"couchdb", "packages", "data"}) {
      const fs::path target = dir.path / name;
      write(target / "marker", "old");
      write(fs::path(target.string() + ".restore-partial") / "marker", "new");
      swaps.push_back({target, target.string() + ".restore-partial", target.string() + ".pre-restore-20261203T120000Z"});
    }
  }
  void check_swapped() const {
    for (const auto& swap : swaps) {
      CHECK(read(swap.target / "marker") == "new");
      CHECK(read(swap.aside / "marker") == "old");
      CHECK_FALSE(fs::exists(swap.partial));
    }
    CHECK_FALSE(fs::exists(hostdirs::swap_journal_path(data())));
  }
  // The journal a restore writes, as a killed one leaves it.
  void leave_journal() const {
    std::string text = R"({"format":"npme-dir-swap","version":1,"dirs":[)";
    for (std::size_t i = 0; i < swaps.size(); ++i) {
      text += (i ? "," : "") + std::string(R"({"target":")") + swaps[i].target.string() + R"(","partial":")" +
              swaps[i].partial.string() + R"(","aside":")" + swaps[i].aside.string() + R"("})";
    }
    REQUIRE(util::write_file_atomic(hostdirs::swap_journal_path(data()), text + "]}"));
  }
};

} // namespace

TEST_CASE("dir swap moves every directory into place and keeps the old ones aside") {
  Instance instance;
  // The temp file of a journal whose writer was killed before its rename.
  const fs::path stale = hostdirs::swap_journal_path(instance.data()).string() + ".tmp.123.abc";
  write(stale, "{");
  REQUIRE(hostdirs::swap_dirs(instance.data(), instance.swaps));
  instance.check_swapped();
  CHECK_FALSE(fs::exists(stale));
  CHECK(hostdirs::swap_journal_path(instance.dir.path / "data/") == instance.dir.path / "data.restore-journal");
}

TEST_CASE("dir swap removes an empty target instead of keeping it aside") {
  Instance instance;
  fs::remove_all(instance.swaps[1].target);
  fs::create_directories(instance.swaps[1].target / ".staging");
  instance.swaps[1].aside.clear();
  REQUIRE(hostdirs::swap_dirs(instance.data(), instance.swaps));
  CHECK(read(instance.swaps[1].target / "marker") == "new");
  CHECK_FALSE(fs::exists(instance.dir.path / "packages.pre-restore-20261203T120000Z"));
}

TEST_CASE("a swap killed after any of its renames is finished by the next finish_interrupted_swap") {
  // The six renames in order: target i aside, then partial i into place.
  for (int done = 0; done <= 6; ++done) {
    CAPTURE(done);
    Instance instance;
    instance.leave_journal();
    for (int step = 0; step < done; ++step) {
      const auto& swap = instance.swaps[static_cast<std::size_t>(step / 2)];
      if (step % 2 == 0) {
        REQUIRE(std::rename(swap.target.c_str(), swap.aside.c_str()) == 0);
      } else {
        REQUIRE(std::rename(swap.partial.c_str(), swap.target.c_str()) == 0);
      }
    }
    auto finished = hostdirs::finish_interrupted_swap(instance.data());
    REQUIRE_MESSAGE(finished, (finished ? "" : finished.error().message));
    CHECK(*finished);
    instance.check_swapped();
    // Nothing left to do the second time.
    auto again = hostdirs::finish_interrupted_swap(instance.data());
    REQUIRE(again);
    CHECK_FALSE(*again);
  }
}

TEST_CASE("taking the instance lock finishes an interrupted swap first, even over a data directory made since") {
  Instance instance;
  instance.leave_journal();
  // Killed after the data directory went aside; a process that then created
  // an empty data directory (and its lock) must not stop the swap.
  const auto& data = instance.swaps[2];
  REQUIRE(std::rename(instance.swaps[0].target.c_str(), instance.swaps[0].aside.c_str()) == 0);
  REQUIRE(std::rename(instance.swaps[0].partial.c_str(), instance.swaps[0].target.c_str()) == 0);
  REQUIRE(std::rename(instance.swaps[1].target.c_str(), instance.swaps[1].aside.c_str()) == 0);
  REQUIRE(std::rename(instance.swaps[1].partial.c_str(), instance.swaps[1].target.c_str()) == 0);
  REQUIRE(std::rename(data.target.c_str(), data.aside.c_str()) == 0);
  write(data.target / "instance.lock", "123\n");
  auto lock = hostdirs::Lock::acquire(instance.data());
  REQUIRE_MESSAGE(lock, (lock ? "" : lock.error().message));
  instance.check_swapped();
}

TEST_CASE("an interrupted swap whose target holds data nothing accounts for is refused, and nothing moves") {
  Instance instance;
  instance.leave_journal();
  REQUIRE(std::rename(instance.swaps[0].target.c_str(), instance.swaps[0].aside.c_str()) == 0);
  write(instance.swaps[0].target / "registry.sqlite", "someone else's");
  auto finished = hostdirs::finish_interrupted_swap(instance.data());
  REQUIRE_FALSE(finished);
  CHECK(finished.error().code == Errc::precondition);
  CHECK(finished.error().message.find("holds data") != std::string::npos);
  CHECK(read(instance.swaps[0].target / "registry.sqlite") == "someone else's");
  CHECK(read(instance.swaps[0].partial / "marker") == "new");
  CHECK(fs::exists(hostdirs::swap_journal_path(instance.data())));
  // The lock is refused the same way: no command runs on a half-restored instance.
  CHECK_FALSE(hostdirs::Lock::acquire(instance.data()));
}

TEST_CASE("a journal another process is working through is left to it") {
  Instance instance;
  auto held = util::write_file_atomic_locked(hostdirs::swap_journal_path(instance.data()), "{}");
  REQUIRE(held);
  auto finished = hostdirs::finish_interrupted_swap(instance.data());
  REQUIRE_FALSE(finished);
  CHECK(finished.error().code == Errc::precondition);
  CHECK(finished.error().message.find("run the command again") != std::string::npos);
  CHECK(read(instance.swaps[0].target / "marker") == "old");
}

TEST_CASE("an unreadable journal is an error that says what to check, and nothing moves") {
  Instance instance;
  for (const std::string text : {"not json", R"({"format":"other","version":1,"dirs":[]})",
                                 R"({"format":"npme-dir-swap","version":1,"dirs":[{"target":"/x"}]})",
                                 R"({"format":"npme-dir-swap","version":1,"dirs":[{"target":1,"partial":"/p","aside":null}]})"}) {
    CAPTURE(text);
    REQUIRE(util::write_file_atomic(hostdirs::swap_journal_path(instance.data()), text));
    auto finished = hostdirs::finish_interrupted_swap(instance.data());
    REQUIRE_FALSE(finished);
    CHECK(finished.error().code == Errc::io);
    CHECK(finished.error().message.find("remove the journal") != std::string::npos);
    CHECK(read(instance.swaps[0].target / "marker") == "old");
  }
}
