#include "cmd/common.hpp"

#include "core/instance/instance.hpp"

#include <iostream>

namespace npme::cmd {

void add_serve(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("serve", "Run an instance: registry, admin API and follower");
  auto registry_listen = std::make_shared<std::string>();
  auto admin_listen = std::make_shared<std::string>();
  sub->add_option("--registry-listen", *registry_listen, "host:port for the registry (overrides registry.listen)")
    ->type_name("HOST:PORT");
  sub->add_option("--admin-listen", *admin_listen, "host:port for the admin API (overrides admin.listen)")
    ->type_name("HOST:PORT");
  sub->callback([&globals, &action, registry_listen, admin_listen] {
    action = [&globals, registry_listen, admin_listen]() -> Expected<void> {
      instance::ServeOptions options{layout(globals), std::nullopt, std::nullopt};
      if (!registry_listen->empty()) {
        options.registry_listen = *registry_listen;
      }
      if (!admin_listen->empty()) {
        options.admin_listen = *admin_listen;
      }
      const bool quiet = globals.quiet;
      return instance::serve(options, [quiet](const std::string& line) {
        if (!quiet) {
          std::cerr << "npme: " << line << std::endl;
        }
      });
    };
  });
}

} // namespace npme::cmd
