#include "cmd/common.hpp"

#include <cstdio>

namespace npme::cmd {

namespace {

std::string seconds_text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f s", value);
  return buffer;
}

std::string ago(const nlohmann::json& row) {
  const double seconds = row.value("seen_seconds_ago", 0.0);
  return seconds < 0.05 ? "now" : seconds_text(seconds) + " ago";
}

} // namespace

// "npme replicas": the followers of this instance, as it sees them
// (GET /api/v1/replicas, DESIGN.md §10).
void add_replicas(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("replicas", "Show the followers of this instance: position, lag, last seen, "
                                             "synchronous or not");
  sub->callback([&globals, &action] {
    action = [&globals]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto doc, client.call("GET", "/replicas"));
      if (globals.json) {
        print_json(doc);
        return {};
      }
      const auto& sync = doc.value("sync", nlohmann::json::object());
      const auto required = sync.value("required", std::int64_t{0});
      std::printf("update seq %lld; synchronous replication: ", static_cast<long long>(doc.value("update_seq", 0LL)));
      if (required == 0) {
        std::printf("off (replication.sync_replicas=0)\n");
      } else {
        std::printf("%lld of %lld required connected, %s, %s (timeout %lld s); confirmed %lld, unconfirmed %lld, "
                    "refused %lld\n",
                    static_cast<long long>(sync.value("connected", 0LL)), static_cast<long long>(required),
                    sync.value("mode", "").c_str(), sync.value("state", "").c_str(),
                    static_cast<long long>(sync.value("timeout_seconds", 0LL)),
                    static_cast<long long>(sync.value("confirmed", 0LL)),
                    static_cast<long long>(sync.value("unconfirmed", 0LL)),
                    static_cast<long long>(sync.value("refused", 0LL)));
      }
      const auto& replicas = doc.value("replicas", nlohmann::json::array());
      if (replicas.empty()) {
        std::printf("no followers\n");
        return {};
      }
      std::vector<std::vector<std::string>> rows = {
        {"INSTANCE", "URL", "STATE", "SYNC", "APPLIED", "LAG", "LAG TIME", "LAST SEEN", "ADDRESS"}};
      for (const auto& row : replicas) {
        rows.push_back({row.value("instance", ""), row.value("url", "").empty() ? "-" : row.value("url", ""),
                        row.value("state", ""), row.value("synchronous", false) ? "sync" : "async",
                        std::to_string(row.value("applied_seq", 0LL)), std::to_string(row.value("lag_changes", 0LL)),
                        seconds_text(row.value("lag_seconds", 0.0)), ago(row), row.value("address", "")});
      }
      print_table(rows);
      return {};
    };
  });
}

} // namespace npme::cmd
