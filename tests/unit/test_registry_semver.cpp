#include "core/registry/semver.hpp"

#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

using namespace npme::registry;

namespace {

struct Case {
  const char* range;
  const char* version;
};

} // namespace

TEST_CASE("registry::satisfies includes node-semver's range-include cases") {
  // node-semver's test/fixtures/range-include.js, the rows without options.
  const std::vector<Case> cases{
    {"1.0.0 - 2.0.0", "1.2.3"},
    {"^1.2.3+build", "1.2.3"},
    {"^1.2.3+build", "1.3.0"},
    {"1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3"},
    {"1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3-pre.2"},
    {"1.2.3-pre+asdf - 2.4.3-pre+asdf", "2.4.3-alpha"},
    {"1.2.3+asdf - 2.4.3+asdf", "1.2.3"},
    {"1.0.0", "1.0.0"},
    {">=*", "0.2.4"},
    {"", "1.0.0"},
    {"*", "1.2.3"},
    {">=1.0.0", "1.0.0"},
    {">=1.0.0", "1.0.1"},
    {">=1.0.0", "1.1.0"},
    {">1.0.0", "1.0.1"},
    {">1.0.0", "1.1.0"},
    {"<=2.0.0", "2.0.0"},
    {"<=2.0.0", "1.9999.9999"},
    {"<=2.0.0", "0.2.9"},
    {"<2.0.0", "1.9999.9999"},
    {"<2.0.0", "0.2.9"},
    {">= 1.0.0", "1.0.0"},
    {">=  1.0.0", "1.0.1"},
    {">=   1.0.0", "1.1.0"},
    {"> 1.0.0", "1.0.1"},
    {">  1.0.0", "1.1.0"},
    {"<=   2.0.0", "2.0.0"},
    {"<= 2.0.0", "1.9999.9999"},
    {"<=  2.0.0", "0.2.9"},
    {"<    2.0.0", "1.9999.9999"},
    {"<\t2.0.0", "0.2.9"},
    {">=0.1.97", "0.1.97"},
    {"0.1.20 || 1.2.4", "1.2.4"},
    {">=0.2.3 || <0.0.1", "0.0.0"},
    {">=0.2.3 || <0.0.1", "0.2.3"},
    {">=0.2.3 || <0.0.1", "0.2.4"},
    {"||", "1.3.4"},
    {"2.x.x", "2.1.3"},
    {"1.2.x", "1.2.3"},
    {"1.2.x || 2.x", "2.1.3"},
    {"1.2.x || 2.x", "1.2.3"},
    {"x", "1.2.3"},
    {"2.*.*", "2.1.3"},
    {"1.2.*", "1.2.3"},
    {"1.2.* || 2.*", "2.1.3"},
    {"1.2.* || 2.*", "1.2.3"},
    {"2", "2.1.2"},
    {"2.3", "2.3.1"},
    {"~0.0.1", "0.0.1"},
    {"~0.0.1", "0.0.2"},
    {"~x", "0.0.9"},
    {"~2", "2.0.9"},
    {"~2.4", "2.4.0"},
    {"~2.4", "2.4.5"},
    {"~>3.2.1", "3.2.2"},
    {"~1", "1.2.3"},
    {"~>1", "1.2.3"},
    {"~> 1", "1.2.3"},
    {"~1.0", "1.0.2"},
    {"~ 1.0", "1.0.2"},
    {"~ 1.0.3", "1.0.12"},
    {">=1", "1.0.0"},
    {">= 1", "1.0.0"},
    {"<1.2", "1.1.1"},
    {"< 1.2", "1.1.1"},
    {"~v0.5.4-pre", "0.5.5"},
    {"~v0.5.4-pre", "0.5.4"},
    {"=0.7.x", "0.7.2"},
    {"<=0.7.x", "0.7.2"},
    {">=0.7.x", "0.7.2"},
    {"<=0.7.x", "0.6.2"},
    {"~1.2.1 >=1.2.3", "1.2.3"},
    {"~1.2.1 =1.2.3", "1.2.3"},
    {"~1.2.1 1.2.3", "1.2.3"},
    {"~1.2.1 >=1.2.3 1.2.3", "1.2.3"},
    {"~1.2.1 1.2.3 >=1.2.3", "1.2.3"},
    {">=1.2.1 1.2.3", "1.2.3"},
    {"1.2.3 >=1.2.1", "1.2.3"},
    {">=1.2.3 >=1.2.1", "1.2.3"},
    {">=1.2.1 >=1.2.3", "1.2.3"},
    {">=1.2", "1.2.8"},
    {"^1.2.3", "1.8.1"},
    {"^0.1.2", "0.1.2"},
    {"^0.1", "0.1.2"},
    {"^0.0.1", "0.0.1"},
    {"^1.2", "1.4.2"},
    {"^1.2 ^1", "1.4.2"},
    {"^1.2.3-alpha", "1.2.3-pre"},
    {"^1.2.0-alpha", "1.2.0-pre"},
    {"^0.0.1-alpha", "0.0.1-beta"},
    {"^0.0.1-alpha", "0.0.1"},
    {"^0.1.1-alpha", "0.1.1-beta"},
    {"^x", "1.2.3"},
    {"x - 1.0.0", "0.9.7"},
    {"x - 1.x", "0.9.7"},
    {"1.0.0 - x", "1.9.7"},
    {"1.x - x", "1.9.7"},
    {"<=7.x", "7.9.9"},
  };
  for (const Case& c : cases) {
    INFO("range '" << c.range << "' version '" << c.version << "'");
    CHECK(satisfies(c.version, c.range));
  }
}

TEST_CASE("registry::satisfies excludes node-semver's range-exclude cases") {
  // node-semver's test/fixtures/range-exclude.js, the rows without options.
  const std::vector<Case> cases{
    {"1.0.0 - 2.0.0", "2.2.3"},
    {"1.2.3+asdf - 2.4.3+asdf", "1.2.3-pre.2"},
    {"1.2.3+asdf - 2.4.3+asdf", "2.4.3-alpha"},
    {"^1.2.3+build", "2.0.0"},
    {"^1.2.3+build", "1.2.0"},
    {"^1.2.3", "1.2.3-pre"},
    {"^1.2", "1.2.0-pre"},
    {">1.2", "1.3.0-beta"},
    {"<=1.2.3", "1.2.3-beta"},
    {"^1.2.3", "1.2.3-beta"},
    {"=0.7.x", "0.7.0-asdf"},
    {">=0.7.x", "0.7.0-asdf"},
    {"1.0.0", "1.0.1"},
    {">=1.0.0", "0.0.0"},
    {">=1.0.0", "0.0.1"},
    {">=1.0.0", "0.1.0"},
    {">1.0.0", "0.0.1"},
    {">1.0.0", "0.1.0"},
    {"<=2.0.0", "3.0.0"},
    {"<=2.0.0", "2.9999.9999"},
    {"<=2.0.0", "2.2.9"},
    {"<2.0.0", "2.9999.9999"},
    {"<2.0.0", "2.2.9"},
    {">=0.1.97", "0.1.93"},
    {"0.1.20 || 1.2.4", "1.2.3"},
    {">=0.2.3 || <0.0.1", "0.0.3"},
    {">=0.2.3 || <0.0.1", "0.2.2"},
    {"2.x.x", "3.1.3"},
    {"1.2.x", "1.3.3"},
    {"1.2.x || 2.x", "3.1.3"},
    {"1.2.x || 2.x", "1.1.3"},
    {"2.*.*", "1.1.3"},
    {"2.*.*", "3.1.3"},
    {"1.2.*", "1.3.3"},
    {"1.2.* || 2.*", "3.1.3"},
    {"1.2.* || 2.*", "1.1.3"},
    {"2", "1.1.2"},
    {"2.3", "2.4.1"},
    {"~0.0.1", "0.1.0-alpha"},
    {"~0.0.1", "0.1.0"},
    {"~2.4", "2.5.0"},
    {"~2.4", "2.3.9"},
    {"~>3.2.1", "3.3.2"},
    {"~>3.2.1", "3.2.0"},
    {"~1", "0.2.3"},
    {"~>1", "2.2.3"},
    {"~1.0", "1.1.0"},
    {"<1", "1.0.0"},
    {">=1.2", "1.1.1"},
    {"~v0.5.4-beta", "0.5.4-alpha"},
    {"=0.7.x", "0.8.2"},
    {">=0.7.x", "0.6.2"},
    {"<0.7.x", "0.7.2"},
    {"<1.2.3", "1.2.3-beta"},
    {"=1.2.3", "1.2.3-beta"},
    {">1.2", "1.2.8"},
    {"^0.0.1", "0.0.2-alpha"},
    {"^0.0.1", "0.0.2"},
    {"^1.2.3", "2.0.0-alpha"},
    {"^1.2.3", "1.2.2"},
    {"^1.2", "1.1.9"},
    {"*", "not a version"},
    {">=2", "glorp"},
    {"^1.0.0", "2.0.0-rc1"},
  };
  for (const Case& c : cases) {
    INFO("range '" << c.range << "' version '" << c.version << "'");
    CHECK_FALSE(satisfies(c.version, c.range));
  }
}

TEST_CASE("registry::satisfies caret ranges") {
  // ^1.2.3 := >=1.2.3 <2.0.0-0
  CHECK(satisfies("1.2.3", "^1.2.3"));
  CHECK(satisfies("1.9.9", "^1.2.3"));
  CHECK_FALSE(satisfies("2.0.0", "^1.2.3"));
  CHECK_FALSE(satisfies("1.2.2", "^1.2.3"));
  // ^0.2.3 := >=0.2.3 <0.3.0-0
  CHECK(satisfies("0.2.3", "^0.2.3"));
  CHECK(satisfies("0.2.9", "^0.2.3"));
  CHECK_FALSE(satisfies("0.3.0", "^0.2.3"));
  // ^0.0.3 := >=0.0.3 <0.0.4-0
  CHECK(satisfies("0.0.3", "^0.0.3"));
  CHECK_FALSE(satisfies("0.0.4", "^0.0.3"));
  // ^1.2.x := >=1.2.0 <2.0.0-0
  CHECK(satisfies("1.2.0", "^1.2.x"));
  CHECK(satisfies("1.99.0", "^1.2.x"));
  CHECK_FALSE(satisfies("1.1.9", "^1.2.x"));
  CHECK_FALSE(satisfies("2.0.0", "^1.2.x"));
  // ^0.0.x := >=0.0.0 <0.1.0-0
  CHECK(satisfies("0.0.0", "^0.0.x"));
  CHECK(satisfies("0.0.99", "^0.0.x"));
  CHECK_FALSE(satisfies("0.1.0", "^0.0.x"));
  CHECK(satisfies("0.0.5", "^0.0"));
  // ^0.x := >=0.0.0 <1.0.0-0
  CHECK(satisfies("0.99.1", "^0.x"));
  CHECK_FALSE(satisfies("1.0.0", "^0.x"));
  // ^1 := >=1.0.0 <2.0.0-0; ^* and ^x match every release
  CHECK(satisfies("1.0.0", "^1"));
  CHECK_FALSE(satisfies("2.0.0-0", "^1"));
  CHECK(satisfies("7.0.0", "^*"));
  // A caret with a prerelease lets that patch's prereleases in, no others.
  CHECK(satisfies("1.2.3-beta.2", "^1.2.3-beta.1"));
  CHECK_FALSE(satisfies("1.2.3-alpha", "^1.2.3-beta.1"));
  CHECK_FALSE(satisfies("1.2.4-beta.2", "^1.2.3-beta.1"));
  CHECK(satisfies("1.2.4", "^1.2.3-beta.1"));
  CHECK(satisfies("0.0.3-rc.1", "^0.0.3-beta"));
  CHECK_FALSE(satisfies("0.0.4", "^0.0.3-beta"));
  // Whitespace after the caret and a leading 'v' or '=' are tolerated.
  CHECK(satisfies("1.5.0", "^ 1.2.3"));
  CHECK(satisfies("1.5.0", "^v1.2.3"));
  CHECK(satisfies("1.5.0", "^=1.2.3"));
}

TEST_CASE("registry::satisfies tilde ranges") {
  // ~1.2.3 := >=1.2.3 <1.3.0-0
  CHECK(satisfies("1.2.3", "~1.2.3"));
  CHECK(satisfies("1.2.99", "~1.2.3"));
  CHECK_FALSE(satisfies("1.3.0", "~1.2.3"));
  CHECK_FALSE(satisfies("1.2.2", "~1.2.3"));
  // ~1.2 := >=1.2.0 <1.3.0-0, ~1 := >=1.0.0 <2.0.0-0
  CHECK(satisfies("1.2.0", "~1.2"));
  CHECK_FALSE(satisfies("1.3.0", "~1.2"));
  CHECK(satisfies("1.9.0", "~1"));
  CHECK_FALSE(satisfies("2.0.0", "~1"));
  // ~0.2.3 := >=0.2.3 <0.3.0-0, unlike ^0.0.3
  CHECK(satisfies("0.2.9", "~0.2.3"));
  CHECK(satisfies("0.0.9", "~0.0.3"));
  CHECK_FALSE(satisfies("0.1.0", "~0.0.3"));
  // ~> is the same as ~
  CHECK(satisfies("1.2.5", "~>1.2.3"));
  CHECK(satisfies("1.2.5", "~> 1.2.3"));
  CHECK(satisfies("1.2.3-beta.3", "~1.2.3-beta.2"));
  CHECK_FALSE(satisfies("1.2.3-beta.1", "~1.2.3-beta.2"));
}

TEST_CASE("registry::satisfies x-ranges and partial versions") {
  CHECK(satisfies("0.0.0", "*"));
  CHECK(satisfies("99.99.99", "x"));
  CHECK(satisfies("1.2.3", "X"));
  CHECK(satisfies("1.0.0", "1.x"));
  CHECK(satisfies("1.99.0", "1.X"));
  CHECK_FALSE(satisfies("2.0.0", "1.x"));
  CHECK(satisfies("1.2.0", "1.2.*"));
  CHECK_FALSE(satisfies("1.3.0", "1.2.*"));
  CHECK(satisfies("1.0.0", "1"));
  CHECK(satisfies("1.7.2", "1"));
  CHECK_FALSE(satisfies("2.0.0", "1"));
  CHECK(satisfies("1.2.7", "1.2"));
  CHECK_FALSE(satisfies("1.3.0", "1.2"));
  // Operators on partial versions: >1.2 := >=1.3.0, <=1.2 := <1.3.0-0, <1 := <1.0.0-0.
  CHECK_FALSE(satisfies("1.2.9", ">1.2"));
  CHECK(satisfies("1.3.0", ">1.2"));
  CHECK(satisfies("2.0.0", ">1"));
  CHECK_FALSE(satisfies("1.9.9", ">1"));
  CHECK(satisfies("1.2.9", "<=1.2"));
  CHECK_FALSE(satisfies("1.3.0", "<=1.2"));
  CHECK(satisfies("0.9.9", "<1"));
  CHECK_FALSE(satisfies("1.0.0", "<1"));
  // >* and <* allow nothing, >=* and <=* everything.
  CHECK_FALSE(satisfies("1.0.0", ">*"));
  CHECK_FALSE(satisfies("0.0.0", "<x"));
  CHECK(satisfies("1.0.0", "<=*"));
  // Exact versions, with '=' and 'v'; build metadata does not count.
  CHECK(satisfies("1.2.3", "1.2.3"));
  CHECK(satisfies("1.2.3", "=1.2.3"));
  CHECK(satisfies("1.2.3", "v1.2.3"));
  CHECK(satisfies("1.2.3", "=v1.2.3"));
  CHECK(satisfies("1.2.3+build.7", "1.2.3"));
  CHECK(satisfies("1.2.3", "1.2.3+other"));
  CHECK_FALSE(satisfies("1.2.4", "1.2.3"));
  // The version may carry a 'v' and whitespace, as node-semver allows.
  CHECK(satisfies("v1.2.3", "^1.0.0"));
  CHECK(satisfies(" 1.2.3 ", "^1.0.0"));
}

TEST_CASE("registry::satisfies hyphen ranges") {
  // 1.2.3 - 2.3.4 := >=1.2.3 <=2.3.4
  CHECK(satisfies("1.2.3", "1.2.3 - 2.3.4"));
  CHECK(satisfies("2.3.4", "1.2.3 - 2.3.4"));
  CHECK_FALSE(satisfies("2.3.5", "1.2.3 - 2.3.4"));
  CHECK_FALSE(satisfies("1.2.2", "1.2.3 - 2.3.4"));
  // A partial right side is open to its whole last part: 2.3 := <2.4.0-0, 2 := <3.0.0-0.
  CHECK(satisfies("2.3.99", "1.2.3 - 2.3"));
  CHECK_FALSE(satisfies("2.4.0", "1.2.3 - 2.3"));
  CHECK_FALSE(satisfies("2.4.0-0", "1.2.3 - 2.3"));
  CHECK(satisfies("2.99.0", "1.2.3 - 2"));
  CHECK_FALSE(satisfies("3.0.0", "1.2.3 - 2"));
  // A partial left side starts at its zero: 1.2 := >=1.2.0.
  CHECK(satisfies("1.2.0", "1.2 - 2.3.4"));
  CHECK_FALSE(satisfies("1.1.9", "1.2 - 2.3.4"));
  // Prereleases on the ends.
  CHECK(satisfies("2.3.4-beta", "1.2.3 - 2.3.4-rc.1"));
  CHECK_FALSE(satisfies("2.3.4-rc.2", "1.2.3 - 2.3.4-rc.1"));
  CHECK_FALSE(satisfies("2.3.4", "1.2.3 - 2.3.4-rc.1"));
  // Whitespace around the hyphen is required: "1.2.3-2.3.4" is a prerelease.
  CHECK(satisfies("1.2.3-2.3.4", "1.2.3-2.3.4"));
  CHECK_FALSE(satisfies("2.0.0", "1.2.3-2.3.4"));
  CHECK(satisfies("1.5.0", "  1.2.3   -   2.3.4  "));
}

TEST_CASE("registry::satisfies comparator sets, alternatives and whitespace") {
  CHECK(satisfies("1.5.0", ">=1.2.3 <2.0.0"));
  CHECK_FALSE(satisfies("2.0.0", ">=1.2.3 <2.0.0"));
  CHECK(satisfies("1.5.0", ">= 1.2.3 < 2.0.0"));
  CHECK(satisfies("1.5.0", "\t>=1.2.3\n<2.0.0 "));
  CHECK(satisfies("1.5.0", ">1.2.3 <=1.5.0"));
  CHECK_FALSE(satisfies("1.2.3", ">1.2.3 <=1.5.0"));
  CHECK(satisfies("3.1.0", "^1.0.0 || ^2.0.0 || ^3.0.0"));
  CHECK(satisfies("3.1.0", "^1.0.0||^3.0.0"));
  CHECK_FALSE(satisfies("4.0.0", "^1.0.0 || ^2.0.0 || ^3.0.0"));
  CHECK(satisfies("1.0.0", "<1.0.0 || >=1.0.0 <1.0.1"));
  CHECK(satisfies("0.5.0", "1.x || >=0.5.0 <0.6.0 || 3"));
  // An empty alternative is "*".
  CHECK(satisfies("9.0.0", "1.x ||"));
  // Contradictory comparators match nothing.
  CHECK_FALSE(satisfies("1.5.0", ">2.0.0 <1.0.0"));
}

TEST_CASE("registry::satisfies prerelease versions") {
  CHECK(satisfies("1.2.3-beta.2", ">=1.2.3-beta.1 <2"));
  CHECK_FALSE(satisfies("1.2.4-beta", ">=1.2.3-beta.1"));
  CHECK_FALSE(satisfies("1.2.3-beta.0", ">=1.2.3-beta.1 <2"));
  CHECK(satisfies("1.2.3-beta.1", "1.2.3-beta.1"));
  CHECK_FALSE(satisfies("1.0.0-rc.1", "*"));
  CHECK_FALSE(satisfies("1.0.0-rc.1", ""));
  CHECK_FALSE(satisfies("1.0.0-rc.1", ">=0.0.0"));
  CHECK_FALSE(satisfies("2.0.0-rc.1", "^1.0.0 || ^2.0.0"));
  CHECK(satisfies("2.0.0-rc.1", "^1.0.0 || ^2.0.0-rc.0"));
  // The opt-in applies per comparator set.
  CHECK_FALSE(satisfies("2.0.0-rc.1", "2.0.0-rc.0 || >=1.0.0 <3"));
  CHECK(satisfies("2.0.0-rc.1", "1.x || >=2.0.0-rc.0 <3"));
  // Precedence as in semver 2: numeric identifiers compare as numbers and
  // below alphanumeric ones; fewer fields rank lower.
  CHECK(satisfies("1.0.0-alpha.10", ">1.0.0-alpha.9"));
  CHECK(satisfies("1.0.0-alpha.beta", ">1.0.0-alpha.1"));
  CHECK(satisfies("1.0.0-alpha.1", ">1.0.0-alpha"));
  CHECK(satisfies("1.0.0-rc.1", ">1.0.0-beta.11"));
  CHECK(satisfies("1.0.0-rc.1", ">=1.0.0-beta <1.0.0"));
  CHECK_FALSE(satisfies("1.0.0-10", "<1.0.0-9"));
}

TEST_CASE("registry::satisfies refuses invalid ranges and versions") {
  // Specs that are not ranges.
  CHECK_FALSE(satisfies("1.0.0", "latest"));
  CHECK_FALSE(satisfies("1.0.0", "next"));
  CHECK_FALSE(satisfies("1.0.0", "git+https://github.com/npm/cli.git#v1.0.0"));
  CHECK_FALSE(satisfies("1.0.0", "github:npm/cli"));
  CHECK_FALSE(satisfies("1.0.0", "file:../pkg"));
  CHECK_FALSE(satisfies("1.0.0", "npm:lodash@^1.0.0"));
  CHECK_FALSE(satisfies("1.0.0", "https://example.com/pkg-1.0.0.tgz"));
  // Malformed ranges.
  CHECK_FALSE(satisfies("1.0.0", ">="));
  CHECK_FALSE(satisfies("1.0.0", "^"));
  CHECK_FALSE(satisfies("1.0.0", "~"));
  CHECK_FALSE(satisfies("1.0.0", "1.0.0.0"));
  CHECK_FALSE(satisfies("1.0.0", "01.0.0"));
  CHECK_FALSE(satisfies("1.0.0", "1.0.0 - "));
  CHECK_FALSE(satisfies("1.0.0", "1 | 2"));
  CHECK_FALSE(satisfies("1.0.0", "==1.0.0"));
  CHECK_FALSE(satisfies("1.0.0", "x.1"));
  CHECK_FALSE(satisfies("1.0.0", "1.x.0"));
  CHECK_FALSE(satisfies("1.0.0", ">=1.0.0 garbage"));
  CHECK_FALSE(satisfies("1.0.0", "^1.0.0 || garbage"));
  CHECK_FALSE(satisfies("1.0.0", "^9007199254740991.0.0"));
  // Invalid versions never satisfy.
  CHECK_FALSE(satisfies("", "*"));
  CHECK_FALSE(satisfies("1.0", "*"));
  CHECK_FALSE(satisfies("1.0.0.0", "*"));
  CHECK_FALSE(satisfies("01.0.0", "*"));
  CHECK_FALSE(satisfies("vv1.0.0", "*"));
  CHECK_FALSE(satisfies("=1.0.0", "*"));
  CHECK_FALSE(satisfies("1.0.0beta", "*"));
  CHECK_FALSE(satisfies(std::string(300, '1'), "*"));
}

TEST_CASE("registry::satisfies follows node-semver's odd corners") {
  // Each expectation was checked against node-semver 7.
  // A "*" alternative makes the whole range "*", which refuses prereleases.
  CHECK_FALSE(satisfies("1.2.3-beta", "1.2.3-beta || *"));
  CHECK(satisfies("1.2.3-beta", "1.2.3-beta || 2.x"));
  // ">=0.0.0", spelled so, is dropped as "*".
  CHECK(satisfies("0.0.0-alpha", ">=0.0.0 <=0.0.0-beta"));
  CHECK_FALSE(satisfies("0.0.0-alpha", ">=v0.0.0 <=0.0.0-beta"));
  // Build metadata is stripped before anything else, a first '*' dropped.
  CHECK(satisfies("1.2.0", "1.2+foo"));
  CHECK_FALSE(satisfies("1.0.0", "1.2+foo"));
  CHECK(satisfies("1.2.3", "1.2.3*"));
  // An operator joins the next word only where node-semver's scan reaches it.
  CHECK(satisfies("1.5.0", "^= 1.2.3"));
  CHECK(satisfies("1.2.5", "~= 1.2"));
  CHECK_FALSE(satisfies("1.5.0", "v= 1.x"));
  // Prereleases after an x are ignored, and may be beyond 2^53.
  CHECK(satisfies("1.2.3", "1.x - 2"));
  CHECK(satisfies("1.5.0", "1.2.x-99999999999999999999 - 2"));
}

TEST_CASE("registry::max_satisfying") {
  const std::vector<std::string> versions{"1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1", "1.9.0", "2.0.0", "0.9.0"};
  CHECK(max_satisfying(versions, "^1.0.0") == "1.10.0");
  CHECK(max_satisfying(versions, "~1.2.0") == "1.2.0");
  CHECK(max_satisfying(versions, "*") == "2.0.0");
  CHECK(max_satisfying(versions, "<2") == "1.10.0");
  CHECK(max_satisfying(versions, ">=2.0.0-rc.0 <2.0.0") == "2.0.0-rc.1");
  CHECK(max_satisfying(versions, "0.x || 1.2") == "1.2.0");
  CHECK(max_satisfying(versions, "^3") == std::nullopt);
  CHECK(max_satisfying(versions, "latest") == std::nullopt);
  CHECK(max_satisfying({}, "*") == std::nullopt);
  // Invalid entries are skipped; ties keep the first.
  CHECK(max_satisfying({"garbage", "1.0.0+a", "1.0.0+b"}, "1") == "1.0.0+a");
  // node-semver's classic cases.
  CHECK(max_satisfying({"1.2.3", "1.2.4"}, "1.2") == "1.2.4");
  CHECK(max_satisfying({"1.2.4", "1.2.3"}, "1.2") == "1.2.4");
  CHECK(max_satisfying({"1.2.3", "1.2.4", "1.2.5", "1.2.6"}, "~1.2.3") == "1.2.6");
  CHECK(max_satisfying({"1.1.0", "1.2.0", "1.2.1", "1.3.0", "2.0.0b1", "2.0.0b2", "2.0.0b3", "2.0.0", "2.1.0"},
                       "~2.0.0") == "2.0.0");
}

TEST_CASE("registry::pick_version prefers the latest tag") {
  const std::vector<std::string> versions{"1.0.0", "1.1.0", "2.0.0", "2.1.0", "3.0.0-beta.1"};
  std::map<std::string, std::string> tags{{"latest", "2.0.0"}, {"next", "3.0.0-beta.1"}};
  // latest wins when it satisfies the range, even over a newer match.
  CHECK(pick_version(versions, tags, "^2.0.0") == "2.0.0");
  CHECK(pick_version(versions, tags, ">=1") == "2.0.0");
  CHECK(pick_version(versions, tags, "") == "2.0.0");
  CHECK(pick_version(versions, tags, "*") == "2.0.0");
  CHECK(pick_version(versions, tags, "latest") == "2.0.0");
  // Otherwise the highest match.
  CHECK(pick_version(versions, tags, "^1.0.0") == "1.1.0");
  CHECK(pick_version(versions, tags, "2.1") == "2.1.0");
  CHECK(pick_version(versions, tags, "^4") == std::nullopt);
  // Dist-tag names.
  CHECK(pick_version(versions, tags, "next") == "3.0.0-beta.1");
  CHECK(pick_version(versions, tags, " next ") == "3.0.0-beta.1");
  CHECK(pick_version(versions, tags, "beta") == std::nullopt);
  CHECK(pick_version(versions, tags, "file:../x") == std::nullopt);
}

TEST_CASE("registry::pick_version without a usable latest tag") {
  const std::vector<std::string> versions{"1.0.0", "1.1.0", "2.0.0-rc.1"};
  CHECK(pick_version(versions, {}, "") == "1.1.0");
  CHECK(pick_version(versions, {}, "*") == "1.1.0");
  CHECK(pick_version(versions, {}, "latest") == std::nullopt);
  // A tag pointing at a version the package does not have is ignored.
  std::map<std::string, std::string> dangling{{"latest", "9.9.9"}, {"old", "0.1.0"}};
  CHECK(pick_version(versions, dangling, "*") == "1.1.0");
  CHECK(pick_version(versions, dangling, "old") == std::nullopt);
  // "" and "*" take a prerelease tagged latest; a range tests it.
  std::map<std::string, std::string> pre{{"latest", "2.0.0-rc.1"}};
  CHECK(pick_version(versions, pre, "") == "2.0.0-rc.1");
  CHECK(pick_version(versions, pre, "*") == "2.0.0-rc.1");
  CHECK(pick_version(versions, pre, "x") == "1.1.0");
  CHECK(pick_version(versions, pre, ">=2.0.0-rc.0") == "2.0.0-rc.1");
}
