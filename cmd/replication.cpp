#include "cmd/common.hpp"

#include "core/instance/offline.hpp"

#include <chrono>
#include <iostream>
#include <thread>

namespace npme::cmd {

namespace {

// Polls the status until the follower has caught up with the upstream seq
// it reports, or `timeout` passes (Errc::timeout: the resync goes on).
Expected<nlohmann::json> wait_caught_up(admin::Client& client, std::chrono::seconds timeout, bool quiet) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last_error;
  while (true) {
    NPME_TRY_ASSIGN(auto status, client.call("GET", "/status"));
    const auto follower = status.value("follower", nlohmann::json::object());
    const auto state = follower.value("state", "");
    const auto upstream_seq = follower.value("upstream_seq", nlohmann::json());
    if (state == "caught-up" && upstream_seq.is_number_integer() &&
        follower.value("sequence", std::int64_t{-1}) >= upstream_seq.get<std::int64_t>()) {
      return follower;
    }
    if (state == "error" && !quiet) {
      auto message = follower.value("last_error", nlohmann::json());
      if (message.is_string() && message.get<std::string>() != last_error) {
        last_error = message.get<std::string>();
        std::cerr << "npme: follower error (retrying): " << last_error << '\n';
      }
    }
    if (state == "stopped" || state == "disabled") {
      return make_error(Errc::failed, "the follower is " + state);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return make_error(Errc::timeout, "the follower has not caught up after " + std::to_string(timeout.count()) +
                                         " s (at " + std::to_string(follower.value("sequence", std::int64_t{0})) +
                                         " of " + upstream_seq.dump() + "); it goes on in the background");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

} // namespace

void add_replication(CLI::App& app, Globals& globals, Action& action) {
  auto* reset = app.add_subcommand("reset-follower", "Resync from the upstream: stop the follower, empty "
                                                     "'sequence', start it (downloads only missing tarballs)");
  auto offline = std::make_shared<bool>(false);
  auto wait = std::make_shared<bool>(false);
  auto timeout = std::make_shared<int>(600);
  reset->add_flag("--offline", *offline, "Empty the 'sequence' file of a stopped instance instead");
  reset->add_flag("--wait", *wait, "Wait until the follower has caught up (exit 7 on --timeout)");
  reset->add_option("--timeout", *timeout, "Seconds --wait waits (default 600)")->type_name("SECONDS");
  reset->callback([&globals, &action, offline, wait, timeout] {
    action = [&globals, offline, wait, timeout]() -> Expected<void> {
      if (*offline) {
        NPME_TRY(instance::reset_follower_offline(layout(globals)));
        if (globals.json) {
          print_json({{"ok", true}, {"offline", true}});
        } else if (!globals.quiet) {
          std::cerr << "npme: emptied the follower's sequence; the next start resyncs from the upstream\n";
        }
        return {};
      }
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY(client.call("POST", "/follower/reset"));
      nlohmann::json result = {{"ok", true}};
      if (*wait) {
        NPME_TRY_ASSIGN(auto follower, wait_caught_up(client, std::chrono::seconds(*timeout), globals.quiet));
        result["follower"] = follower;
      }
      if (globals.json) {
        print_json(result);
      } else if (!globals.quiet) {
        std::cerr << (*wait ? "npme: the follower was reset and has caught up\n"
                            : "npme: the follower was reset and is resyncing (see 'npme status')\n");
      }
      return {};
    };
  });

  auto name = std::make_shared<std::string>();
  auto* add = app.add_subcommand("add-package", "Add a package to the white-list and fetch it from the upstream now");
  add->add_option("NAME", *name, "Package name")->required();
  add->callback([&globals, &action, name] {
    action = [&globals, name]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      nlohmann::json body = {{"name", *name}};
      NPME_TRY_ASSIGN(auto result, client.call("POST", "/whitelist", &body));
      if (globals.json) {
        print_json(result);
      } else if (!globals.quiet) {
        std::cerr << "npme: added " << *name << " to the white-list"
                  << (result.value("fetched", false) ? " and fetched it" : "") << '\n';
      }
      return {};
    };
  });

  auto removed = std::make_shared<std::string>();
  auto* remove = app.add_subcommand("remove-package", "Remove a package from the white-list (stops following it)");
  remove->add_option("NAME", *removed, "Package name")->required();
  remove->callback([&globals, &action, removed] {
    action = [&globals, removed]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto result, client.call("DELETE", "/whitelist/" + *removed));
      if (globals.json) {
        print_json(result);
      } else if (!globals.quiet) {
        std::cerr << "npme: removed " << *removed << " from the white-list\n";
      }
      return {};
    };
  });
}

} // namespace npme::cmd
