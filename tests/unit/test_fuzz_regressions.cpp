// Inputs that crashed, or broke an invariant of, a fuzz target
// (tests/fuzz/README.md, "Findings"): each is checked here against the fixed
// code, through the same entry point the target calls, with its bytes as
// the fuzzer wrote them.

#include "core/replication/follower.hpp"
#include "core/replication/prepare.hpp"
#include "core/settings/settings.hpp"
#include "core/snapshot/snapshot.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

using namespace npme;

namespace {

using test::TempDir;

} // namespace

// F1 (fuzz_snapshot_manifest): "format" of another type than string made
// nlohmann's value() throw out of Manifest::from_json, which verify,
// restore, inspect and list call on any file: an uncaught exception.
TEST_CASE("snapshot::Manifest::from_json refuses a format that is not a string (fuzz F1)") {
  const std::string_view input =
    R"({"compression":"zstd","format":{"packages":2,"tarball_bytes":1132,"tarballs":3,"versions":3},"created":"2026-1null2-03T09:09:00.439Z","for(at":"npme-snapshot","format_veinstor(at":"npme-snapshot","format_versiol":2,"instance_id":"cbdc7389b25","instan++++_seq":9})"
    "\n";
  auto manifest = snapshot::Manifest::from_json(input);
  REQUIRE(!manifest);
  CHECK(manifest.error().code == Errc::verify);
  CHECK(manifest.error().message == "invalid snapshot.json: not an npme snapshot manifest");
}

// F2 (fuzz_settings): a size whose bytes overflow 64 bits was accepted and
// parse_size() wrapped it (8198552921648689606G gives a small number; 2^34 G
// gives 0): storage.min_free, or registry.max_body (every publish 413).
TEST_CASE("settings::parse_file refuses a size whose bytes do not fit in 64 bits (fuzz F2)") {
  TempDir dir;
  const auto layout = settings::Layout::from_root(dir.path);
  const std::string input =
    "{\n"
    "  \"registry.url\": \"https://npm.example.com\",\n"
    "  \"registry.listen\": \"5.0.0.0:8080\",\n"
    "  \"registry.max_body\": \"64M\",\n"
    "  \"admin.listen\": \"127.0.0.1:8800\",\n"
    "  \"admin.token\": \"fuzz-admrehRRRRRRRRRRRR\xdb\x97RRx_\xdb\x97RRRRRRRRRs/\",\n"
    "  \"storage.min_free\": "
    "\"0000000000000000000000000000000000000000000000000000000000000000000008198552921648689606G\"\n"
    "}\n";
  auto parsed = settings::parse_file(layout, input);
  REQUIRE(!parsed);
  CHECK(parsed.error().code == Errc::invalid);
  CHECK(parsed.error().message.find("storage.min_free: expected a size such as 512K, 64M or 1G") != std::string::npos);

  // The largest sizes that fit are still accepted, and parse to themselves.
  const auto* key = settings::find_key("registry.max_body");
  REQUIRE(key != nullptr);
  CHECK(settings::validate(*key, "17179869183G"));
  CHECK(settings::parse_size("17179869183G") == 17179869183ULL << 30);
  CHECK(!settings::validate(*key, "17179869184G"));
  CHECK(!settings::validate(*key, "17592186044416M"));
  CHECK(settings::validate(*key, "18446744073709551615"));
}

// R1-R3: found while exposing the follower's parsers to fuzz_follower (the
// parsing used to be inline in Follower::run() and read_document()). An
// upstream's member of an unexpected type made nlohmann's value() throw on
// the follower's thread or a prefetch thread: `npme serve` terminated.
TEST_CASE("replication::parse_feed_answer refuses positions and entries of the wrong type (R1)") {
  // The old code threw on each of these.
  auto string_seq = replication::parse_feed_answer(R"({"results":[],"update_seq":"7"})", 0);
  REQUIRE(!string_seq);
  CHECK(string_seq.error().code == Errc::invalid);
  CHECK(!replication::parse_feed_answer(R"({"results":[],"last_seq":1e300})", 0));

  auto answer = replication::parse_feed_answer(
    R"({"results":[{"seq":1,"id":"a","changes":[{"rev":7}],"time":5},{"seq":2,"id":"b","deleted":"yes"},)"
    R"({"seq":3,"id":"c"}],"last_seq":3})",
    0);
  REQUIRE(answer);
  CHECK(answer->update_seq == 3);
  CHECK(answer->entries == 3);
  // The entry before the malformed one is applied; the rest waits for a retry.
  REQUIRE(answer->changes.size() == 1);
  CHECK(answer->changes[0].id == "a");
  CHECK(answer->changes[0].rev.empty());
  CHECK(answer->changes[0].time.empty());
  CHECK(answer->problem == "upstream sent a malformed changes feed (bad entry after seq 1)");

  // Sequence numbers must increase past `since`.
  auto stale = replication::parse_feed_answer(R"({"results":[{"seq":4,"id":"a"}]})", 4);
  REQUIRE(stale);
  CHECK(stale->changes.empty());
  CHECK(stale->update_seq == 4);
  CHECK(stale->problem == "upstream sent a malformed changes feed (bad entry after seq 4)");
}

TEST_CASE("replication::parse_upstream_root refuses an epoch or instance of the wrong type (R2)") {
  CHECK(!replication::parse_upstream_root(R"({"update_seq":1,"instance":"x","epoch":"1"})"));
  CHECK(!replication::parse_upstream_root(R"({"update_seq":1,"instance":7,"epoch":1})"));
  CHECK(!replication::parse_upstream_root(R"({"update_seq":1.5,"instance":"x","epoch":1})"));
  auto root = replication::parse_upstream_root(R"({"db_name":"registry","update_seq":7,"instance":"x","epoch":2})");
  REQUIRE(root);
  CHECK(root->update_seq == 7);
  CHECK(root->instance == "x");
  CHECK(root->epoch == 2);
}

TEST_CASE("replication::parse_upstream_document refuses an _id, _rev or dist.tarball of the wrong type (R3)") {
  CHECK(!replication::parse_upstream_document("a", R"({"_id":5})"));
  CHECK(!replication::parse_upstream_document("a", R"({"_id":"a","_rev":3})"));
  auto tarball = replication::parse_upstream_document(
    "a", R"({"_id":"a","_rev":"1-x","versions":{"1.0.0":{"dist":{"tarball":1,"integrity":"sha512-x"}}}})");
  REQUIRE(!tarball);
  CHECK(tarball.error().message == "upstream document 'a' version 1.0.0: dist.tarball is not a relative path");
  // Integrity and shasum of another type are absent: the tarball cannot be verified, later.
  auto document = replication::parse_upstream_document(
    "a",
    R"({"_id":"a","_rev":"1-x","_uplink":{},"versions":{"1.0.0":{"dist":{"tarball":"a/-/a-1.0.0.tgz","shasum":{}}}}})");
  REQUIRE(document);
  CHECK(document->rev == "1-x");
  CHECK(document->uplink_copy);
  REQUIRE(document->tarballs.size() == 1);
  CHECK(document->tarballs[0].path == "a/-/a-1.0.0.tgz");
  CHECK(document->tarballs[0].shasum.empty());
  // Users and tokens name no tarballs.
  auto user = replication::parse_upstream_document("_user:a", R"({"_id":"_user:a","versions":7})");
  REQUIRE(user);
  CHECK(user->tarballs.empty());
}

// R4: found with fuzz_snapshot_manifest's UBSan build by hand, once F1 was
// seen: get<int>() and get<std::int64_t>() cast a JSON float, and a cast out
// of range is undefined behaviour (UBSan: "1e+300 is outside the range of
// representable values of type 'int'"), not an exception from_json catches.
TEST_CASE("snapshot::Manifest::from_json refuses numbers that are not integers (R4)") {
  auto version = snapshot::Manifest::from_json(R"({"format":"npme-snapshot","format_version":1e300})");
  REQUIRE(!version);
  CHECK(version.error().code == Errc::verify);
  CHECK(version.error().message.find("expected an integer, got number") != std::string::npos);

  const std::string base = R"({"format":"npme-snapshot","format_version":1,"npme_version":"x","created":"x",)"
                           R"("instance_id":"","role":"primary","sequence":null,)";
  const std::string counts = R"("counts":{"packages":0,"versions":0,"tarballs":0,"tarball_bytes":0})";
  CHECK(!snapshot::Manifest::from_json(base + R"("update_seq":1e300,)" + counts + "}"));
  CHECK(!snapshot::Manifest::from_json(base + R"("update_seq":1.0,)" + counts + "}"));
  auto sound = snapshot::Manifest::from_json(base + R"("update_seq":7,)" + counts +
                                             R"(,"reported_state":{"update_seq":1e300,"epoch":"2"}})");
  REQUIRE(sound);
  CHECK(sound->update_seq == 7);
  // The informational state keeps what it can.
  REQUIRE(sound->reported);
  CHECK(sound->reported->update_seq == 0);
  CHECK(sound->reported->epoch == 0);
}
