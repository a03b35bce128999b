// ha::elect: who may lead when the leader key is free (core/ha/ha.hpp), and
// the member record's JSON form, which members read from etcd and /-/ha.

#include "core/ha/ha.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using namespace npme;
using namespace npme::ha;

namespace {

Member replica(std::string instance, std::string of, std::int64_t position, bool synchronous = false) {
  Member member;
  member.instance = std::move(instance);
  member.url = "http://127.0.0.1:1/" + member.instance;
  member.role = "replica";
  member.position_of = std::move(of);
  member.position = position;
  member.synchronous = synchronous;
  return member;
}

std::string reason_for(const Election& election, const std::string& instance) {
  for (const auto& [who, why] : election.excluded) {
    if (who == instance) {
      return why;
    }
  }
  return "";
}

} // namespace

TEST_CASE("ha::elect: the most advanced member of the last leader's numbering leads") {
  const std::vector<Member> members = {replica("b", "old", 40), replica("a", "old", 42), replica("c", "old", 42)};
  const auto election = elect(members, "old", 42, 0, 5);
  CHECK(election.group == "old");
  CHECK(election.reference == 42);
  // Best position first; equal positions by instance id.
  REQUIRE(election.eligible == std::vector<std::string>{"a", "c", "b"});
  CHECK(election.excluded.empty());
}

TEST_CASE("ha::elect: a member lagging more than max_lag never leads, with the reason") {
  const std::vector<Member> members = {replica("a", "old", 10), replica("b", "old", 7)};
  auto election = elect(members, "old", 10, 0, 0);
  CHECK(election.eligible == std::vector<std::string>{"a"});
  CHECK(reason_for(election, "b").find("lags 3 changes") != std::string::npos);

  election = elect(members, "old", 10, 0, 3);
  CHECK(election.eligible == std::vector<std::string>{"a", "b"});
}

TEST_CASE("ha::elect: the leader's recorded position (optime) counts even when no member reached it") {
  // The leader wrote change 50 before it died; the only live replica has 45.
  const std::vector<Member> members = {replica("a", "old", 45)};
  auto election = elect(members, "old", 50, 0, 0);
  CHECK(election.reference == 50);
  CHECK(election.eligible.empty());
  CHECK(reason_for(election, "a").find("lags 5") != std::string::npos);

  // Within max_lag it may lead (the operator accepted that loss).
  election = elect(members, "old", 50, 0, 5);
  CHECK(election.eligible == std::vector<std::string>{"a"});

  // An optime of another numbering does not count.
  election = elect(members, "someone-else", 50, 0, 0);
  CHECK(election.reference == 45);
  CHECK(election.eligible == std::vector<std::string>{"a"});
}

TEST_CASE("ha::elect: what a member read from the leader key raises the reference") {
  Member behind = replica("a", "old", 45);
  Member saw = replica("b", "old", 44);
  saw.leader_seq_seen = 48;
  const auto election = elect({behind, saw}, "", 0, 0, 1);
  CHECK(election.reference == 48);
  CHECK(election.eligible.empty());
}

TEST_CASE("ha::elect: a member whose secret is refused never leads") {
  Member refused = replica("a", "old", 100);
  refused.secret_ok = false;
  const auto election = elect({refused, replica("b", "old", 100)}, "old", 100, 0, 0);
  CHECK(election.eligible == std::vector<std::string>{"b"});
  CHECK(reason_for(election, "a").find("secret") != std::string::npos);

  const auto alone = elect({refused}, "old", 100, 0, 0);
  CHECK(alone.eligible.empty());
}

TEST_CASE("ha::elect: members of another numbering are excluded") {
  const std::vector<Member> members = {replica("a", "old", 10), replica("b", "old", 10), replica("c", "stray", 99)};
  const auto election = elect(members, "old", 10, 0, 0);
  CHECK(election.group == "old");
  CHECK(election.eligible == std::vector<std::string>{"a", "b"});
  CHECK(reason_for(election, "c").find("follows stray") != std::string::npos);
}

TEST_CASE("ha::elect: with sync_replicas > 0, synchronous members go first") {
  const std::vector<Member> members = {replica("a", "old", 20, false), replica("b", "old", 20, true)};
  auto election = elect(members, "old", 20, 1, 0);
  CHECK(election.eligible == std::vector<std::string>{"b"});
  CHECK(reason_for(election, "a").find("not synchronous") != std::string::npos);

  // Without synchronous replication the flag does not matter.
  election = elect(members, "old", 20, 0, 0);
  CHECK(election.eligible == std::vector<std::string>{"a", "b"});

  // No synchronous member eligible: the asynchronous ones may lead.
  election = elect({replica("a", "old", 20, false)}, "old", 20, 1, 0);
  CHECK(election.eligible == std::vector<std::string>{"a"});
}

TEST_CASE("ha::elect: a fresh cluster (no positions yet) elects among all members") {
  Member a;
  a.instance = "a";
  Member b;
  b.instance = "b";
  const auto election = elect({b, a}, "", 0, 0, 0);
  CHECK(election.eligible == std::vector<std::string>{"a", "b"});
}

TEST_CASE("ha::Member round-trips through JSON, and bad documents give an empty member") {
  Member member = replica("a", "old", 7, true);
  member.admin_url = "http://127.0.0.1:2";
  member.epoch = 9;
  member.leader_seq_seen = 8;
  member.secret_ok = false;
  member.follower_state = "caught-up";
  const Member back = member_from_json(to_json(member));
  CHECK(back.instance == "a");
  CHECK(back.url == member.url);
  CHECK(back.admin_url == member.admin_url);
  CHECK(back.position_of == "old");
  CHECK(back.position == 7);
  CHECK(back.epoch == 9);
  CHECK(back.leader_seq_seen == 8);
  CHECK(back.synchronous);
  CHECK_FALSE(back.secret_ok);
  CHECK(back.follower_state == "caught-up");
  // Nothing secret in a record.
  CHECK(to_json(member).dump().find("secret\":\"") == std::string::npos);

  CHECK(member_from_json(nlohmann::json::parse("[1,2]")).instance.empty());
  CHECK(member_from_json(nlohmann::json::parse(R"({"instance": 5, "position": "x"})")).position == 0);
}

TEST_CASE("ha::loop_deadline: without failover the loop sleeps a second, never until a past round") {
  using std::chrono::milliseconds;
  const auto now = std::chrono::steady_clock::now();
  // The loop's next round stays where it was at the start while failover
  // is off: long past.
  const auto long_ago = now - std::chrono::hours(1);
  CHECK(loop_deadline(false, long_ago, now) == now + milliseconds(1000));
  CHECK(loop_deadline(false, now + milliseconds(10), now) == now + milliseconds(1000));
  // With failover on: the next round, or the next probe of the leader (250 ms).
  CHECK(loop_deadline(true, now + milliseconds(100), now) == now + milliseconds(100));
  CHECK(loop_deadline(true, now + milliseconds(2000), now) == now + milliseconds(250));
  CHECK(loop_deadline(true, long_ago, now) == long_ago);
}
