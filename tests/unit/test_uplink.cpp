#include "core/registry/publish.hpp"
#include "core/uplink/packument.hpp"
#include "core/util/crypto.hpp"
#include "core/util/integrity.hpp"

#include <doctest/doctest.h>

using nlohmann::json;
using namespace npme;
using namespace npme::uplink;

namespace {

json uplink_packument() {
  return json::parse(R"({
    "_id": "left-pad", "_rev": "12-abc", "name": "left-pad",
    "dist-tags": {"latest": "1.3.0", "gone": "9.9.9"},
    "time": {"created": "2014-01-01T00:00:00.000Z", "modified": "2018-04-09T00:00:00.000Z", "1.3.0": "2018-04-09T00:00:00.000Z"},
    "_attachments": {},
    "versions": {
      "1.3.0": {"name": "left-pad", "version": "1.3.0", "_npmUser": {"name": "stevemao"},
                "dist": {"tarball": "https://registry.example.com/left-pad/-/left-pad-1.3.0.tgz",
                         "integrity": "sha512-xyz", "shasum": "abc", "signatures": [{"keyid": "k", "sig": "s"}]}},
      "not-semver": {"name": "left-pad", "version": "not-semver", "dist": {"tarball": "x"}},
      "2.0.0": {"name": "evil", "version": "2.0.0", "dist": {"tarball": "x"}}
    }
  })");
}

} // namespace

TEST_CASE("uplink::normalize_packument keeps the uplink's data and stores relative tarballs") {
  auto doc = normalize_packument(uplink_packument(), "left-pad", "https://registry.example.com",
                                 Validators{"\"etag-1\"", "Mon, 09 Apr 2018 00:00:00 GMT"}, "2026-12-02T00:00:00Z");
  REQUIRE(doc);
  CHECK(!doc->contains("_rev"));
  CHECK(!doc->contains("_attachments"));
  CHECK((*doc)["versions"].size() == 1); // invalid version and another package's manifest dropped
  const json& v = (*doc)["versions"]["1.3.0"];
  CHECK(v["dist"]["tarball"] == "left-pad/-/left-pad-1.3.0.tgz");
  CHECK(v["dist"]["integrity"] == "sha512-xyz");
  CHECK(v["dist"]["signatures"].size() == 1);
  CHECK(v["_npmUser"]["name"] == "stevemao");
  CHECK((*doc)["time"]["modified"] == "2018-04-09T00:00:00.000Z");
  CHECK((*doc)["dist-tags"] == json{{"latest", "1.3.0"}});
  const json& origin = (*doc)["_uplink"];
  CHECK(origin["etag"] == "\"etag-1\"");
  CHECK(origin["tarballs"]["1.3.0"] == "https://registry.example.com/left-pad/-/left-pad-1.3.0.tgz");
  // The digest ignores the fetch time: a refetch of the same content writes nothing.
  auto again = normalize_packument(uplink_packument(), "left-pad", "https://registry.example.com", {}, "2027-01-01T00:00:00Z");
  REQUIRE(again);
  CHECK((*again)["_uplink"]["digest"] == origin["digest"]);
}

TEST_CASE("uplink::normalize_packument refuses another package, garbage and unpublished packages") {
  auto other = normalize_packument(uplink_packument(), "right-pad", "https://r", {}, "now");
  REQUIRE(!other);
  CHECK(other.error().code == Errc::invalid);
  CHECK(other.error().message.find("left-pad") != std::string::npos);
  CHECK(!normalize_packument(json::array(), "x", "https://r", {}, "now"));
  CHECK(!normalize_packument(json{{"name", "x"}}, "x", "https://r", {}, "now"));
  auto unpublished = normalize_packument(json{{"name", "x"}, {"time", {{"unpublished", {}}}}}, "x", "https://r", {}, "now");
  REQUIRE(!unpublished);
  CHECK(unpublished.error().code == Errc::not_found);
}

TEST_CASE("uplink::tarball_source keeps the uplink's origin and never another host") {
  const std::string up = "https://npm.example.com/api/npm/remote";
  CHECK(*tarball_source(up, "https://npm.example.com/api/npm/remote/a/-/a-1.0.0.tgz", "a/-/a-1.0.0.tgz") ==
        "https://npm.example.com/api/npm/remote/a/-/a-1.0.0.tgz");
  CHECK(*tarball_source(up, "https://NPM.example.com:443/download/a/1.0.0", "a/-/a-1.0.0.tgz") ==
        "https://NPM.example.com:443/download/a/1.0.0");
  // Another host (or scheme): the uplink's canonical path instead.
  CHECK(*tarball_source(up, "https://evil.example.net/a/-/a-1.0.0.tgz", "a/-/a-1.0.0.tgz") ==
        up + "/a/-/a-1.0.0.tgz");
  CHECK(*tarball_source(up, "http://npm.example.com/a/-/a-1.0.0.tgz", "a/-/a-1.0.0.tgz") == up + "/a/-/a-1.0.0.tgz");
  CHECK(*tarball_source(up, "", "@s/a/-/a-1.0.0.tgz") == up + "/@s/a/-/a-1.0.0.tgz");
  for (const char* hostile : {"https://npm.example.com/a/../../etc/passwd", "https://npm.example.com/a/%2e%2e/x.tgz",
                              "https://npm.example.com/a/%252e%252e/x.tgz", "https://evil.example.net/../x"}) {
    auto refused = tarball_source(up, hostile, "a/-/a-1.0.0.tgz");
    REQUIRE(!refused);
    CHECK(refused.error().code == Errc::forbidden);
  }
}

TEST_CASE("uplink::PrivateNames matches scopes and globs") {
  PrivateNames names("@acme/*, @corp ,acme-*,exact");
  CHECK(names.matches("@acme/x"));
  CHECK(names.matches("@corp/y"));
  CHECK(names.matches("acme-tools"));
  CHECK(names.matches("exact"));
  CHECK(!names.matches("exactly"));
  CHECK(!names.matches("@acmex/y"));
  CHECK(!names.matches("left-pad"));
  CHECK(!PrivateNames("").matches("anything"));
}

TEST_CASE("uplink::package_path escapes the scope's slash as npm does") {
  CHECK(package_path("lodash") == "lodash");
  CHECK(package_path("@s/p") == "@s%2fp");
}

TEST_CASE("a dist.integrity with two sha512 entries passes publish and every follower alike") {
  const std::string tarball = "tarball bytes";
  const std::string integrity = util::sri_sha512("something else") + " " + util::sri_sha512(tarball);
  CHECK(registry::check_integrity(integrity, util::sha512(tarball)));
  CHECK(util::check_tarball("a@1.0.0", integrity, "", tarball));
}
