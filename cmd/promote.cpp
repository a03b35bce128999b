#include "cmd/common.hpp"

#include "core/admin/promotion.hpp"

#include <iostream>

namespace npme::cmd {

namespace {

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
      NPME_TRY(admin::check_promotable(status));
      NPME_TRY(confirm(globals, "promote instance " + status.value("instance", "") + " (" +
                                  status.value("registry_url", "") + ") to primary"));
      admin::PromotionPlan plan;
      plan.force = flags->force;
      plan.wait_timeout_seconds = flags->wait_timeout;
      plan.fence_url = flags->fence;
      if (!flags->fence.empty() && !flags->fence_token_file.empty()) {
        NPME_TRY_ASSIGN(plan.fence_token, read_token_file("--fence-token-file", flags->fence_token_file));
      }
      plan.repoint_urls = flags->repoint;
      if (!flags->repoint.empty() && !flags->repoint_token_file.empty()) {
        NPME_TRY_ASSIGN(plan.repoint_token, read_token_file("--repoint-token-file", flags->repoint_token_file));
      }
      plan.upstream_url = flags->upstream_url;
      const bool chatty = !globals.quiet && !globals.json;
      NPME_TRY_ASSIGN(auto report,
                      admin::run_promotion(local, plan, [chatty](admin::ProgressKind kind, const std::string& line) {
                        if (kind == admin::ProgressKind::error) {
                          std::cerr << "npme: error: " << line << '\n';
                        } else if (chatty) {
                          std::cerr << "npme: " << line << '\n';
                        }
                      }));
      if (globals.json) {
        print_json(report);
      }
      return {};
    };
  });
}

} // namespace npme::cmd
