#include "core/instance/instance.hpp"

#include "core/admin/api.hpp"
#include "core/audit/audit.hpp"
#include "core/console/sessions.hpp"
#include "core/admin/metrics.hpp"
#include "core/auth/auth.hpp"
#include "core/doctor/service.hpp"
#include "core/ha/ha.hpp"
#include "core/ha/routes.hpp"
#include "core/http/server.hpp"
#include "core/http/tls.hpp"
#include "core/hostdirs/dir_swap.hpp"
#include "core/hostdirs/lock.hpp"
#include "core/registry/registry.hpp"
#include "core/replication/feed.hpp"
#include "core/replication/follower.hpp"
#include "core/replication/promote.hpp"
#include "core/replication/replicas.hpp"
#include "core/store/store.hpp"
#include "core/uplink/routes.hpp"
#include "core/uplink/service.hpp"
#include "core/util/cidr.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/time.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>

#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::instance {

namespace {

using nlohmann::json;

constexpr std::string_view k_runtime_file = "runtime.json";
constexpr std::string_view k_id_file = "instance-id";

// Blocks SIGINT/SIGTERM (stop) and SIGHUP (reload the TLS files) in this
// thread, and so in every thread it starts afterwards, so that sigwait()
// below is the only place they are handled.
sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Raises the soft limit of open descriptors to the hard limit: every
// connection costs one, and the usual soft limit of 1024 would let a few
// hundred idle clients (each under its connection cap) exhaust the server.
// Errc::io naming both limits when it cannot be raised.
Expected<void> raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return make_error(Errc::io, std::string("cannot read the open-file limit: ") + std::strerror(errno));
  }
  if (limit.rlim_cur == limit.rlim_max) {
    return {};
  }
  const rlim_t soft = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return make_error(Errc::io, "cannot raise the open-file limit from " + std::to_string(soft) + " to " +
                                  std::to_string(limit.rlim_max) + ": " + std::strerror(errno));
  }
  return {};
}

// Prometheus text of the connections of both listeners.
std::string connection_metrics(const http::Server& registry_server, const http::Server& admin_server) {
  const std::pair<const char*, http::Server::ConnectionCounts> both[] = {{"registry", registry_server.connections()},
                                                                         {"admin", admin_server.connections()}};
  std::string open = "# HELP npme_connections_open Connections open now, by listener.\n"
                     "# TYPE npme_connections_open gauge\n";
  std::string refused =
    "# HELP npme_connections_refused_total Connections closed at accept because their client "
    "address held its cap (registry.max_connections_per_client, admin.max_connections_per_client).\n"
    "# TYPE npme_connections_refused_total counter\n";
  for (const auto& [name, counts] : both) {
    const std::string label = std::string("{listener=\"") + name + "\"} ";
    open += "npme_connections_open" + label + std::to_string(counts.open) + "\n";
    refused += "npme_connections_refused_total" + label + std::to_string(counts.refused) + "\n";
  }
  return open + refused;
}

// The TLS of the two listeners: nullptr where plain HTTP.
struct Listeners {
  std::shared_ptr<http::TlsIdentity> registry;
  std::shared_ptr<http::TlsIdentity> admin;
  std::string admin_listen; // as bound
};

// The TLS identity of `listener` ("registry" or "admin") from its settings;
// nullptr when neither file is set.
Expected<std::shared_ptr<http::TlsIdentity>> load_tls(const settings::Settings& config, const std::string& listener) {
  const std::string cert = config.get(listener + ".tls_cert");
  const std::string key = config.get(listener + ".tls_key");
  if (cert.empty() && key.empty()) {
    return std::shared_ptr<http::TlsIdentity>();
  }
  if (cert.empty() || key.empty()) {
    return make_error(Errc::invalid, listener + ".tls_cert and " + listener +
                                       ".tls_key go together: set both for HTTPS, or neither for plain HTTP");
  }
  auto identity = http::TlsIdentity::load(cert, key);
  if (!identity) {
    return make_error(Errc::invalid, listener + " HTTPS: " + identity.error().message);
  }
  return *identity;
}

json tls_json(const std::shared_ptr<http::TlsIdentity>& identity) {
  if (!identity) {
    return nullptr;
  }
  const auto info = identity->info();
  return {{"cert", identity->cert_file()},
          {"subject", info.subject},
          {"serial", info.serial},
          {"not_after", info.not_after},
          {"loaded_at", info.loaded_at},
          {"reload_error", info.reload_error.empty() ? json(nullptr) : json(info.reload_error)},
          {"reload_error_time", info.reload_error_time.empty() ? json(nullptr) : json(info.reload_error_time)}};
}

// What an operator should know about the listeners' security.
std::vector<std::string> listener_warnings(const Listeners& listeners) {
  std::vector<std::string> out;
  if (!listeners.admin && !http::is_loopback_listen(listeners.admin_listen)) {
    out.push_back("the admin API listens on " + listeners.admin_listen +
                  " without TLS: the admin token crosses the network in clear text (set admin.tls_cert and "
                  "admin.tls_key, or listen on 127.0.0.1)");
  }
  const std::pair<const char*, const std::shared_ptr<http::TlsIdentity>*> both[] = {{"registry", &listeners.registry},
                                                                                    {"admin", &listeners.admin}};
  for (const auto& [name, identity] : both) {
    if (!*identity) {
      continue;
    }
    const auto info = (*identity)->info();
    if (!info.reload_error.empty()) {
      out.push_back(std::string("the ") + name + " TLS files could not be reloaded at " + info.reload_error_time +
                    " (" + info.reload_error + "); still serving the certificate loaded at " + info.loaded_at);
    }
    if (auto until = util::parse_iso8601(info.not_after)) {
      const auto left = std::chrono::duration_cast<std::chrono::hours>(*until - std::chrono::system_clock::now());
      if (left.count() < 14 * 24) {
        out.push_back(std::string("the ") + name + " TLS certificate " +
                      (left.count() < 0 ? "expired at " : "expires at ") + info.not_after);
      }
    }
  }
  return out;
}

json follower_json(const replication::FollowerStatus& f) {
  return {{"state", f.state},
          {"sequence", f.sequence},
          {"upstream_seq", f.upstream_seq < 0 ? json(nullptr) : json(f.upstream_seq)},
          {"lag_changes", f.lag_changes},
          {"lag_seconds", f.lag_seconds},
          {"upstream_instance", f.upstream_instance},
          {"upstream_epoch", f.upstream_epoch},
          {"synchronous", f.synchronous},
          {"upstream_confirmed_seq", f.upstream_confirmed_seq},
          {"last_error", f.last_error.empty() ? json(nullptr) : json(f.last_error)},
          {"last_error_time", f.last_error_time.empty() ? json(nullptr) : json(f.last_error_time)},
          {"last_applied_time", f.last_applied_time.empty() ? json(nullptr) : json(f.last_applied_time)},
          {"documents_applied", f.documents_applied},
          {"tarballs_fetched", f.tarballs_fetched},
          {"tarball_bytes_fetched", f.tarball_bytes_fetched}};
}

// The free space of each host directory, against storage.min_free; sets
// `warning` for the first one that is low.
json disk_json(const settings::Settings& config, std::string* warning) {
  const std::uint64_t min_free = settings::parse_size(config.get("storage.min_free"));
  json out = json::array();
  const std::pair<const char*, std::filesystem::path> dirs[] = {
    {"metadata", config.metadata_dir()}, {"packages", config.packages_dir()}, {"data", config.data_dir()}};
  for (const auto& [name, path] : dirs) {
    std::error_code ec;
    const auto space = std::filesystem::space(path, ec);
    if (ec) {
      out.push_back({{"dir", name}, {"path", path.string()}, {"error", ec.message()}});
      continue;
    }
    const bool low = space.available < min_free;
    out.push_back({{"dir", name},
                   {"path", path.string()},
                   {"free_bytes", space.available},
                   {"total_bytes", space.capacity},
                   {"low", low}});
    if (low && warning != nullptr && warning->empty()) {
      *warning = "warning: low disk space: " + std::string(name) + " (" + path.string() + ") has " +
                 std::to_string(space.available / (1024 * 1024)) + " MiB free, below storage.min_free " +
                 config.get("storage.min_free");
    }
  }
  return out;
}

std::string disk_metrics(const settings::Settings& config) {
  const json disk = disk_json(config, nullptr);
  std::string out = "# HELP npme_disk_free_bytes Free bytes of the device of each host directory.\n"
                    "# TYPE npme_disk_free_bytes gauge\n";
  std::string low = "# HELP npme_disk_low 1 when a host directory has less free space than storage.min_free.\n"
                    "# TYPE npme_disk_low gauge\n";
  for (const auto& entry : disk) {
    if (!entry.contains("free_bytes")) {
      continue;
    }
    const std::string label = "{dir=\"" + entry["dir"].get<std::string>() + "\"}";
    out += "npme_disk_free_bytes" + label + " " + std::to_string(entry["free_bytes"].get<std::uint64_t>()) + "\n";
    low += "npme_disk_low" + label + " " + (entry["low"].get<bool>() ? "1" : "0") + "\n";
  }
  return out + low;
}

json status_document(const settings::LiveSettings& live, const store::Store& store, const std::string& id,
                     std::chrono::steady_clock::time_point started, const std::string& started_at,
                     const replication::Follower& follower, const uplink::Service& uplink_service,
                     const replication::Replicas& replicas, const ha::Ha& failover, const Listeners& listeners) {
  auto current = live.get();
  const std::string upstream = current->get("upstream.url");
  // With automatic failover the role and publication are what the instance
  // does now: a primary whose lease lapsed is read-only at once, before its
  // settings follow.
  const bool automatic = ha::enabled(*current);
  const bool writes = ha::takes_writes(failover, *current);
  const std::string role = automatic ? (writes ? "primary" : "replica") : (upstream.empty() ? "primary" : "replica");
  const std::string publication = automatic && !writes ? "read-only" : current->get("publication");
  json counts = json::object();
  std::string health = "ok";
  if (auto c = store.counts()) {
    counts = {{"packages", c->packages},
              {"versions", c->versions},
              {"tarballs", c->tarballs},
              {"tarball_bytes", c->tarball_bytes}};
  } else {
    health = "error: " + c.error().message;
  }
  std::string disk_warning;
  json disk = disk_json(*current, &disk_warning);
  if (health == "ok" && !disk_warning.empty()) {
    health = disk_warning;
  }
  const std::int64_t epoch = replication::read_epoch(store);
  auto uptime = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
  auto downstream = replicas.status_json();
  return {
    {"instance", id},
    {"version", NPME_VERSION},
    {"role", role},
    {"publication", publication},
    {"auth_installs", current->get("auth.installs")},
    {"registry_url", current->get("registry.url")},
    {"upstream", {{"url", upstream}, {"policy", current->get("upstream.policy")}}},
    {"follower", follower_json(follower.status())},
    {"uplink", uplink_service.status()},
    {"replicas", downstream["replicas"]},
    {"sync", downstream["sync"]},
    {"ha", failover.status_json()},
    {"epoch", epoch},
    {"update_seq", store.update_seq()},
    {"counts", counts},
    {"disk", disk},
    {"started", started_at},
    {"uptime_seconds", uptime.count()},
    {"health", health},
    {"tls", {{"registry", tls_json(listeners.registry)}, {"admin", tls_json(listeners.admin)}}},
    {"warnings", listener_warnings(listeners)},
  };
}

std::string store_metrics(const store::Store& store, const replication::Follower& follower) {
  std::string out = "# HELP npme_update_seq Sequence of the latest change.\n# TYPE npme_update_seq gauge\n"
                    "npme_update_seq " +
                    std::to_string(store.update_seq()) + "\n";
  if (auto c = store.counts()) {
    out += "# HELP npme_packages Packages in the registry.\n# TYPE npme_packages gauge\nnpme_packages " +
           std::to_string(c->packages) + "\n";
    out += "# HELP npme_versions Versions in the registry.\n# TYPE npme_versions gauge\nnpme_versions " +
           std::to_string(c->versions) + "\n";
    out += "# HELP npme_tarball_bytes Bytes of tarballs stored.\n# TYPE npme_tarball_bytes gauge\n"
           "npme_tarball_bytes " +
           std::to_string(c->tarball_bytes) + "\n";
  }
  const auto f = follower.status();
  const bool up = f.state == "following" || f.state == "caught-up";
  out += "# HELP npme_follower_sequence Last upstream change applied by the follower.\n"
         "# TYPE npme_follower_sequence gauge\nnpme_follower_sequence " +
         std::to_string(f.sequence) + "\n";
  out += "# HELP npme_follower_lag_seconds Age of the oldest upstream change not yet applied.\n"
         "# TYPE npme_follower_lag_seconds gauge\nnpme_follower_lag_seconds " +
         std::to_string(f.lag_seconds) + "\n";
  out += "# HELP npme_follower_lag_changes Upstream changes not yet applied.\n"
         "# TYPE npme_follower_lag_changes gauge\nnpme_follower_lag_changes " +
         std::to_string(f.lag_changes) + "\n";
  out += "# HELP npme_follower_up 1 when the follower is following or caught up.\n"
         "# TYPE npme_follower_up gauge\nnpme_follower_up " +
         std::string(up ? "1" : "0") + "\n";
  return out;
}

} // namespace

Expected<std::string> instance_id(const std::filesystem::path& data_dir) {
  const auto path = data_dir / k_id_file;
  if (auto text = util::read_file(path)) {
    std::string id = *text;
    while (!id.empty() && (id.back() == '\n' || id.back() == '\r' || id.back() == ' ')) {
      id.pop_back();
    }
    if (!id.empty()) {
      return id;
    }
  }
  std::string id = util::hex(util::random_bytes(8));
  NPME_TRY(util::write_file_atomic(path, id + "\n"));
  return id;
}

std::optional<Runtime> read_runtime(const std::filesystem::path& data_dir) {
  if (!hostdirs::is_locked(data_dir)) {
    return std::nullopt;
  }
  auto text = util::read_file(data_dir / k_runtime_file);
  if (!text) {
    return std::nullopt;
  }
  auto doc = json::parse(*text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return std::nullopt;
  }
  return Runtime{doc.value("pid", 0L), doc.value("registry_url", ""), doc.value("listen_url", ""),
                 doc.value("admin_url", "")};
}

namespace {

// SIGHUP: both listeners read their TLS files again; a failure keeps the
// certificate in use and is logged (and shown by npme status).
void reload_tls(const Listeners& listeners, const std::function<void(const std::string&)>& log) {
  if (!listeners.registry && !listeners.admin) {
    log("SIGHUP: no TLS configured, nothing to reload");
    return;
  }
  const std::pair<const char*, const std::shared_ptr<http::TlsIdentity>*> both[] = {{"registry", &listeners.registry},
                                                                                    {"admin", &listeners.admin}};
  for (const auto& [name, identity] : both) {
    if (!*identity) {
      continue;
    }
    if (auto info = (*identity)->reload()) {
      log(std::string("SIGHUP: ") + name + " TLS certificate reloaded from " + (*identity)->cert_file() + " (" +
          info->subject + ", serial " + info->serial + ", valid until " + info->not_after + ")");
    } else {
      log(std::string("SIGHUP: ") + name + " TLS files not reloaded, still serving the previous certificate: " +
          info.error().message);
    }
  }
}

} // namespace

Expected<void> serve(const ServeOptions& options, const std::function<void(const std::string&)>& log) {
  sigset_t stop_signals = block_stop_signals();
  const auto started = std::chrono::steady_clock::now();
  if (auto raised = raise_descriptor_limit(); !raised) {
    log("warning: " + raised.error().message + "; connections may run out of descriptors");
  }
  const std::string started_at = util::iso8601();

  NPME_TRY_ASSIGN(auto initial, settings::load_or_create(options.layout));
  if (options.registry_listen) {
    NPME_TRY(settings::parse_listen(*options.registry_listen));
    initial.set_runtime("registry.listen", *options.registry_listen);
  }
  if (options.admin_listen) {
    NPME_TRY(settings::parse_listen(*options.admin_listen));
    initial.set_runtime("admin.listen", *options.admin_listen);
  }
  const store::Paths paths{initial.metadata_dir(), initial.packages_dir(), initial.data_dir()};
  NPME_TRY_ASSIGN(const bool finished_restore, hostdirs::finish_interrupted_swap(paths.data));
  if (finished_restore) {
    log("finished the restore that was killed while moving directories into place (journal " +
        hostdirs::swap_journal_path(paths.data).string() + ")");
  }
  NPME_TRY_ASSIGN(auto lock, hostdirs::Lock::acquire(paths.data));
  NPME_TRY_ASSIGN(const std::string id, instance_id(paths.data));
  NPME_TRY_ASSIGN(auto store, store::Store::open(paths));
  if (auto epoch = store->get_meta("epoch"); epoch && !*epoch) {
    NPME_TRY(store->set_meta("epoch", "1"));
  }

  Listeners listeners;
  NPME_TRY_ASSIGN(listeners.registry, load_tls(initial, "registry"));
  NPME_TRY_ASSIGN(listeners.admin, load_tls(initial, "admin"));
  for (const auto& identity : {listeners.registry, listeners.admin}) {
    struct stat key_stat {};
    if (identity && ::stat(identity->key_file().c_str(), &key_stat) == 0 && (key_stat.st_mode & 0077) != 0) {
      log("warning: the TLS key " + identity->key_file() + " can be read by other users (chmod 600 it)");
    }
  }

  const std::size_t max_body = settings::parse_size(initial.get("registry.max_body"));
  http::ServerOptions registry_options;
  registry_options.listen = initial.get("registry.listen");
  registry_options.tls = listeners.registry;
  registry_options.max_body_bytes = max_body;
  // The server's own refusals in the registry's error shape; a body over the
  // limit names the setting, so that a refused publish says what to raise.
  registry_options.error_body = [limit = initial.get("registry.max_body")](int status, const std::string& message) {
    if (status == 413) {
      return json{{"error", message + ": over the registry's limit of " + limit + " (registry.max_body)"}}.dump();
    }
    if (status == 507) { // a publish body that could not be spooled: as the registry says it
      return json{{"error", "the registry is out of disk space; nothing was stored"}}.dump();
    }
    return json{{"error", message}}.dump();
  };
  // Publishes, logins and feed reads (long polls wait without a worker).
  registry_options.worker_threads = 16;
  registry_options.compress_json = true;
  // Publish bodies over 1 MiB go to a file as they arrive, beside the
  // tarballs they become (the same file system; cleared at start).
  registry_options.spool_dir = store->staging_dir().string();
  registry_options.max_connections_per_address = std::stoul(initial.get("registry.max_connections_per_client"));
  http::ServerOptions admin_options;
  admin_options.listen = initial.get("admin.listen");
  admin_options.tls = listeners.admin;
  admin_options.io_threads = 1;
  admin_options.worker_threads = 2;
  admin_options.max_body_bytes = 1u << 20;
  // The admin API has no trusted proxies: every address is capped.
  admin_options.max_connections_per_address = std::stoul(initial.get("admin.max_connections_per_client"));
  admin_options.error_body = [](int status, const std::string& message) {
    const Errc code = status == 413 || status == 431 ? Errc::too_large : status >= 500 ? Errc::failed : Errc::invalid;
    return admin::error_body(Error{code, message});
  };

  settings::LiveSettings live(initial);
  audit::Log audit_log(
    paths.data, [&live] { return audit::limits(*live.get()); }, log);
  // A load balancer carries many clients on its one address: those in
  // registry.trusted_proxies (read as it is now: the setting applies live)
  // are not capped.
  registry_options.uncapped_address = [&live](const std::string& address) {
    const std::string trusted = live.get()->get("registry.trusted_proxies");
    if (trusted.empty()) {
      return false;
    }
    auto proxies = util::parse_cidrs(trusted);
    return proxies && util::contains_any(*proxies, address);
  };
  console::Sessions console_sessions([&live] {
    try {
      return std::chrono::seconds(std::stoll(live.get()->get("admin.console_idle")));
    } catch (const std::exception&) {
      return std::chrono::seconds(900); // validate() admits only numbers; not expected
    }
  });
  auth::Auth auth(*store);
  registry::Registry registry(*store, auth, [&live] { return live.get(); });
  replication::Follower follower(
    *store, [&live] { return live.get(); }, paths.data, id);
  replication::Replicas replicas(*store, [&live] { return live.get(); });
  registry.set_write_gate([&replicas](http::Request& request, const std::function<http::Response()>& commit,
                                      const std::function<http::Response(const Error&)>& refuse) {
    return replicas.write(request, commit, refuse);
  });
  ha::Ha failover(
    ha::Ha::Context{*store, live, follower, id, "", "", log,
                    [&replicas](std::chrono::milliseconds limit) { return replicas.wait_writes_idle(limit); },
                    [&audit_log](const std::string& action, const std::string& detail) {
                      audit_log.record(audit::Event{"", "ha (etcd)", "", action, "", "ok", {{"why", detail}}});
                    }});
  replicas.set_term([&failover] { return failover.term(); });
  replicas.set_write_check([&failover]() -> Expected<void> {
    if (!failover.may_write()) {
      return make_error(Errc::unavailable, failover.refusal());
    }
    return {};
  });
  uplink::Service uplink_service(
    *store, [&live] { return live.get(); }, paths.data);
  // Not owned: the service outlives every request (it is stopped before the servers).
  registry.set_source(std::shared_ptr<registry::PackageSource>(&uplink_service, [](registry::PackageSource*) {}));
  registry.set_audit(&audit_log);
  // npme doctor's jobs and the scrub; a repair drops the cached copies of
  // the files it changed.
  doctor::Service doctor_service(doctor::Service::Context{
    *store, [&live] { return live.get(); }, [&registry](const std::string& name) { registry.invalidate(name); }, log});
  admin::Metrics metrics;
  // The servers are made after the admin router that serves /metrics; this
  // is set once they exist.
  std::function<std::string()> listener_metrics = [] { return std::string(); };
  auto registry_router = std::make_shared<http::Router>();
  // The feed's routes go first: "/_changes" would otherwise be read as a package name.
  replication::FeedContext feed{*store, [&live] { return live.get(); }, id,
                                [&store] { return replication::read_epoch(*store); }};
  feed.replicas = &replicas;
  feed.writable = [&failover, &live] { return ha::takes_writes(failover, *live.get()); };
  ha::add_routes(*registry_router, failover, [&live] { return live.get(); });
  replication::add_feed_routes(*registry_router, feed);
  uplink::add_routes(*registry_router, uplink_service, *store, [&live] { return live.get(); });
  registry.add_routes(*registry_router);
  registry_router->set_observer([&metrics](const http::Request& request, const http::Response& response) {
    metrics.count_request(admin::classify_registry_route(request.method, request.path), response.status);
  });
  // The follower's lag of the last hour, for the console's chart: sampled
  // at every status read and every 10 s by the signal loop below.
  replication::LagHistory lag_history;
  const std::function<json()> status_now = [&] {
    lag_history.record(follower.status());
    return status_document(live, *store, id, started, started_at, follower, uplink_service, replicas, failover,
                           listeners);
  };
  // Snapshots the console asks for, into snapshot.dir.
  snapshot::Service snapshot_service(snapshot::Service::Context{[&live] { return live.get(); }, status_now, &audit_log});
  auto admin_router = admin::make_router(admin::Context{
    *store, auth, live, status_now,
    [&] {
      return metrics.render(store_metrics(*store, follower) + disk_metrics(*live.get()) + uplink_service.metrics() +
                            replicas.metrics() + doctor_service.metrics() + registry.metrics() + audit_log.metrics() +
                            listener_metrics());
    },
    follower, paths.data, uplink_service, replicas, failover, &doctor_service, &audit_log, &console_sessions,
    listeners.admin != nullptr, &snapshot_service, &lag_history});

  http::Server registry_server(registry_options, registry_router);
  http::Server admin_server(admin_options, admin_router);
  listener_metrics = [&registry_server, &admin_server] { return connection_metrics(registry_server, admin_server); };
  NPME_TRY(registry_server.start());
  auto admin_started = admin_server.start();
  if (!admin_started) {
    registry_server.stop();
    return admin_started;
  }

  // With port 0 (tests) or an explicit --registry-listen, the URLs follow the
  // address actually bound, unless the operator set registry.url.
  initial.set_runtime("registry.listen", registry_server.address());
  initial.set_runtime("admin.listen", admin_server.address());
  listeners.admin_listen = admin_server.address();
  const std::string registry_scheme = listeners.registry ? "https://" : "http://";
  if (!initial.is_set("registry.url")) {
    initial.set_runtime("registry.url", registry_scheme + registry_server.address());
  }
  // Swap in the runtime values without touching the file.
  live.replace_runtime(initial);

  const std::string registry_url = live.get()->get("registry.url");
  const std::string admin_url = (listeners.admin ? "https://" : "http://") + admin_server.address();
  json runtime = {{"pid", static_cast<long>(::getpid())},
                  {"registry_url", registry_url},
                  {"listen_url", registry_scheme + registry_server.address()},
                  {"admin_url", admin_url},
                  {"started", started_at}};
  const auto runtime_path = paths.data / k_runtime_file;
  NPME_TRY(util::write_file_atomic(runtime_path, runtime.dump() + "\n"));
  follower.start();
  uplink_service.start();
  failover.set_addresses(registry_scheme + registry_server.address(), admin_url);
  failover.start();
  doctor_service.start();
  log("registry listening on " + registry_server.address() + (listeners.registry ? " (HTTPS)" : "") + " (" +
      registry_url + "), admin API on " + admin_server.address() + (listeners.admin ? " (HTTPS)" : "") +
      ", instance " + id);
  for (const auto& warning : listener_warnings(listeners)) {
    log("warning: " + warning);
  }

  int signal_number = 0;
  const timespec sample_every{10, 0};
  for (;;) {
    signal_number = sigtimedwait(&stop_signals, nullptr, &sample_every);
    if (signal_number < 0) { // EAGAIN (10 s went by) or EINTR
      lag_history.record(follower.status());
      continue;
    }
    if (signal_number != SIGHUP) {
      break;
    }
    reload_tls(listeners, log);
  }
  log(std::string("stopping on ") + (signal_number == SIGINT ? "SIGINT" : "SIGTERM"));

  // First: a leader hands its key over at once (and stops taking writes).
  failover.stop();
  // A doctor run under way stops at its next file; a snapshot under way
  // stops and removes what it wrote.
  doctor_service.stop();
  snapshot_service.stop();
  feed.stopping->store(true);
  // Answers the writes waiting for synchronous followers (committed: with
  // the npm-notice), so the server can stop.
  replicas.stop();
  follower.stop();
  // Answers the requests waiting on the uplink, so the server can stop.
  uplink_service.stop();
  registry_server.stop();
  admin_server.stop();
  std::error_code ec;
  std::filesystem::remove(runtime_path, ec);
  log("stopped");
  return {};
}

} // namespace npme::instance
