#include "cmd/common.hpp"

#include <iostream>

namespace npme::cmd {

namespace {

// ["a","b"] → "a,b"
std::string join_strings(const nlohmann::json& list) {
  std::string out;
  for (const auto& item : list) {
    if (item.is_string()) {
      out += (out.empty() ? "" : ",") + item.get<std::string>();
    }
  }
  return out;
}

} // namespace

void add_token(CLI::App& app, Globals& globals, Action& action) {
  auto* token = app.add_subcommand("token", "Registry access tokens");
  token->require_subcommand(1);

  auto* create = token->add_subcommand("create", "Create a token for a user and print it once");
  auto user = std::make_shared<std::string>();
  auto read_only = std::make_shared<bool>(false);
  create->add_option("--user", *user, "User the token belongs to")->required()->type_name("NAME");
  create->add_flag("--read-only", *read_only, "Token can install but not publish");
  auto expires = std::make_shared<std::string>();
  auto cidr = std::make_shared<std::string>();
  create->add_option("--expires", *expires,
                     "Token stops working after this long (90d, 12h, 30m, 2w) or at this UTC time (ISO 8601)")
    ->type_name("DURATION|TIME");
  create->add_option("--cidr", *cidr,
                     "Token works only from these client address ranges (10.0.0.0/8,192.168.1.0/24,fd00::/8)")
    ->type_name("RANGES");
  create->callback([&globals, &action, user, read_only, expires, cidr] {
    action = [&globals, user, read_only, expires, cidr]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      nlohmann::json body = {{"user", *user}, {"read_only", *read_only}};
      if (!expires->empty()) {
        body["expires"] = *expires;
      }
      if (!cidr->empty()) {
        body["cidr"] = *cidr;
      }
      NPME_TRY_ASSIGN(auto made, client.call("POST", "/tokens", &body));
      if (globals.json) {
        print_json(made);
      } else {
        std::cout << made.value("token", "") << '\n';
        if (!globals.quiet) {
          // The id is what `token list` shows and `token revoke` takes; the
          // token itself went to stdout, once.
          std::cerr << "npme: created a" << (*read_only ? " read-only" : "") << " token for " << *user << " (id "
                    << made.value("id", "") << ", for 'npme token list' and 'npme token revoke')";
          if (made.contains("expires") && made["expires"].is_string()) {
            std::cerr << ", expiring " << made["expires"].get<std::string>();
          }
          if (made.contains("cidr") && made["cidr"].is_array() && !made["cidr"].empty()) {
            std::cerr << ", usable from " << join_strings(made["cidr"]);
          }
          std::cerr << "; the token is the line on stdout and is not shown again\n";
        }
      }
      return {};
    };
  });

  auto* list = token->add_subcommand("list", "List tokens (ids, users, access; never the tokens)");
  list->callback([&globals, &action] {
    action = [&globals]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto doc, client.call("GET", "/tokens"));
      if (globals.json) {
        print_json(doc);
        return {};
      }
      std::vector<std::vector<std::string>> rows = {{"ID", "USER", "ACCESS", "PREFIX", "CREATED", "EXPIRES", "FROM"}};
      for (const auto& t : doc.value("tokens", nlohmann::json::array())) {
        const bool expiring = t.contains("expires") && t["expires"].is_string();
        const bool limited = t.contains("cidr") && t["cidr"].is_array() && !t["cidr"].empty();
        rows.push_back({t.value("id", ""), t.value("user", ""), t.value("read_only", false) ? "read-only" : "read-write",
                        t.value("token_prefix", "") + "…", t.value("created", ""),
                        expiring ? t["expires"].get<std::string>() : "never",
                        limited ? join_strings(t["cidr"]) : "anywhere"});
      }
      print_table(rows);
      return {};
    };
  });

  auto* revoke = token->add_subcommand("revoke", "Revoke a token by id");
  auto id = std::make_shared<std::string>();
  revoke->add_option("ID", *id, "Token id (see 'npme token list')")->required();
  revoke->callback([&globals, &action, id] {
    action = [&globals, id]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto client, connect(globals));
      NPME_TRY_ASSIGN(auto doc, client.call("DELETE", "/tokens/" + *id));
      if (globals.json) {
        print_json({{"revoked", *id}});
      } else if (!globals.quiet) {
        std::cerr << "npme: revoked token " << *id << '\n';
      }
      return {};
    };
  });
}

} // namespace npme::cmd
