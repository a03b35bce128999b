#pragma once
// The admin console's routes on the admin port (see console.cpp).

#include "core/admin/api.hpp"
#include "core/http/server.hpp"

namespace npme::admin {

// The live console session the request's cookie names (its idle time
// starts again); nullopt without one.
std::optional<console::Session> session_of(const http::Request& request, console::Sessions& sessions);

// The CSRF check (console::check_csrf) of a request authenticated by
// `session`; `tls`: the console is served over https.
console::Csrf check_csrf(const http::Request& request, const console::Session& session, bool tls);

// Adds GET / (the console), GET /console/FILE and /api/v1/session (sign in,
// check, sign out) when context.sessions is set.
void add_console_routes(http::Router& router, const Context& context);

} // namespace npme::admin
