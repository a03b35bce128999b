#pragma once
// Package names, versions and dist-tags as the npm registry accepts them,
// and the tarball layout of the packages directory (DESIGN.md §2).

#include "core/util/error.hpp"

#include <string>
#include <string_view>

namespace npme::registry {

// The longest package name accepted (npm's limit).
inline constexpr std::size_t k_max_name_length = 214;

// Checks that `name` is a package name npm still accepts for existing
// packages (validate-npm-package-name's validForOldPackages: legacy
// upper-case names and the characters ~'!()* pass), with the 214 character
// limit enforced. Refuses empty names, a leading '.', '_' or '-', leading or
// trailing spaces, "node_modules" and "favicon.ico", characters that
// encodeURIComponent would change (except the one '/' of "@scope/name"), and
// anything that could act as a path segment ("@/x", "@s/", "@s/.x", "a/b").
// Errc::invalid naming the name and the reason.
Expected<void> validate_package_name(std::string_view name);

// True when `name` has the form "@scope/name".
bool is_scoped(std::string_view name);

// Returns the part of `name` after the scope ("pkg" for "@scope/pkg").
std::string_view unscoped_name(std::string_view name);

// Returns the package name from a path segment the router already
// percent-decoded: "lodash" or "@scope/pkg" (sent as "@scope%2fpkg").
// Validates it, so decoded traversal ("%2e%2e") is refused.
Expected<std::string> name_from_param(std::string_view decoded);

// Returns the package name from the two decoded segments of
// "/@scope/pkg/...": `scope` must start with '@'.
Expected<std::string> name_from_params(std::string_view scope, std::string_view name);

// Returns the package name from a raw, still percent-encoded path segment:
// "lodash", "@scope%2fpkg" or "@scope%2Fpkg".
Expected<std::string> name_from_url_segment(std::string_view raw);

// Checks that `version` is a strict semantic version: MAJOR.MINOR.PATCH
// without leading zeros, optional "-prerelease" and "+build", no leading
// 'v', at most 256 characters. Errc::invalid otherwise.
Expected<void> validate_version(std::string_view version);

// Orders two valid versions by semver precedence (build metadata ignored):
// negative, zero or positive like strcmp. Invalid versions sort first.
int compare_versions(std::string_view a, std::string_view b);

// True when `text` parses as a semver range as npm's semver.validRange
// does ("1", "1.2", "^1.0.0", "v1", ">=1 <2", "1.x || 2", "*").
bool is_version_range(std::string_view text);

// Checks a dist-tag name: non-empty, at most 214 characters, unchanged by
// encodeURIComponent, and not something npm would read as a version or a
// version range (npm refuses such tags). Errc::invalid otherwise.
Expected<void> validate_dist_tag(std::string_view tag);

// Returns the file name of a version's tarball: "pkg-1.0.0.tgz" for both
// "pkg" and "@scope/pkg".
std::string tarball_file_name(std::string_view name, std::string_view version);

// Returns the tarball's path relative to the packages directory:
// "pkg/-/pkg-1.0.0.tgz", "@scope/pkg/-/pkg-1.0.0.tgz".
std::string tarball_rel_path(std::string_view name, std::string_view version);

// Checks that `file` can be the tarball file name of package `name`
// ("<unscoped name>-<something>.tgz", no path characters) and returns the
// relative path of that file in the packages directory.
Expected<std::string> tarball_rel_path_for_file(std::string_view name, std::string_view file);

} // namespace npme::registry
