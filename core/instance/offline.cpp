#include "core/instance/offline.hpp"

#include "core/hostdirs/lock.hpp"
#include "core/replication/sequence.hpp"

namespace npme::instance {

Expected<std::vector<std::string>> set_settings_offline(const settings::Layout& layout,
                                                        const std::map<std::string, std::string>& changes,
                                                        const std::vector<std::string>& unset) {
  NPME_TRY_ASSIGN(auto current, settings::load_or_create(layout));
  // Hold the lock while editing so that an instance can't start in between.
  NPME_TRY_ASSIGN(auto lock, hostdirs::Lock::acquire(current.data_dir()));
  // LiveSettings owns the rules of one update (all or nothing, a key not
  // both set and unset); it saves the file when something changed.
  settings::LiveSettings live(std::move(current));
  return live.update(changes, unset);
}

Expected<void> reset_follower_offline(const settings::Layout& layout) {
  NPME_TRY_ASSIGN(auto current, settings::load(layout));
  if (current.get("upstream.url").empty()) {
    return make_error(Errc::precondition, "this instance has no upstream (set upstream.url first)");
  }
  NPME_TRY_ASSIGN(auto lock, hostdirs::Lock::acquire(current.data_dir()));
  return replication::truncate_sequence(current.data_dir());
}

Expected<doctor::Report> doctor_offline(const settings::Layout& layout, doctor::Depth depth, doctor::Repair repair) {
  auto loaded = settings::load(layout);
  const settings::Settings current = loaded ? std::move(*loaded) : settings::Settings(layout, {});
  NPME_TRY_ASSIGN(auto lock, hostdirs::Lock::acquire(current.data_dir()));
  const auto source = repair == doctor::Repair::yes ? doctor::make_source(current) : nullptr;
  doctor::Options options;
  options.depth = depth;
  options.repair = repair;
  options.offline = true;
  options.paths = store::Paths{current.metadata_dir(), current.packages_dir(), current.data_dir()};
  options.layout = layout;
  options.settings_file = layout.config_file;
  options.source = source.get();
  return doctor::run(options);
}

} // namespace npme::instance
