#pragma once
// The failover routes of the registry port (README, "Automatic failover with
// etcd"): what a load balancer health-checks, and what members ask each other.
//   GET /-/primary  200 when this instance takes writes now, else 503
//   GET /-/replica  the reverse
//   GET /-/ha       this member's record (ha::Member as JSON); the
//                   instance's `secret` required, as for the feed
// Without automatic failover, /-/primary and /-/replica follow the settings
// (a primary: no upstream.url and publication not read-only).

#include "core/ha/ha.hpp"
#include "core/http/server.hpp"
#include "core/settings/settings.hpp"

#include <functional>
#include <memory>

namespace npme::ha {

// Adds the routes to `router` (before the registry's). `ha` must outlive it.
void add_routes(http::Router& router, const Ha& ha,
                std::function<std::shared_ptr<const settings::Settings>()> settings);

// Whether the instance takes writes now, by `ha` and `config`.
bool takes_writes(const Ha& ha, const settings::Settings& config);

} // namespace npme::ha
