#pragma once
// An instance: the registry, the admin API (and later the follower) over one
// store, with the instance lock, identity and signal handling.

#include "core/settings/settings.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

namespace npme::instance {

struct ServeOptions {
  settings::Layout layout;
  std::optional<std::string> registry_listen; // overrides registry.listen for this run
  std::optional<std::string> admin_listen;    // overrides admin.listen for this run
};

// Runs an instance until SIGTERM or SIGINT, then stops cleanly. Creates the
// settings file and host directories on first start. `log` receives one-line
// diagnostics ("registry listening on ...").
Expected<void> serve(const ServeOptions& options, const std::function<void(const std::string&)>& log);

// What a running instance wrote to `<data>/runtime.json` once it listened.
struct Runtime {
  long pid = 0;
  std::string registry_url; // registry.url: what clients use (maybe a load balancer)
  std::string listen_url;   // the address it listens on, for followers
  std::string admin_url;
};

// Reads `<data>/runtime.json` when the instance of `data_dir` is running.
std::optional<Runtime> read_runtime(const std::filesystem::path& data_dir);

// Returns the instance id kept in `<data>/instance-id`, creating it if missing.
Expected<std::string> instance_id(const std::filesystem::path& data_dir);

} // namespace npme::instance
