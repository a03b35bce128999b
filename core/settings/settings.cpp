#include "core/settings/settings.hpp"

#include "core/util/cidr.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/text.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>

namespace npme::settings {

namespace {

constexpr std::string_view k_default_system_root = "/usr/local/lib/npme";

std::string join(const std::vector<std::string_view>& items, std::string_view separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) {
      out += separator;
    }
    out += item;
  }
  return out;
}

// Every canonical key followed by the npmE names, for "unknown setting" errors.
std::string known_names() {
  std::vector<std::string_view> names;
  std::vector<std::string_view> aliases;
  for (const auto& key : keys()) {
    names.push_back(key.name);
    aliases.insert(aliases.end(), key.aliases.begin(), key.aliases.end());
  }
  return join(names, ", ") + "; npmE names " + join(aliases, ", ");
}

bool has_space(std::string_view value) {
  return std::any_of(value.begin(), value.end(), [](unsigned char c) { return c <= ' ' || c == 0x7f; });
}

} // namespace

const std::vector<KeyInfo>& keys() {
  static const std::vector<KeyInfo> k_keys = {
    {"registry.url",
     {"canonical_url"},
     Kind::url,
     {},
     "http://{registry.listen}",
     "URL clients use; written into tarball URLs (default http://<registry.listen>)"},
    {"registry.listen", {}, Kind::listen, {}, "127.0.0.1:8080", "host:port of the registry", Effect::restart_instance},
    {"registry.max_body",
     {},
     Kind::size,
     {},
     "64M",
     "largest accepted request body, e.g. 64M (a larger Content-Length gets 413)",
     Effect::restart_instance},
    {"registry.max_connections_per_client",
     {},
     Kind::count,
     {},
     "256",
     "open connections one client address may hold on the registry (more are refused at once); 0 = no cap; "
     "registry.trusted_proxies are exempt",
     Effect::restart_instance},
    {"registry.trusted_proxies",
     {},
     Kind::cidrs,
     {},
     "",
     "comma-separated address ranges (10.0.0.0/8,::1/128) of load balancers whose X-Forwarded-For names the "
     "client; empty = the peer's address is the client's"},
    {"registry.tls_cert",
     {},
     Kind::path,
     {},
     "",
     "certificate chain (PEM) for the registry's HTTPS; empty = plain HTTP (the files are read again on SIGHUP)",
     Effect::restart_instance},
    {"registry.tls_key", {}, Kind::path, {}, "", "private key (PEM, unencrypted) of registry.tls_cert", Effect::restart_instance},
    {"admin.listen", {}, Kind::listen, {}, "127.0.0.1:8800", "host:port of the admin API", Effect::restart_instance},
    {"admin.max_connections_per_client",
     {},
     Kind::count,
     {},
     "32",
     "open connections one client address may hold on the admin API (more are refused at once); 0 = no cap",
     Effect::restart_instance},
    {"admin.tls_cert",
     {},
     Kind::path,
     {},
     "",
     "certificate chain (PEM) for the admin API's HTTPS; empty = plain HTTP (the files are read again on SIGHUP)",
     Effect::restart_instance},
    {"admin.tls_key", {}, Kind::path, {}, "", "private key (PEM, unencrypted) of admin.tls_cert", Effect::restart_instance},
    {"admin.token", {}, Kind::secret, {}, "", "bearer token of the admin API", Effect::none, true},
    {"admin.console_idle",
     {},
     Kind::seconds,
     {},
     "900",
     "seconds a console session lasts without a request before the operator must sign in again"},
    {"secret",
     {},
     Kind::secret,
     {},
     "",
     "secret used between services: what followers of this instance present",
     Effect::none,
     true},
    {"upstream.url",
     {"couch_url_remote"},
     Kind::url,
     {},
     "",
     "registry URL of the instance to follow; empty = no follower",
     Effect::restart_follower},
    {"upstream.secret",
     {"remote_shared_fetch_secret"},
     Kind::secret,
     {},
     "",
     "the upstream's secret",
     Effect::restart_follower,
     true},
    {"upstream.policy",
     {"remote_policy"},
     Kind::choice,
     {"mirror", "white-list"},
     "white-list",
     "what the follower takes: everything, or the names in data/whitelist",
     Effect::restart_follower},
    {"upstream.ca_file",
     {},
     Kind::path,
     {},
     "",
     "CA bundle (PEM) trusted beside the system's for upstream.url and the failover members' ha.url; empty = "
     "network.ca_file",
     Effect::restart_follower},
    {"publication",
     {"allowpublishes"},
     Kind::choice,
     {"all", "read-only", "scoped"},
     "all",
     "which publishes are accepted"},
    {"auth.installs",
     {"authfetch", "authglobal"},
     Kind::choice,
     {"scoped", "all", "none"},
     "scoped",
     "which reads need a token"},
    {"uplink.url",
     {},
     Kind::url,
     {},
     "",
     "npm-compatible registry that public packages come from (fetched by name); empty = none"},
    {"uplink.token",
     {},
     Kind::secret,
     {},
     "",
     "bearer token sent to the uplink (and only to its origin)",
     Effect::none,
     true},
    {"uplink.policy",
     {"read_through_cache"},
     Kind::choice,
     {"read-through", "white-list"},
     "read-through",
     "read-through: any name clients ask for is fetched and white-listed; white-list: only names in data/whitelist"},
    {"uplink.private",
     {},
     Kind::patterns,
     {},
     "",
     "comma-separated scopes and name globs never taken from the uplink (@acme/*,acme-*)"},
    {"uplink.ca_file",
     {"proxy.ca_file"},
     Kind::path,
     {},
     "",
     "CA bundle (PEM) trusted beside the system's for uplink.url; empty = network.ca_file"},
    {"uplink.maxage",
     {},
     Kind::seconds,
     {},
     "300",
     "seconds a packument from the uplink is served before it is revalidated"},
    {"uplink.audit",
     {},
     Kind::choice,
     {"public-only", "all", "off"},
     "public-only",
     "npm audit requests: forwarded to the uplink without private names, forwarded whole, or refused"},
    {"replication.sync_replicas",
     {},
     Kind::count,
     {},
     "0",
     "followers that must have applied a write before it is acknowledged; 0 = asynchronous"},
    {"replication.sync_timeout",
     {},
     Kind::seconds,
     {},
     "10",
     "seconds a write waits for synchronous followers before it is acknowledged with an npm-notice"},
    {"replication.sync_mode",
     {},
     Kind::choice,
     {"strict", "relaxed"},
     "strict",
     "too few synchronous followers: strict refuses writes (503), relaxed writes asynchronously (degraded)"},
    {"replication.follower_timeout",
     {},
     Kind::seconds,
     {},
     "60",
     "seconds without a feed request after which a follower is shown gone (dropped after 10 times that)"},
    {"ha.etcd",
     {},
     Kind::urls,
     {},
     "",
     "comma-separated etcd endpoints (http(s)://host:2379) for automatic failover; empty = manual failover"},
    {"ha.cluster", {}, Kind::name, {}, "", "name of the cluster in etcd (keys under /npme/<cluster>/); empty = npme"},
    {"ha.ttl",
     {},
     Kind::seconds,
     {},
     "10",
     "seconds of the leader's lease: a leader that cannot renew it for this long stops taking writes"},
    {"ha.loop", {}, Kind::seconds, {}, "2", "seconds between two rounds of the failover loop (lease renewal, checks)"},
    {"ha.max_lag",
     {},
     Kind::count,
     {},
     "0",
     "changes a replica may lag behind the most advanced member and still lead"},
    {"ha.url",
     {},
     Kind::url,
     {},
     "",
     "this instance's registry URL as the other members reach it directly; empty = http://<registry.listen>"},
    {"ha.etcd_ca", {}, Kind::path, {}, "", "CA bundle (PEM) for etcd's TLS; empty = the system's"},
    {"ha.etcd_cert", {}, Kind::path, {}, "", "client certificate (PEM) for etcd's --client-cert-auth; empty = none"},
    {"ha.etcd_key", {}, Kind::path, {}, "", "key (PEM) of ha.etcd_cert"},
    {"ha.etcd_user", {}, Kind::name, {}, "", "etcd user (etcd's auth enabled); empty = none"},
    {"ha.etcd_password", {}, Kind::secret, {}, "", "password of ha.etcd_user", Effect::none, true},
    // Secret: a proxy URL may carry the proxy's user:password@.
    {"network.http_proxy",
     {"proxy_url"},
     Kind::url,
     {},
     "",
     "outbound HTTP(S) proxy for the uplink and the follower (may hold user:password@: shown as a secret)",
     Effect::none,
     true},
    {"network.ca_file", {}, Kind::path, {}, "", "extra CA bundle (PEM) for outbound TLS; empty = the system's"},
    {"storage.metadata",
     {"couchdb_host_path"},
     Kind::path,
     {},
     "{root}/couchdb",
     "metadata directory",
     Effect::restart_instance},
    {"storage.packages",
     {"packages_host_path"},
     Kind::path,
     {},
     "{root}/packages",
     "packages directory",
     Effect::restart_instance},
    {"storage.data", {"data_host_path"}, Kind::path, {}, "{root}/data", "data directory", Effect::restart_instance},
    {"storage.min_free",
     {},
     Kind::size,
     {},
     "1G",
     "free space below which a host directory is reported low (npme status health, npme_disk_low), e.g. 1G"},
    {"audit.max_size",
     {},
     Kind::size,
     {},
     "10M",
     "size of data/audit.log at which it is rotated to audit.log.1, e.g. 10M"},
    {"audit.keep", {}, Kind::count, {}, "5", "rotated audit logs kept (audit.log.1 ... audit.log.N); 0 = none"},
    {"snapshot.dir",
     {},
     Kind::path,
     {},
     "",
     "directory the admin console creates snapshots in and lists (as npme snapshot create --dir); empty = none"},
    {"scrub.interval",
     {},
     Kind::seconds,
     {},
     "0",
     "seconds between two runs of the check part of npme doctor inside npme serve (npme_scrub_defects); 0 = off"},

  };
  return k_keys;
}

const KeyInfo* find_key(std::string_view name) {
  for (const auto& key : keys()) {
    if (key.name == name || std::find(key.aliases.begin(), key.aliases.end(), name) != key.aliases.end()) {
      return &key;
    }
  }
  return nullptr;
}

Layout Layout::from_root(const fs::path& root) {
  auto absolute = fs::absolute(root).lexically_normal();
  return Layout{absolute, absolute / "settings.json"};
}

Layout Layout::from_config(const fs::path& config_file) {
  return Layout{std::nullopt, fs::absolute(config_file).lexically_normal()};
}

Settings::Settings(Layout layout, std::map<std::string, std::string> values)
  : m_layout(std::move(layout)), m_values(std::move(values)) {}

std::string Settings::get(std::string_view key) const {
  if (auto it = m_runtime.find(std::string(key)); it != m_runtime.end()) {
    return it->second;
  }
  if (auto it = m_values.find(std::string(key)); it != m_values.end()) {
    return it->second;
  }
  const KeyInfo* info = find_key(key);
  if (info == nullptr || info->name != key) {
    return "";
  }
  // A default may name another key's value or the instance root.
  std::string value(info->default_value);
  constexpr std::string_view k_root = "{root}/";
  if (value.rfind(k_root, 0) == 0) {
    const fs::path base = m_layout.root ? *m_layout.root : fs::path(k_default_system_root);
    return (base / value.substr(k_root.size())).string();
  }
  if (const auto open = value.find('{'); open != std::string::npos) {
    const auto close = value.find('}', open);
    value.replace(open, close - open + 1, get(value.substr(open + 1, close - open - 1)));
  }
  if (key == "registry.url" && !get("registry.tls_cert").empty()) {
    value.insert(4, "s"); // https://<registry.listen>
  }
  return value;
}

bool Settings::is_set(std::string_view key) const {
  return m_values.count(std::string(key)) != 0;
}

Expected<std::vector<std::string>> Settings::apply(const std::map<std::string, std::string>& changes) {
  std::map<std::string, std::string> normalized;
  for (const auto& [name, value] : changes) {
    const KeyInfo* key = find_key(name);
    if (!key) {
      return make_error(Errc::usage, "unknown setting '" + name + "': known settings are " + known_names() +
                                       " (see 'npme settings list')");
    }
    // npmE's authfetch/authglobal were booleans: true meant every read needs a token.
    std::string raw = value;
    // npmE's read_through_cache was yes/no.
    if (key->name == "uplink.policy" && name != "uplink.policy") {
      if (raw == "yes" || raw == "true") {
        raw = "read-through";
      } else if (raw == "no" || raw == "false") {
        raw = "white-list";
      }
    }
    if (key->name == "auth.installs" && name != "auth.installs") {
      if (raw == "true") {
        raw = "all";
      } else if (raw == "false") {
        raw = "scoped";
      }
    }
    NPME_TRY_ASSIGN(std::string valid, validate(*key, raw));
    normalized[std::string(key->name)] = valid;
  }
  // Compare with what the file says, not with the runtime overrides: setting
  // registry.listen to the address bound for port 0 still changes the file.
  const Settings configured(m_layout, m_values);
  std::vector<std::string> changed;
  for (auto& [name, value] : normalized) {
    if (configured.get(name) != value) {
      changed.push_back(name);
    }
    m_values[name] = value;
    // A runtime override stands for the value in effect until a restart; a
    // key that applies live (registry.url) must show and use the new value.
    if (find_key(name)->effect != Effect::restart_instance) {
      m_runtime.erase(name);
    }
  }
  return changed;
}

Expected<std::vector<std::string>> Settings::unset(const std::vector<std::string>& names) {
  std::vector<std::string> canonical;
  for (const auto& name : names) {
    const KeyInfo* key = find_key(name);
    if (!key) {
      return make_error(Errc::usage, "unknown setting '" + name + "': known settings are " + known_names() +
                                       " (see 'npme settings list')");
    }
    if (key->name == "secret" || key->name == "admin.token") {
      return make_error(Errc::invalid, std::string(key->name) +
                                         " cannot be unset: it is generated when absent, which would lock "
                                         "out whoever uses it; set a new value instead (npme settings set " +
                                         std::string(key->name) + "=...)");
    }
    canonical.emplace_back(key->name);
  }
  std::vector<std::string> changed;
  for (const auto& name : canonical) {
    if (m_values.erase(name) != 0 && std::find(changed.begin(), changed.end(), name) == changed.end()) {
      changed.push_back(name);
    }
    if (find_key(name)->effect != Effect::restart_instance) {
      m_runtime.erase(name);
    }
  }
  return changed;
}

std::string Settings::to_json() const {
  nlohmann::ordered_json doc = nlohmann::ordered_json::object();
  for (const auto& key : keys()) {
    if (auto it = m_values.find(std::string(key.name)); it != m_values.end()) {
      doc[std::string(key.name)] = it->second;
    }
  }
  return doc.dump(2) + "\n";
}

Expected<std::pair<std::string, int>> parse_listen(std::string_view listen) {
  auto colon = listen.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == listen.size()) {
    return make_error(Errc::invalid, "listen address '" + std::string(listen) + "' must be host:port");
  }
  std::string host(listen.substr(0, colon));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto port_text = listen.substr(colon + 1);
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 0 || port > 65535 || has_space(host)) {
    return make_error(Errc::invalid,
                      "listen address '" + std::string(listen) + "' must be host:port with a port 0-65535");
  }
  return std::pair{host, port};
}

Expected<std::string> validate(const KeyInfo& key, std::string_view value) {
  const std::string name(key.name);
  const std::string text(value);
  switch (key.kind) {
  case Kind::text:
    return text;
  case Kind::url: {
    if (text.empty() && key.name != "registry.url") {
      return text;
    }
    std::string_view rest;
    if (value.starts_with("http://")) {
      rest = value.substr(7);
    } else if (value.starts_with("https://")) {
      rest = value.substr(8);
    } else {
      return make_error(Errc::invalid,
                        "invalid value '" + text + "' for " + name + ": expected an http:// or https:// URL");
    }
    // user:password@ in a URL would be shown wherever the setting is (status,
    // the audit log, settings list); the value is not repeated here either.
    if (rest.substr(0, rest.find('/')).find('@') != std::string_view::npos && key.name != "network.http_proxy") {
      return make_error(Errc::invalid, "invalid value for " + name +
                                         ": a URL with credentials (user:password@) is shown wherever the setting "
                                         "is; give the URL without them, and the credential in upstream.secret or "
                                         "uplink.token");
    }
    if (rest.empty() || rest.front() == '/' || has_space(value) || rest.find_first_of("?#") != rest.npos) {
      return make_error(Errc::invalid, "invalid value '" + text + "' for " + name +
                                         ": expected an http:// or https:// URL with a host and no query");
    }
    std::string url = text;
    while (url.size() > 1 && url.back() == '/') {
      url.pop_back();
    }
    return url;
  }
  case Kind::urls: {
    std::string out;
    for (const std::string& item : util::split_list(text)) {
      const KeyInfo one{key.name, {}, Kind::url, {}, "", key.help};
      auto url = validate(one, item);
      if (!url || url->empty()) {
        return make_error(Errc::invalid, "invalid value '" + text + "' for " + name + ": '" + item +
                                           "' is not an http:// or https:// URL (comma-separated)");
      }
      if (!out.empty()) {
        out += ',';
      }
      out += *url;
    }
    return out;
  }
  case Kind::name: {
    const bool valid = value.size() <= 64 && std::all_of(value.begin(), value.end(), [](unsigned char c) {
                         return std::isalnum(c) || c == '-' || c == '_' || c == '.';
                       });
    if (!valid || value == "." || value == "..") {
      return make_error(Errc::invalid, "invalid value '" + text + "' for " + name +
                                         ": expected up to 64 letters, digits, '-', '_' or '.'");
    }
    return text;
  }
  case Kind::listen: {
    auto parsed = parse_listen(value);
    if (!parsed) {
      return make_error(Errc::invalid, "invalid value '" + text + "' for " + name + ": expected host:port");
    }
    return text;
  }
  case Kind::choice:
    if (std::find(key.allowed.begin(), key.allowed.end(), value) == key.allowed.end()) {
      return make_error(Errc::invalid,
                        "invalid value '" + text + "' for " + name + ": allowed values are " + join(key.allowed, ", "));
    }
    return text;
  case Kind::path:
    if (value.empty() && key.default_value.empty()) { // an optional file: none
      return text;
    }
    if (value.empty() || value.front() != '/' || value.find('\n') != value.npos) {
      return make_error(Errc::invalid, "invalid value '" + text + "' for " + name + ": expected an absolute path");
    }
    return fs::path(text).lexically_normal().string();
  case Kind::secret:
    if (text.empty() &&
        (key.name == "upstream.secret" || key.name == "uplink.token" || key.name == "ha.etcd_password")) {
      return text;
    }
    if (key.name == "uplink.token" || key.name == "ha.etcd_password") {
      // Whatever the uplink issued (npm's are 40 characters, others differ).
      if (has_space(value)) {
        return make_error(Errc::invalid, "invalid value for " + name + ": expected a token without whitespace");
      }
      return text;
    }
    if (text.size() < 16 || has_space(value)) {
      return make_error(Errc::invalid,
                        "invalid value for " + name + ": expected at least 16 characters without whitespace");
    }
    return text;
  case Kind::seconds:
  case Kind::count: {
    // Seconds are "10" or "10s"; counts are plain.
    const bool seconds = key.kind == Kind::seconds;
    // ha.ttl and ha.loop: a lease shorter than 2 s cannot be renewed reliably.
    // admin.console_idle: a session must outlast a page's refresh (a minute).
    const std::uint64_t min = key.name == "ha.ttl"               ? 2
                              : key.name == "ha.loop"            ? 1
                              : key.name == "admin.console_idle" ? 60
                                                                 : 0;
    // Connection caps go as high as a server's descriptors could.
    const bool connection_cap = key.name.ends_with(".max_connections_per_client");
    const std::uint64_t max = key.name == "ha.max_lag" ? 1000000000
                              : key.name == "ha.loop"  ? 60
                              : connection_cap         ? 100000
                              : seconds                ? 31536000
                                                       : 100;
    std::string_view digits = value;
    if (seconds && digits.ends_with('s')) {
      digits.remove_suffix(1);
    }
    std::uint64_t number = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), number);
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty() || number > max || number < min) {
      return make_error(Errc::invalid, "invalid value '" + text + "' for " + name + ": expected a whole number " +
                                         (seconds ? "of seconds " : "") + "from " + std::to_string(min) + " to " +
                                         std::to_string(max) + (seconds ? " (10 or 10s)" : ""));
    }
    return std::to_string(number);
  }
  case Kind::patterns: {
    std::string out;
    for (const std::string& item : util::split_list(text)) {
      const bool valid_chars = std::all_of(item.begin(), item.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '@' || c == '/' || c == '*' || c == '-' || c == '.' || c == '_' || c == '~';
      });
      const auto slashes = std::count(item.begin(), item.end(), '/');
      if (!valid_chars || slashes > 1 || (slashes == 1 && item.front() != '@') || item == "@" || item == "*") {
        return make_error(Errc::invalid, "invalid value '" + text + "' for " + name + ": '" + item +
                                           "' is not a scope (@acme, @acme/*) or a name glob (acme-*)");
      }
      if (!out.empty()) {
        out += ',';
      }
      out += item;
    }
    return out;
  }
  case Kind::cidrs: {
    auto ranges = util::parse_cidrs(text);
    if (!ranges) {
      return make_error(Errc::invalid, "invalid value '" + text + "' for " + name + ": " + ranges.error().message);
    }
    std::string out;
    for (const auto& range : *ranges) {
      out += (out.empty() ? "" : ",") + range.text;
    }
    return out;
  }
  case Kind::size: {
    std::uint64_t number = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), number);
    std::string_view suffix(end, value.data() + value.size() - end);
    // parse_size() shifts by the suffix: the bytes must fit in 64 bits.
    const int shift = suffix == "K" ? 10 : suffix == "M" ? 20 : suffix == "G" ? 30 : 0;
    if (ec != std::errc() || end == value.data() ||
        !(suffix.empty() || suffix == "K" || suffix == "M" || suffix == "G") || number == 0 ||
        number > (std::numeric_limits<std::uint64_t>::max() >> shift)) {
      return make_error(Errc::invalid,
                        "invalid value '" + text + "' for " + name + ": expected a size such as 512K, 64M or 1G");
    }
    return text;
  }
  }
  return text;
}

std::string ca_file(const Settings& settings, std::string_view key) {
  std::string own = settings.get(key);
  return own.empty() ? settings.get("network.ca_file") : own;
}

std::uint64_t parse_size(std::string_view value) {
  std::uint64_t number = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (ec != std::errc()) {
    return 0;
  }
  std::string_view suffix(end, value.data() + value.size() - end);
  if (suffix == "K") {
    return number << 10;
  }
  if (suffix == "M") {
    return number << 20;
  }
  if (suffix == "G") {
    return number << 30;
  }
  return number;
}

Expected<Settings> load(const Layout& layout) {
  std::error_code ec;
  if (!fs::exists(layout.config_file, ec)) {
    return make_error(Errc::not_found, "settings file '" + layout.config_file.string() + "' does not exist");
  }
  NPME_TRY_ASSIGN(std::string text, util::read_file(layout.config_file));
  return parse_file(layout, text);
}

Expected<Settings> parse_file(const Layout& layout, std::string_view text) {
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return make_error(Errc::invalid, "settings file '" + layout.config_file.string() + "' is not a JSON object");
  }
  std::map<std::string, std::string> values;
  for (const auto& [name, value] : doc.items()) {
    if (!value.is_string()) {
      return make_error(Errc::invalid, "settings file '" + layout.config_file.string() + "': value of '" + name +
                                         "' must be a string");
    }
    values[name] = value.get<std::string>();
  }
  Settings settings(layout, {});
  auto applied = settings.apply(values);
  if (!applied) {
    return make_error(Errc::invalid, "settings file '" + layout.config_file.string() + "': " + applied.error().message);
  }
  return settings;
}

Expected<Patch> parse_patch(std::string_view body) {
  auto doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return make_error(Errc::invalid, "request body: expected a JSON object");
  }
  Patch patch;
  for (const auto& [name, value] : doc.items()) {
    if (value.is_null()) {
      patch.unset.push_back(name);
      continue;
    }
    if (!value.is_string()) {
      return make_error(Errc::invalid, "value of '" + name + "' must be a string, or null for the default");
    }
    patch.set[name] = value.get<std::string>();
  }
  return patch;
}

Expected<Settings> load_or_create(const Layout& layout) {
  auto loaded = load(layout);
  Settings settings(layout, {});
  if (loaded) {
    settings = std::move(*loaded);
  } else if (loaded.error().code != Errc::not_found) {
    return util::Unexpected<Error>{loaded.error()};
  }
  bool changed = !loaded.has_value();
  for (std::string_view key : {"secret", "admin.token"}) {
    if (!settings.is_set(key)) {
      NPME_TRY(settings.apply({{std::string(key), util::random_token(36)}}));
      changed = true;
    }
  }
  if (changed) {
    NPME_TRY(util::create_dirs(layout.config_file.parent_path()));
    NPME_TRY(save(settings));
  }
  return settings;
}

Expected<void> save(const Settings& settings) {
  return util::write_file_atomic(settings.layout().config_file, settings.to_json(), fs::perms(0600));
}

} // namespace npme::settings

namespace npme::settings {

LiveSettings::LiveSettings(Settings initial) : m_current(std::make_shared<const Settings>(std::move(initial))) {}

std::shared_ptr<const Settings> LiveSettings::get() const {
  std::lock_guard lock(m_mutex);
  return m_current;
}

Expected<std::vector<std::string>> LiveSettings::update(const std::map<std::string, std::string>& changes) {
  return update(changes, {});
}

Expected<std::vector<std::string>> LiveSettings::update(const std::map<std::string, std::string>& changes,
                                                        const std::vector<std::string>& unset) {
  for (const auto& name : unset) {
    const KeyInfo* key = find_key(name);
    for (const auto& [other, value] : changes) {
      if (key && find_key(other) == key) {
        return make_error(Errc::usage, "setting '" + std::string(key->name) + "' is both set and unset");
      }
    }
  }
  std::lock_guard lock(m_mutex);
  Settings next = *m_current;
  NPME_TRY_ASSIGN(auto changed, next.apply(changes));
  NPME_TRY_ASSIGN(auto reset, next.unset(unset));
  changed.insert(changed.end(), reset.begin(), reset.end());
  if (!changed.empty()) {
    NPME_TRY(save(next));
    m_current = std::make_shared<const Settings>(std::move(next));
  }
  return changed;
}

} // namespace npme::settings

namespace npme::settings {

void LiveSettings::replace_runtime(Settings settings) {
  std::lock_guard lock(m_mutex);
  m_current = std::make_shared<const Settings>(std::move(settings));
}

} // namespace npme::settings
