#pragma once
// Registry users and access tokens, kept as documents in the store so that
// they replicate with everything else: "_user:<name>" holds the salted
// password hash, "_token:<id>" the SHA-256 of the token (never the token).

#include "core/auth/policy.hpp"
#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace npme::auth {

enum class Access { read_only, read_write };

struct Identity {
  std::string user;
  std::string token_id;
  Access access = Access::read_write;
  std::int64_t expires = 0;      // seconds since the epoch; 0 = never
  std::vector<Cidr> ranges;      // client addresses it may be used from; empty = any

  // Why this token cannot be used now from `address` (check_token_use).
  Expected<void> usable_from(std::string_view address) const { return check_token_use(expires, ranges, address); }
};

// Limits a token is created with.
struct TokenLimits {
  std::optional<std::chrono::system_clock::time_point> expires; // none: never
  std::vector<Cidr> ranges;                                     // empty: from anywhere
};

struct UserInfo {
  std::string name;
  std::string email;
  std::string created;
};

struct TokenInfo {
  std::string id;
  std::string user;
  Access access = Access::read_write;
  std::string created;
  std::string token_prefix; // first characters of the token, to recognize it
  std::string expires;      // ISO 8601 UTC; empty = never
  std::vector<std::string> cidr; // allowed client ranges; empty = any
};

struct NewToken {
  TokenInfo info;
  std::string token; // shown once, never stored
};

// Checks a user name: 1-64 characters of [a-z0-9._-], starting alphanumeric.
Expected<void> validate_user_name(std::string_view name);

class Auth {
public:
  // Keeps a cache of token hashes that follows the store's changes.
  explicit Auth(store::Store& store);

  // Creates user `name`; Errc::conflict when it exists, Errc::invalid for a
  // bad name or an empty password.
  Expected<UserInfo> add_user(const std::string& name, const std::string& password,
                              const std::string& email = "");
  Expected<std::vector<UserInfo>> list_users() const;
  // Removes user `name` and revokes every token of theirs.
  Expected<void> remove_user(const std::string& name);
  // Errc::unauthorized when the user does not exist or the password is wrong.
  Expected<UserInfo> check_password(const std::string& name, const std::string& password) const;

  // Creates a token for existing user `user`; Errc::invalid for an expiry
  // that is not in the future.
  Expected<NewToken> create_token(const std::string& user, Access access, const TokenLimits& limits = {});
  Expected<std::vector<TokenInfo>> list_tokens() const;
  // Revokes token `id`; Errc::not_found when there is none.
  Expected<void> revoke_token(const std::string& id);
  // Revokes the token whose value is `token` (npm logout).
  Expected<void> revoke_token_value(const std::string& token);

  // Returns who `token` belongs to, or nullopt for an unknown or revoked token.
  // Fast: a hash and a lookup in memory. The caller checks the token's
  // limits (Identity::usable_from): an expired token is still identified.
  std::optional<Identity> authenticate(std::string_view token) const;

private:
  void reload_tokens() const;

  store::Store& m_store;
  mutable std::shared_mutex m_mutex;
  mutable std::atomic<bool> m_stale{true};
  mutable std::unordered_map<std::string, Identity> m_by_hash; // sha256 hex → identity
};

} // namespace npme::auth
