#include "core/registry/lockfile.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

using nlohmann::json;
using namespace npme;
using namespace npme::registry;

namespace {

std::string tarball(const std::string& name, const std::string& version) {
  std::string file = name.substr(name.find('/') == std::string::npos ? 0 : name.find('/') + 1);
  return "https://registry.npmjs.org/" + name + "/-/" + file + "-" + version + ".tgz";
}

json registry_entry(const std::string& name, const std::string& version, const std::string& integrity) {
  return {{"version", version}, {"resolved", tarball(name, version)}, {"integrity", integrity}, {"license", "MIT"}};
}

// A package-lock.json as npm 10 writes it for a project with a workspace,
// nested duplicates, an alias, a link, git and file dependencies, an
// optional platform package and a dependency that bundles another.
json realistic_lockfile() {
  json packages = {
    {"",
     {{"name", "app"},
      {"version", "1.0.0"},
      {"workspaces", {"packages/*"}},
      {"dependencies", {{"lodash", "^4.17.21"}, {"my-lodash", "npm:lodash@4.17.20"}}}}},
    {"node_modules/lodash", registry_entry("lodash", "4.17.21", "sha512-lodash21")},
    {"node_modules/my-lodash",
     {{"name", "lodash"},
      {"version", "4.17.20"},
      {"resolved", tarball("lodash", "4.17.20")},
      {"integrity", "sha512-lodash20"}}},
    {"node_modules/@babel/core", registry_entry("@babel/core", "7.24.0", "sha512-babel")},
    {"node_modules/@babel/core/node_modules/semver", registry_entry("semver", "6.3.1", "sha512-semver6")},
    {"node_modules/semver", registry_entry("semver", "7.6.0", "sha512-semver7")},
    {"node_modules/ms", registry_entry("ms", "2.1.3", "sha512-ms3")},
    {"node_modules/debug", registry_entry("debug", "4.3.4", "sha512-debug")},
    {"node_modules/debug/node_modules/ms", registry_entry("ms", "2.1.2", "sha512-ms2")},
    {"node_modules/send/node_modules/ms", registry_entry("ms", "2.1.2", "sha512-ms2")},
    {"node_modules/send", registry_entry("send", "0.18.0", "sha512-send")},
    // A workspace: the link, its folder, and the folder's own dependency.
    {"node_modules/local-lib", {{"resolved", "packages/local-lib"}, {"link", true}}},
    {"packages/local-lib", {{"name", "local-lib"}, {"version", "0.1.0"}}},
    {"packages/local-lib/node_modules/left-pad", registry_entry("left-pad", "1.3.0", "sha512-leftpad")},
    // Not from a registry.
    {"node_modules/cli",
     {{"version", "10.0.0-git"}, {"resolved", "git+ssh://git@github.com/npm/cli.git#0123456789abcdef"}}},
    {"node_modules/gitlab-dep", {{"version", "not a version"}, {"resolved", "git+https://gitlab.com/a/b.git#c0ffee"}}},
    {"node_modules/vendored",
     {{"version", "2.0.0"}, {"resolved", "file:vendor/vendored-2.0.0.tgz"}, {"integrity", "sha512-vendored"}}},
    // An optional platform package counts; the tarball bundled in its
    // parent's tarball does not.
    {"node_modules/@esbuild/linux-x64",
     {{"version", "0.19.0"},
      {"resolved", tarball("@esbuild/linux-x64", "0.19.0")},
      {"integrity", "sha512-esbuild"},
      {"cpu", {"x64"}},
      {"os", {"linux"}},
      {"optional", true}}},
    {"node_modules/bundler",
     {{"version", "1.0.0"},
      {"resolved", tarball("bundler", "1.0.0")},
      {"integrity", "sha512-bundler"},
      {"bundleDependencies", {"inner"}}}},
    {"node_modules/bundler/node_modules/inner", {{"version", "3.0.0"}, {"inBundle", true}, {"license", "MIT"}}},
    // An old registry without integrity, over plain http.
    {"node_modules/old",
     {{"version", "0.0.1"}, {"resolved", "http://registry.example.com/old/-/old-0.0.1.tgz"}, {"dev", true}}},
  };
  return {{"name", "app"}, {"version", "1.0.0"}, {"lockfileVersion", 3}, {"requires", true}, {"packages", packages}};
}

} // namespace

TEST_CASE("registry::parse_lockfile reads a realistic lockfileVersion 3 file") {
  auto locked = parse_lockfile(realistic_lockfile().dump(2));
  REQUIRE(locked);
  const std::vector<LockedPackage> expected{
    {"@babel/core", "7.24.0", tarball("@babel/core", "7.24.0"), "sha512-babel"},
    {"@esbuild/linux-x64", "0.19.0", tarball("@esbuild/linux-x64", "0.19.0"), "sha512-esbuild"},
    {"bundler", "1.0.0", tarball("bundler", "1.0.0"), "sha512-bundler"},
    {"debug", "4.3.4", tarball("debug", "4.3.4"), "sha512-debug"},
    {"left-pad", "1.3.0", tarball("left-pad", "1.3.0"), "sha512-leftpad"},
    {"lodash", "4.17.20", tarball("lodash", "4.17.20"), "sha512-lodash20"},
    {"lodash", "4.17.21", tarball("lodash", "4.17.21"), "sha512-lodash21"},
    {"ms", "2.1.2", tarball("ms", "2.1.2"), "sha512-ms2"},
    {"ms", "2.1.3", tarball("ms", "2.1.3"), "sha512-ms3"},
    {"old", "0.0.1", "http://registry.example.com/old/-/old-0.0.1.tgz", ""},
    {"semver", "6.3.1", tarball("semver", "6.3.1"), "sha512-semver6"},
    {"semver", "7.6.0", tarball("semver", "7.6.0"), "sha512-semver7"},
    {"send", "0.18.0", tarball("send", "0.18.0"), "sha512-send"},
  };
  CHECK(locked->size() == expected.size());
  for (std::size_t i = 0; i < std::min(locked->size(), expected.size()); ++i) {
    INFO("entry " << i << ": " << (*locked)[i].name << "@" << (*locked)[i].version);
    CHECK((*locked)[i] == expected[i]);
  }
}

TEST_CASE("registry::parse_lockfile reads lockfileVersion 2 and shrinkwrap files") {
  // Version 2 keeps the npm 6 "dependencies" tree beside "packages"; only
  // "packages" is read.
  json lockfile = {
    {"name", "app"},
    {"lockfileVersion", 2},
    {"packages", {{"", {{"name", "app"}}}, {"node_modules/left-pad", registry_entry("left-pad", "1.3.0", "sha512-x")}}},
    {"dependencies", {{"left-pad", {{"version", "1.3.0"}}}, {"ignored", {{"version", "9.9.9"}}}}},
  };
  auto locked = parse_lockfile(lockfile.dump());
  REQUIRE(locked);
  REQUIRE(locked->size() == 1);
  CHECK(locked->front() == LockedPackage{"left-pad", "1.3.0", tarball("left-pad", "1.3.0"), "sha512-x"});

  // npm-shrinkwrap.json has the same shape.
  json shrinkwrap = {{"lockfileVersion", 3}, {"packages", {{"", json::object()}}}};
  auto empty = parse_lockfile(shrinkwrap.dump());
  REQUIRE(empty);
  CHECK(empty->empty());
}

TEST_CASE("registry::parse_lockfile keeps bundled packages that came from the registry") {
  json lockfile = {
    {"lockfileVersion", 3},
    {"packages",
     {{"", {{"name", "app"}, {"bundleDependencies", {"abbrev"}}}},
      // The project's own bundled dependency is fetched from the registry.
      {"node_modules/abbrev",
       {{"version", "2.0.0"}, {"resolved", tarball("abbrev", "2.0.0")}, {"integrity", "sha512-a"}, {"inBundle", true}}},
      // npm's omit-lockfile-registry-resolved leaves "resolved" out.
      {"node_modules/nopt", {{"version", "7.2.0"}, {"integrity", "sha512-n"}}}}},
  };
  auto locked = parse_lockfile(lockfile.dump());
  REQUIRE(locked);
  REQUIRE(locked->size() == 2);
  CHECK((*locked)[0] == LockedPackage{"abbrev", "2.0.0", tarball("abbrev", "2.0.0"), "sha512-a"});
  CHECK((*locked)[1] == LockedPackage{"nopt", "7.2.0", "", "sha512-n"});
}

TEST_CASE("registry::parse_lockfile returns a duplicate once, with the fields some copy has") {
  json lockfile = {
    {"lockfileVersion", 3},
    {"packages",
     {{"node_modules/a/node_modules/ms", {{"version", "2.1.2"}, {"resolved", tarball("ms", "2.1.2")}}},
      {"node_modules/b/node_modules/ms", registry_entry("ms", "2.1.2", "sha512-ms")},
      {"node_modules/ms", registry_entry("ms", "2.1.2", "sha512-ms")}}},
  };
  auto locked = parse_lockfile(lockfile.dump());
  REQUIRE(locked);
  REQUIRE(locked->size() == 1);
  CHECK(locked->front() == LockedPackage{"ms", "2.1.2", tarball("ms", "2.1.2"), "sha512-ms"});
}

TEST_CASE("registry::parse_lockfile refuses lockfileVersion 1") {
  json lockfile = {{"name", "app"},
                   {"lockfileVersion", 1},
                   {"requires", true},
                   {"dependencies", {{"left-pad", {{"version", "1.3.0"}}}}}};
  auto locked = parse_lockfile(lockfile.dump());
  REQUIRE_FALSE(locked);
  CHECK(locked.error().code == Errc::invalid);
  CHECK(locked.error().message == "lockfileVersion 1 is not supported: run 'npm install --lockfile-version 3' with "
                                  "npm 7 or later to upgrade it");
}

TEST_CASE("registry::parse_lockfile refuses text that is not a lockfile") {
  auto message = [](std::string_view text) {
    auto locked = parse_lockfile(text);
    REQUIRE_FALSE(locked);
    CHECK(locked.error().code == Errc::invalid);
    return locked.error().message;
  };
  CHECK(message("") == "invalid lockfile: not valid JSON");
  CHECK(message("{\"lockfileVersion\": 3, \"packages\": {") == "invalid lockfile: not valid JSON");
  CHECK(message("\x1f\x8b\x08 binary") == "invalid lockfile: not valid JSON");
  CHECK(message(std::string(100000, '[')) == "invalid lockfile: not valid JSON");
  CHECK(message("[1, 2]") == "invalid lockfile: expected a JSON object");
  CHECK(message("{}") == "invalid lockfile: \"lockfileVersion\" is missing or not an integer");
  CHECK(message(R"({"lockfileVersion": "3", "packages": {}})") ==
        "invalid lockfile: \"lockfileVersion\" is missing or not an integer");
  CHECK(message(R"({"lockfileVersion": 0, "packages": {}})") == "invalid lockfile: unknown lockfileVersion 0");
  CHECK(message(R"({"lockfileVersion": 3})") == "invalid lockfile: \"packages\" is missing or not an object");
  CHECK(message(R"({"lockfileVersion": 3, "packages": []})") ==
        "invalid lockfile: \"packages\" is missing or not an object");
}

TEST_CASE("registry::parse_lockfile refuses bad names, versions and fields") {
  auto message = [](const json& packages) {
    json lockfile = {{"lockfileVersion", 3}, {"packages", packages}};
    auto locked = parse_lockfile(lockfile.dump());
    REQUIRE_FALSE(locked);
    CHECK(locked.error().code == Errc::invalid);
    return locked.error().message;
  };
  std::string bad_name = message({{"node_modules/Bad Name", registry_entry("x", "1.0.0", "")}});
  CHECK(bad_name.starts_with("invalid lockfile: entry 'node_modules/Bad Name': invalid package name 'Bad Name'"));
  std::string bad_alias = message({{"node_modules/ok", {{"name", "../evil"}, {"version", "1.0.0"}}}});
  CHECK(bad_alias.starts_with("invalid lockfile: entry 'node_modules/ok': invalid package name '../evil'"));
  std::string bad_version = message({{"node_modules/ok", registry_entry("ok", "1.0", "")}});
  CHECK(bad_version.starts_with("invalid lockfile: entry 'node_modules/ok': invalid version '1.0'"));
  CHECK(message({{"node_modules/ok", {{"version", 1}}}}) ==
        "invalid lockfile: entry 'node_modules/ok': \"version\" is not a string");
  CHECK(message({{"node_modules/ok", "1.0.0"}}) == "invalid lockfile: entry 'node_modules/ok': expected a JSON object");
  CHECK(message({{"node_modules/", registry_entry("x", "1.0.0", "")}})
          .starts_with("invalid lockfile: entry 'node_modules/': invalid package name ''"));
}
