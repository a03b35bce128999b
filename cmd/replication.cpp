#include "cmd/common.hpp"

#include "core/http/message.hpp"
#include "core/instance/offline.hpp"
#include "core/registry/lockfile.hpp"
#include "core/util/fs.hpp"

#include <chrono>
#include <iostream>
#include <thread>

#include <unistd.h>

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

  struct AddOptions {
    std::vector<std::string> specs;
    bool no_deps = false;
    bool prefetch = false;
    std::string lockfile;
    int timeout = 3600;
  };
  auto add_options = std::make_shared<AddOptions>();
  auto* add = app.add_subcommand(
    "add-package", "Add packages: from the uplink with their dependencies (and tarballs with --prefetch), or to the "
                   "follower's white-list on a replica");
  add->add_option("NAME", add_options->specs, "Package names, each with an optional @RANGE (uplink only)");
  add->add_flag("--no-deps", add_options->no_deps, "Take only the named packages, not their dependencies");
  add->add_flag("--prefetch", add_options->prefetch,
                "Also download the chosen versions' tarballs, so installs work with the uplink unplugged");
  add->add_option("--from-lockfile", add_options->lockfile,
                  "Import exactly the versions of an npm package-lock.json (v2/v3) with their tarballs")
    ->type_name("FILE");
  add->add_option("--timeout", add_options->timeout, "Seconds to wait for the import (default 3600; exit 7 after)")
    ->type_name("SECONDS");
  add->callback([&globals, &action, add_options] {
    action = [&globals, add_options]() -> Expected<void> {
      const AddOptions& o = *add_options;
      if (o.specs.empty() && o.lockfile.empty()) {
        return make_error(Errc::usage, "add-package: name at least one package, or --from-lockfile FILE");
      }
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto status, client.call("GET", "/status"));
      const bool replica = status.value("role", "") == "replica";
      if (replica) {
        // npmE's meaning on a replica: the follower's white-list.
        if (!o.lockfile.empty() || o.prefetch) {
          return make_error(Errc::usage, "add-package: --from-lockfile and --prefetch need an instance with an "
                                         "uplink; this one is a replica (its upstream decides)");
        }
        nlohmann::json results = nlohmann::json::array();
        for (const auto& spec : o.specs) {
          nlohmann::json body = {{"name", spec}};
          NPME_TRY_ASSIGN(auto result, client.call("POST", "/whitelist", &body));
          results.push_back(result);
          if (!globals.json && !globals.quiet) {
            std::cerr << "npme: added " << spec << " to the white-list"
                      << (result.value("fetched", false) ? " and fetched it" : "") << '\n';
          }
        }
        if (globals.json) {
          // One name: the same document as before names could be listed.
          print_json(results.size() == 1 ? results[0] : nlohmann::json{{"ok", true}, {"packages", results}});
        }
        return {};
      }
      nlohmann::json body = {{"dependencies", !o.no_deps}, {"prefetch", o.prefetch}};
      body["packages"] = o.specs;
      if (!o.lockfile.empty()) {
        NPME_TRY_ASSIGN(auto text, util::read_file(o.lockfile));
        NPME_TRY_ASSIGN(auto locked, registry::parse_lockfile(text));
        nlohmann::json list = nlohmann::json::array();
        for (const auto& package : locked) {
          list.push_back({{"name", package.name}, {"version", package.version}, {"integrity", package.integrity}});
        }
        body["locked"] = std::move(list);
      }
      NPME_TRY_ASSIGN(auto started, client.call("POST", "/uplink/packages", &body));
      const std::string id = started.value("job", "");
      const bool bar = !globals.json && !globals.quiet && ::isatty(STDERR_FILENO) != 0;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.timeout);
      nlohmann::json job;
      while (true) {
        NPME_TRY_ASSIGN(job, client.call("GET", "/uplink/jobs/" + id));
        if (bar) {
          std::cerr << "\r\033[Knpme: add-package " << job.value("done", 0) << "/" << job.value("total", 0) << " "
                    << job.value("current", "") << std::flush;
        }
        if (job.value("state", "") != "running") {
          break;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
          return make_error(Errc::timeout, "add-package: not finished after " + std::to_string(o.timeout) +
                                             " s; it goes on in the background (job " + id + ")");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (bar) {
        std::cerr << "\r\033[K";
      }
      const auto errors = job.value("errors", nlohmann::json::array());
      if (globals.json) {
        print_json(job);
      } else if (!globals.quiet) {
        std::cerr << "npme: took " << job.value("packages", nlohmann::json::array()).size() << " package version(s), "
                  << job.value("tarballs", 0) << " tarball(s) (" << human_bytes(job.value("tarball_bytes", 0))
                  << ")\n";
        for (const auto& error : errors) {
          std::cerr << "npme: error: " << error.value("name", "") << ": " << error.value("message", "") << '\n';
        }
      }
      if (!errors.empty()) {
        return make_error(Errc::failed, "add-package: " + std::to_string(errors.size()) + " package(s) failed");
      }
      return {};
    };
  });

  auto refreshed = std::make_shared<std::string>();
  auto* refresh = app.add_subcommand("refresh", "Revalidate a package held from the uplink now");
  refresh->add_option("NAME", *refreshed, "Package name")->required();
  refresh->callback([&globals, &action, refreshed] {
    action = [&globals, refreshed]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto result, client.call("POST", "/uplink/refresh/" + http::percent_encode(*refreshed, "@")));
      if (globals.json) {
        print_json(result);
      } else if (!globals.quiet) {
        std::cerr << "npme: " << *refreshed
                  << (result.value("stale", false) ? " could not be revalidated: " + result.value("message", "")
                      : result.value("changed", false) ? " was updated from the uplink"
                                                       : " is up to date")
                  << '\n';
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
