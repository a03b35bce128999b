#pragma once
// The admin API (DESIGN.md §6): JSON over HTTP under /api/v1, protected by
// `admin.token`. Every CLI command that talks to an instance goes through it.

#include "core/audit/audit.hpp"
#include "core/auth/auth.hpp"
#include "core/console/sessions.hpp"
#include "core/doctor/service.hpp"
#include "core/http/server.hpp"
#include "core/replication/follower.hpp"
#include "core/replication/lag_history.hpp"
#include "core/ha/ha.hpp"
#include "core/replication/replicas.hpp"
#include "core/settings/settings.hpp"
#include "core/snapshot/service.hpp"
#include "core/store/store.hpp"
#include "core/uplink/service.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>

namespace npme::admin {

struct Context {
  store::Store& store;
  auth::Auth& auth;
  settings::LiveSettings& settings;
  // Returns the status document of the instance (GET /api/v1/status).
  std::function<nlohmann::json()> status;
  // Returns the Prometheus text of the instance (GET /metrics).
  std::function<std::string()> metrics;
  replication::Follower& follower;
  std::filesystem::path data_dir;
  uplink::Service& uplink;
  // This instance's followers; user and token changes wait for synchronous ones.
  replication::Replicas& replicas;
  // Automatic failover (core/ha/ha.hpp): `npme ha`, and promote-to-primary's check.
  ha::Ha& ha;
  // `npme doctor` against this instance (a job per run) and the scrub;
  // null: the doctor routes answer 409 (an admin API without one).
  doctor::Service* doctor = nullptr;
  // Where admin actions, and refused admin tokens, are recorded (GET
  // /api/v1/audit reads it back); null: nothing recorded.
  audit::Log* audit = nullptr;
  // The console's sessions (core/console): a session cookie is accepted
  // like the admin token, with the CSRF check; null: no console.
  console::Sessions* sessions = nullptr;
  // The admin API is served over https (the console's cookie is Secure).
  bool tls = false;
  // Snapshots into snapshot.dir, for the console (GET/POST /api/v1/snapshots);
  // null: those routes answer 409.
  snapshot::Service* snapshots = nullptr;
  // The follower's lag over the last hour (GET /api/v1/follower/lag); null: none kept.
  replication::LagHistory* lag = nullptr;
};

// Returns the body of an admin error: {"error":{"code":"...","message":"..."}}.
std::string error_body(const Error& error);

// Builds the admin API's routes over `context`, which must outlive them.
std::shared_ptr<const http::Router> make_router(const Context& context);

} // namespace npme::admin
