#pragma once
// The settings of an instance: one table defines every key (type, allowed
// values, default, npmE alias, secrecy, effect of a change); the settings
// file is a flat JSON object of canonical keys, written atomically, mode 0600.

#include "core/util/error.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace npme::settings {

namespace fs = std::filesystem;

enum class Kind { text, url, urls, name, listen, choice, path, secret, size, seconds, count, patterns, cidrs };
enum class Effect { none, restart_follower, restart_instance };

struct KeyInfo {
  std::string_view name;                 // "upstream.url"
  std::vector<std::string_view> aliases; // npmE names: "couch_url_remote"
  Kind kind;
  std::vector<std::string_view> allowed; // for Kind::choice
  // The value when not set. "{root}" stands for the instance root (--root,
  // else /usr/local/lib/npme), "{key}" for that key's value.
  std::string_view default_value;
  std::string_view help;
  Effect effect = Effect::none;
  bool secret = false;
};

// Every key, in display order.
const std::vector<KeyInfo>& keys();

// Finds a key by canonical name or npmE alias; nullptr when unknown.
const KeyInfo* find_key(std::string_view name);

// Where an instance keeps its settings and host directories.
struct Layout {
  std::optional<fs::path> root; // --root: everything under it
  fs::path config_file;         // settings.json
  static Layout from_root(const fs::path& root);
  static Layout from_config(const fs::path& config_file);
};

class Settings {
public:
  Settings() = default;
  Settings(Layout layout, std::map<std::string, std::string> values);

  // The value of canonical key `key`: as set, else its default (which for
  // registry.url follows registry.listen and for storage paths the layout).
  std::string get(std::string_view key) const;
  // True when the file sets `key` explicitly.
  bool is_set(std::string_view key) const;
  const std::map<std::string, std::string>& values() const { return m_values; }
  const Layout& layout() const { return m_layout; }

  fs::path metadata_dir() const { return get("storage.metadata"); }
  fs::path packages_dir() const { return get("storage.packages"); }
  fs::path data_dir() const { return get("storage.data"); }

  // Checks every entry of `changes` (keys may be aliases) and, only if all are
  // valid, applies them. Returns the canonical keys that changed. Errc::usage
  // for an unknown key, Errc::invalid for a bad value, naming the key and what
  // is allowed.
  Expected<std::vector<std::string>> apply(const std::map<std::string, std::string>& changes);

  // Returns each of `names` (keys may be aliases) to its default by taking
  // it out of the file, all or none. Returns the canonical keys that were
  // set. Errc::usage for an unknown key; Errc::invalid for `secret` and
  // `admin.token`, which are generated when absent (set a new value instead).
  Expected<std::vector<std::string>> unset(const std::vector<std::string>& names);

  // The JSON object of the file (canonical keys, only what is set).
  std::string to_json() const;

  // Overrides `key` for this process only (never saved): `npme serve
  // --registry-listen`, or the address actually bound for port 0.
  void set_runtime(std::string key, std::string value) { m_runtime[std::move(key)] = std::move(value); }

private:
  Layout m_layout;
  std::map<std::string, std::string> m_values;
  std::map<std::string, std::string> m_runtime;
};

// The settings of a running instance: readers get an immutable snapshot,
// updates are validated, written to the file and swapped in atomically.
class LiveSettings {
public:
  explicit LiveSettings(Settings initial);
  std::shared_ptr<const Settings> get() const;
  // Validates every change, saves the file, then publishes the new settings.
  // Nothing is applied when any change is invalid or the file can't be written.
  Expected<std::vector<std::string>> update(const std::map<std::string, std::string>& changes);
  // Sets `changes` and returns `unset` to their defaults in one step (a
  // key may not be in both); the keys that changed.
  Expected<std::vector<std::string>> update(const std::map<std::string, std::string>& changes,
                                            const std::vector<std::string>& unset);
  // Replaces the current settings with `settings` without saving (used once
  // at start to publish the runtime overrides of the bound addresses).
  void replace_runtime(Settings settings);

private:
  mutable std::mutex m_mutex;
  std::shared_ptr<const Settings> m_current;
};

// Checks `value` for `key` (canonical); returns the normalized value.
Expected<std::string> validate(const KeyInfo& key, std::string_view value);

// Loads the settings file of `layout`. Errc::not_found when it is missing,
// Errc::invalid when it is not a JSON object of known keys and valid values.
Expected<Settings> load(const Layout& layout);

// Parses `text`, the content of the settings file of `layout`, as load()
// does: Errc::invalid naming the file when it is not a JSON object of known
// keys and valid string values.
Expected<Settings> parse_file(const Layout& layout, std::string_view text);

// A change of settings as the admin API's PATCH /api/v1/settings carries it.
struct Patch {
  std::map<std::string, std::string> set; // key (or alias) -> new value
  std::vector<std::string> unset;         // keys sent as null: back to their defaults
};

// Parses `body`, a PATCH /api/v1/settings request body: a JSON object whose
// values are strings or null. Errc::invalid otherwise. The keys and values
// are checked later, by LiveSettings::update().
Expected<Patch> parse_patch(std::string_view body);

// Loads the settings file, creating it (mode 0600, random `secret` and
// `admin.token`) when missing; also fills in a missing secret or token.
Expected<Settings> load_or_create(const Layout& layout);

// Writes the settings file atomically with mode 0600.
Expected<void> save(const Settings& settings);

// The CA bundle trusted (beside the system's) on connections to what `key`
// serves: "upstream.ca_file" (the upstream, the failover members) or
// "uplink.ca_file"; network.ca_file when that key is empty.
std::string ca_file(const Settings& settings, std::string_view key);

// Returns the number of bytes of a size value ("64M"); 0 when malformed.
std::uint64_t parse_size(std::string_view value);

// Returns the "host:port" parts of a listen address.
Expected<std::pair<std::string, int>> parse_listen(std::string_view listen);

} // namespace npme::settings
