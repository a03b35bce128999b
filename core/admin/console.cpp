// The admin console on the admin port: its page and files, and the
// session endpoints it signs in and out with (core/console/sessions.hpp).
// Everything else the console does goes through the admin API the CLI
// uses, with the same validation and errors.
#include "core/admin/console.hpp"

#include "core/console/assets.hpp"
#include "core/util/crypto.hpp"

namespace npme::admin {

namespace {

using nlohmann::json;

// No script but the console's own files, no framing, no referrer.
void secure(http::Response& response) {
  response.headers.set("Content-Security-Policy",
                       "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
  response.headers.set("X-Frame-Options", "DENY");
  response.headers.set("Referrer-Policy", "no-referrer");
  response.headers.set("Cache-Control", "no-cache");
}

http::Response asset_response(const console::Asset& asset) {
  http::Response response;
  response.status = 200;
  response.headers.set("Content-Type", std::string(asset.content_type));
  response.body = std::string(asset.body);
  secure(response);
  return response;
}

http::Response json_answer(int status, const json& body) {
  auto response = http::Response::json(status, body.dump());
  secure(response);
  response.headers.set("Cache-Control", "no-store");
  return response;
}

http::Response error_answer(Errc code, const std::string& message) {
  auto response = http::Response::json(http_status(code), error_body(Error{code, message}));
  secure(response);
  return response;
}

std::string cookie(std::string_view value, bool tls, bool expire) {
  std::string out = std::string(console::k_cookie) + "=" + std::string(value) + "; Path=/; HttpOnly; SameSite=Strict";
  if (tls) {
    out += "; Secure";
  }
  if (expire) {
    out += "; Max-Age=0";
  }
  return out;
}

} // namespace

std::optional<console::Session> session_of(const http::Request& request, console::Sessions& sessions) {
  const auto header = request.headers.get("Cookie");
  return header ? sessions.touch(console::cookie_value(*header, console::k_cookie)) : std::nullopt;
}

console::Csrf check_csrf(const http::Request& request, const console::Session& session, bool tls) {
  const auto host = request.headers.get("Host");
  return console::check_csrf(request.method, request.headers.get(console::k_csrf_header), session.csrf,
                             request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                             (tls ? "https://" : "http://") + std::string(host ? *host : ""));
}

void add_console_routes(http::Router& router, const Context& context) {
  if (context.sessions == nullptr) {
    return;
  }
  router.add("GET", "/", [](http::Request&) {
    const auto* page = console::find_asset("index.html");
    return page ? asset_response(*page) : error_answer(Errc::not_found, "this build has no console");
  });
  router.add("GET", "/console/{file}", [](http::Request& request) {
    const auto* asset = console::find_asset(request.param("file"));
    return asset ? asset_response(*asset) : error_answer(Errc::not_found, "no console file " + request.param("file"));
  });

  // Sign-in: the admin token, pasted once, for a session cookie and the
  // session's CSRF token (which the page keeps in memory only).
  router.add("POST", "/api/v1/session",
             [&live = context.settings, sessions = context.sessions, audit_log = context.audit,
              tls = context.tls](http::Request& request) {
               const auto body = json::parse(request.body, nullptr, false);
               const auto token = body.is_object() && body.value("token", json()).is_string()
                                    ? body["token"].get<std::string>()
                                    : std::string();
               const std::string expected = live.get()->get("admin.token");
               const bool ok = !token.empty() && !expected.empty() && util::constant_time_equal(token, expected);
               if (audit_log != nullptr) {
                 audit_log->record(audit::Event{"", ok ? "console (admin token)" : "unknown", request.remote_address,
                                                "console.signin", "", ok ? "ok" : "refused", nullptr});
               }
               if (!ok) {
                 return error_answer(Errc::unauthorized, token.empty() ? "paste the admin token (admin.token) to sign in"
                                                                       : "wrong admin token");
               }
               const auto session = sessions->create();
               auto response = json_answer(201, {{"csrf", session.csrf}, {"idle_seconds", sessions->idle().count()}});
               response.headers.add("Set-Cookie", cookie(session.id, tls, false));
               return response;
             });
  // Whether the page's cookie still names a session (after a reload).
  router.add("GET", "/api/v1/session", [sessions = context.sessions](http::Request& request) {
    const auto session = session_of(request, *sessions);
    if (!session) {
      return error_answer(Errc::unauthorized, "not signed in, or the session expired");
    }
    return json_answer(200, {{"csrf", session->csrf}, {"idle_seconds", sessions->idle().count()}});
  });
  // Sign-out ends the session on the server, not only in the browser.
  router.add("DELETE", "/api/v1/session",
             [sessions = context.sessions, audit_log = context.audit, tls = context.tls](http::Request& request) {
               const auto session = session_of(request, *sessions);
               if (!session) {
                 return error_answer(Errc::unauthorized, "not signed in, or the session expired");
               }
               if (const auto verdict = check_csrf(request, *session, tls); verdict != console::Csrf::ok) {
                 return error_answer(Errc::forbidden, console::describe(verdict));
               }
               sessions->end(session->id);
               if (audit_log != nullptr) {
                 audit_log->record(audit::Event{"", "console (admin token)", request.remote_address, "console.signout",
                                                "", "ok", nullptr});
               }
               auto response = json_answer(200, {{"ok", true}});
               response.headers.add("Set-Cookie", cookie("", tls, true));
               return response;
             });
}

} // namespace npme::admin
