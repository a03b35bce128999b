#include "core/instance/offline.hpp"

#include "core/instance/lock.hpp"

namespace npme::instance {

Expected<std::vector<std::string>> set_settings_offline(const settings::Layout& layout,
                                                        const std::map<std::string, std::string>& changes) {
  NPME_TRY_ASSIGN(auto current, settings::load_or_create(layout));
  // Hold the lock while editing so that an instance can't start in between.
  NPME_TRY_ASSIGN(auto lock, Lock::acquire(current.data_dir()));
  NPME_TRY_ASSIGN(auto changed, current.apply(changes));
  if (!changed.empty()) {
    NPME_TRY(settings::save(current));
  }
  return changed;
}

} // namespace npme::instance
