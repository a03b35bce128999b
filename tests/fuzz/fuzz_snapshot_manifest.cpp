// snapshot.json, the manifest at the start of every snapshot
// (core/snapshot/format.cpp, Manifest::from_json): read by `snapshot
// inspect`, `snapshot list`, `verify` and `restore` from any file they are
// given. What it accepts must write and read back the same. Input: the
// manifest text.

#include "core/snapshot/snapshot.hpp"
#include "tests/fuzz/fuzz.hpp"

using namespace npme;
using npme::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto manifest = snapshot::Manifest::from_json(fuzz::text(data, size));
  if (!manifest) {
    require(manifest.error().code == Errc::verify, "a bad manifest is Errc::verify");
    return 0;
  }
  const std::string written = manifest->to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  auto again = snapshot::Manifest::from_json(written);
  require(static_cast<bool>(again), "a manifest read back as written");
  require(again->format_version == manifest->format_version && again->update_seq == manifest->update_seq &&
            again->sequence == manifest->sequence && again->tarballs == manifest->tarballs &&
            again->instance_running == manifest->instance_running &&
            again->reported.has_value() == manifest->reported.has_value(),
          "a manifest reads back the same");
  return 0;
}
