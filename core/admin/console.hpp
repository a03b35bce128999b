#pragma once
// The admin console's routes on the admin port (see console.cpp).

#include "core/admin/api.hpp"
#include "core/http/server.hpp"

namespace npme::admin {

// Adds GET / (the console), GET /console/FILE and /api/v1/session (sign in,
// check, sign out) when context.sessions is set.
void add_console_routes(http::Router& router, const Context& context);

} // namespace npme::admin
