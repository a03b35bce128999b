#include "core/instance/offline.hpp"

#include "core/audit/audit.hpp"
#include "core/hostdirs/lock.hpp"
#include "core/replication/sequence.hpp"

#include <cstdio>

namespace npme::instance {

Expected<std::vector<std::string>> set_settings_offline(const settings::Layout& layout,
                                                        const std::map<std::string, std::string>& changes,
                                                        const std::vector<std::string>& unset) {
  NPME_TRY_ASSIGN(auto current, settings::load_or_create(layout));
  // Hold the lock while editing so that an instance can't start in between.
  NPME_TRY_ASSIGN(auto lock, hostdirs::Lock::acquire(current.data_dir()));
  // LiveSettings owns the rules of one update (all or nothing, a key not
  // both set and unset); it saves the file when something changed.
  const settings::Settings before = current;
  settings::LiveSettings live(std::move(current));
  NPME_TRY_ASSIGN(auto changed, live.update(changes, unset));
  if (!changed.empty()) {
    std::string target;
    for (const auto& name : changed) {
      target += (target.empty() ? "" : ",") + name;
    }
    // The change is made; a log that cannot be written is said, not undone.
    if (auto recorded = audit::record_cli(*live.get(), audit::Event{"", "", "", "settings.change", target, "ok",
                                                                   {{"changes", audit::settings_changes(
                                                                                  before, *live.get(), changed)},
                                                                    {"offline", true}}});
        !recorded) {
      std::fprintf(stderr, "npme: warning: the audit log was not written: %s\n", recorded.error().message.c_str());
    }
  }
  return changed;
}

Expected<void> reset_follower_offline(const settings::Layout& layout) {
  NPME_TRY_ASSIGN(auto current, settings::load(layout));
  if (current.get("upstream.url").empty()) {
    return make_error(Errc::precondition, "this instance has no upstream (set upstream.url first)");
  }
  NPME_TRY_ASSIGN(auto lock, hostdirs::Lock::acquire(current.data_dir()));
  NPME_TRY(replication::truncate_sequence(current.data_dir()));
  if (auto recorded = audit::record_cli(current, audit::Event{"", "", "", "follower.reset", current.get("upstream.url"),
                                                              "ok", {{"offline", true}}});
      !recorded) {
    std::fprintf(stderr, "npme: warning: the audit log was not written: %s\n", recorded.error().message.c_str());
  }
  return {};
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
