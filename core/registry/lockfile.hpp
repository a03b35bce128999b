#pragma once
// The packages an npm lockfile (package-lock.json or npm-shrinkwrap.json,
// lockfileVersion 2 or 3) installs from a registry.

#include "core/util/error.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace npme::registry {

// One package a lockfile installs from a registry.
struct LockedPackage {
  std::string name;      // the registry name: "real" for an alias installed as node_modules/alias
  std::string version;   // a valid version
  std::string resolved;  // the http(s) tarball URL; "" when npm omitted it (omit-lockfile-registry-resolved)
  std::string integrity; // the SRI string; "" when the lockfile lacks it

  friend bool operator==(const LockedPackage&, const LockedPackage&) = default;
};

// Parses `text`, the contents of an npm lockfile, and returns every package
// it installs from a registry: the entries of "packages" under a
// "node_modules/" path, except links ("link": true), entries without a
// "version", entries whose "resolved" is not an http(s) URL (git, "file:",
// directories) and entries without "resolved" that came inside their
// parent's tarball ("inBundle": true). Entries without "resolved" that are
// not bundled count: npm writes them so with omit-lockfile-registry-resolved.
// The name is the entry's "name" when present (aliases), else the path after
// its last "node_modules/" ("@scope/pkg" for scoped packages). A package at
// several paths is returned once; the result is sorted by name, then by
// version precedence. Errc::invalid for text that is not a JSON object,
// lockfileVersion 1 (the message says how to upgrade it), a missing
// "packages" object, a name refused by validate_package_name, a version
// refused by validate_version, or a field of the wrong type. Messages do not
// name the file; callers prefix its path.
Expected<std::vector<LockedPackage>> parse_lockfile(std::string_view text);

} // namespace npme::registry
