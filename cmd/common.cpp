#include "cmd/common.hpp"

#include "core/http/tls.hpp"
#include "core/instance/instance.hpp"
#include "core/util/fs.hpp"
#include "core/util/text.hpp"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <unistd.h>

namespace npme::cmd {

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// The state the signal handler reads and writes: lock-free atomics only.
std::atomic<int> g_scopes{0};
std::atomic<bool> g_interrupted{false};
int g_interrupted_status = 130; // exit_code(Errc::interrupted), set before the handler is installed
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free);

void on_stop_signal(int) {
  if (g_scopes.load() > 0) {
    g_interrupted.store(true);
    return;
  }
  // Only async-signal-safe calls from here on.
  static const char message[] = "npme: error: interrupted\n";
  [[maybe_unused]] const auto written = ::write(STDERR_FILENO, message, sizeof(message) - 1);
  ::_exit(g_interrupted_status);
}

} // namespace

settings::Layout layout(const Globals& globals) {
  if (!globals.root.empty()) {
    return settings::Layout::from_root(globals.root);
  }
  if (!globals.config.empty()) {
    return settings::Layout::from_config(globals.config);
  }
  if (auto root = env("NPME_ROOT"); !root.empty()) {
    return settings::Layout::from_root(root);
  }
  if (auto config = env("NPME_CONFIG"); !config.empty()) {
    return settings::Layout::from_config(config);
  }
  return settings::Layout::from_config("/etc/npme/settings.json");
}

std::string admin_url(const Globals& globals) {
  auto loaded = settings::load(layout(globals));
  std::string url = globals.admin_url;
  if (url.empty()) {
    url = env("NPME_ADMIN_URL");
  }
  if (url.empty() && loaded) {
    if (auto runtime = instance::read_runtime(loaded->data_dir())) {
      url = runtime->admin_url;
    } else {
      url = (loaded->get("admin.tls_cert").empty() ? "http://" : "https://") + loaded->get("admin.listen");
    }
  }
  return url.empty() ? "http://127.0.0.1:8800" : url;
}

Expected<admin::Client> connect(const Globals& globals) {
  const auto where = layout(globals);
  auto loaded = settings::load(where);
  const std::string url = admin_url(globals);

  std::string token;
  if (!globals.admin_token_file.empty()) {
    NPME_TRY_ASSIGN(token, read_token_file("--admin-token-file", globals.admin_token_file));
  } else if (auto from_env = env("NPME_ADMIN_TOKEN"); !from_env.empty()) {
    token = std::string(util::trim(from_env));
  } else if (loaded) {
    token = loaded->get("admin.token");
  }
  if (token.empty()) {
    std::string why = loaded ? "" : " (" + loaded.error().message + ")";
    return make_error(Errc::unauthorized, "no admin token: pass --root, --config, --admin-token-file or set "
                                          "NPME_ADMIN_TOKEN" + why);
  }
  return admin::Client(url, token, admin_ca_file(globals, loaded ? &*loaded : nullptr));
}

std::string admin_ca_file(const Globals& globals, const settings::Settings* loaded) {
  if (!globals.cacert.empty()) {
    return globals.cacert;
  }
  if (loaded != nullptr) {
    // A self-signed certificate, or one whose chain ends at a CA this
    // machine does not know, is still the instance's own: trusted as it is
    // (when this user can read it, and it is one).
    const std::string own = loaded->get("admin.tls_cert");
    if (!own.empty() && http::is_pem_certificate_file(own)) {
      return own;
    }
  }
  return "";
}

Expected<std::string> read_token_file(const std::string& flag, const std::string& path) {
  auto text = util::read_file(path);
  if (!text) {
    return make_error(Errc::usage, flag + ": " + text.error().message);
  }
  return std::string(util::trim(*text));
}

void print_json(const nlohmann::json& doc) {
  std::cout << doc.dump(2) << '\n';
}

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (std::size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) {
        line += std::string(widths[i] - row[i].size() + 2, ' ');
      }
    }
    std::cout << line << '\n';
  }
}

std::string human_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return buffer;
}

bool stdin_is_terminal() {
  return ::isatty(STDIN_FILENO) == 1;
}

void handle_interrupts() {
  g_interrupted_status = exit_code(Errc::interrupted);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  // Also when started in the background by a script, where SIGINT comes
  // ignored: an operator's (or a test's) kill -INT must still stop us.
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

InterruptScope::InterruptScope() {
  g_scopes.fetch_add(1);
}

InterruptScope::~InterruptScope() {
  g_scopes.fetch_sub(1);
}

bool interrupted() {
  return g_interrupted.load();
}

} // namespace npme::cmd
