#include "core/auth/auth.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace npme;

namespace {

struct TempStore {
  fs::path path;
  std::unique_ptr<store::Store> store;
  TempStore() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("npme-auth-test-" + std::to_string(rd()));
    auto opened = store::Store::open({path / "couchdb", path / "packages", path / "data"});
    REQUIRE(opened);
    store = std::move(*opened);
  }
  ~TempStore() {
    store.reset();
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

} // namespace

TEST_CASE("auth::Auth::check_password accepts the right password only") {
  TempStore t;
  auth::Auth a(*t.store);
  REQUIRE(a.add_user("alice", "s3cret-pass", "alice@example.com"));
  CHECK(a.check_password("alice", "s3cret-pass"));
  auto wrong = a.check_password("alice", "nope");
  REQUIRE(!wrong);
  CHECK(wrong.error().code == Errc::unauthorized);
  CHECK(!a.check_password("bob", "s3cret-pass"));

  auto twice = a.add_user("alice", "x");
  REQUIRE(!twice);
  CHECK(twice.error().code == Errc::conflict);
  CHECK(!a.add_user("Bad Name", "x"));
  CHECK(!a.add_user("carol", ""));

  // The stored document holds a salted hash, never the password.
  auto doc = t.store->get("_user:alice");
  REQUIRE(doc);
  REQUIRE(*doc);
  CHECK((*doc)->body.find("s3cret-pass") == std::string::npos);
}

TEST_CASE("auth::Auth::authenticate knows created tokens and forgets revoked ones") {
  TempStore t;
  auth::Auth a(*t.store);
  REQUIRE(a.add_user("alice", "pw-alice"));
  auto missing_user = a.create_token("bob", auth::Access::read_write);
  REQUIRE(!missing_user);
  CHECK(missing_user.error().code == Errc::not_found);

  auto rw = a.create_token("alice", auth::Access::read_write);
  auto ro = a.create_token("alice", auth::Access::read_only);
  REQUIRE(rw);
  REQUIRE(ro);
  CHECK(rw->token != ro->token);

  auto who = a.authenticate(rw->token);
  REQUIRE(who);
  CHECK(who->user == "alice");
  CHECK(who->access == auth::Access::read_write);
  CHECK(a.authenticate(ro->token)->access == auth::Access::read_only);
  CHECK(!a.authenticate("npme_not-a-token"));
  CHECK(!a.authenticate(""));

  // Only hashes are stored.
  auto doc = t.store->get("_token:" + rw->info.id);
  REQUIRE(doc);
  REQUIRE(*doc);
  CHECK((*doc)->body.find(rw->token) == std::string::npos);

  auto tokens = a.list_tokens();
  REQUIRE(tokens);
  CHECK(tokens->size() == 2);

  REQUIRE(a.revoke_token(rw->info.id));
  CHECK(!a.authenticate(rw->token));
  auto revoked_again = a.revoke_token(rw->info.id);
  REQUIRE_FALSE(revoked_again);
  CHECK(revoked_again.error().code == Errc::not_found);

  REQUIRE(a.revoke_token_value(ro->token));
  CHECK(!a.authenticate(ro->token));
}

TEST_CASE("auth::Auth::remove_user revokes the user's tokens") {
  TempStore t;
  auth::Auth a(*t.store);
  REQUIRE(a.add_user("alice", "pw-alice"));
  REQUIRE(a.add_user("bob", "pw-bob"));
  auto alice_token = a.create_token("alice", auth::Access::read_write);
  auto bob_token = a.create_token("bob", auth::Access::read_write);
  REQUIRE(alice_token);
  REQUIRE(bob_token);
  REQUIRE(a.remove_user("alice"));
  CHECK(!a.authenticate(alice_token->token));
  CHECK(a.authenticate(bob_token->token));
  CHECK(a.list_users()->size() == 1);
  auto removed_again = a.remove_user("alice");
  REQUIRE_FALSE(removed_again);
  CHECK(removed_again.error().code == Errc::not_found);
}

TEST_CASE("auth::Auth sees tokens written to the store by someone else") {
  // Replication writes token documents through the store, not through Auth.
  TempStore t;
  auth::Auth writer(*t.store);
  auth::Auth reader(*t.store);
  REQUIRE(writer.add_user("alice", "pw"));
  CHECK(!reader.authenticate("npme_x"));
  auto token = writer.create_token("alice", auth::Access::read_write);
  REQUIRE(token);
  CHECK(reader.authenticate(token->token));
}

TEST_CASE("auth::Auth::authenticate tells many tokens apart, however often each is sent") {
  // More tokens than the per-thread table of recent token hashes has slots,
  // sent in turn: every one must name its own user, a token differing from
  // a known one by its last character is refused, and a revoked token is
  // refused at once though its hash was just looked up.
  TempStore t;
  auth::Auth a(*t.store);
  std::vector<std::string> tokens;
  for (int i = 0; i < 40; ++i) {
    const std::string user = "user" + std::to_string(i);
    REQUIRE(a.add_user(user, "pw-" + user));
    auto made = a.create_token(user, auth::Access::read_only);
    REQUIRE(made);
    tokens.push_back(made->token);
  }
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      auto who = a.authenticate(tokens[i]);
      REQUIRE(who);
      CHECK(who->user == "user" + std::to_string(i));
      std::string near = tokens[i];
      near.back() = near.back() == 'a' ? 'b' : 'a';
      CHECK(!a.authenticate(near));
    }
  }
  REQUIRE(a.authenticate(tokens[7]));
  REQUIRE(a.revoke_token_value(tokens[7]));
  CHECK(!a.authenticate(tokens[7]));
  CHECK(a.authenticate(tokens[8])->user == "user8");
}
