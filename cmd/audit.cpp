#include "cmd/common.hpp"

#include "core/audit/audit.hpp"
#include "core/auth/policy.hpp"
#include "core/http/message.hpp"
#include "core/instance/instance.hpp"
#include "core/util/time.hpp"

#include <iostream>

namespace npme::cmd {

namespace {

// The events from the running instance's admin API, or, when no instance
// runs, from the data directory's files directly.
Expected<nlohmann::json> fetch_events(const Globals& globals, const std::string& since, std::size_t limit) {
  std::string path = "/audit?limit=" + std::to_string(limit);
  if (!since.empty()) {
    path += "&since=" + http::percent_encode(since);
  }
  auto client = connect(globals);
  if (client) {
    auto answer = client->call("GET", path);
    if (answer || answer.error().code != Errc::unreachable) {
      return answer;
    }
  }
  // Not running (or no token): the files, when this user can read them.
  auto loaded = settings::load(layout(globals));
  if (!loaded) {
    return client ? make_error(Errc::unreachable, "no instance answers and " + loaded.error().message)
                  : util::Unexpected<Error>{client.error()};
  }
  if (instance::read_runtime(loaded->data_dir())) {
    return make_error(Errc::unreachable, "the instance runs but its admin API does not answer");
  }
  std::optional<std::chrono::system_clock::time_point> from;
  if (!since.empty()) {
    if (auto at = util::parse_iso8601(since)) {
      from = *at;
    } else if (auto ago = auth::parse_duration(since)) {
      from = std::chrono::system_clock::now() - *ago;
    } else {
      return make_error(Errc::usage, "--since: expected an ISO 8601 UTC time (2026-12-01T00:00:00Z) or a duration "
                                     "back from now (24h, 7d), not '" + since + "'");
    }
  }
  NPME_TRY_ASSIGN(auto events, audit::read(loaded->data_dir(), from, limit));
  nlohmann::json list = nlohmann::json::array();
  for (const auto& event : events) {
    list.push_back(nlohmann::json::parse(audit::to_line(event)));
  }
  if (!globals.quiet && !globals.json) {
    std::cerr << "npme: the instance is not running: read from " << audit::log_path(loaded->data_dir()).string()
              << "\n";
  }
  return nlohmann::json{{"events", list}};
}

std::string text_of(const nlohmann::json& value) {
  if (value.is_string()) {
    return value.get<std::string>();
  }
  return value.is_null() ? "" : value.dump();
}

} // namespace

void add_audit(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("audit", "Show the audit log: logins, token, user and settings changes, "
                                          "resets, promotions, snapshots, restores, refused admin tokens");
  auto since = std::make_shared<std::string>();
  auto limit = std::make_shared<std::size_t>(1000);
  sub->add_option("--since", *since, "Only events at or after this UTC time (ISO 8601) or this long ago (24h, 7d)")
    ->type_name("TIME");
  sub->add_option("--limit", *limit, "At most the newest N events (default 1000)")
    ->type_name("N")
    ->check(CLI::Range(1, 100000));
  sub->callback([&globals, &action, since, limit] {
    action = [&globals, since, limit]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto doc, fetch_events(globals, *since, *limit));
      if (globals.json) {
        print_json(doc);
        return {};
      }
      std::vector<std::vector<std::string>> rows = {{"TIME", "ACTOR", "ADDRESS", "ACTION", "TARGET", "RESULT", "DETAIL"}};
      for (const auto& event : doc.value("events", nlohmann::json::array())) {
        rows.push_back({text_of(event.value("time", nlohmann::json())), text_of(event.value("actor", nlohmann::json())),
                        text_of(event.value("address", nlohmann::json())),
                        text_of(event.value("action", nlohmann::json())),
                        text_of(event.value("target", nlohmann::json())),
                        text_of(event.value("result", nlohmann::json())),
                        text_of(event.value("detail", nlohmann::json()))});
      }
      print_table(rows);
      return {};
    };
  });
}

} // namespace npme::cmd
