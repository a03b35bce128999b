#pragma once
// The npm registry protocol (DESIGN.md §5) on top of the store: packuments,
// tarballs, publish, dist-tags, deprecate, unpublish, login, whoami, ping,
// search. Builds the router that the instance serves on registry.listen.

#include "core/audit/audit.hpp"
#include "core/auth/auth.hpp"
#include "core/http/server.hpp"
#include "core/settings/settings.hpp"
#include "core/registry/source.hpp"
#include "core/store/store.hpp"

#include <functional>
#include <memory>
#include <string_view>

namespace npme::registry {

// Returns the settings in force now; called per request, so changes made
// through the admin API apply without a restart.
using SettingsSource = std::function<std::shared_ptr<const settings::Settings>()>;

class Registry {
public:
  Registry(store::Store& store, auth::Auth& auth, SettingsSource settings);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The routes of the registry API, to be served by an http::Server. The
  // handlers refer to this object: it must outlive every server using them.
  std::shared_ptr<const http::Router> router() const;

  // Adds the routes of the registry API to `router` after the routes it
  // already has, for an instance that serves more on the same port (the
  // replication feed: "GET /", "GET /_changes"). Same lifetime rule.
  void add_routes(http::Router& router) const;

  // Makes `source` (the uplink, or the upstream of a replica) answer reads
  // of packages this instance does not hold and check writes; call before
  // serving. Null: only what is held is served.
  void set_source(std::shared_ptr<PackageSource> source);

  // Runs every write (publish, unpublish, dist-tags, deprecate, logins and
  // token changes) through `gate`, which calls `commit` or answers without
  // it, and turns refusals into the registry's error shape with `refuse`
  // (synchronous replication, core/replication/replicas.hpp). Set before
  // serving; default: writes just commit.
  using WriteGate = std::function<http::Response(http::Request& request, const std::function<http::Response()>& commit,
                                                 const std::function<http::Response(const Error&)>& refuse)>;
  void set_write_gate(WriteGate gate);

  // Records logins (ok, failed, throttled) and logouts in `log`; set before
  // serving; null: nothing recorded.
  void set_audit(audit::Log* log);

  // Drops every cached response of package `name` (packuments, tarballs):
  // a repair changed its files on disk. Thread-safe.
  void invalidate(std::string_view name);

  // The response cache's metrics in Prometheus text: bytes held
  // (npme_cache_bytes, bodies plain and compressed) and entries.
  std::string metrics() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::registry
