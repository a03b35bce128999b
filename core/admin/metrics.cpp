#include "core/admin/metrics.hpp"

#include <mutex>
#include <sstream>

namespace npme::admin {

std::string_view classify_registry_route(std::string_view method, std::string_view path) {
  if (path.starts_with("/-/ping")) {
    return "ping";
  }
  if (path.starts_with("/-/whoami")) {
    return "whoami";
  }
  if (path.starts_with("/-/v1/search")) {
    return "search";
  }
  if (path.starts_with("/-/user/") || path.starts_with("/-/v1/login")) {
    return "login";
  }
  if (path.starts_with("/-/package/")) {
    return "dist-tags";
  }
  if (path.starts_with("/_changes")) {
    return "changes";
  }
  if (path == "/") {
    return "root";
  }
  const bool tarball = path.find("/-/") != std::string_view::npos && path.ends_with(".tgz");
  if (method == "GET" || method == "HEAD") {
    return tarball ? "tarball" : "packument";
  }
  if (method == "PUT") {
    return "publish";
  }
  if (method == "DELETE") {
    return "unpublish";
  }
  return "other";
}

void Metrics::count_request(std::string_view route, int status) {
  std::pair<std::string, int> key{std::string(route), status};
  {
    std::shared_lock lock(m_mutex);
    if (auto it = m_requests.find(key); it != m_requests.end()) {
      it->second->fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  std::unique_lock lock(m_mutex);
  auto& counter = m_requests[key];
  if (!counter) {
    counter = std::make_unique<std::atomic<std::uint64_t>>(0);
  }
  counter->fetch_add(1, std::memory_order_relaxed);
}

void Metrics::set_gauge(const std::string& name, double value, const std::string& help) {
  std::unique_lock lock(m_mutex);
  m_gauges[name] = {value, help};
}

std::string Metrics::render(const std::string& extra) const {
  std::ostringstream out;
  std::shared_lock lock(m_mutex);
  out << "# HELP npme_http_requests_total Registry requests by route and status.\n"
      << "# TYPE npme_http_requests_total counter\n";
  std::uint64_t publishes = 0;
  for (const auto& [key, counter] : m_requests) {
    auto value = counter->load(std::memory_order_relaxed);
    out << "npme_http_requests_total{route=\"" << key.first << "\",status=\"" << key.second << "\"} " << value
        << '\n';
    if (key.first == "publish" && key.second == 201) {
      publishes += value;
    }
  }
  out << "# HELP npme_publishes_total Versions published through this instance.\n"
      << "# TYPE npme_publishes_total counter\n"
      << "npme_publishes_total " << publishes << '\n';
  for (const auto& [name, gauge] : m_gauges) {
    out << "# HELP " << name << ' ' << gauge.second << '\n'
        << "# TYPE " << name << " gauge\n"
        << name << ' ' << gauge.first << '\n';
  }
  out << extra;
  return out.str();
}

} // namespace npme::admin
