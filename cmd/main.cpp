// npme: the command line. Parses with CLI11, runs the chosen subcommand, and
// maps errors to the exit codes of DESIGN.md §4 — in this one place.

#include "cmd/common.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <iostream>

namespace {

int report(const npme::cmd::Globals& globals, const npme::Error& error) {
  if (globals.json && !globals.result_printed) {
    std::cout << nlohmann::json{{"error", {{"code", npme::errc_name(error.code)}, {"message", error.message}}}}.dump()
              << '\n';
  }
  std::cerr << "npme: error: " << error.message << '\n';
  return npme::exit_code(error.code);
}

} // namespace

int main(int argc, char** argv) {
  npme::cmd::Globals globals;
  npme::cmd::Action action;

  CLI::App app{"npme: a private npm registry with live replicas, snapshots and failover", "npme"};
  app.require_subcommand(1);
  app.fallthrough();
  app.set_version_flag("--version", std::string("npme ") + NPME_VERSION);
  // NPME_ROOT / NPME_CONFIG are read in cmd::layout(), so that either flag
  // beats both variables.
  app.add_option("--root", globals.root,
                 "Embedded instance under DIR: DIR/{couchdb,packages,data,settings.json} (env NPME_ROOT)")
    ->type_name("DIR");
  app.add_option("--config", globals.config, "Settings file (env NPME_CONFIG; default /etc/npme/settings.json)")
    ->type_name("FILE");
  app.add_option("--admin-url", globals.admin_url, "Admin API URL (default from the settings file)")
    ->envname("NPME_ADMIN_URL")
    ->type_name("URL");
  app.add_option("--admin-token-file", globals.admin_token_file,
                 "File holding the admin token (or env NPME_ADMIN_TOKEN)")
    ->type_name("FILE");
  app.add_option("--cacert", globals.cacert,
                 "CA bundle (PEM) trusted beside the system's for an https admin API (env NPME_CACERT)")
    ->envname("NPME_CACERT")
    ->type_name("FILE");
  app.add_flag("--json", globals.json, "Print one JSON document on stdout");
  app.add_flag("-q,--quiet", globals.quiet, "Print only errors");
  app.add_flag("--no-color", globals.no_color, "No colors (also NO_COLOR)");
  app.add_flag("--yes", globals.yes, "Skip confirmations");

  npme::cmd::add_serve(app, globals, action);
  npme::cmd::add_status(app, globals, action);
  npme::cmd::add_replicas(app, globals, action);
  npme::cmd::add_settings(app, globals, action);
  npme::cmd::add_user(app, globals, action);
  npme::cmd::add_token(app, globals, action);
  npme::cmd::add_snapshot(app, globals, action);
  npme::cmd::add_restore(app, globals, action);
  npme::cmd::add_replication(app, globals, action);
  npme::cmd::add_promote(app, globals, action);
  npme::cmd::add_ha(app, globals, action);
  npme::cmd::add_doctor(app, globals, action);
  npme::cmd::add_audit(app, globals, action);
  npme::cmd::add_console(app, globals, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0 && globals.json) {
      return report(globals, npme::Error{npme::Errc::usage, e.what()});
    }
    int code = app.exit(e);
    return code == 0 ? 0 : npme::exit_code(npme::Errc::usage);
  }

  npme::cmd::handle_interrupts();
  try {
    auto result = action ? action() : npme::make_error(npme::Errc::usage, "no command given (see npme --help)");
    if (!result) {
      return report(globals, result.error());
    }
  } catch (const std::exception& e) {
    return report(globals, npme::Error{npme::Errc::failed, e.what()});
  }
  return 0;
}
