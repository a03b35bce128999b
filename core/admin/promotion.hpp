#pragma once
// A manual failover, run against admin APIs: fence the old primary, promote
// this replica, repoint the other replicas at it. `npme promote-to-primary`
// is a thin command over this sequence; the promotion itself (catch-up,
// epoch, settings) happens inside the replica (replication::promote).

#include "core/admin/client.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace npme::admin {

struct PromotionPlan {
  // Promote even if the old primary still takes writes or is ahead.
  bool force = false;
  // Seconds to wait for catch-up with a reachable old primary.
  int wait_timeout_seconds = 30;
  // The old primary's admin URL (empty: not fenced) and its admin token.
  std::string fence_url;
  std::string fence_token;
  // Admin URLs of the replicas to repoint, and their admin token.
  std::vector<std::string> repoint_urls;
  std::string repoint_token;
  // Registry URL the repointed replicas follow (empty: the new primary's
  // listening address, or its registry.url when that address is a wildcard).
  std::string upstream_url;
};

enum class ProgressKind { info, error };
// Sees one line per step done ("fenced the old primary ...").
using PromotionProgress = std::function<void(ProgressKind kind, const std::string& line)>;

// Refuses (Errc::precondition) when `status` (the local GET /status) shows
// an instance that is not a replica, or one whose lead etcd decides.
Expected<void> check_promotable(const nlohmann::json& status);

// Sets the old primary at `admin_url` read-only (PATCH publication) with its
// admin `token`: the old primary's URL, or null when it is unreachable
// (reported, not fatal); an error when it answers with a refusal.
Expected<nlohmann::json> fence_old_primary(const std::string& admin_url, const std::string& token,
                                           const PromotionProgress& progress);

// Runs the sequence on the replica behind `local`: sets the old primary
// read-only (an unreachable one is reported, not fatal; a refusal is),
// promotes, then repoints every replica of `plan`. Returns the report
// ({"fenced", "promoted", "upstream_url", "repointed"}); a replica not
// repointed makes it an Errc::failed error naming each one, after the
// promotion (which stands).
Expected<nlohmann::json> run_promotion(Client& local, const PromotionPlan& plan, const PromotionProgress& progress);

// One sentence on what the promoted replica holds against the last known
// position of the old primary (RPO 0 or not), from the answer of
// POST /promote.
std::string promotion_position(const nlohmann::json& promoted);

} // namespace npme::admin
