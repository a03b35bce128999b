// A whole snapshot file (a tar stream, zstd, gzip or plain), as `npme
// snapshot verify` and `npme restore` read it (core/snapshot/read.cpp, the
// one reading pass): its entry walk, snapshot.json, SHA256SUMS, the
// database and the tarballs. Each input is read twice: only checked
// (verify()), and extracted into empty directories as restore does, where
// no entry may write outside them. Input: the file's bytes.

#include "core/snapshot/format.hpp"
#include "core/util/crypto.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <system_error>

using namespace npme;
using npme::fuzz::require;
namespace fs = std::filesystem;

namespace {

// A scratch directory for one run, on tmpfs when there is one; removed at exit.
const fs::path& scratch_root() {
  static const fs::path root = [] {
    std::error_code ec;
    fs::path base = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path dir = base / ("npme-fuzz-snapshot-" + util::random_token(12));
    fs::create_directories(dir);
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(scratch_root(), ignored);
    });
    return dir;
  }();
  return root;
}

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    names.insert(entry.path().filename().string());
  }
  return names;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path& root = scratch_root();
  std::error_code ec;
  fs::remove_all(root / "run", ec);
  const fs::path run = root / "run";
  const fs::path file = run / "input.tar";
  const fs::path extract = run / "extract";
  for (const char* dir : {"db", "packages", "data", "scratch"}) {
    fs::create_directories(extract / dir);
  }
  fs::create_directories(run / "verify");
  {
    std::ofstream out(file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }

  auto report = snapshot::verify(file, {}, run / "verify");
  if (report && report->ok()) {
    require(report->entries >= 3, "a sound snapshot has a manifest, a database and SHA256SUMS");
  }
  static_cast<void>(snapshot::inspect(file));

  snapshot::detail::ReadPlan plan;
  plan.database_dir = extract / "db";
  plan.scratch_dir = extract / "scratch";
  plan.packages_dir = extract / "packages";
  plan.data_dir = extract / "data";
  auto extracted = snapshot::detail::read_snapshot(file, plan);
  if (report && extracted) {
    require(report->ok() == extracted->report.ok(), "verify and restore agree");
  }
  // Nothing was written beside the target directories.
  require(names_in(extract) == std::set<std::string>{"data", "db", "packages", "scratch"},
          "extraction stays in its directories");
  require(names_in(run) == std::set<std::string>{"extract", "input.tar", "verify"},
          "extraction stays in its directories");
  for (const auto& name : names_in(extract / "data")) {
    require(name == "sequence" || name == "whitelist" || name == "instance-id", "only data files go to data/");
  }
  fs::remove_all(run, ec);
  return 0;
}
