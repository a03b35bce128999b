#include "core/ha/routes.hpp"

#include "core/replication/feed.hpp"

#include <nlohmann/json.hpp>

namespace npme::ha {

bool takes_writes(const Ha& ha, const settings::Settings& config) {
  if (config.get("publication") == "read-only" || !config.get("upstream.url").empty()) {
    return false;
  }
  return ha.may_write();
}

void add_routes(http::Router& router, const Ha& ha,
                std::function<std::shared_ptr<const settings::Settings>()> settings) {
  // Health checks answer from memory: no disk, no network (HAProxy polls them).
  auto role = [&ha, settings](bool want_primary) {
    return [&ha, settings, want_primary](http::Request&) {
      const bool primary = takes_writes(ha, *settings());
      nlohmann::json body = {{"role", primary ? "primary" : "replica"}, {"instance", ha.instance_id()}};
      if (primary != want_primary) {
        body["error"] = want_primary ? "this instance does not take writes now" : "this instance takes writes";
      }
      return http::Response::json(primary == want_primary ? 200 : 503, body.dump());
    };
  };
  router.add("GET", "/-/primary", role(true));
  router.add("GET", "/-/replica", role(false));
  router.add("GET", "/-/ha", [&ha, settings](http::Request& request) {
    if (!replication::presents_secret(request, settings()->get("secret"))) {
      return http::Response::json(401, nlohmann::json{{"error", "this route needs the instance's secret"}}.dump());
    }
    return http::Response::json(200, to_json(ha.self()).dump());
  });
}

} // namespace npme::ha
