#pragma once
// npm's version ranges as node-semver 7 reads them (loose=false,
// includePrerelease=false), and the version npm picks for a range from a
// package's versions and dist-tags (npm-pick-manifest).

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace npme::registry {

// True when valid version `version` satisfies the npm range `range` as
// node-semver's satisfies() does with loose=false and
// includePrerelease=false. `version` may carry surrounding whitespace and
// one leading 'v', as node-semver allows. `range` is "", "*", "x", an exact
// or partial version ("1.2.3", "=1.2.3", "v1.2.3", "1", "1.2.x"),
// comparators (<, <=, >, >=) joined by spaces (AND) and "||" (OR), a hyphen
// range ("1.2.3 - 2.3"), a tilde ("~1.2") or a caret ("^0.2.3") range. A
// version with a prerelease tag satisfies a comparator set only when a
// comparator of that set names the same major.minor.patch with a
// prerelease tag ("1.2.3-beta.2" satisfies ">=1.2.3-beta.1 <2" but
// "1.2.4-beta" does not). False when `version` or `range` is invalid: git
// URLs, "file:" specs, "npm:alias@range" and dist-tag names are not ranges.
bool satisfies(std::string_view version, std::string_view range);

// Returns the highest of `versions` (by semver precedence; the first of
// equal ones) that satisfies `range`, as it is written in `versions`, or
// nullopt when none does or `range` is invalid.
std::optional<std::string> max_satisfying(const std::vector<std::string>& versions, std::string_view range);

// Returns the version npm installs for `range` from a package whose
// versions are `versions` and whose dist-tags are `dist_tags`, as
// npm-pick-manifest chooses it. For "" and "*": the version tagged
// "latest", even a prerelease, else the highest version without a
// prerelease tag. For a valid range: the version tagged
// "latest" when it satisfies `range`, else max_satisfying(). For any other
// `range`: the version of the dist-tag of that name ("latest", "next"). A
// tagged version counts only when it is one of `versions`. nullopt when
// nothing fits.
std::optional<std::string> pick_version(const std::vector<std::string>& versions,
                                        const std::map<std::string, std::string>& dist_tags, std::string_view range);

} // namespace npme::registry
