#include "core/admin/promotion.hpp"

#include <algorithm>

namespace npme::admin {

using nlohmann::json;

Expected<void> check_promotable(const json& status) {
  if (const auto& ha = status.value("ha", json::object()); ha.value("enabled", false) && !ha.value("paused", false)) {
    return make_error(Errc::precondition,
                      "automatic failover is on (ha.etcd): etcd decides who leads; hand the lead over with "
                      "'npme ha switchover --to ID', or 'npme ha pause' first to promote by hand");
  }
  if (status.value("role", "") != "replica") {
    return make_error(Errc::precondition, "this instance is not a replica (it has no upstream): nothing to promote");
  }
  return {};
}

// Fencing first: once the old primary is read-only, nothing it acknowledges
// can be missing from the replica that catches up with it.
Expected<json> fence_old_primary(const std::string& admin_url, const std::string& token,
                                 const PromotionProgress& progress) {
  Client old_primary(admin_url, token);
  const json body = {{"publication", "read-only"}};
  auto fenced = old_primary.call("PATCH", "/settings", &body);
  if (fenced) {
    progress(ProgressKind::info, "fenced the old primary " + admin_url + " (publication=read-only)");
    return json(admin_url);
  }
  if (fenced.error().code == Errc::unreachable) {
    progress(ProgressKind::info, "the old primary " + admin_url + " is unreachable; not fenced");
    return json(nullptr);
  }
  return make_error(fenced.error().code, "cannot fence the old primary: " + fenced.error().message);
}

namespace {

// Followers talk to the new primary directly, not through the load balancer
// that registry.url may name; a wildcard listen address can't be dialled,
// so registry.url is the fallback.
std::string upstream_for(const PromotionPlan& plan, const json& promoted) {
  if (!plan.upstream_url.empty()) {
    return plan.upstream_url;
  }
  std::string upstream = promoted.value("listen_url", "");
  if (upstream.empty() || upstream.find("://0.0.0.0") != std::string::npos ||
      upstream.find("://[::]") != std::string::npos) {
    upstream = promoted.value("registry_url", "");
  }
  return upstream;
}

Expected<void> repoint(const std::string& admin_url, const std::string& token, const json& settings) {
  Client replica(admin_url, token);
  NPME_TRY(replica.call("PATCH", "/settings", &settings));
  NPME_TRY(replica.call("POST", "/follower/reset"));
  return {};
}

} // namespace

Expected<json> run_promotion(Client& local, const PromotionPlan& plan, const PromotionProgress& progress) {
  json report = json::object();
  if (!plan.fence_url.empty()) {
    NPME_TRY_ASSIGN(report["fenced"], fence_old_primary(plan.fence_url, plan.fence_token, progress));
  }

  const json request = {{"force", plan.force}, {"wait_timeout_seconds", plan.wait_timeout_seconds}};
  NPME_TRY_ASSIGN(auto promoted, local.call("POST", "/promote", &request));
  report["promoted"] = promoted;
  const auto epoch = promoted.value("epoch", std::int64_t{0});
  progress(ProgressKind::info,
           "promoted; epoch " + std::to_string(epoch) + ", publishes go to " + promoted.value("registry_url", ""));
  progress(ProgressKind::info, promotion_position(promoted));
  if (plan.repoint_urls.empty()) {
    return report;
  }

  NPME_TRY_ASSIGN(auto secret, local.call("GET", "/settings/secret?reveal=true"));
  const std::string upstream = upstream_for(plan, promoted);
  report["upstream_url"] = upstream;
  const json settings = {{"upstream.url", upstream}, {"upstream.secret", secret.value("value", "")}};
  json results = json::array();
  std::string failed;
  for (const auto& url : plan.repoint_urls) {
    if (auto done = repoint(url, plan.repoint_token, settings); done) {
      results.push_back({{"admin_url", url}, {"ok", true}});
      progress(ProgressKind::info, "repointed " + url + " to the new primary");
    } else {
      results.push_back({{"admin_url", url}, {"ok", false}, {"error", done.error().message}});
      progress(ProgressKind::error, "cannot repoint " + url + ": " + done.error().message);
      failed += (failed.empty() ? "" : "; ") + url + ": " + done.error().message;
    }
  }
  report["repointed"] = results;
  if (!failed.empty()) {
    return make_error(Errc::failed,
                      "promoted (epoch " + std::to_string(epoch) + "), but these replicas were not repointed: " + failed);
  }
  return report;
}

std::string promotion_position(const json& promoted) {
  const auto applied = promoted.value("sequence", std::int64_t{0});
  auto known = promoted.value("old_primary_seq", json());
  if (known.is_null()) {
    known = promoted.value("last_known_primary_seq", json());
  }
  std::string position = "applied " + std::to_string(applied) + " of ";
  if (known.is_number_integer()) {
    const auto behind = std::max<std::int64_t>(0, known.get<std::int64_t>() - applied);
    position += std::to_string(known.get<std::int64_t>()) + " changes last known from the old primary (" +
                std::to_string(behind) + " behind)";
  } else {
    position += "an unknown number of changes of the old primary";
  }
  if (!promoted.value("was_synchronous", false)) {
    return "this replica was not synchronous: writes the old primary acknowledged after it was last caught up may be "
           "missing; " +
           position;
  }
  const auto confirmed = promoted.value("last_known_confirmed_seq", std::int64_t{0});
  const std::string verdict =
    confirmed <= applied
      ? "it holds every write the old primary had confirmed (up to seq " + std::to_string(confirmed) +
          ") when it last answered"
      : "it lacks confirmed writes " + std::to_string(applied + 1) + ".." + std::to_string(confirmed) +
          ": another synchronous replica holds them; promote the one with the highest position";
  return "this replica was synchronous; " + position + "; " + verdict;
}

} // namespace npme::admin
