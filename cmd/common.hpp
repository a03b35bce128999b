#pragma once
// What every subcommand shares: the global options, the way into a running
// instance (the admin API) and output helpers. No business logic here.

#include "core/admin/client.hpp"
#include "core/settings/settings.hpp"
#include "core/util/error.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace npme::cmd {

struct Globals {
  std::string root;             // --root, NPME_ROOT
  std::string config;           // --config, NPME_CONFIG
  std::string admin_url;        // --admin-url, NPME_ADMIN_URL
  std::string admin_token_file; // --admin-token-file
  std::string cacert;           // --cacert, NPME_CACERT
  bool json = false;
  bool quiet = false;
  bool no_color = false;
  bool yes = false;
  // Set by a command that printed its --json document before failing (npme
  // doctor with defects left): main then adds no error document.
  bool result_printed = false;
};

// The work a parsed subcommand does; errors are printed by main.
using Action = std::function<Expected<void>()>;

// Each subcommand file registers its subcommand(s) on `app`; the callback
// stores what to run in `action`.
void add_serve(CLI::App& app, Globals& globals, Action& action);
void add_status(CLI::App& app, Globals& globals, Action& action);
void add_replicas(CLI::App& app, Globals& globals, Action& action);
void add_token(CLI::App& app, Globals& globals, Action& action);
void add_user(CLI::App& app, Globals& globals, Action& action);
void add_settings(CLI::App& app, Globals& globals, Action& action);
void add_snapshot(CLI::App& app, Globals& globals, Action& action);
void add_restore(CLI::App& app, Globals& globals, Action& action);
void add_replication(CLI::App& app, Globals& globals, Action& action);
void add_promote(CLI::App& app, Globals& globals, Action& action);
void add_ha(CLI::App& app, Globals& globals, Action& action);
void add_doctor(CLI::App& app, Globals& globals, Action& action);
void add_audit(CLI::App& app, Globals& globals, Action& action);
void add_console(CLI::App& app, Globals& globals, Action& action);

// The settings file and directories selected by --root / --config.
settings::Layout layout(const Globals& globals);

// A client of the admin API of the selected instance: URL from --admin-url,
// NPME_ADMIN_URL, the running instance's runtime file, then its settings;
// token from --admin-token-file, NPME_ADMIN_TOKEN, then the settings file.
// Over https the admin API's certificate is checked against the system's
// CAs and --cacert (NPME_CACERT), or else the instance's own admin.tls_cert
// when the settings file names one that this user can read.
Expected<admin::Client> connect(const Globals& globals);

// The admin API's URL connect() would use (no token needed).
std::string admin_url(const Globals& globals);

// The CA bundle connect() trusts beside the system's for the instance of
// `loaded` (nullptr: no settings file); "" for none.
std::string admin_ca_file(const Globals& globals, const settings::Settings* loaded);

// Reads a secret from the file a flag named (`flag`: "--admin-token-file"),
// without its surrounding whitespace; a file that can't be read is a usage
// error naming the flag.
Expected<std::string> read_token_file(const std::string& flag, const std::string& path);

// Prints `doc` as one JSON document on stdout.
void print_json(const nlohmann::json& doc);

// Prints `rows` as an aligned table on stdout; the first row is the header.
void print_table(const std::vector<std::vector<std::string>>& rows);

// Returns `bytes` for people: "512 B", "1.5 MiB".
std::string human_bytes(std::uint64_t bytes);

// Returns true when standard input is a terminal.
bool stdin_is_terminal();

// Makes SIGINT and SIGTERM end the command with exit 130 (DESIGN.md §4).
// Outside an InterruptScope the process ends at once: commands that only
// read, or ask a running instance (which finishes what it was asked), have
// nothing half-done to undo. Called once, by main.
void handle_interrupts();

// While one lives, SIGINT and SIGTERM only set the flag interrupted()
// reads: for commands that write files themselves (snapshot create,
// restore), which poll it, clean up and return Errc::interrupted.
class InterruptScope {
public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};

// True once SIGINT or SIGTERM arrived during an InterruptScope.
bool interrupted();

} // namespace npme::cmd
