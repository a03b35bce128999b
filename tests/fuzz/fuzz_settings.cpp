// The settings of an instance from the two places they come from outside
// the process (core/settings/settings.hpp): the settings file (parse_file,
// what load() reads) and the admin API's PATCH /api/v1/settings body
// (parse_patch, then LiveSettings::update, which validates, saves the file
// and publishes). Whatever PATCH accepts must load back from the file it
// wrote: an instance must always be able to start again. Input: the JSON
// text, used as both.

#include "core/settings/settings.hpp"
#include "core/util/crypto.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

using namespace npme;
using npme::fuzz::require;
namespace fs = std::filesystem;

namespace {

// A scratch root for the settings file, on tmpfs when there is one (save()
// fsyncs); removed at exit.
const fs::path& scratch_root() {
  static const fs::path root = [] {
    std::error_code ec;
    fs::path base = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path dir = base / ("npme-fuzz-settings-" + util::random_token(12));
    fs::create_directories(dir);
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(scratch_root(), ignored);
    });
    return dir;
  }();
  return root;
}

// The values of size keys are used as byte counts: each must give one.
void check_sizes(const settings::Settings& current) {
  for (const auto& key : settings::keys()) {
    if (key.kind != settings::Kind::size || !current.is_set(key.name)) {
      continue;
    }
    const std::string value = current.get(key.name);
    std::uint64_t number = 0;
    std::from_chars(value.data(), value.data() + value.size(), number);
    const std::uint64_t bytes = settings::parse_size(value);
    require(bytes != 0 && bytes >= number, "a valid size gives its number of bytes");
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::text(data, size);
  const auto layout = settings::Layout::from_root(scratch_root());

  // The settings file.
  if (auto parsed = settings::parse_file(layout, input)) {
    check_sizes(*parsed);
    auto again = settings::parse_file(layout, parsed->to_json());
    require(again && again->values() == parsed->values(), "a settings file parses back as written");
  }

  // The admin API's PATCH, onto the settings of a new instance.
  auto patch = settings::parse_patch(input);
  if (!patch) {
    return 0;
  }
  std::error_code ec;
  fs::remove(layout.config_file, ec);
  settings::Settings initial(layout, {});
  require(static_cast<bool>(initial.apply({{"secret", std::string(36, 's')}, {"admin.token", std::string(36, 't')}})),
          "initial settings");
  settings::LiveSettings live(initial);
  auto changed = live.update(patch->set, patch->unset);
  if (!changed) {
    require(live.get()->values() == initial.values(), "a refused PATCH changes nothing");
    return 0;
  }
  check_sizes(*live.get());
  if (!changed->empty()) {
    auto loaded = settings::load(layout);
    require(static_cast<bool>(loaded), "what PATCH saved loads again");
    require(loaded->values() == live.get()->values(), "what PATCH saved loads as it was applied");
  }
  return 0;
}
