#include "cmd/common.hpp"

#include "core/instance/offline.hpp"

#include <iostream>

namespace npme::cmd {

namespace {

std::string query(bool reveal) {
  return reveal ? "?reveal=true" : "";
}

// Reads the settings file directly (for --offline): same shape as the API.
Expected<nlohmann::json> offline_list(const Globals& globals, bool reveal) {
  NPME_TRY_ASSIGN(auto current, settings::load(layout(globals)));
  nlohmann::json list = nlohmann::json::array();
  for (const auto& key : settings::keys()) {
    std::string value = current.get(key.name);
    if (key.secret && !reveal && !value.empty()) {
      value = "********";
    }
    nlohmann::json aliases = nlohmann::json::array();
    for (auto alias : key.aliases) {
      aliases.push_back(alias);
    }
    list.push_back({{"key", key.name},
                    {"value", value},
                    {"default", !current.is_set(key.name)},
                    {"secret", key.secret},
                    {"aliases", aliases},
                    {"help", key.help}});
  }
  return nlohmann::json{{"settings", list}};
}

Expected<std::map<std::string, std::string>> parse_assignments(const std::vector<std::string>& words) {
  std::map<std::string, std::string> changes;
  // `set KEY VALUE` (two words, no '=') or `set KEY=VALUE...`.
  if (words.size() == 2 && words[0].find('=') == std::string::npos) {
    changes[words[0]] = words[1];
    return changes;
  }
  for (const auto& word : words) {
    auto eq = word.find('=');
    if (eq == std::string::npos || eq == 0) {
      return make_error(Errc::usage, "expected KEY=VALUE, got '" + word + "'");
    }
    changes[word.substr(0, eq)] = word.substr(eq + 1);
  }
  return changes;
}

// Prints the answer of a change: JSON, or a line per changed key.
// ("npme: <before><key><after>").
void print_changes(const Globals& globals, const nlohmann::json& result, const std::string& before,
                   const std::string& after) {
  if (globals.json) {
    print_json(result);
    return;
  }
  if (globals.quiet) {
    return;
  }
  auto changed = result.value("changed", nlohmann::json::array());
  if (changed.empty()) {
    std::cerr << "npme: nothing changed\n";
  }
  for (const auto& name : changed) {
    std::cerr << "npme: " << before << name.get<std::string>() << after << '\n';
  }
  if (result.value("restart_required", false)) {
    std::cerr << "npme: restart the instance for the new listen address or storage paths to apply\n";
  }
}

} // namespace

void add_settings(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("settings", "Read and change settings (through the admin API)");
  sub->require_subcommand(1);
  auto reveal = std::make_shared<bool>(false);
  auto offline = std::make_shared<bool>(false);

  auto* list = sub->add_subcommand("list", "List every setting with its value and npmE name");
  list->add_flag("--reveal", *reveal, "Show secrets instead of ********");
  list->add_flag("--offline", *offline, "Read the settings file of a stopped instance");
  list->callback([&globals, &action, reveal, offline] {
    action = [&globals, reveal, offline]() -> Expected<void> {
      nlohmann::json doc;
      if (*offline) {
        NPME_TRY_ASSIGN(doc, offline_list(globals, *reveal));
      } else {
        NPME_TRY_ASSIGN(auto client, connect(globals));
        NPME_TRY_ASSIGN(doc, client.call("GET", "/settings" + query(*reveal)));
      }
      if (globals.json) {
        print_json(doc);
        return {};
      }
      std::vector<std::vector<std::string>> rows = {{"KEY", "VALUE", "NPME NAME"}};
      for (const auto& s : doc.value("settings", nlohmann::json::array())) {
        std::string aliases;
        for (const auto& alias : s.value("aliases", nlohmann::json::array())) {
          aliases += (aliases.empty() ? "" : ", ") + alias.get<std::string>();
        }
        std::string value = s.value("value", "");
        rows.push_back({s.value("key", ""), value.empty() ? "-" : value, aliases.empty() ? "-" : aliases});
      }
      print_table(rows);
      return {};
    };
  });

  auto* get = sub->add_subcommand("get", "Print one setting's value alone on a line");
  auto key = std::make_shared<std::string>();
  get->add_option("KEY", *key, "Setting key or npmE name")->required();
  get->add_flag("--reveal", *reveal, "Show a secret instead of ********");
  get->add_flag("--offline", *offline, "Read the settings file of a stopped instance");
  get->callback([&globals, &action, key, reveal, offline] {
    action = [&globals, key, reveal, offline]() -> Expected<void> {
      nlohmann::json doc;
      if (*offline) {
        const auto* info = settings::find_key(*key);
        if (!info) {
          // apply() owns the "unknown setting" message (it lists the known keys).
          auto unknown = settings::Settings().apply({{*key, ""}});
          return make_error(Errc::usage, unknown ? "unknown setting '" + *key + "'" : unknown.error().message);
        }
        NPME_TRY_ASSIGN(auto all, offline_list(globals, *reveal));
        for (const auto& s : all["settings"]) {
          if (s["key"] == info->name) {
            doc = s;
          }
        }
      } else {
        NPME_TRY_ASSIGN(auto client, connect(globals));
        NPME_TRY_ASSIGN(doc, client.call("GET", "/settings/" + *key + query(*reveal)));
      }
      if (globals.json) {
        print_json(doc);
      } else {
        std::cout << doc.value("value", "") << '\n';
      }
      return {};
    };
  });

  auto* set = sub->add_subcommand("set", "Change settings: KEY=VALUE... (or KEY VALUE); all or nothing");
  auto words = std::make_shared<std::vector<std::string>>();
  set->add_option("ASSIGNMENTS", *words, "KEY=VALUE pairs")->required();
  set->add_flag("--offline", *offline, "Edit the settings file of a stopped instance");
  set->callback([&globals, &action, words, offline] {
    action = [&globals, words, offline]() -> Expected<void> {
      NPME_TRY_ASSIGN(auto changes, parse_assignments(*words));
      nlohmann::json result;
      if (*offline) {
        NPME_TRY_ASSIGN(auto changed, instance::set_settings_offline(layout(globals), changes));
        result = {{"changed", changed}, {"restart_required", false}, {"follower_restart", false}};
      } else {
        NPME_TRY_ASSIGN(auto client, connect(globals));
        nlohmann::json body = nlohmann::json::object();
        for (const auto& [k, v] : changes) {
          body[k] = v;
        }
        NPME_TRY_ASSIGN(result, client.call("PATCH", "/settings", &body));
      }
      print_changes(globals, result, "changed ", "");
      return {};
    };
  });

  auto* unset = sub->add_subcommand("unset", "Return settings to their defaults: KEY...; all or nothing");
  auto names = std::make_shared<std::vector<std::string>>();
  unset->add_option("KEYS", *names, "Keys (or npmE names) to return to their defaults")->required();
  unset->add_flag("--offline", *offline, "Edit the settings file of a stopped instance");
  unset->callback([&globals, &action, names, offline] {
    action = [&globals, names, offline]() -> Expected<void> {
      nlohmann::json result;
      if (*offline) {
        NPME_TRY_ASSIGN(auto changed, instance::set_settings_offline(layout(globals), {}, *names));
        result = {{"changed", changed}, {"restart_required", false}, {"follower_restart", false}};
      } else {
        NPME_TRY_ASSIGN(auto client, connect(globals));
        nlohmann::json body = nlohmann::json::object();
        for (const auto& name : *names) {
          body[name] = nullptr; // PATCH: null returns a key to its default
        }
        NPME_TRY_ASSIGN(result, client.call("PATCH", "/settings", &body));
      }
      print_changes(globals, result, "", " is back to its default");
      return {};
    };
  });
}

} // namespace npme::cmd
