#pragma once
// Prometheus metrics of an instance (GET /metrics on the admin port): request
// counters by route and status, publishes, and gauges that other services
// set (the follower's, once it exists).

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>

namespace npme::admin {

// Returns the route family of a registry request ("packument", "tarball",
// "publish", ...) — a small fixed set, so label cardinality stays bounded.
std::string_view classify_registry_route(std::string_view method, std::string_view path);

class Metrics {
public:
  // Counts one registry request of `route` answered with `status`.
  void count_request(std::string_view route, int status);
  // Sets gauge `name` (a full metric name such as "npme_follower_sequence").
  void set_gauge(const std::string& name, double value, const std::string& help);

  // Renders every metric in the Prometheus text exposition format, followed
  // by `extra` (already formatted lines, e.g. counts read from the store).
  std::string render(const std::string& extra = "") const;

private:
  mutable std::shared_mutex m_mutex;
  std::map<std::pair<std::string, int>, std::unique_ptr<std::atomic<std::uint64_t>>> m_requests;
  std::map<std::string, std::pair<double, std::string>> m_gauges;
};

} // namespace npme::admin
