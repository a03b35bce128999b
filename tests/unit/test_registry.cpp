#include "core/registry/cache.hpp"
#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/registry/packument.hpp"
#include "core/registry/publish.hpp"
#include "core/registry/publish_body.hpp"
#include "core/registry/search.hpp"
#include "core/util/crypto.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <thread>

#include <string>

using nlohmann::json;
using namespace npme;
using namespace npme::registry;

namespace {

const std::string k_tarball = std::string("\x1f\x8b\x08\x00" "fake tarball bytes" "\x00\x01\x02", 25);

// A publish body as libnpmpublish builds it.
json publish_body(const std::string& name, const std::string& version, const std::string& tarball = k_tarball) {
  json manifest = {{"name", name},
                   {"version", version},
                   {"description", "a test package"},
                   {"scripts", {{"test", "true"}}},
                   {"dependencies", {{"left-pad", "^1.0.0"}}},
                   {"readme", "# " + name},
                   {"_id", name + "@" + version},
                   {"dist",
                    {{"integrity", util::sri_sha512(tarball)},
                     {"shasum", util::hex(util::sha1(tarball))},
                     {"tarball", "http://localhost:4873/" + name + "/-/" + name + "-" + version + ".tgz"}}}};
  json body = {{"_id", name},
               {"name", name},
               {"description", "a test package"},
               {"dist-tags", {{"latest", version}}},
               {"versions", {{version, manifest}}},
               {"access", nullptr},
               {"_attachments",
                {{name + "-" + version + ".tgz",
                  {{"content_type", "application/octet-stream"},
                   {"data", util::base64_encode(tarball)},
                   {"length", tarball.size()}}}}}};
  return body;
}

// The tarball the last parse_publish() below split out of its body.
std::string g_tarball;

// What the registry does with a PUT body: splits it (the tarball collected
// in g_tarball), then parses the rest.
Expected<PublishRequest> parse_publish(std::string_view url_name, const json& body) {
  g_tarball.clear();
  NPME_TRY_ASSIGN(auto put, split_body(body.dump(), [](std::string_view bytes) -> Expected<void> {
                    g_tarball.append(bytes);
                    return {};
                  }));
  return registry::parse_publish(url_name, put);
}

std::string error_of(const Expected<PublishRequest>& result) {
  return result ? std::string() : result.error().message;
}

} // namespace

TEST_CASE("registry::validate_package_name accepts names npm accepts for existing packages") {
  for (const char* name : {"lodash", "@scope/pkg", "JSONStream", "a.b", "x-y_z", "@Scope/Pkg", "a", "ab~c",
                           "it's", "(x)", "x*", "@s/_x", "node_modules2"}) {
    CHECK_MESSAGE(validate_package_name(name).has_value(), name);
  }
  CHECK(validate_package_name(std::string(214, 'a')).has_value());
}

TEST_CASE("registry::validate_package_name refuses names invalid even for old packages") {
  for (const char* name : {"", "../x", "@/x", ".x", "_x", "-x", "a b", " a", "a ", "%2e%2e", "@s/../x", "a/b", "@s/",
                           "@s/.x", "@.s/x", "@s/a/b", "node_modules", "Favicon.ico", "a\nb", "caf\xc3\xa9", "@",
                           "@s", "a?b", "a#b", "a%20b", "..", "."}) {
    auto result = validate_package_name(name);
    CHECK_MESSAGE(!result.has_value(), name);
    if (!result) {
      CHECK(result.error().code == Errc::invalid);
    }
  }
  CHECK_FALSE(validate_package_name(std::string(215, 'a')).has_value());
  auto dotted = validate_package_name("../x");
  REQUIRE_FALSE(dotted);
  CHECK(dotted.error().message.find("period") != std::string::npos);
}

TEST_CASE("registry::name_from_url_segment decodes escaped scopes and refuses encoded traversal") {
  CHECK(*name_from_url_segment("lodash") == "lodash");
  CHECK(*name_from_url_segment("@scope%2fpkg") == "@scope/pkg");
  CHECK(*name_from_url_segment("@scope%2Fpkg") == "@scope/pkg");
  CHECK_FALSE(name_from_url_segment("%2e%2e").has_value());
  CHECK_FALSE(name_from_url_segment("%2E%2E%2Fetc").has_value());
  CHECK_FALSE(name_from_url_segment("@scope%2f..").has_value());
  CHECK_FALSE(name_from_url_segment("@scope%2f%2e%2e").has_value());
  CHECK_FALSE(name_from_url_segment("a%zz").has_value());
  CHECK_FALSE(name_from_url_segment("%252e%252e").has_value());
  CHECK(*name_from_params("@scope", "pkg") == "@scope/pkg");
  CHECK_FALSE(name_from_params("scope", "pkg").has_value());
  CHECK_FALSE(name_from_params("@scope", "..").has_value());
  CHECK_FALSE(name_from_params("@", "pkg").has_value());
  CHECK(*name_from_param("@scope/pkg") == "@scope/pkg");
  CHECK_FALSE(name_from_param("..").has_value());
}

TEST_CASE("registry::validate_version accepts strict semver only") {
  for (const char* version : {"1.0.0", "0.0.0", "10.20.30", "1.0.0-beta.1", "1.0.0-0.3.7", "1.0.0-x-y.z",
                              "1.0.0+build.5", "1.0.0-rc.1+sha.abc"}) {
    CHECK_MESSAGE(validate_version(version).has_value(), version);
  }
  for (const char* version : {"", "v1.0.0", "1.0", "1", "01.0.0", "1.02.0", "1.0.0-", "1.0.0-01", "1.0.0+",
                              "1.0.0-a..b", "=1.0.0", "1.0.0 ", "1.0.0/../x", "a.b.c", "1.0.0-be ta",
                              "99999999999999999.0.0"}) {
    CHECK_MESSAGE(!validate_version(version).has_value(), version);
  }
  CHECK_FALSE(validate_version(std::string(300, '1')).has_value());
}

TEST_CASE("registry::compare_versions follows semver precedence") {
  CHECK(compare_versions("1.0.0", "2.0.0") < 0);
  CHECK(compare_versions("1.10.0", "1.9.0") > 0);
  CHECK(compare_versions("1.0.0-alpha", "1.0.0") < 0);
  CHECK(compare_versions("1.0.0-alpha", "1.0.0-alpha.1") < 0);
  CHECK(compare_versions("1.0.0-alpha.1", "1.0.0-alpha.beta") < 0);
  CHECK(compare_versions("1.0.0-beta.2", "1.0.0-beta.11") < 0);
  CHECK(compare_versions("1.0.0+a", "1.0.0+b") == 0);
}

TEST_CASE("registry::validate_dist_tag refuses versions, ranges and URL-unsafe tags") {
  for (const char* tag : {"latest", "next", "beta", "canary-2", "release_1", "v1beta", "x1"}) {
    CHECK_MESSAGE(validate_dist_tag(tag).has_value(), tag);
  }
  for (const char* tag : {"", "1.0.0", "1.2", "1", "v1", "^1.0.0", "~1.2", ">=1", "1.x", "*", "x", "1 - 2",
                          "1 || 2", "a b", "a/b", "t%2f", "caf\xc3\xa9"}) {
    CHECK_MESSAGE(!validate_dist_tag(tag).has_value(), tag);
  }
  CHECK(is_version_range(">= 1.2.3 < 2"));
  CHECK_FALSE(is_version_range("latest"));
}

TEST_CASE("registry::tarball paths follow the packages layout") {
  CHECK(tarball_rel_path("lodash", "4.17.21") == "lodash/-/lodash-4.17.21.tgz");
  CHECK(tarball_rel_path("@scope/pkg", "1.0.0") == "@scope/pkg/-/pkg-1.0.0.tgz");
  CHECK(tarball_file_name("@scope/pkg", "1.0.0") == "pkg-1.0.0.tgz");
  CHECK(*tarball_rel_path_for_file("@scope/pkg", "pkg-1.0.0.tgz") == "@scope/pkg/-/pkg-1.0.0.tgz");
  CHECK(*tarball_rel_path_for_file("a", "a-1.0.0-beta.1.tgz") == "a/-/a-1.0.0-beta.1.tgz");
  CHECK_FALSE(tarball_rel_path_for_file("a", "b-1.0.0.tgz").has_value());
  CHECK_FALSE(tarball_rel_path_for_file("a", "a-..%2f..tgz").has_value());
  CHECK_FALSE(tarball_rel_path_for_file("a", "a-1.0.0/../../x.tgz").has_value());
  CHECK_FALSE(tarball_rel_path_for_file("a", "a-.tgz").has_value());
  auto no_version = tarball_rel_path_for_file("a", "a-x.tgz");
  REQUIRE_FALSE(no_version);
  CHECK(no_version.error().code == Errc::not_found);
  CHECK(tarball_url("http://r.example:8080/", "@s/p/-/p-1.0.0.tgz") == "http://r.example:8080/@s/p/-/p-1.0.0.tgz");
  CHECK(tarball_url("http://r.example/npm", "a/-/a-1.0.0.tgz") == "http://r.example/npm/a/-/a-1.0.0.tgz");
  CHECK(tarball_url("http://r", "https://other/a.tgz") == "https://other/a.tgz");
}

TEST_CASE("registry::parse_publish accepts a body as npm sends it") {
  auto result = parse_publish("@scope/pkg", publish_body("@scope/pkg", "1.2.3"));
  REQUIRE_MESSAGE(result.has_value(), error_of(result));
  CHECK(result->name == "@scope/pkg");
  CHECK(result->version == "1.2.3");
  CHECK(g_tarball == k_tarball);
  CHECK(result->size == k_tarball.size());
  CHECK(result->integrity == util::sri_sha512(k_tarball));
  CHECK(result->shasum == util::hex(util::sha1(k_tarball)));
  CHECK(result->dist_tags == std::map<std::string, std::string>{{"latest", "1.2.3"}});
  CHECK(result->readme == "# @scope/pkg");

  // The unscoped attachment name of older clients, several SRI hashes and a
  // provenance attachment are accepted too.
  json body = publish_body("@scope/pkg", "1.2.3");
  json attachment = body["_attachments"]["@scope/pkg-1.2.3.tgz"];
  body["_attachments"].erase("@scope/pkg-1.2.3.tgz");
  body["_attachments"]["pkg-1.2.3.tgz"] = attachment;
  body["_attachments"]["@scope/pkg-1.2.3.sigstore"] = {{"data", "{}"}, {"length", 2}};
  body["versions"]["1.2.3"]["dist"]["integrity"] =
    "sha1-" + util::base64_encode(util::sha1(k_tarball)) + " " + util::sri_sha512(k_tarball);
  body.erase("dist-tags");
  auto second = parse_publish("@scope/pkg", body);
  REQUIRE_MESSAGE(second.has_value(), error_of(second));
  CHECK(second->dist_tags.at("latest") == "1.2.3");
}

TEST_CASE("registry::parse_publish refuses every mismatch with a clear message") {
  SUBCASE("length") {
    json body = publish_body("pkg", "1.0.0");
    body["_attachments"]["pkg-1.0.0.tgz"]["length"] = k_tarball.size() + 1;
    auto result = parse_publish("pkg", body);
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().code == Errc::invalid);
    CHECK(result.error().message.find("length mismatch") != std::string::npos);
  }
  SUBCASE("sha512") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.0"]["dist"]["integrity"] = util::sri_sha512("other bytes");
    auto result = parse_publish("pkg", body);
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().message.find("tarball integrity mismatch: dist.integrity says sha512-") == 0);
    CHECK(result.error().message.find("the attachment is " + util::sri_sha512(k_tarball)) != std::string::npos);
  }
  SUBCASE("sha1") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.0"]["dist"]["shasum"] = util::hex(util::sha1("other"));
    auto result = parse_publish("pkg", body);
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().message.find("shasum mismatch") != std::string::npos);
  }
  SUBCASE("integrity without sha512") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.0"]["dist"]["integrity"] = "sha1-" + util::base64_encode(util::sha1(k_tarball));
    CHECK(error_of(parse_publish("pkg", body)).find("no sha512") != std::string::npos);
  }
  SUBCASE("name against the URL") {
    CHECK(error_of(parse_publish("other", publish_body("pkg", "1.0.0"))).find("does not match the URL") !=
          std::string::npos);
  }
  SUBCASE("manifest name") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.0"]["name"] = "evil";
    CHECK(error_of(parse_publish("pkg", body)).find("manifest's name 'evil'") != std::string::npos);
  }
  SUBCASE("version key against the manifest") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.0"]["version"] = "1.0.1";
    CHECK(error_of(parse_publish("pkg", body)).find("does not match its key") != std::string::npos);
  }
  SUBCASE("invalid version") {
    json body = publish_body("pkg", "1.0");
    CHECK(error_of(parse_publish("pkg", body)).find("invalid version") != std::string::npos);
  }
  SUBCASE("malformed base64") {
    json body = publish_body("pkg", "1.0.0");
    body["_attachments"]["pkg-1.0.0.tgz"]["data"] = "not base64!!";
    CHECK(error_of(parse_publish("pkg", body)).find("not valid base64") != std::string::npos);
  }
  SUBCASE("two versions") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.1"] = body["versions"]["1.0.0"];
    CHECK(error_of(parse_publish("pkg", body)).find("exactly one version") != std::string::npos);
  }
  SUBCASE("attachment for another version") {
    json body = publish_body("pkg", "1.0.0");
    body["_attachments"] = publish_body("pkg", "2.0.0")["_attachments"];
    CHECK(error_of(parse_publish("pkg", body)).find("unexpected attachment") != std::string::npos);
  }
  SUBCASE("dist-tag at another version") {
    json body = publish_body("pkg", "1.0.0");
    body["dist-tags"] = {{"latest", "0.9.0"}};
    CHECK(error_of(parse_publish("pkg", body)).find("must point at the published version") != std::string::npos);
  }
  SUBCASE("dist-tag that is a range") {
    json body = publish_body("pkg", "1.0.0");
    body["dist-tags"] = {{"1.x", "1.0.0"}};
    CHECK_FALSE(parse_publish("pkg", body).has_value());
  }
  SUBCASE("not an object") {
    CHECK(error_of(parse_publish("pkg", json::array())).find("JSON object") != std::string::npos);
  }
  SUBCASE("wrong types never throw") {
    json body = publish_body("pkg", "1.0.0");
    body["versions"]["1.0.0"]["dist"] = "x";
    CHECK_FALSE(parse_publish("pkg", body).has_value());
    body = publish_body("pkg", "1.0.0");
    body["_attachments"]["pkg-1.0.0.tgz"]["length"] = "25";
    CHECK_FALSE(parse_publish("pkg", body).has_value());
    body["_attachments"] = json::array({1});
    CHECK_FALSE(parse_publish("pkg", body).has_value());
  }
}

TEST_CASE("registry::parse_json refuses deeply nested bodies") {
  CHECK(parse_json(R"({"a":[1,{"b":"[[[["}]})").has_value());
  CHECK_FALSE(parse_json(std::string(100000, '[') + std::string(100000, ']')).has_value());
  CHECK_FALSE(parse_json("{not json").has_value());
}

TEST_CASE("registry::merge_publish builds the stored document and refuses reused versions") {
  Publisher alice{"alice", "alice@example.com"};
  auto first = parse_publish("pkg", publish_body("pkg", "1.0.0"));
  REQUIRE(first.has_value());
  auto doc = merge_publish(std::nullopt, *first, alice, "2026-01-01T00:00:00.000Z");
  REQUIRE(doc.has_value());
  CHECK((*doc)["name"] == "pkg");
  CHECK((*doc)["dist-tags"]["latest"] == "1.0.0");
  CHECK((*doc)["versions"]["1.0.0"]["dist"]["tarball"] == "pkg/-/pkg-1.0.0.tgz");
  CHECK((*doc)["versions"]["1.0.0"]["_npmUser"]["name"] == "alice");
  CHECK_FALSE((*doc)["versions"]["1.0.0"].contains("readme"));
  CHECK((*doc)["readme"] == "# pkg");
  CHECK((*doc)["description"] == "a test package");
  CHECK((*doc)["time"]["created"] == "2026-01-01T00:00:00.000Z");
  CHECK((*doc)["time"]["1.0.0"] == "2026-01-01T00:00:00.000Z");
  CHECK((*doc)["maintainers"][0]["email"] == "alice@example.com");

  auto again = merge_publish(*doc, *first, alice, "2026-01-02T00:00:00.000Z");
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code == Errc::forbidden);
  CHECK(again.error().message == "cannot publish over the previously published version 1.0.0");

  json beta_body = publish_body("pkg", "2.0.0-beta.1");
  beta_body["dist-tags"] = {{"beta", "2.0.0-beta.1"}};
  auto beta = parse_publish("pkg", beta_body);
  REQUIRE(beta.has_value());
  auto with_beta = merge_publish(*doc, *beta, alice, "2026-01-03T00:00:00.000Z");
  REQUIRE(with_beta.has_value());
  CHECK((*with_beta)["dist-tags"]["latest"] == "1.0.0");
  CHECK((*with_beta)["dist-tags"]["beta"] == "2.0.0-beta.1");
  CHECK((*with_beta)["time"]["created"] == "2026-01-01T00:00:00.000Z");
  CHECK((*with_beta)["time"]["modified"] == "2026-01-03T00:00:00.000Z");

  // A version unpublished earlier keeps its time entry and stays refused.
  json unpublished = *doc;
  unpublished["versions"].erase("1.0.0");
  auto over_unpublished = merge_publish(unpublished, *first, alice, "x");
  REQUIRE_FALSE(over_unpublished);
  CHECK(over_unpublished.error().code == Errc::forbidden);
  auto over_tombstone = merge_publish(std::nullopt, *first, alice, "x", {"1.0.0"});
  REQUIRE_FALSE(over_tombstone);
  CHECK(over_tombstone.error().code == Errc::forbidden);
}

TEST_CASE("registry::apply_metadata_update deprecates, removes versions and refuses the rest") {
  Publisher alice{"alice", ""};
  auto v1 = parse_publish("pkg", publish_body("pkg", "1.0.0"));
  auto v2 = parse_publish("pkg", publish_body("pkg", "1.1.0"));
  REQUIRE((v1 && v2));
  json doc = *merge_publish(std::nullopt, *v1, alice, "t1");
  doc = *merge_publish(doc, *v2, alice, "t2");
  REQUIRE(doc["dist-tags"]["latest"] == "1.1.0");

  // What npm sends back: the served document with absolute tarball URLs.
  json served = json::parse(render_full(doc, "http://registry.example"));
  served["versions"]["1.0.0"]["deprecated"] = "use 1.1";
  auto deprecated = apply_metadata_update(doc, served, "t3");
  REQUIRE(deprecated.has_value());
  CHECK(deprecated->doc["versions"]["1.0.0"]["deprecated"] == "use 1.1");
  CHECK(deprecated->doc["versions"]["1.0.0"]["dist"]["tarball"] == "pkg/-/pkg-1.0.0.tgz");
  CHECK(deprecated->removed_files.empty());
  CHECK(deprecated->doc["time"]["modified"] == "t3");

  served["versions"]["1.0.0"]["deprecated"] = "";
  auto undeprecated = apply_metadata_update(deprecated->doc, served, "t4");
  REQUIRE(undeprecated.has_value());
  CHECK_FALSE(undeprecated->doc["versions"]["1.0.0"].contains("deprecated"));

  // npm unpublish pkg@1.1.0: drops the version and moves latest.
  json unpublish = json::parse(render_full(doc, "http://registry.example"));
  unpublish["versions"].erase("1.1.0");
  unpublish["dist-tags"] = {{"latest", "1.0.0"}};
  auto removed = apply_metadata_update(doc, unpublish, "t5");
  REQUIRE(removed.has_value());
  CHECK_FALSE(removed->doc["versions"].contains("1.1.0"));
  CHECK(removed->doc["time"].contains("1.1.0"));
  CHECK(removed->removed_files == std::vector<std::string>{"pkg/-/pkg-1.1.0.tgz"});
  CHECK(removed->doc["dist-tags"]["latest"] == "1.0.0");
  CHECK_FALSE(removed->removes_package);

  // Without dist-tags in the body, latest moves to the highest version left.
  json no_tags = unpublish;
  no_tags.erase("dist-tags");
  CHECK(apply_metadata_update(doc, no_tags, "t5")->doc["dist-tags"]["latest"] == "1.0.0");

  json added = served;
  added["versions"]["9.9.9"] = added["versions"]["1.0.0"];
  auto with_added = apply_metadata_update(doc, added, "t6");
  REQUIRE_FALSE(with_added);
  CHECK(with_added.error().code == Errc::invalid);

  json changed = served;
  changed["versions"]["1.0.0"]["dist"]["integrity"] = util::sri_sha512("evil");
  auto with_changed = apply_metadata_update(doc, changed, "t6");
  REQUIRE_FALSE(with_changed);
  CHECK(with_changed.error().message.find("dist.integrity") != std::string::npos);

  json bad_tag = served;
  bad_tag["dist-tags"]["next"] = "3.0.0";
  auto with_bad_tag = apply_metadata_update(doc, bad_tag, "t6");
  REQUIRE_FALSE(with_bad_tag);
  CHECK(with_bad_tag.error().code == Errc::invalid);

  json all_gone = served;
  all_gone["versions"] = json::object();
  all_gone.erase("dist-tags");
  auto emptied = apply_metadata_update(doc, all_gone, "t7");
  REQUIRE(emptied.has_value());
  CHECK(emptied->removes_package);
  CHECK(emptied->removed_files.size() == 2);

  auto not_object = apply_metadata_update(doc, json::array(), "t");
  REQUIRE_FALSE(not_object);
  CHECK(not_object.error().code == Errc::invalid);
  auto no_versions = apply_metadata_update(doc, {{"name", "pkg"}}, "t");
  REQUIRE_FALSE(no_versions);
  CHECK(no_versions.error().code == Errc::invalid);
}

TEST_CASE("registry::set_dist_tag and remove_dist_tag") {
  auto v1 = parse_publish("pkg", publish_body("pkg", "1.0.0"));
  json doc = *merge_publish(std::nullopt, *v1, Publisher{"a", ""}, "t1");
  auto tagged = set_dist_tag(doc, "next", "1.0.0", "t2");
  REQUIRE(tagged.has_value());
  CHECK((*tagged)["dist-tags"]["next"] == "1.0.0");
  auto unknown_version = set_dist_tag(doc, "next", "2.0.0", "t2");
  REQUIRE_FALSE(unknown_version);
  CHECK(unknown_version.error().code == Errc::not_found);
  auto semver_tag = set_dist_tag(doc, "1.0", "1.0.0", "t2");
  REQUIRE_FALSE(semver_tag);
  CHECK(semver_tag.error().code == Errc::invalid);
  auto latest_removed = remove_dist_tag(*tagged, "latest", "t3");
  REQUIRE_FALSE(latest_removed);
  CHECK(latest_removed.error().code == Errc::invalid);
  auto unknown_tag = remove_dist_tag(*tagged, "nope", "t3");
  REQUIRE_FALSE(unknown_tag);
  CHECK(unknown_tag.error().code == Errc::not_found);
  CHECK_FALSE((*remove_dist_tag(*tagged, "next", "t3"))["dist-tags"].contains("next"));
}

TEST_CASE("registry::render_abbreviated keeps only install fields") {
  json body = publish_body("@s/pkg", "1.0.0");
  json& manifest = body["versions"]["1.0.0"];
  manifest["scripts"]["postinstall"] = "node build.js";
  manifest["bin"] = {{"pkg", "cli.js"}};
  manifest["engines"] = {{"node", ">=18"}};
  manifest["peerDependenciesMeta"] = {{"x", {{"optional", true}}}};
  manifest["devDependencies"] = {{"jest", "*"}};
  manifest["os"] = {"linux"};
  manifest["author"] = "someone";
  manifest["repository"] = "git://x";
  auto request = parse_publish("@s/pkg", body);
  REQUIRE(request.has_value());
  json doc = *merge_publish(std::nullopt, *request, Publisher{"a", ""}, "2026-01-01T00:00:00.000Z");

  json abbreviated = json::parse(render_abbreviated(doc, "http://r.example/"));
  CHECK(abbreviated["name"] == "@s/pkg");
  CHECK(abbreviated["modified"] == "2026-01-01T00:00:00.000Z");
  CHECK(abbreviated["dist-tags"]["latest"] == "1.0.0");
  CHECK(abbreviated["time"] == json({{"created", "2026-01-01T00:00:00.000Z"},
                                     {"modified", "2026-01-01T00:00:00.000Z"},
                                     {"1.0.0", "2026-01-01T00:00:00.000Z"}}));
  CHECK_FALSE(abbreviated.contains("readme"));
  const json& version = abbreviated["versions"]["1.0.0"];
  CHECK(version["dist"]["tarball"] == "http://r.example/@s/pkg/-/pkg-1.0.0.tgz");
  CHECK(version["hasInstallScript"] == true);
  CHECK(version["bin"]["pkg"] == "cli.js");
  CHECK(version["engines"]["node"] == ">=18");
  CHECK(version["dependencies"]["left-pad"] == "^1.0.0");
  CHECK(version["devDependencies"]["jest"] == "*");
  CHECK(version["os"][0] == "linux");
  CHECK(version.contains("peerDependenciesMeta"));
  for (const char* dropped : {"scripts", "author", "repository", "description", "_npmUser", "maintainers", "_id"}) {
    CHECK_MESSAGE(!version.contains(dropped), dropped);
  }

  json retired = doc;
  retired["time"]["0.9.0"] = "2025-01-01T00:00:00.000Z"; // a version no longer in `versions`
  CHECK_FALSE(json::parse(render_abbreviated(retired, "http://r.example/"))["time"].contains("0.9.0"));
  json timeless = doc;
  timeless.erase("time");
  CHECK_FALSE(json::parse(render_abbreviated(timeless, "http://r.example/")).contains("time"));

  json plain = abbreviate_manifest({{"name", "x"}, {"version", "1.0.0"}, {"scripts", {{"test", "jest"}}}});
  CHECK_FALSE(plain.contains("hasInstallScript"));

  json full = json::parse(render_full(doc, "http://r.example"));
  CHECK(full["versions"]["1.0.0"]["dist"]["tarball"] == "http://r.example/@s/pkg/-/pkg-1.0.0.tgz");
  CHECK(full["versions"]["1.0.0"]["scripts"]["postinstall"] == "node build.js");
  CHECK(full["time"]["1.0.0"] == "2026-01-01T00:00:00.000Z");

  CHECK(json::parse(*render_version(doc, "latest", "http://r"))["version"] == "1.0.0");
  CHECK(json::parse(*render_version(doc, "1.0.0", "http://r"))["dist"]["tarball"] == "http://r/@s/pkg/-/pkg-1.0.0.tgz");
  auto missing_version = render_version(doc, "2.0.0", "http://r");
  REQUIRE_FALSE(missing_version);
  CHECK(missing_version.error().code == Errc::not_found);
}

TEST_CASE("registry::wants_abbreviated and etag_matches") {
  CHECK(wants_abbreviated("application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"));
  CHECK(wants_abbreviated("Application/Vnd.Npm.Install-v1+JSON"));
  CHECK_FALSE(wants_abbreviated("application/json"));
  CHECK_FALSE(wants_abbreviated(""));

  std::string etag = make_etag("body");
  CHECK(etag.size() == 42);
  CHECK(etag.front() == '"');
  CHECK(etag != make_etag("body2"));
  CHECK(etag_matches(etag, etag));
  CHECK(etag_matches("W/" + etag, etag));
  CHECK(etag_matches("\"other\", " + etag, etag));
  CHECK(etag_matches("\"other\",W/" + etag + " ", etag));
  CHECK(etag_matches("*", etag));
  CHECK_FALSE(etag_matches("\"other\"", etag));
  CHECK_FALSE(etag_matches("", etag));
}

TEST_CASE("registry::unpublished records retire every version") {
  auto v1 = parse_publish("pkg", publish_body("pkg", "1.0.0"));
  json doc = *merge_publish(std::nullopt, *v1, Publisher{"a", ""}, "t1");
  doc["time"]["0.9.0"] = "t0"; // unpublished earlier
  json record = make_unpublished_record(doc, json{{"versions", {"0.1.0"}}}, "t2");
  CHECK(retired_versions(record) == std::set<std::string>{"0.1.0", "0.9.0", "1.0.0"});
  CHECK(unpublished_record_id("@s/p") == "_unpublished:@s/p");
  CHECK(tarball_paths(doc) == std::vector<std::string>{"pkg/-/pkg-1.0.0.tgz"});
}

TEST_CASE("registry::ResponseCache evicts, invalidates per package and drops stale puts") {
  ResponseCache cache(4096, 1024);
  auto body = [](std::size_t n) { return std::make_shared<const std::string>(n, 'x'); };
  cache.put(ResponseCache::key("@s/a", "full"), {body(600), "\"1\"", "", nullptr}, cache.generation());
  cache.put(ResponseCache::key("@s/ab", "full"), {body(600), "\"2\"", "", nullptr}, cache.generation());
  CHECK(cache.get(ResponseCache::key("@s/a", "full"))->etag == "\"1\"");
  cache.invalidate("@s/a");
  CHECK_FALSE(cache.get(ResponseCache::key("@s/a", "full")).has_value());
  CHECK(cache.get(ResponseCache::key("@s/ab", "full")).has_value());

  // A body read before an invalidation is not stored after it.
  auto generation = cache.generation();
  cache.invalidate("other");
  cache.put(ResponseCache::key("@s/a", "full"), {body(10), "\"3\"", "", nullptr}, generation);
  CHECK_FALSE(cache.get(ResponseCache::key("@s/a", "full")).has_value());

  // Too large for one entry.
  cache.put("big\nx", {body(2000), "", "", nullptr}, cache.generation());
  CHECK_FALSE(cache.get("big\nx").has_value());

  // Least recently used goes first.
  for (int i = 0; i < 10; ++i) {
    cache.put("p" + std::to_string(i) + "\nfull", {body(900), "", "", nullptr}, cache.generation());
  }
  CHECK(cache.size_bytes() <= 4096);
  CHECK(cache.get("p9\nfull").has_value());
  CHECK_FALSE(cache.get("p0\nfull").has_value());
}

TEST_CASE("registry::ResponseCache serves a file's bytes without a look at the file only while confirmed") {
  using namespace std::chrono_literals;
  ResponseCache cache(4096, 1024);
  auto body = std::make_shared<const std::string>("tgz");
  const FileStamp stamp{1, 2, 3, 4, 5};
  cache.put("a\ntgz:a-1.0.0.tgz", {body, "\"t\"", "", nullptr}, cache.generation(), stamp);
  cache.put("a\nfull", {body, "\"f\"", "", nullptr}, cache.generation());
  CHECK(cache.get_confirmed("a\ntgz:a-1.0.0.tgz", 1s).has_value());
  CHECK_FALSE(cache.get_confirmed("a\nfull", 1s).has_value()); // not read from a file
  CHECK_FALSE(cache.get_confirmed("a\nmissing", 1s).has_value());
  std::this_thread::sleep_for(20ms);
  CHECK_FALSE(cache.get_confirmed("a\ntgz:a-1.0.0.tgz", 10ms).has_value()); // due for a look
  CHECK(cache.get_file("a\ntgz:a-1.0.0.tgz", stamp).has_value());          // the look: unchanged
  CHECK(cache.get_confirmed("a\ntgz:a-1.0.0.tgz", 10ms).has_value());
  FileStamp replaced = stamp;
  replaced.inode = 9;
  CHECK_FALSE(cache.get_file("a\ntgz:a-1.0.0.tgz", replaced).has_value()); // replaced: dropped
  CHECK_FALSE(cache.get_confirmed("a\ntgz:a-1.0.0.tgz", 1s).has_value());
}

TEST_CASE("registry::search_packages matches name, keywords and description") {
  std::vector<json> docs{
    {{"name", "left-pad"}, {"description", "String left pad"}, {"keywords", {"pad", "string"}},
     {"dist-tags", {{"latest", "1.0.0"}}}, {"time", {{"1.0.0", "t1"}}},
     {"maintainers", {{{"name", "alice"}, {"email", "a@x"}}}},
     {"versions", {{"1.0.0", {{"_npmUser", {{"name", "alice"}}}}}}}},
    {{"name", "@s/pad-utils"}, {"description", "helpers"}, {"dist-tags", {{"latest", "2.0.0"}}}},
    {{"name", "other"}, {"description", "Pads things"}, {"keywords", "misc"}},
  };
  json result = search_packages(docs, {"PAD", 20, 0}, "now");
  REQUIRE(result["total"] == 3);
  // left-pad matches in name, keywords and description; other only in its
  // description.
  CHECK(result["objects"][0]["package"]["name"] == "left-pad");
  CHECK(result["objects"][0]["package"]["publisher"]["username"] == "alice");
  CHECK(result["objects"][0]["package"]["date"] == "t1");
  CHECK(result["objects"][0]["package"]["scope"] == "unscoped");
  CHECK(result["objects"][1]["package"]["name"] == "@s/pad-utils");
  CHECK(result["objects"][1]["package"]["scope"] == "s");
  CHECK(result["objects"][2]["package"]["name"] == "other");
  CHECK(result["objects"][0]["score"]["final"] == 1.0);
  CHECK(result["objects"][2]["searchScore"] < result["objects"][1]["searchScore"]);
  CHECK(result["time"] == "now");
  CHECK(search_packages(docs, {"pad-utils", 20, 0}, "now")["objects"][0]["package"]["name"] == "@s/pad-utils");

  CHECK(search_packages(docs, {"pad string", 20, 0}, "now")["total"] == 1);
  CHECK(search_packages(docs, {"keywords:pad", 20, 0}, "now")["total"] == 1);
  CHECK(search_packages(docs, {"scope:s", 20, 0}, "now")["objects"][0]["package"]["name"] == "@s/pad-utils");
  CHECK(search_packages(docs, {"maintainer:alice", 20, 0}, "now")["total"] == 1);
  json paged = search_packages(docs, {"pad", 1, 1}, "now");
  CHECK(paged["total"] == 3);
  CHECK(paged["objects"].size() == 1);
  CHECK(search_packages(docs, {"nothing-matches", 20, 0}, "now")["total"] == 0);
}
