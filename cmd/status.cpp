#include "cmd/common.hpp"

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace npme::cmd {

namespace {

std::string text(const nlohmann::json& value) {
  if (value.is_string()) {
    return value.get<std::string>();
  }
  if (value.is_null()) {
    return "-";
  }
  return value.dump();
}

// "<sequence> of <upstream_seq>": how far the follower got in the upstream's change log.
std::string follower_position(const nlohmann::json& follower) {
  auto sequence = follower.value("sequence", nlohmann::json());
  if (sequence.is_null()) {
    return "-";
  }
  auto upstream = follower.value("upstream_seq", nlohmann::json());
  return text(sequence) + (upstream.is_null() ? "" : " of " + text(upstream));
}

std::string follower_lag(const nlohmann::json& follower) {
  auto changes = follower.value("lag_changes", nlohmann::json());
  auto seconds = follower.value("lag_seconds", nlohmann::json());
  if (changes.is_null() && seconds.is_null()) {
    return "-";
  }
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%s changes, %.1f s", text(changes).c_str(),
                seconds.is_number() ? seconds.get<double>() : 0.0);
  return buffer;
}

} // namespace

void add_status(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("status", "Show role, publication, upstream, follower, counts and health");
  sub->callback([&globals, &action] {
    action = [&globals]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto doc, client.call("GET", "/status"));
      if (globals.json) {
        print_json(doc);
        return {};
      }
      const auto& counts = doc.value("counts", nlohmann::json::object());
      const auto& upstream = doc.value("upstream", nlohmann::json::object());
      const auto& follower = doc.value("follower", nlohmann::json::object());
      std::vector<std::vector<std::string>> rows = {
        {"instance", text(doc.value("instance", nlohmann::json()))},
        {"role", text(doc.value("role", nlohmann::json()))},
        {"publication", text(doc.value("publication", nlohmann::json()))},
        {"auth installs", text(doc.value("auth_installs", nlohmann::json()))},
        {"registry url", text(doc.value("registry_url", nlohmann::json()))},
        {"upstream", upstream.value("url", "").empty() ? "-" : upstream.value("url", "")},
        {"upstream policy", text(upstream.value("policy", nlohmann::json()))},
        {"epoch", text(doc.value("epoch", nlohmann::json()))},
        {"update seq", text(doc.value("update_seq", nlohmann::json()))},
        {"packages", text(counts.value("packages", nlohmann::json()))},
        {"versions", text(counts.value("versions", nlohmann::json()))},
        {"tarballs", text(counts.value("tarballs", nlohmann::json())) + " (" +
                       human_bytes(static_cast<std::uint64_t>(
                         std::max<std::int64_t>(0, counts.value("tarball_bytes", std::int64_t{0})))) +
                       ")"},
        {"version", text(doc.value("version", nlohmann::json()))},
        {"uptime", text(doc.value("uptime_seconds", nlohmann::json())) + " s"},
        {"health", text(doc.value("health", nlohmann::json()))},
      };
      // A primary has no follower: no follower lines (a replica's stopped
      // or failing follower still shows them).
      if (follower.value("state", "disabled") != "disabled") {
        const auto at = std::find_if(rows.begin(), rows.end(), [](const auto& row) { return row[0] == "epoch"; });
        rows.insert(at, {{"follower", text(follower.value("state", nlohmann::json()))},
                         {"follower position", follower_position(follower)},
                         {"follower lag", follower_lag(follower)}});
      }
      // Free space of each host directory ("low" below storage.min_free).
      for (const auto& entry : doc.value("disk", nlohmann::json::array())) {
        const std::string name = "disk " + entry.value("dir", "");
        if (entry.contains("error")) {
          rows.push_back({name, "unknown: " + entry.value("error", "")});
          continue;
        }
        rows.push_back({name, human_bytes(entry.value("free_bytes", std::uint64_t{0})) + " free of " +
                                human_bytes(entry.value("total_bytes", std::uint64_t{0})) +
                                (entry.value("low", false) ? " (LOW)" : "")});
      }
      // The follower's last error is the first thing an operator of a stuck replica needs.
      if (auto error = follower.value("last_error", nlohmann::json()); error.is_string() && !error.empty()) {
        rows.push_back({"follower error", error.get<std::string>()});
      }
      // The primary's view of its followers, short (npme replicas has the table).
      const auto& replicas = doc.value("replicas", nlohmann::json::object());
      const auto& sync = doc.value("sync", nlohmann::json::object());
      if (replicas.value("connected", 0) > 0 || replicas.value("gone", 0) > 0) {
        char line[160];
        std::snprintf(line, sizeof line, "%d connected (%d synchronous), %d gone; max lag %lld changes, %.1f s",
                      replicas.value("connected", 0), replicas.value("synchronous", 0), replicas.value("gone", 0),
                      static_cast<long long>(replicas.value("max_lag_changes", 0LL)),
                      replicas.value("max_lag_seconds", 0.0));
        rows.push_back({"replicas", line});
      }
      if (sync.value("required", 0) > 0) {
        rows.push_back({"sync replication", std::to_string(sync.value("connected", 0)) + " of " +
                                              std::to_string(sync.value("required", 0)) + " connected, " +
                                              sync.value("mode", "") + ", " + sync.value("state", "") +
                                              "; unconfirmed writes " + std::to_string(sync.value("unconfirmed", 0)) +
                                              ", refused " + std::to_string(sync.value("refused", 0))});
      }
      if (follower.value("state", "disabled") != "disabled") {
        rows.push_back({"follower synchronous", follower.value("synchronous", false) ? "yes" : "no"});
      }
      if (const auto& ha = doc.value("ha", nlohmann::json::object()); ha.value("enabled", false)) {
        const auto leader = ha.value("leader", nlohmann::json());
        rows.push_back({"failover", std::string("automatic (etcd") + (ha.value("paused", false) ? ", PAUSED" : "") +
                                      "), " + ha.value("role", "") + "; leader " +
                                      (leader.is_string() ? leader.get<std::string>() : std::string("none"))});
        if (auto error = ha.value("last_error", nlohmann::json()); error.is_string() && !error.empty()) {
          rows.push_back({"failover error", error.get<std::string>()});
        }
      }
      const auto& uplink = doc.value("uplink", nlohmann::json::object());
      if (uplink.value("state", "disabled") != "disabled") {
        rows.push_back({"uplink", uplink.value("url", "") + " (" + uplink.value("policy", "") + ", " +
                                    uplink.value("state", "") + ")"});
        rows.push_back({"uplink names", std::to_string(uplink.value("names", 0))});
        if (auto error = uplink.value("last_error", nlohmann::json()); error.is_string() && !error.empty()) {
          rows.push_back({"uplink error", uplink.value("last_error_time", "") + " " + error.get<std::string>()});
        }
      }
      // HTTPS per listener: the certificate in use.
      for (const char* listener : {"registry", "admin"}) {
        const auto tls = doc.value("tls", nlohmann::json::object()).value(listener, nlohmann::json());
        if (tls.is_object()) {
          rows.push_back({std::string(listener) + " tls", tls.value("subject", "") + ", serial " +
                                                            tls.value("serial", "") + ", valid until " +
                                                            tls.value("not_after", "")});
        }
      }
      for (const auto& warning : doc.value("warnings", nlohmann::json::array())) {
        if (warning.is_string()) {
          rows.push_back({"warning", warning.get<std::string>()});
        }
      }
      print_table(rows);
      return {};
    };
  });
}

} // namespace npme::cmd
