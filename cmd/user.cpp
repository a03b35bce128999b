#include "cmd/common.hpp"

#include <iostream>

#include <termios.h>
#include <unistd.h>

namespace npme::cmd {

namespace {

// Reads one line from a terminal without echoing it.
std::string read_hidden(const std::string& prompt) {
  std::cerr << prompt << std::flush;
  termios old_mode{};
  tcgetattr(STDIN_FILENO, &old_mode);
  termios hidden = old_mode;
  hidden.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  tcsetattr(STDIN_FILENO, TCSANOW, &hidden);
  std::string line;
  std::getline(std::cin, line);
  tcsetattr(STDIN_FILENO, TCSANOW, &old_mode);
  std::cerr << '\n';
  return line;
}

Expected<std::string> read_password(bool from_stdin) {
  if (from_stdin) {
    std::string line;
    std::getline(std::cin, line);
    if (!line.empty() && line.back() == '\r') {
      line.pop_back();
    }
    if (line.empty()) {
      return make_error(Errc::usage, "--password-stdin: no password on standard input");
    }
    return line;
  }
  if (!stdin_is_terminal()) {
    return make_error(Errc::usage, "no terminal to ask for the password: use --password-stdin");
  }
  std::string first = read_hidden("Password: ");
  std::string second = read_hidden("Repeat password: ");
  if (first != second) {
    return make_error(Errc::usage, "the passwords do not match");
  }
  return first;
}

} // namespace

void add_user(CLI::App& app, Globals& globals, Action& action) {
  auto* user = app.add_subcommand("user", "Registry users for npm login");
  user->require_subcommand(1);

  auto* add = user->add_subcommand("add", "Add a user (password from a terminal prompt or --password-stdin)");
  auto name = std::make_shared<std::string>();
  auto email = std::make_shared<std::string>();
  auto password_stdin = std::make_shared<bool>(false);
  add->add_option("NAME", *name, "User name")->required();
  add->add_option("--email", *email, "E-mail address")->type_name("EMAIL");
  add->add_flag("--password-stdin", *password_stdin, "Read the password from standard input");
  add->callback([&globals, &action, name, email, password_stdin] {
    action = [&globals, name, email, password_stdin]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto password, read_password(*password_stdin));
      NPME_TRY_ASSIGN(auto client, connect(globals));
      nlohmann::json body = {{"name", *name}, {"password", password}, {"email", *email}};
      NPME_TRY_ASSIGN(auto made, client.call("POST", "/users", &body));
      if (globals.json) {
        print_json(made);
      } else if (!globals.quiet) {
        std::cerr << "npme: added user " << *name << '\n';
      }
      return {};
    };
  });

  auto* list = user->add_subcommand("list", "List users");
  list->callback([&globals, &action] {
    action = [&globals]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto doc, client.call("GET", "/users"));
      if (globals.json) {
        print_json(doc);
        return {};
      }
      std::vector<std::vector<std::string>> rows = {{"NAME", "EMAIL", "CREATED"}};
      for (const auto& u : doc.value("users", nlohmann::json::array())) {
        rows.push_back({u.value("name", ""), u.value("email", ""), u.value("created", "")});
      }
      print_table(rows);
      return {};
    };
  });

  auto* remove = user->add_subcommand("remove", "Remove a user and revoke their tokens");
  auto removed = std::make_shared<std::string>();
  remove->add_option("NAME", *removed, "User name")->required();
  remove->callback([&globals, &action, removed] {
    action = [&globals, removed]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY(client.call("DELETE", "/users/" + *removed));
      if (globals.json) {
        print_json({{"removed", *removed}});
      } else if (!globals.quiet) {
        std::cerr << "npme: removed user " << *removed << '\n';
      }
      return {};
    };
  });
}

} // namespace npme::cmd
