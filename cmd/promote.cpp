#include "cmd/common.hpp"

#include "core/util/fs.hpp"

#include <iostream>

namespace npme::cmd {

namespace {

Expected<std::string> token_from_file(const std::string& flag, const std::string& path) {
  auto text = util::read_file(path);
  if (!text) {
    return make_error(Errc::usage, flag + ": " + text.error().message);
  }
  std::string token = *text;
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  return token;
}

Expected<void> confirm(const Globals& globals, const std::string& what) {
  if (globals.yes) {
    return {};
  }
  if (!stdin_is_terminal()) {
    return make_error(Errc::precondition, "confirmation needed: " + what + "; run with --yes from scripts");
  }
  std::cerr << what << "? [y/N] " << std::flush;
  std::string answer;
  std::getline(std::cin, answer);
  if (answer != "y" && answer != "Y" && answer != "yes") {
    return make_error(Errc::precondition, "not confirmed");
  }
  return {};
}

} // namespace

namespace {

// Whether this replica was synchronous, and its position against the last
// position known of the old primary: what tells an operator that nothing
// acknowledged was lost (RPO 0).
std::string promotion_position(const nlohmann::json& promoted) {
  const auto applied = promoted.value("sequence", std::int64_t{0});
  auto known = promoted.value("old_primary_seq", nlohmann::json());
  if (known.is_null()) {
    known = promoted.value("last_known_primary_seq", nlohmann::json());
  }
  std::string position = "applied " + std::to_string(applied) + " of ";
  if (known.is_number_integer()) {
    const auto behind = std::max<std::int64_t>(0, known.get<std::int64_t>() - applied);
    position += std::to_string(known.get<std::int64_t>()) + " changes last known from the old primary (" +
                std::to_string(behind) + " behind)";
  } else {
    position += "an unknown number of changes of the old primary";
  }
  const auto confirmed = promoted.value("last_known_confirmed_seq", std::int64_t{0});
  if (promoted.value("was_synchronous", false)) {
    std::string verdict;
    if (confirmed <= applied) {
      verdict = "it holds every write the old primary had confirmed (up to seq " + std::to_string(confirmed) +
                ") when it last answered";
    } else {
      verdict = "it lacks confirmed writes " + std::to_string(applied + 1) + ".." + std::to_string(confirmed) +
                ": another synchronous replica holds them; promote the one with the highest position";
    }
    return "this replica was synchronous; " + position + "; " + verdict;
  }
  return "this replica was not synchronous: writes the old primary acknowledged after it was last caught up may be "
         "missing; " + position;
}

} // namespace

void add_promote(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("promote-to-primary", "Make this replica the primary: stop its follower, clear its "
                                                       "upstream, accept publishes, raise its epoch");
  struct Flags {
    bool force = false;
    int wait_timeout = 30;
    std::string fence;
    std::string fence_token_file;
    std::vector<std::string> repoint;
    std::string repoint_token_file;
    std::string upstream_url;
  };
  auto flags = std::make_shared<Flags>();
  sub->add_flag("--force", flags->force, "Promote even if the old primary still takes writes or is ahead");
  sub->add_option("--wait-timeout", flags->wait_timeout, "Seconds to wait for catch-up with a reachable old primary")
    ->type_name("SECONDS");
  sub->add_option("--fence", flags->fence, "Admin URL of the old primary: set it read-only first")->type_name("URL");
  sub->add_option("--fence-token-file", flags->fence_token_file, "File with the old primary's admin token")
    ->type_name("FILE");
  sub->add_option("--repoint", flags->repoint, "Admin URLs of other replicas to follow the new primary")
    ->type_name("URL...");
  sub->add_option("--repoint-token-file", flags->repoint_token_file, "File with the other replicas' admin token")
    ->type_name("FILE");
  sub->add_option("--upstream-url", flags->upstream_url,
                  "Registry URL the repointed replicas follow (default: the new primary's listening address)")
    ->type_name("URL");
  sub->callback([&globals, &action, flags] {
    action = [&globals, flags]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto local, connect(globals));
      NPME_TRY_ASSIGN(auto status, local.call("GET", "/status"));
      if (const auto& ha = status.value("ha", nlohmann::json::object());
          ha.value("enabled", false) && !ha.value("paused", false)) {
        return make_error(Errc::precondition,
                          "automatic failover is on (ha.etcd): etcd decides who leads; hand the lead over with "
                          "'npme ha switchover --to ID', or 'npme ha pause' first to promote by hand");
      }
      if (status.value("role", "") != "replica") {
        return make_error(Errc::precondition,
                          "this instance is not a replica (it has no upstream): nothing to promote");
      }
      NPME_TRY(confirm(globals, "promote instance " + status.value("instance", "") + " (" +
                                  status.value("registry_url", "") + ") to primary"));
      nlohmann::json report = nlohmann::json::object();

      if (!flags->fence.empty()) {
        std::string token;
        if (!flags->fence_token_file.empty()) {
          NPME_TRY_ASSIGN(token, token_from_file("--fence-token-file", flags->fence_token_file));
        }
        admin::Client old_primary(flags->fence, token);
        nlohmann::json body = {{"publication", "read-only"}};
        auto fenced = old_primary.call("PATCH", "/settings", &body);
        if (fenced) {
          report["fenced"] = flags->fence;
          if (!globals.quiet && !globals.json) {
            std::cerr << "npme: fenced the old primary " << flags->fence << " (publication=read-only)\n";
          }
        } else if (fenced.error().code == Errc::unreachable) {
          report["fenced"] = nullptr;
          if (!globals.quiet && !globals.json) {
            std::cerr << "npme: the old primary " << flags->fence << " is unreachable; not fenced\n";
          }
        } else {
          return make_error(fenced.error().code, "cannot fence the old primary: " + fenced.error().message);
        }
      }

      nlohmann::json request = {{"force", flags->force}, {"wait_timeout_seconds", flags->wait_timeout}};
      NPME_TRY_ASSIGN(auto promoted, local.call("POST", "/promote", &request));
      report["promoted"] = promoted;
      if (!globals.quiet && !globals.json) {
        std::cerr << "npme: promoted; epoch " << promoted.value("epoch", std::int64_t{0}) << ", publishes go to "
                  << promoted.value("registry_url", "") << '\n';
        std::cerr << "npme: " << promotion_position(promoted) << '\n';
      }

      bool all_repointed = true;
      if (!flags->repoint.empty()) {
        NPME_TRY_ASSIGN(auto secret, local.call("GET", "/settings/secret?reveal=true"));
        std::string token;
        if (!flags->repoint_token_file.empty()) {
          NPME_TRY_ASSIGN(token, token_from_file("--repoint-token-file", flags->repoint_token_file));
        }
        // Followers talk to the new primary directly, not through the load
        // balancer that registry.url may name; a wildcard listen address
        // can't be dialled, so registry.url is the fallback.
        std::string upstream = flags->upstream_url;
        if (upstream.empty()) {
          upstream = promoted.value("listen_url", "");
          if (upstream.find("://0.0.0.0") != std::string::npos || upstream.find("://[::]") != std::string::npos ||
              upstream.empty()) {
            upstream = promoted.value("registry_url", "");
          }
        }
        report["upstream_url"] = upstream;
        nlohmann::json results = nlohmann::json::array();
        for (const auto& url : flags->repoint) {
          admin::Client replica(url, token);
          nlohmann::json body = {{"upstream.url", upstream},
                                 {"upstream.secret", secret.value("value", "")}};
          auto set = replica.call("PATCH", "/settings", &body);
          Expected<nlohmann::json> reset = set ? replica.call("POST", "/follower/reset")
                                               : Expected<nlohmann::json>(util::Unexpected<Error>{set.error()});
          if (reset) {
            results.push_back({{"admin_url", url}, {"ok", true}});
            if (!globals.quiet && !globals.json) {
              std::cerr << "npme: repointed " << url << " to the new primary\n";
            }
          } else {
            all_repointed = false;
            results.push_back({{"admin_url", url}, {"ok", false}, {"error", reset.error().message}});
            std::cerr << "npme: error: cannot repoint " << url << ": " << reset.error().message << '\n';
          }
        }
        report["repointed"] = results;
      }
      if (!all_repointed) {
        std::string failed;
        for (const auto& result : report["repointed"]) {
          if (!result.value("ok", false)) {
            failed += (failed.empty() ? "" : "; ") + result.value("admin_url", "") + ": " + result.value("error", "");
          }
        }
        return make_error(Errc::failed, "promoted (epoch " + std::to_string(promoted.value("epoch", std::int64_t{0})) +
                                          "), but these replicas were not repointed: " + failed);
      }
      if (globals.json) {
        print_json(report);
      }
      return {};
    };
  });
}

} // namespace npme::cmd
