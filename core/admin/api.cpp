#include "core/admin/api.hpp"

#include "core/admin/console.hpp"
#include "core/admin/promotion.hpp"

#include "core/audit/audit.hpp"
#include "core/replication/promote.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/crypto.hpp"
#include "core/util/time.hpp"

#include <algorithm>
#include <charconv>

namespace npme::admin {

namespace {

using nlohmann::json;

http::Response error_response(const Error& error) {
  return http::Response::json(http_status(error.code), error_body(error));
}

http::Response ok(int status, const json& body) {
  return http::Response::json(status, body.dump());
}

Expected<json> parse_object(const http::Request& request) {
  auto doc = json::parse(request.body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return make_error(Errc::invalid, "request body: expected a JSON object");
  }
  return doc;
}

json user_json(const auth::UserInfo& user) {
  return {{"name", user.name}, {"email", user.email}, {"created", user.created}};
}

json token_json(const auth::TokenInfo& token) {
  return {{"id", token.id},
          {"user", token.user},
          {"read_only", token.access == auth::Access::read_only},
          {"created", token.created},
          {"token_prefix", token.token_prefix},
          {"expires", token.expires.empty() ? json(nullptr) : json(token.expires)},
          {"cidr", token.cidr}};
}

// A new token's limits from the body of POST /tokens: "expires", a duration
// ("90d", "12h") or an ISO 8601 UTC time, and "cidr", a list of ranges (or
// one comma-separated string).
Expected<auth::TokenLimits> token_limits(const json& body) {
  auth::TokenLimits limits;
  if (auto it = body.find("expires"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) {
      return make_error(Errc::invalid, "request body: 'expires' must be a duration such as 90d or an ISO 8601 time");
    }
    const auto& text = it->get_ref<const std::string&>();
    if (auto at = util::parse_iso8601(text)) {
      limits.expires = *at;
    } else {
      NPME_TRY_ASSIGN(auto duration, auth::parse_duration(text));
      limits.expires = std::chrono::system_clock::now() + duration;
    }
  }
  if (auto it = body.find("cidr"); it != body.end() && !it->is_null()) {
    std::string list;
    if (it->is_string()) {
      list = it->get<std::string>();
    } else if (it->is_array() && std::all_of(it->begin(), it->end(), [](const json& item) { return item.is_string(); })) {
      for (const auto& item : *it) {
        list += (list.empty() ? "" : ",") + item.get<std::string>();
      }
    } else {
      return make_error(Errc::invalid, "request body: 'cidr' must be a list of address ranges such as 10.0.0.0/8");
    }
    NPME_TRY_ASSIGN(limits.ranges, util::parse_cidrs(list));
  }
  return limits;
}

struct AuditQuery {
  std::optional<std::chrono::system_clock::time_point> since;
  std::size_t limit = 1000;
};

Expected<AuditQuery> audit_query(const http::Request& request) {
  AuditQuery out;
  if (auto it = request.query.find("since"); it != request.query.end() && !it->second.empty()) {
    if (auto at = util::parse_iso8601(it->second)) {
      out.since = *at;
    } else if (auto ago = auth::parse_duration(it->second)) {
      out.since = std::chrono::system_clock::now() - *ago;
    } else {
      return make_error(Errc::invalid, "since: expected an ISO 8601 UTC time (2026-12-01T00:00:00Z) or a duration "
                                       "back from now (24h, 7d), not '" + it->second + "'");
    }
  }
  if (auto it = request.query.find("limit"); it != request.query.end()) {
    std::size_t value = 0;
    const auto* end = it->second.data() + it->second.size();
    auto [ptr, ec] = std::from_chars(it->second.data(), end, value);
    if (ec != std::errc() || ptr != end || value == 0 || value > 100000) {
      return make_error(Errc::invalid, "limit: expected a number from 1 to 100000, not '" + it->second + "'");
    }
    out.limit = value;
  }
  return out;
}

bool reveal(const http::Request& request) {
  auto it = request.query.find("reveal");
  return it != request.query.end() && (it->second == "true" || it->second == "1" || it->second.empty());
}

json setting_json(const settings::Settings& current, const settings::KeyInfo& key, bool show_secrets) {
  std::string value = current.get(key.name);
  if (key.secret && !show_secrets && !value.empty()) {
    value = "********";
  }
  json aliases = json::array();
  for (auto alias : key.aliases) {
    aliases.push_back(alias);
  }
  json allowed = json::array();
  for (auto choice : key.allowed) {
    allowed.push_back(choice);
  }
  const char* effect = key.effect == settings::Effect::restart_instance   ? "restart_instance"
                       : key.effect == settings::Effect::restart_follower ? "restart_follower"
                                                                          : "none";
  return {{"key", key.name},      {"value", value},     {"default", !current.is_set(key.name)},
          {"secret", key.secret}, {"aliases", aliases}, {"help", key.help},
          {"allowed", allowed},   {"effect", effect}};
}

bool token_matches(const http::Request& request, const settings::LiveSettings& live) {
  std::string_view presented;
  if (auto header = request.headers.get("Authorization"); header && header->starts_with("Bearer ")) {
    presented = header->substr(7);
  }
  const std::string expected = live.get()->get("admin.token");
  return !presented.empty() && !expected.empty() && util::constant_time_equal(presented, expected);
}

bool is_loopback(std::string_view address) {
  return address.starts_with("127.") || address == "::1" || address.starts_with("::ffff:127.");
}

// A request the admin token check refused, in the audit log: the path and
// whether a token was presented at all, never what was presented.
http::Response refuse_token(audit::Log* log, const http::Request& request) {
  if (log != nullptr) {
    log->record(audit::Event{"", "unknown", request.remote_address, "admin.auth", request.method + " " + request.path,
                             "refused",
                             json{{"token_presented", request.headers.get("Authorization").has_value()}}});
  }
  return error_response(Error{Errc::unauthorized, "missing or wrong admin token"});
}

// Who the audit log names for a request authorize() let through: set by
// it (overwriting anything the client sent under that name).
constexpr std::string_view k_actor_header = "X-NPME-Audit-Actor";

// What authorize() needs of the Context (which does not outlive make_router).
struct Gate {
  settings::LiveSettings& live;
  audit::Log* audit;
  console::Sessions* sessions;
  bool tls;
};

Gate gate_of(const Context& context) {
  return Gate{context.settings, context.audit, context.sessions, context.tls};
}

// The admin token as a bearer (constant-time comparison, so that it can't
// be guessed byte by byte from response times), or a console session's
// cookie whose state-changing requests pass the CSRF check. nullopt when
// the request may go on; else the answer that refuses it.
std::optional<http::Response> authorize(http::Request& request, const Gate& gate) {
  if (token_matches(request, gate.live)) {
    request.headers.set(std::string(k_actor_header), "admin token");
    return std::nullopt;
  }
  if (gate.sessions != nullptr) {
    if (const auto session = session_of(request, *gate.sessions)) {
      if (const auto verdict = check_csrf(request, *session, gate.tls); verdict != console::Csrf::ok) {
        if (gate.audit != nullptr) {
          gate.audit->record(audit::Event{"", "console session", request.remote_address, "console.csrf",
                                          request.method + " " + request.path, "refused",
                                          json{{"why", console::describe(verdict)}}});
        }
        return error_response(Error{Errc::forbidden, console::describe(verdict)});
      }
      request.headers.set(std::string(k_actor_header), "console (admin token)");
      return std::nullopt;
    }
  }
  return refuse_token(gate.audit, request);
}

// Wraps `handler` with authorize().
http::Handler guarded(const Context& context, std::function<Expected<http::Response>(http::Request&)> handler) {
  return [gate = gate_of(context), handler = std::move(handler)](http::Request& request) -> http::Response {
    if (auto refused = authorize(request, gate)) {
      return std::move(*refused);
    }
    auto result = handler(request);
    if (!result) {
      return error_response(result.error());
    }
    return std::move(*result);
  };
}

// Records each call of `handler` as `action` by the admin token: "ok", or
// "failed" with the error's message (which never holds a secret value);
// the handler names the target and adds details in the event.
using AuditedHandler = std::function<Expected<http::Response>(http::Request&, audit::Event&)>;
std::function<Expected<http::Response>(http::Request&)> audited(const Context& context, std::string action,
                                                                AuditedHandler handler) {
  return [audit_log = context.audit, action = std::move(action),
          handler = std::move(handler)](http::Request& request) -> Expected<http::Response> {
    const auto actor = request.headers.get(k_actor_header);
    audit::Event event{"", std::string(actor ? *actor : "admin token"), request.remote_address, action, "", "ok",
                       nullptr};
    auto result = handler(request, event);
    if (!result) {
      event.result = "failed";
      event.detail["error"] = result.error().message;
    } else if (result->status >= 300) {
      event.result = "failed";
    }
    if (audit_log != nullptr) {
      audit_log->record(std::move(event));
    }
    return result;
  };
}

// Wraps a handler that changes the feed (users, tokens) with synchronous
// replication (core/replication/replicas.hpp), after the admin token check.
http::Handler synchronous(const Context& context, http::Handler handler) {
  return
    [gate = gate_of(context), &replicas = context.replicas, handler = std::move(handler)](http::Request& request) {
      if (auto refused = authorize(request, gate)) {
        return std::move(*refused);
      }
      return replicas.write(
        request, [&] { return handler(request); }, [](const Error& refusal) { return error_response(refusal); });
    };
}

} // namespace

std::string error_body(const Error& error) {
  return json{{"error", {{"code", errc_name(error.code)}, {"message", error.message}}}}.dump();
}

std::shared_ptr<const http::Router> make_router(const Context& context) {
  auto router = std::make_shared<http::Router>();
  auto& live = context.settings;
  auto& auth = context.auth;

  router->add("GET", "/api/v1/status", guarded(context, [context](http::Request&) -> Expected<http::Response> {
                return ok(200, context.status());
              }));

  // The audit log: ?since= an ISO 8601 time or a duration back from now
  // ("24h", "7d"); ?limit= the newest N (default 1000, at most 100000).
  router->add("GET", "/api/v1/audit",
              guarded(context, [data_dir = context.data_dir](http::Request& request) -> Expected<http::Response> {
                NPME_TRY_ASSIGN(auto query, audit_query(request));
                NPME_TRY_ASSIGN(auto events, audit::read(data_dir, query.since, query.limit));
                json list = json::array();
                for (const auto& event : events) {
                  list.push_back(json::parse(audit::to_line(event)));
                }
                return ok(200, {{"events", list}});
              }),
              http::Blocking::yes);

  router->add("GET", "/api/v1/replicas", guarded(context, [context](http::Request&) -> Expected<http::Response> {
                return ok(200, context.replicas.table_json());
              }));

  router->add("GET", "/api/v1/users", guarded(context, [&auth](http::Request&) -> Expected<http::Response> {
                NPME_TRY_ASSIGN(auto users, auth.list_users());
                json list = json::array();
                for (const auto& user : users) {
                  list.push_back(user_json(user));
                }
                return ok(200, {{"users", list}});
              }));
  router->add("POST", "/api/v1/users",
              synchronous(context, guarded(context, audited(context, "user.add",
                                           [&auth](http::Request& request, audit::Event& event) -> Expected<http::Response> {
                                             NPME_TRY_ASSIGN(auto body, parse_object(request));
                                             event.target = body.value("name", json()).is_string() ? body["name"].get<std::string>() : "";
                                             if (!body.contains("name") || !body["name"].is_string() ||
                                                 !body.contains("password") || !body["password"].is_string()) {
                                               return make_error(Errc::invalid,
                                                                 "request body: 'name' and 'password' must be strings");
                                             }
                                             std::string email = body.contains("email") && body["email"].is_string()
                                                                   ? body["email"].get<std::string>()
                                                                   : "";
                                             NPME_TRY_ASSIGN(auto user,
                                                             auth.add_user(body["name"], body["password"], email));
                                             return ok(201, user_json(user));
                                           }))),
              http::Blocking::yes);
  router->add("DELETE", "/api/v1/users/{name}",
              synchronous(context, guarded(context, audited(context, "user.remove",
                                           [&auth](http::Request& request, audit::Event& event) -> Expected<http::Response> {
                                             event.target = request.param("name");
                                             NPME_TRY(auth.remove_user(request.param("name")));
                                             return ok(200, {{"ok", true}});
                                           }))),
              http::Blocking::yes);

  router->add("GET", "/api/v1/tokens", guarded(context, [&auth](http::Request&) -> Expected<http::Response> {
                NPME_TRY_ASSIGN(auto tokens, auth.list_tokens());
                json list = json::array();
                for (const auto& token : tokens) {
                  list.push_back(token_json(token));
                }
                return ok(200, {{"tokens", list}});
              }));
  router->add("POST", "/api/v1/tokens",
              synchronous(context, guarded(context, audited(context, "token.create",
                                           [&auth](http::Request& request, audit::Event& event) -> Expected<http::Response> {
                                             NPME_TRY_ASSIGN(auto body, parse_object(request));
                                             if (!body.contains("user") || !body["user"].is_string()) {
                                               return make_error(Errc::invalid,
                                                                 "request body: 'user' must be a string");
                                             }
                                             if (body.contains("read_only") && !body["read_only"].is_boolean()) {
                                               return make_error(Errc::invalid,
                                                                 "request body: 'read_only' must be true or false");
                                             }
                                             auto access = body.value("read_only", false) ? auth::Access::read_only
                                                                                          : auth::Access::read_write;
                                             NPME_TRY_ASSIGN(auto limits, token_limits(body));
                                             NPME_TRY_ASSIGN(auto made,
                                                             auth.create_token(body["user"], access, limits));
                                             auto answer = token_json(made.info);
                                             event.target = made.info.id;
                                             event.detail = answer; // without the token itself
                                             answer["token"] = made.token;
                                             return ok(201, answer);
                                           }))),
              http::Blocking::yes);
  router->add("DELETE", "/api/v1/tokens/{id}",
              synchronous(context, guarded(context, audited(context, "token.revoke",
                                           [&auth](http::Request& request, audit::Event& event) -> Expected<http::Response> {
                                             event.target = request.param("id");
                                             NPME_TRY(auth.revoke_token(request.param("id")));
                                             return ok(200, {{"ok", true}});
                                           }))),
              http::Blocking::yes);

  router->add("GET", "/api/v1/settings", guarded(context, [&live](http::Request& request) -> Expected<http::Response> {
                auto current = live.get();
                json list = json::array();
                for (const auto& key : settings::keys()) {
                  list.push_back(setting_json(*current, key, reveal(request)));
                }
                return ok(200, {{"settings", list}});
              }));
  router->add("GET", "/api/v1/settings/{key}",
              guarded(context, [&live](http::Request& request) -> Expected<http::Response> {
                const auto* key = settings::find_key(request.param("key"));
                if (!key) {
                  // apply() owns the "unknown setting" message (it lists the known keys).
                  auto unknown = settings::Settings().apply({{request.param("key"), ""}});
                  return make_error(Errc::usage, unknown ? "unknown setting '" + request.param("key") + "'"
                                                         : unknown.error().message);
                }
                return ok(200, setting_json(*live.get(), *key, reveal(request)));
              }));
  router->add(
    "PATCH", "/api/v1/settings",
    guarded(context, audited(context, "settings.change",
            [&live, context](http::Request& request, audit::Event& event) -> Expected<http::Response> {
              NPME_TRY_ASSIGN(auto patch, settings::parse_patch(request.body));
              for (const auto& [name, value] : patch.set) {
                event.target += (event.target.empty() ? "" : ",") + name;
              }
              for (const auto& name : patch.unset) {
                event.target += (event.target.empty() ? "" : ",") + name;
              }
              const auto before = live.get();
              NPME_TRY_ASSIGN(auto changed, live.update(patch.set, patch.unset));
              event.detail = {{"changes", audit::settings_changes(*before, *live.get(), changed)}};
              bool restart = false;
              bool follower = false;
              for (const auto& name : changed) {
                const auto* key = settings::find_key(name);
                restart = restart || key->effect == settings::Effect::restart_instance;
                follower = follower || key->effect == settings::Effect::restart_follower;
              }
              if (follower) {
                context.follower.stop();
                context.follower.start();
              }
              return ok(200, {{"changed", changed}, {"restart_required", restart}, {"follower_restart", follower}});
            })),
    http::Blocking::yes);

  auto& follower = context.follower;
  router->add("POST", "/api/v1/follower/reset",
              guarded(context, audited(context, "follower.reset",
                      [&follower](http::Request&, audit::Event&) -> Expected<http::Response> {
                        NPME_TRY(follower.reset());
                        return ok(200, {{"ok", true}, {"state", follower.status().state}});
                      })),
              http::Blocking::yes);
  router->add("POST", "/api/v1/follower/stop",
              guarded(context, audited(context, "follower.stop",
                      [&follower](http::Request&, audit::Event&) -> Expected<http::Response> {
                        follower.stop();
                        return ok(200, {{"ok", true}, {"state", follower.status().state}});
                      })),
              http::Blocking::yes);
  router->add("POST", "/api/v1/follower/start",
              guarded(context, audited(context, "follower.start",
                      [&follower, &live](http::Request&, audit::Event&) -> Expected<http::Response> {
                        if (live.get()->get("upstream.url").empty()) {
                          return make_error(Errc::precondition,
                                            "this instance has no upstream (set upstream.url first)");
                        }
                        follower.start();
                        return ok(200, {{"ok", true}, {"state", follower.status().state}});
                      })),
              http::Blocking::yes);

  auto& store = context.store;
  auto& failover = context.ha;
  router->add(
    "POST", "/api/v1/promote",
    guarded(
      context, audited(context, "promote",
      [&store, &live, &follower, &failover](http::Request& request, audit::Event& event) -> Expected<http::Response> {
        if (failover.automatic()) {
          return make_error(Errc::precondition,
                            "automatic failover is on (ha.etcd): etcd decides who leads; hand the lead over with "
                            "'npme ha switchover --to ID', or 'npme ha pause' first to promote by hand");
        }
        replication::PromoteOptions options;
        json fenced = nullptr;
        std::string fence_url;
        std::string fence_token;
        if (!request.body.empty()) {
          NPME_TRY_ASSIGN(auto body, parse_object(request));
          if (body.contains("force") && !body["force"].is_boolean()) {
            return make_error(Errc::invalid, "request body: 'force' must be true or false");
          }
          if (body.contains("wait_timeout_seconds") && (!body["wait_timeout_seconds"].is_number_integer() ||
                                                        body["wait_timeout_seconds"].get<std::int64_t>() < 0)) {
            return make_error(Errc::invalid, "request body: 'wait_timeout_seconds' must be a non-negative integer");
          }
          for (const char* field : {"fence_url", "fence_token"}) {
            if (body.contains(field) && !body[field].is_string()) {
              return make_error(Errc::invalid, std::string("request body: '") + field + "' must be a string");
            }
          }
          options.force = body.value("force", false);
          options.wait_timeout = std::chrono::seconds(body.value("wait_timeout_seconds", std::int64_t{30}));
          fence_url = body.value("fence_url", "");
          fence_token = body.value("fence_token", "");
        }
        if (live.get()->get("upstream.url").empty()) {
          // Before any fence: a primary has nothing to take over.
          return make_error(Errc::precondition,
                            "this instance is not a replica (upstream.url is empty): nothing to promote");
        }
        // The console's --fence: this instance sets the old primary
        // read-only first (the page can't reach another admin API).
        if (!fence_url.empty()) {
          NPME_TRY_ASSIGN(fenced, fence_old_primary(fence_url, fence_token, [](ProgressKind, const std::string&) {}));
        }
        event.target = live.get()->get("upstream.url");
        NPME_TRY_ASSIGN(auto promoted, replication::promote(store, live, follower, options));
        event.detail = {{"epoch", promoted.epoch}, {"force", options.force},
                        {"old_primary_reachable", promoted.upstream_reachable}, {"fenced", fenced}};
        return ok(200, {{"ok", true},
                        {"epoch", promoted.epoch},
                        {"fenced", fenced},
                        {"old_upstream", promoted.old_upstream},
                        {"old_primary_reachable", promoted.upstream_reachable},
                        {"sequence", promoted.sequence},
                        {"old_primary_seq", promoted.upstream_seq < 0 ? json(nullptr) : json(promoted.upstream_seq)},
                        {"was_synchronous", promoted.was_synchronous},
                        {"last_known_confirmed_seq", promoted.last_known_confirmed_seq},
                        {"last_known_primary_seq",
                         promoted.last_known_upstream_seq < 0 ? json(nullptr) : json(promoted.last_known_upstream_seq)},
                        {"registry_url", live.get()->get("registry.url")},
                        {"listen_url", (live.get()->get("registry.tls_cert").empty() ? "http://" : "https://") +
                                         live.get()->get("registry.listen")}});
      })),
    http::Blocking::yes);

  // Automatic failover (npme ha): these ask etcd, so they run on workers.
  router->add("GET", "/api/v1/ha",
              guarded(context,
                      [&failover](http::Request&) -> Expected<http::Response> {
                        NPME_TRY_ASSIGN(auto cluster, failover.cluster_status());
                        cluster["self"] = failover.status_json();
                        return ok(200, cluster);
                      }),
              http::Blocking::yes);
  for (const bool pause : {true, false}) {
    router->add("POST", pause ? "/api/v1/ha/pause" : "/api/v1/ha/resume",
                guarded(context, audited(context, pause ? "ha.pause" : "ha.resume",
                        [&failover, pause](http::Request&, audit::Event&) -> Expected<http::Response> {
                          NPME_TRY(failover.set_paused(pause));
                          return ok(200, {{"ok", true}, {"paused", pause}});
                        })),
                http::Blocking::yes);
  }
  router->add(
    "POST", "/api/v1/ha/switchover",
    guarded(context, audited(context, "ha.switchover",
            [&failover](http::Request& request, audit::Event& event) -> Expected<http::Response> {
              NPME_TRY_ASSIGN(auto body, parse_object(request));
              event.target = body.value("to", json()).is_string() ? body["to"].get<std::string>() : "";
              if (!body.contains("to") || !body["to"].is_string() || body["to"].get<std::string>().empty()) {
                return make_error(Errc::invalid, "request body: 'to' must name a member (an instance id)");
              }
              std::int64_t timeout = 60;
              if (body.contains("timeout_seconds")) {
                if (!body["timeout_seconds"].is_number_integer() || body["timeout_seconds"].get<std::int64_t>() < 1 ||
                    body["timeout_seconds"].get<std::int64_t>() > 3600) {
                  return make_error(Errc::invalid, "request body: 'timeout_seconds' must be an integer from 1 to 3600");
                }
                timeout = body["timeout_seconds"].get<std::int64_t>();
              }
              NPME_TRY_ASSIGN(auto done,
                              failover.switchover(body["to"].get<std::string>(), std::chrono::seconds(timeout)));
              done["ok"] = true;
              return ok(200, done);
            })),
    http::Blocking::yes);

  const auto data_dir = context.data_dir;
  router->add("GET", "/api/v1/whitelist", guarded(context, [data_dir](http::Request&) -> Expected<http::Response> {
                NPME_TRY_ASSIGN(auto names, replication::read_whitelist(data_dir));
                return ok(200, {{"packages", names}});
              }));
  router->add("POST", "/api/v1/whitelist",
              guarded(context,
                      [data_dir, &follower, &live](http::Request& request) -> Expected<http::Response> {
                        NPME_TRY_ASSIGN(auto body, parse_object(request));
                        if (!body.contains("name") || !body["name"].is_string() ||
                            body["name"].get<std::string>().empty() || body["name"].get<std::string>().front() == '_' ||
                            body["name"].get<std::string>().find('\n') != std::string::npos) {
                          return make_error(Errc::invalid, "request body: 'name' must be a package name");
                        }
                        const std::string name = body["name"];
                        NPME_TRY(replication::update_whitelist(
                          data_dir, [&name](std::vector<std::string>& names) -> Expected<void> {
                            names.push_back(name);
                            return {};
                          }));
                        // npmE's add-package fetches the package at once, whatever the feed's position.
                        bool fetched = false;
                        if (!live.get()->get("upstream.url").empty()) {
                          NPME_TRY(follower.fetch_now(name));
                          fetched = true;
                        }
                        return ok(200, {{"ok", true}, {"name", name}, {"fetched", fetched}});
                      }),
              http::Blocking::yes);
  router->add("DELETE", "/api/v1/whitelist/{name}",
              guarded(context,
                      [data_dir](http::Request& request) -> Expected<http::Response> {
                        const std::string name = request.param("name");
                        NPME_TRY(replication::update_whitelist(
                          data_dir, [&name](std::vector<std::string>& names) -> Expected<void> {
                            auto it = std::find(names.begin(), names.end(), name);
                            if (it == names.end()) {
                              return make_error(Errc::not_found, "'" + name + "' is not in the white-list");
                            }
                            names.erase(it);
                            return {};
                          }));
                        return ok(200, {{"ok", true}, {"name", request.param("name")}});
                      }),
              http::Blocking::yes);

  auto& uplink_service = context.uplink;
  router->add(
    "POST", "/api/v1/uplink/packages",
    guarded(context,
            [&uplink_service](http::Request& request) -> Expected<http::Response> {
              NPME_TRY_ASSIGN(auto body, parse_object(request));
              uplink::JobRequest job;
              const json packages = body.value("packages", json::array());
              const json locked = body.value("locked", json::array());
              if (!packages.is_array() || !locked.is_array() || (packages.empty() && locked.empty())) {
                return make_error(Errc::invalid, "request body: 'packages' (names with optional @range) or 'locked' "
                                                 "(name, version, integrity) must be a non-empty array");
              }
              for (const auto& spec : packages) {
                if (!spec.is_string() || spec.get<std::string>().empty()) {
                  return make_error(Errc::invalid,
                                    "request body: every entry of 'packages' must be a string NAME[@RANGE]");
                }
                job.specs.push_back(spec.get<std::string>());
              }
              for (const auto& entry : locked) {
                if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
                    !entry.contains("version") || !entry["version"].is_string()) {
                  return make_error(Errc::invalid,
                                    "request body: every entry of 'locked' needs 'name' and 'version' strings");
                }
                job.locked.push_back({entry["name"], entry["version"], entry.value("integrity", "")});
              }
              job.dependencies = body.value("dependencies", true);
              job.prefetch = body.value("prefetch", false);
              NPME_TRY_ASSIGN(auto id, uplink_service.start_job(std::move(job)));
              return ok(202, {{"ok", true}, {"job", id}});
            }),
    http::Blocking::yes);
  router->add("GET", "/api/v1/uplink/jobs/{id}",
              guarded(context, [&uplink_service](http::Request& request) -> Expected<http::Response> {
                auto job = uplink_service.job(request.param("id"));
                if (!job) {
                  return make_error(Errc::not_found, "no job '" + request.param("id") + "'");
                }
                return ok(200, *job);
              }));
  router->add("POST", "/api/v1/uplink/refresh/{name}",
              guarded(context,
                      [&uplink_service, &store](http::Request& request) -> Expected<http::Response> {
                        const std::string name = request.param("name");
                        auto before = store.get(name);
                        auto outcome = uplink_service.refresh(name);
                        using Kind = registry::SourceOutcome::Kind;
                        if (outcome.kind == Kind::not_found) {
                          return make_error(Errc::not_found, outcome.message);
                        }
                        if (outcome.kind == Kind::failed) {
                          return make_error(outcome.status == 504 ? Errc::timeout : Errc::unreachable, outcome.message);
                        }
                        auto after = store.get(name);
                        const bool changed = !(before && after && *before && *after && (*before)->rev == (*after)->rev);
                        return ok(200, {{"ok", true},
                                        {"name", name},
                                        {"changed", changed},
                                        {"stale", outcome.kind == Kind::stale},
                                        {"message", outcome.message}});
                      }),
              http::Blocking::yes);

  // npme doctor: a run reads every tarball, so it is a job on a thread of
  // its own; the CLI polls it (as add-package does).
  doctor::Service* doctor_service = context.doctor;
  const auto no_doctor = [] {
    return make_error(Errc::precondition, "this admin API runs no doctor (use npme doctor --offline)");
  };
  router->add(
    "POST", "/api/v1/doctor",
    guarded(context,
            [doctor_service, no_doctor](http::Request& request) -> Expected<http::Response> {
              if (doctor_service == nullptr) {
                return no_doctor();
              }
              json body = json::object();
              if (!request.body.empty()) {
                NPME_TRY_ASSIGN(body, parse_object(request));
              }
              for (const char* flag : {"full", "repair"}) {
                if (body.contains(flag) && !body[flag].is_boolean()) {
                  return make_error(Errc::invalid, std::string("request body: '") + flag + "' must be true or false");
                }
              }
              NPME_TRY_ASSIGN(auto id, doctor_service->start_job(
                                         body.value("full", false) ? doctor::Depth::full : doctor::Depth::records,
                                         body.value("repair", false) ? doctor::Repair::yes : doctor::Repair::no));
              return ok(202, {{"ok", true}, {"job", id}});
            }),
    http::Blocking::yes);
  router->add("GET", "/api/v1/doctor/jobs/{id}",
              guarded(context, [doctor_service, no_doctor](http::Request& request) -> Expected<http::Response> {
                if (doctor_service == nullptr) {
                  return no_doctor();
                }
                auto job = doctor_service->job(request.param("id"));
                if (!job) {
                  return make_error(Errc::not_found, "no doctor job '" + request.param("id") + "'");
                }
                return ok(200, *job);
              }));

  // Snapshots for the console: listed from snapshot.dir, and created there
  // by a job the page polls for its progress.
  snapshot::Service* snapshots = context.snapshots;
  const auto no_snapshots = [] {
    return make_error(Errc::precondition, "this admin API takes no snapshots (use npme snapshot create)");
  };
  router->add("GET", "/api/v1/snapshots",
              guarded(context, [snapshots, no_snapshots](http::Request&) -> Expected<http::Response> {
                if (snapshots == nullptr) {
                  return no_snapshots();
                }
                NPME_TRY_ASSIGN(auto listed, snapshots->list());
                return ok(200, listed);
              }),
              http::Blocking::yes);
  router->add("POST", "/api/v1/snapshots",
              guarded(context, [snapshots, no_snapshots](http::Request& request) -> Expected<http::Response> {
                if (snapshots == nullptr) {
                  return no_snapshots();
                }
                const auto actor = request.headers.get(k_actor_header);
                NPME_TRY_ASSIGN(auto id, snapshots->start_create(std::string(actor ? *actor : "admin token"),
                                                                 request.remote_address));
                return ok(202, {{"ok", true}, {"job", id}});
              }),
              http::Blocking::yes);
  router->add("GET", "/api/v1/snapshots/jobs/{id}",
              guarded(context, [snapshots, no_snapshots](http::Request& request) -> Expected<http::Response> {
                if (snapshots == nullptr) {
                  return no_snapshots();
                }
                auto job = snapshots->job(request.param("id"));
                if (!job) {
                  return make_error(Errc::not_found, "no snapshot job '" + request.param("id") + "'");
                }
                return ok(200, *job);
              }));
  router->add("GET", "/api/v1/follower/lag",
              guarded(context, [lag = context.lag, &follower](http::Request&) -> Expected<http::Response> {
                if (lag == nullptr) {
                  return ok(200, replication::LagHistory().to_json());
                }
                lag->record(follower.status());
                return ok(200, lag->to_json());
              }));

  // Scrapers on the same host need no token; from elsewhere the admin token.
  router->add("GET", "/metrics", [context, &live](http::Request& request) {
    if (!is_loopback(request.remote_address) && !token_matches(request, live)) {
      return error_response(Error{Errc::unauthorized, "metrics: use the admin token or scrape from loopback"});
    }
    http::Response response;
    response.headers.set("Content-Type", "text/plain; version=0.0.4");
    response.body = context.metrics ? context.metrics() : "";
    return response;
  });

  // The admin error shape for a method the path does not take (the server
  // adds the Allow header).
  router->set_method_not_allowed([](http::Request& request) {
    return http::Response::json(
      405, json{{"error",
                 {{"code", "method_not_allowed"}, {"message", request.method + " is not allowed on " + request.path}}}}
             .dump());
  });
  add_console_routes(*router, context);
  router->set_fallback([](http::Request& request) {
    return error_response(Error{Errc::not_found, "no admin endpoint " + request.method + " " + request.path});
  });
  return router;
}

} // namespace npme::admin
