#include "core/auth/auth.hpp"

#include "core/util/crypto.hpp"
#include "core/util/time.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <functional>

namespace npme::auth {

namespace {

using nlohmann::json;

constexpr std::string_view k_user_prefix = "_user:";
constexpr std::string_view k_token_prefix = "_token:";
constexpr std::size_t k_token_random_chars = 40;
constexpr std::size_t k_shown_prefix_chars = 9; // "npme_" + 4

json parse_body(const store::Document& doc) {
  auto body = json::parse(doc.body, nullptr, false);
  return body.is_object() ? body : json::object();
}

UserInfo user_from(const json& body) {
  return UserInfo{body.value("name", ""), body.value("email", ""), body.value("created", "")};
}

TokenInfo token_from(const json& body) {
  TokenInfo info{body.value("id", ""), body.value("user", ""),
                 body.value("read_only", false) ? Access::read_only : Access::read_write,
                 body.value("created", ""), body.value("prefix", ""), body.value("expires", ""), {}};
  if (auto it = body.find("cidr"); it != body.end() && it->is_array()) {
    for (const auto& range : *it) {
      if (range.is_string()) {
        info.cidr.push_back(range.get<std::string>());
      }
    }
  }
  return info;
}

// The identity a token document grants. Limits that do not parse (written
// by hand, or by a newer npme) make the token unusable rather than
// unlimited: an expiry that is not a time expires it, a bad range matches
// no address.
Identity identity_from(const TokenInfo& info) {
  Identity identity{info.user, info.id, info.access, 0, {}};
  if (!info.expires.empty()) {
    auto at = util::parse_iso8601(info.expires);
    identity.expires = at ? std::chrono::system_clock::to_time_t(*at) : 1;
  }
  for (const auto& text : info.cidr) {
    auto range = util::parse_cidr(text);
    if (range) {
      identity.ranges.push_back(std::move(*range));
    } else {
      Cidr none; // the empty /128 of an address no peer has
      none.prefix = 128;
      none.address.fill(0xff);
      none.text = text + " (invalid)";
      identity.ranges.push_back(std::move(none));
    }
  }
  return identity;
}

std::string token_hash(std::string_view token) {
  return util::hex(util::sha256(token));
}

// token_hash() of the tokens this thread saw last. A token's hash never
// changes and an install sends the same token on every request: hashing it
// each time was ~4 % of the server's CPU for an `npm ci` in `perf`. The table
// maps a token to its hash only: whether the hash names a live token is still
// decided by the token table on every call. A slot is matched by comparing
// the whole token in constant time, so its timing tells nothing about a
// token another client sent.
const std::string& memo_token_hash(std::string_view token) {
  struct Slot {
    std::string token;
    std::string hash;
  };
  constexpr std::size_t k_slots = 16;
  thread_local std::array<Slot, k_slots> slots;
  Slot& slot = slots[std::hash<std::string_view>{}(token) % k_slots];
  if (slot.hash.empty() || !util::constant_time_equal(slot.token, token)) {
    slot.token.assign(token);
    slot.hash = token_hash(token);
  }
  return slot.hash;
}

Expected<store::Document> remove_doc(store::Store& store, const std::string& id) {
  return store.apply(id, [](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::remove;
    return write;
  });
}

} // namespace

Expected<void> validate_user_name(std::string_view name) {
  auto ok_char = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  };
  if (name.empty() || name.size() > 64 || !std::all_of(name.begin(), name.end(), ok_char) ||
      !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9'))) {
    return make_error(Errc::invalid, "invalid user name '" + std::string(name) +
                                       "': use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a "
                                       "letter or digit");
  }
  return {};
}

Auth::Auth(store::Store& store) : m_store(store) {
  m_store.on_change([this](const store::Change& change) {
    if (change.id.starts_with(k_token_prefix) || change.id.starts_with(k_user_prefix)) {
      m_stale = true;
    }
  });
}

Expected<UserInfo> Auth::add_user(const std::string& name, const std::string& password, const std::string& email) {
  NPME_TRY(validate_user_name(name));
  if (password.empty()) {
    return make_error(Errc::invalid, "user '" + name + "': the password is empty");
  }
  // Hash outside the store's write lock: scrypt is deliberately slow.
  json body = {{"name", name},
               {"email", email},
               {"password", util::hash_password(password)},
               {"created", util::iso8601()}};
  auto written = m_store.apply(std::string(k_user_prefix) + name,
                               [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
                                 if (current) {
                                   return make_error(Errc::conflict, "user '" + name + "' already exists");
                                 }
                                 return store::Write{store::Write::Kind::put, body.dump(), {}, {}, {}, {}, {}};
                               });
  NPME_TRY(written);
  return user_from(body);
}

Expected<std::vector<UserInfo>> Auth::list_users() const {
  NPME_TRY_ASSIGN(auto docs, m_store.list(k_user_prefix));
  std::vector<UserInfo> users;
  for (const auto& doc : docs) {
    users.push_back(user_from(parse_body(doc)));
  }
  return users;
}

Expected<void> Auth::remove_user(const std::string& name) {
  NPME_TRY(validate_user_name(name));
  NPME_TRY_ASSIGN(auto existing, m_store.get(std::string(k_user_prefix) + name));
  if (!existing) {
    return make_error(Errc::not_found, "user '" + name + "' does not exist");
  }
  // Tokens go first: a crash in between leaves a user with fewer tokens,
  // never a token of a user that no longer exists.
  NPME_TRY_ASSIGN(auto tokens, list_tokens());
  for (const auto& token : tokens) {
    if (token.user == name) {
      auto removed = remove_doc(m_store, std::string(k_token_prefix) + token.id);
      if (!removed && removed.error().code != Errc::not_found) {
        return util::Unexpected<Error>{removed.error()};
      }
    }
  }
  auto removed = remove_doc(m_store, std::string(k_user_prefix) + name);
  if (!removed) {
    if (removed.error().code == Errc::not_found) {
      return make_error(Errc::not_found, "user '" + name + "' does not exist");
    }
    return util::Unexpected<Error>{removed.error()};
  }
  return {};
}

Expected<UserInfo> Auth::check_password(const std::string& name, const std::string& password) const {
  auto refused = [] { return make_error(Errc::unauthorized, "incorrect user name or password"); };
  if (!validate_user_name(name)) {
    return refused();
  }
  NPME_TRY_ASSIGN(auto doc, m_store.get(std::string(k_user_prefix) + name));
  if (!doc) {
    // Spend the same time as for a wrong password so that names can't be
    // probed (one hash, made once, checked like a stored one).
    static const std::string k_no_such_user = util::hash_password("npme-no-such-user");
    util::verify_password(password, k_no_such_user);
    return refused();
  }
  auto body = parse_body(*doc);
  if (!util::verify_password(password, body.value("password", ""))) {
    return refused();
  }
  return user_from(body);
}

Expected<NewToken> Auth::create_token(const std::string& user, Access access, const TokenLimits& limits) {
  NPME_TRY(validate_user_name(user));
  if (limits.expires && *limits.expires <= std::chrono::system_clock::now()) {
    return make_error(Errc::invalid, "the token's expiry " + util::iso8601(*limits.expires) + " is not in the future");
  }
  NPME_TRY_ASSIGN(auto user_doc, m_store.get(std::string(k_user_prefix) + user));
  if (!user_doc) {
    return make_error(Errc::not_found, "user '" + user + "' does not exist");
  }
  NewToken made;
  made.token = "npme_" + util::random_token(k_token_random_chars);
  made.info = TokenInfo{util::hex(util::random_bytes(6)), user, access, util::iso8601(),
                        made.token.substr(0, k_shown_prefix_chars), {}, {}};
  json body = {{"id", made.info.id},
               {"user", user},
               {"hash", token_hash(made.token)},
               {"read_only", access == Access::read_only},
               {"created", made.info.created},
               {"prefix", made.info.token_prefix}};
  // Limits live in the token's document, so they replicate with it.
  if (limits.expires) {
    // Whole seconds, as the check compares them: the token stops working at
    // the very time `token list` shows.
    made.info.expires = util::iso8601(std::chrono::ceil<std::chrono::seconds>(*limits.expires));
    body["expires"] = made.info.expires;
  }
  if (!limits.ranges.empty()) {
    for (const auto& range : limits.ranges) {
      made.info.cidr.push_back(range.text);
    }
    body["cidr"] = made.info.cidr;
  }
  auto written = m_store.apply(std::string(k_token_prefix) + made.info.id,
                               [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
                                 if (current) {
                                   return make_error(Errc::conflict, "token id collision, try again");
                                 }
                                 return store::Write{store::Write::Kind::put, body.dump(), {}, {}, {}, {}, {}};
                               });
  NPME_TRY(written);
  return made;
}

Expected<std::vector<TokenInfo>> Auth::list_tokens() const {
  NPME_TRY_ASSIGN(auto docs, m_store.list(k_token_prefix));
  std::vector<TokenInfo> tokens;
  for (const auto& doc : docs) {
    tokens.push_back(token_from(parse_body(doc)));
  }
  return tokens;
}

Expected<void> Auth::revoke_token(const std::string& id) {
  auto ok_char = [](char c) { return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9'); };
  if (id.empty() || id.size() > 64 || !std::all_of(id.begin(), id.end(), ok_char)) {
    return make_error(Errc::not_found, "token '" + id + "' does not exist");
  }
  auto removed = remove_doc(m_store, std::string(k_token_prefix) + id);
  if (!removed) {
    if (removed.error().code == Errc::not_found) {
      return make_error(Errc::not_found, "token '" + id + "' does not exist");
    }
    return util::Unexpected<Error>{removed.error()};
  }
  return {};
}

Expected<void> Auth::revoke_token_value(const std::string& token) {
  auto identity = authenticate(token);
  if (!identity) {
    return make_error(Errc::not_found, "token does not exist");
  }
  return revoke_token(identity->token_id);
}

void Auth::reload_tokens() const {
  std::unique_lock lock(m_mutex);
  if (!m_stale.exchange(false)) {
    return;
  }
  auto docs = m_store.list(k_token_prefix);
  if (!docs) {
    m_stale = true; // try again on the next request
    return;
  }
  std::unordered_map<std::string, Identity> by_hash;
  for (const auto& doc : *docs) {
    auto body = parse_body(doc);
    by_hash[body.value("hash", "")] = identity_from(token_from(body));
  }
  m_by_hash = std::move(by_hash);
}

std::optional<Identity> Auth::authenticate(std::string_view token) const {
  if (token.empty()) {
    return std::nullopt;
  }
  if (m_stale) {
    reload_tokens();
  }
  const std::string& hash = memo_token_hash(token);
  std::shared_lock lock(m_mutex);
  auto it = m_by_hash.find(hash);
  if (it == m_by_hash.end()) {
    return std::nullopt;
  }
  return it->second;
}

} // namespace npme::auth
