#include "cmd/common.hpp"

#include <cstdio>
#include <iostream>

namespace npme::cmd {

namespace {

std::string text_or(const nlohmann::json& doc, const char* key, const std::string& fallback) {
  auto it = doc.find(key);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : fallback;
}

// The human form of GET /api/v1/ha.
void print_cluster(const nlohmann::json& doc) {
  const auto& leader = doc.value("leader", nlohmann::json());
  std::printf("cluster %s: ", doc.value("cluster", "").c_str());
  if (leader.is_object()) {
    std::printf("leader %s (%s), epoch %lld, lease %lld of %lld s left\n", leader.value("instance", "").c_str(),
                leader.value("url", "").c_str(), static_cast<long long>(leader.value("epoch", 0LL)),
                static_cast<long long>(leader.value("lease_ttl", 0LL)),
                static_cast<long long>(leader.value("lease_granted", 0LL)));
  } else {
    std::printf("no leader\n");
  }
  if (doc.value("paused", false)) {
    std::printf("automatic failover is PAUSED ('npme ha resume' ends it)\n");
  }
  if (doc.contains("switchover") && doc["switchover"].is_object()) {
    std::printf("switchover under way: %s -> %s\n", text_or(doc["switchover"], "from", "?").c_str(),
                text_or(doc["switchover"], "to", "?").c_str());
  }
  std::vector<std::vector<std::string>> rows = {
    {"INSTANCE", "ROLE", "URL", "POSITION", "LAG", "SYNC", "SECRET", "FOLLOWER", "ADMIN"}};
  for (const auto& member : doc.value("members", nlohmann::json::array())) {
    const auto& lag = member.value("lag", nlohmann::json());
    rows.push_back(
      {member.value("instance", ""), member.value("role", ""), member.value("url", ""),
       std::to_string(member.value("position", 0LL)), lag.is_number() ? std::to_string(lag.get<long long>()) : "-",
       member.value("synchronous", false) ? "sync" : "async", member.value("secret_ok", true) ? "ok" : "REFUSED",
       text_or(member, "follower_state", "-"), member.value("admin_url", "")});
  }
  print_table(rows);
  const auto& winner = doc.value("would_win", nlohmann::json());
  std::printf("if the leader went now: %s\n", winner.is_string() ? (winner.get<std::string>() + " would lead").c_str()
                                                                 : "no member is eligible (see excluded in --json)");
  const auto excluded = doc.value("excluded", nlohmann::json::object()); // items() must not outlive it
  for (const auto& [instance, reason] : excluded.items()) {
    std::printf("  %s may not lead: %s\n", instance.c_str(), reason.get<std::string>().c_str());
  }
}

} // namespace

// "npme ha": automatic failover on etcd (README, "Automatic failover with etcd").
void add_ha(CLI::App& app, Globals& globals, Action& action) {
  auto* ha = app.add_subcommand("ha", "Automatic failover on etcd: status, switchover, pause and resume");
  ha->require_subcommand(1);

  auto* status = ha->add_subcommand("status", "Show the members, the leader, its lease, each member's lag, and who "
                                              "would lead if the leader went now");
  status->callback([&globals, &action] {
    action = [&globals]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto doc, client.call("GET", "/ha"));
      if (globals.json) {
        print_json(doc);
      } else {
        print_cluster(doc);
      }
      return {};
    };
  });

  auto to = std::make_shared<std::string>();
  auto timeout = std::make_shared<int>(60);
  auto* switchover = ha->add_subcommand("switchover", "Hand the lead over to member ID without losing a write: "
                                                      "the leader stops taking writes, waits for ID to catch up, "
                                                      "and ID takes the lead");
  switchover->add_option("--to", *to, "Instance id of the member to lead (see npme ha status)")
    ->required()
    ->type_name("ID");
  switchover->add_option("--timeout", *timeout, "Seconds to wait for the hand-over (default 60)")
    ->check(CLI::Range(1, 3600))
    ->type_name("S");
  switchover->callback([&globals, &action, to, timeout] {
    action = [&globals, to, timeout]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      client.set_timeout(std::chrono::seconds(*timeout + 15));
      nlohmann::json body = {{"to", *to}, {"timeout_seconds", *timeout}};
      NPME_TRY_ASSIGN(auto done, client.call("POST", "/ha/switchover", &body));
      if (globals.json) {
        print_json(done);
      } else if (!globals.quiet) {
        std::fprintf(stderr, "npme: %s now leads (epoch %lld), handed over by %s in %.1f s\n",
                     done.value("to", "").c_str(), static_cast<long long>(done.value("epoch", 0LL)),
                     done.value("from", "").c_str(), done.value("seconds", 0.0));
      }
      return {};
    };
  });

  for (const bool pause : {true, false}) {
    auto* sub = ha->add_subcommand(pause ? "pause" : "resume",
                                   pause ? "Pause automatic failover for maintenance: no member takes the lead by "
                                           "itself, and promote-to-primary works by hand"
                                         : "Resume automatic failover after 'npme ha pause'");
    sub->callback([&globals, &action, pause] {
      action = [&globals, pause]() -> Expected<void> {
        NPME_TRY_ASSIGN(auto client, connect(globals));
        NPME_TRY_ASSIGN(auto done, client.call("POST", pause ? "/ha/pause" : "/ha/resume"));
        if (globals.json) {
          print_json(done);
        } else if (!globals.quiet) {
          std::fprintf(stderr, "npme: automatic failover %s\n", pause ? "paused" : "resumed");
        }
        return {};
      };
    });
  }
}

} // namespace npme::cmd
