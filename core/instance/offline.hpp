#pragma once
// Operations on a stopped instance's files, refused while it runs.

#include "core/doctor/doctor.hpp"
#include "core/settings/settings.hpp"
#include "core/util/error.hpp"

#include <map>
#include <string>
#include <vector>

namespace npme::instance {

// Applies `changes` to the settings file of `layout`, and returns `unset`
// to their defaults, when no instance holds its lock (Errc::precondition
// otherwise). All or nothing; returns the canonical keys that changed.
Expected<std::vector<std::string>> set_settings_offline(const settings::Layout& layout,
                                                        const std::map<std::string, std::string>& changes,
                                                        const std::vector<std::string>& unset = {});

// Empties the follower's `sequence` of the stopped instance of `layout`
// (Errc::precondition while it runs or when it has no upstream): on its next
// start it resyncs from the upstream's beginning.
Expected<void> reset_follower_offline(const settings::Layout& layout);

// Runs `npme doctor` on the stopped instance of `layout`, holding its lock
// (Errc::precondition while it runs). Repairs fetch from its upstream or
// uplink as its settings name them. A settings file that cannot be read is
// a defect of the report; the directories are then the layout's defaults.
Expected<doctor::Report> doctor_offline(const settings::Layout& layout, doctor::Depth depth, doctor::Repair repair);

} // namespace npme::instance
