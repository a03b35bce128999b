#pragma once
// The uplink's routes on the registry port: npm audit forwarding
// (POST /-/npm/v1/security/advisories/bulk, .../audits/quick) and
// GET /_fetch/{name}, through which a replica asks its upstream for a name
// it does not hold (secret only; the upstream fetches it from its own
// uplink or upstream, stores it, and answers the document as stored).

#include "core/http/server.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"
#include "core/uplink/service.hpp"

#include <functional>
#include <memory>

namespace npme::uplink {

// Adds the routes to `router`, before the registry's. `service` and
// `store` must outlive the router.
void add_routes(http::Router& router, Service& service, store::Store& store,
                std::function<std::shared_ptr<const settings::Settings>()> settings);

} // namespace npme::uplink
