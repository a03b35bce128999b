#include "core/replication/follower.hpp"

#include "core/http/client.hpp"
#include "core/http/fetcher.hpp"
#include "core/replication/feed.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/crypto.hpp"
#include "core/util/time.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <random>
#include <cstdlib>
#include <set>
#include <unordered_set>

namespace npme::replication {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;

constexpr int k_batch_limit = 500;
constexpr int k_longpoll_timeout_ms = 25000;
constexpr milliseconds k_initial_backoff{500};
constexpr milliseconds k_max_backoff{30000};
constexpr std::size_t k_workers = 4;      // parallel fetches of documents and tarballs
constexpr std::size_t k_small_window = 8; // up to this many changes: fsync per file, not syncfs
constexpr std::size_t k_window = 256;     // changes prepared, then committed in one transaction

bool is_package_id(std::string_view id) {
  return !id.empty() && id.front() != '_';
}

// The package a document belongs to, for the white-list ("" for users and tokens).
std::string package_of(std::string_view id) {
  if (is_package_id(id)) {
    return std::string(id);
  }
  constexpr std::string_view k_unpublished = "_unpublished:";
  if (id.starts_with(k_unpublished)) {
    return std::string(id.substr(k_unpublished.size()));
  }
  return "";
}

struct TarballRef {
  std::string version;
  std::string path;      // relative to the packages directory
  std::string integrity; // "sha512-..." (may hold several hashes), or ""
  std::string shasum;    // sha1 hex, or ""
};

std::vector<TarballRef> tarballs_of(const json& doc) {
  std::vector<TarballRef> refs;
  auto versions = doc.find("versions");
  if (versions == doc.end() || !versions->is_object()) {
    return refs;
  }
  for (const auto& [version, manifest] : versions->items()) {
    if (!manifest.is_object()) {
      continue;
    }
    auto dist = manifest.find("dist");
    if (dist == manifest.end() || !dist->is_object()) {
      continue;
    }
    TarballRef ref{version, dist->value("tarball", ""), dist->value("integrity", ""), dist->value("shasum", "")};
    refs.push_back(std::move(ref));
  }
  return refs;
}

json without_rev(json doc) {
  doc.erase("_rev");
  return doc;
}

std::string percent_encode_id(std::string_view id) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : id) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '@' || c == ':') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += k_hex[c >> 4];
      out += k_hex[c & 15];
    }
  }
  return out;
}

} // namespace

// What one run of the follower works with: the upstream, its secret, the
// policy, and one HTTP connection.
struct Follower::Session {
  std::string upstream;
  std::string policy;
  std::set<std::string> whitelist;
  // Who this follower is, on every request (DESIGN.md §10): the upstream's
  // table of its followers (`npme replicas`) is keyed by it.
  http::Headers identity;
  http::Client client; // the feed, and single changes
  // The prefetch connections: documents and tarballs of a batch are
  // fetched in parallel, then committed in order.
  std::unique_ptr<http::Fetcher> fetcher;

  Session(std::string upstream_url, const settings::Settings& config, std::string policy_name,
          const std::string& instance_id, const std::function<bool()>& cancelled, std::size_t worker_count = 0)
    : upstream(std::move(upstream_url)), policy(std::move(policy_name)),
      client(client_options(config, milliseconds(k_longpoll_timeout_ms + 30000), cancelled)) {
    if (!instance_id.empty()) {
      identity.set(std::string(k_instance_header), instance_id);
    }
    if (auto url = config.get("registry.url"); !url.empty()) {
      identity.set(std::string(k_instance_url_header), url);
    }
    if (worker_count > 0) {
      fetcher = std::make_unique<http::Fetcher>(worker_count, client_options(config, milliseconds(120000), cancelled));
    }
  }

  static http::ClientOptions client_options(const settings::Settings& config, milliseconds timeout,
                                            const std::function<bool()>& cancelled) {
    http::ClientOptions options{milliseconds(5000), timeout, config.get("upstream.secret"), cancelled};
    options.proxy = config.get("network.http_proxy");
    options.ca_file = config.get("network.ca_file");
    return options;
  }

  bool wanted(std::string_view id) const {
    if (policy == "mirror") {
      return true;
    }
    auto package = package_of(id);
    return package.empty() || whitelist.count(package) != 0;
  }

  // GETs `url` on `through`; maps refusals of the secret and other
  // statuses to errors.
  Expected<http::ClientResponse> get(http::Client& through, const std::string& url, const std::string& what) {
    auto response = through.request("GET", url, "", identity);
    if (!response) {
      if (response.error().code == Errc::interrupted) {
        return util::Unexpected<Error>{response.error()};
      }
      return make_error(Errc::unreachable, "cannot reach upstream " + upstream + ": " + response.error().message);
    }
    if (response->status == 401 || response->status == 403) {
      return make_error(Errc::unauthorized, "upstream refused the secret (" + std::to_string(response->status) + ")");
    }
    if (response->status == 404) {
      return make_error(Errc::not_found, what + ": upstream answered 404");
    }
    if (response->status != 200) {
      return make_error(Errc::failed, what + ": upstream answered " + std::to_string(response->status));
    }
    return response;
  }
};

Follower::Follower(store::Store& store, SettingsSource settings, std::filesystem::path data_dir,
                   std::string instance_id)
  : m_store(store), m_settings(std::move(settings)), m_data_dir(std::move(data_dir)),
    m_instance_id(std::move(instance_id)) {
  auto current = m_settings();
  m_status.upstream_url = current->get("upstream.url");
  m_status.policy = current->get("upstream.policy");
  m_status.state = m_status.upstream_url.empty() ? "disabled" : "stopped";
  if (auto seq = read_sequence(m_data_dir)) {
    m_status.sequence = *seq;
  }
}

Follower::~Follower() {
  stop();
}

void Follower::start() {
  std::lock_guard control(m_control);
  if (m_thread.joinable()) {
    return;
  }
  auto current = m_settings();
  {
    std::lock_guard lock(m_mutex);
    m_status.upstream_url = current->get("upstream.url");
    m_status.policy = current->get("upstream.policy");
    m_status.state = m_status.upstream_url.empty() ? "disabled" : "starting";
    m_status.last_error.clear();
    m_status.last_error_time.clear();
    m_status.upstream_seq = -1;
    m_status.lag_changes = 0;
    m_status.lag_seconds = 0;
  }
  if (m_status.upstream_url.empty()) {
    return;
  }
  m_stop = false;
  m_thread = std::thread([this] { run(); });
}

void Follower::stop() {
  std::lock_guard control(m_control);
  if (!m_thread.joinable()) {
    return;
  }
  {
    std::lock_guard lock(m_mutex);
    m_stop = true;
    // Interrupt a long poll at once instead of waiting for its timeout.
    for (auto* client : m_active_clients) {
      client->abort();
    }
    if (m_active_fetcher != nullptr) {
      m_active_fetcher->abort();
    }
  }
  m_wake.notify_all();
  m_thread.join();
  std::lock_guard lock(m_mutex);
  m_status.state = m_settings()->get("upstream.url").empty() ? "disabled" : "stopped";
}

Expected<void> Follower::reset() {
  if (m_settings()->get("upstream.url").empty()) {
    return make_error(Errc::precondition, "this instance has no upstream (set upstream.url first)");
  }
  stop();
  NPME_TRY(truncate_sequence(m_data_dir));
  // A reset is the operator's word that this upstream is the right one.
  NPME_TRY(m_store.set_meta("upstream_epoch", "0"));
  {
    std::lock_guard lock(m_mutex);
    m_status.sequence = 0;
  }
  start();
  return {};
}

FollowerStatus Follower::status() const {
  std::lock_guard lock(m_mutex);
  return m_status;
}

void Follower::set_error(const std::string& message) {
  std::lock_guard lock(m_mutex);
  m_status.state = "error";
  m_status.last_error = message;
  m_status.last_error_time = util::iso8601();
}

bool Follower::sleep_for(milliseconds duration) {
  std::unique_lock lock(m_mutex);
  return !m_wake.wait_for(lock, duration, [this] { return m_stop.load(); });
}

namespace {

using Getter = std::function<Expected<http::ClientResponse>(const std::string&, const std::string&)>;

// What applying one change takes, fetched and staged but not yet committed.
struct Prepared {
  std::string id;
  store::Write::Kind kind = store::Write::Kind::none; // none: nothing to do
  std::string body;
  std::string rev;
  std::vector<store::StagedFile> staged;
  std::vector<std::string> removed_files;
  std::int64_t tarballs = 0;
  std::int64_t bytes = 0;
};

// Fetches what the upstream's change of document `id` needs — its document
// and every tarball this instance lacks, verified and staged with `sync` —
// without writing any metadata.
Expected<Prepared> prepare_change(store::Store& store, http::Client& client, const std::string& upstream,
                                  const std::string& id, bool deleted, const std::string& feed_rev,
                                  const Getter& get, store::Sync sync) {
  Prepared prepared;
  prepared.id = id;
  NPME_TRY_ASSIGN(auto local, store.get(id));
  if (!deleted && local && !feed_rev.empty() && local->rev == feed_rev) {
    return prepared; // revisions are kept from the upstream: in sync, nothing to fetch
  }
  std::optional<json> local_doc;
  if (local) {
    auto parsed = json::parse(local->body, nullptr, false);
    if (parsed.is_object()) {
      local_doc = std::move(parsed);
    }
  }

  if (deleted) {
    if (!local) {
      return prepared;
    }
    prepared.kind = store::Write::Kind::remove;
    if (is_package_id(id) && local_doc) {
      for (const auto& ref : tarballs_of(*local_doc)) {
        prepared.removed_files.push_back(ref.path);
      }
    }
    return prepared;
  }

  auto fetched = get(upstream + "/_doc/" + percent_encode_id(id), "document '" + id + "'");
  if (!fetched) {
    if (fetched.error().code == Errc::not_found) {
      // Deleted upstream since the feed listed it: its tombstone comes later in the feed.
      return prepared;
    }
    return util::Unexpected<Error>{fetched.error()};
  }
  auto doc = json::parse(fetched->body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || doc.value("_id", "") != id) {
    return make_error(Errc::invalid, "upstream sent a malformed document for '" + id + "'");
  }
  const std::string upstream_rev = doc.value("_rev", "");
  auto wanted = without_rev(doc);
  if (local && local->rev == upstream_rev) {
    return prepared; // already in sync: nothing to download or write
  }

  std::set<std::string> referenced;
  if (is_package_id(id)) {
    std::map<std::string, std::string> local_integrity; // path → integrity+shasum held locally
    if (local_doc) {
      for (const auto& ref : tarballs_of(*local_doc)) {
        local_integrity[ref.path] = ref.integrity + "|" + ref.shasum;
      }
    }
    auto versions = wanted.find("versions");
    if (versions != wanted.end() && !versions->is_object()) {
      return make_error(Errc::invalid, "upstream sent a malformed document for '" + id + "': versions");
    }
    for (const auto& ref : tarballs_of(wanted)) {
      if (ref.path.empty() || ref.path.find("://") != std::string::npos) {
        return make_error(Errc::invalid, "upstream document '" + id + "' version " + ref.version +
                                           ": dist.tarball is not a relative path");
      }
      referenced.insert(ref.path);
      std::error_code ec;
      const bool exists = std::filesystem::is_regular_file(store.file_path(ref.path), ec);
      auto held = local_integrity.find(ref.path);
      if (exists && held != local_integrity.end() && held->second == ref.integrity + "|" + ref.shasum) {
        continue; // verified when it was written
      }
      // Copies of uplink packages hold only the tarballs somebody asked
      // for: take what the upstream holds ("?held=1" keeps it from fetching
      // the rest from its uplink); the others come on demand.
      const bool lazy = wanted.contains("_uplink");
      auto bytes = http::fetch_tarball(client, upstream + "/" + ref.path + (lazy ? "?held=1" : ""),
                                       http::TarballCheck{id + "@" + ref.version, ref.integrity, ref.shasum});
      if (!bytes && lazy && bytes.error().code == Errc::not_found) {
        continue;
      }
      if (!bytes) {
        switch (bytes.error().code) {
        case Errc::interrupted:
        case Errc::verify:
          return util::Unexpected<Error>{bytes.error()};
        case Errc::unauthorized:
          return make_error(Errc::unauthorized, "upstream refused the secret (" + bytes.error().message + ")");
        case Errc::unreachable:
        case Errc::timeout:
          return make_error(Errc::unreachable, "cannot download " + ref.path + ": " + bytes.error().message);
        default:
          return make_error(Errc::failed, "tarball " + ref.path + ": " + bytes.error().message);
        }
      }
      NPME_TRY_ASSIGN(auto file, store.stage_file(ref.path, *bytes, sync));
      prepared.staged.push_back(std::move(file));
      prepared.tarballs += 1;
      prepared.bytes += static_cast<std::int64_t>(bytes->size());
    }
  }
  if (local_doc && is_package_id(id)) {
    for (const auto& ref : tarballs_of(*local_doc)) {
      if (!referenced.count(ref.path)) {
        prepared.removed_files.push_back(ref.path);
      }
    }
  }
  prepared.kind = store::Write::Kind::put;
  prepared.body = wanted.dump();
  prepared.rev = upstream_rev;
  return prepared;
}

// The store write that commits `prepared` (tarballs first, then metadata).
store::Store::BatchItem batch_item(Prepared& prepared) {
  auto* source = &prepared;
  return store::Store::BatchItem{prepared.id, [source](const std::optional<store::Document>& current)
                                                -> Expected<store::Write> {
                                   store::Write write;
                                   write.kind = source->kind;
                                   if (write.kind == store::Write::Kind::remove && !current) {
                                     write.kind = store::Write::Kind::none;
                                   }
                                   write.body = source->body;
                                   write.rev = source->rev;
                                   write.add_files = std::move(source->staged);
                                   write.remove_files = source->removed_files;
                                   return write;
                                 }};
}

// Applies the upstream's change of document `id` at once, on its own.
// Returns the number of tarball bytes downloaded.
Expected<std::int64_t> apply_change(store::Store& store, http::Client& client, const std::string& upstream,
                                    const std::string& id, bool deleted, const std::string& feed_rev,
                                    const Getter& get) {
  NPME_TRY_ASSIGN(auto prepared, prepare_change(store, client, upstream, id, deleted, feed_rev, get, store::Sync::now));
  if (prepared.kind == store::Write::Kind::none) {
    return std::int64_t{0};
  }
  NPME_TRY(store.apply_batch({batch_item(prepared)}));
  return prepared.bytes;
}

} // namespace

Expected<void> Follower::fetch_now(const std::string& id) {
  auto current = m_settings();
  const std::string upstream = current->get("upstream.url");
  if (upstream.empty()) {
    return make_error(Errc::precondition, "this instance has no upstream (set upstream.url first)");
  }
  Session session(upstream, *current, "mirror", m_instance_id, [this] { return m_stop.load(); });
  auto get = [&session](const std::string& url, const std::string& what) {
    return session.get(session.client, url, what);
  };
  NPME_TRY_ASSIGN(auto bytes, apply_change(m_store, session.client, upstream, id, false, "", get));
  std::lock_guard lock(m_mutex);
  m_status.tarball_bytes_fetched += bytes;
  return {};
}

Expected<void> Follower::remove_unseen(Session& session, const std::unordered_set<std::string>& seen,
                                       const std::function<Expected<http::ClientResponse>(const std::string&,
                                                                                          const std::string&)>& get) {
  NPME_TRY_ASSIGN(auto ids, m_store.list_ids());
  for (const auto& id : ids) {
    if (!seen.count(id) && session.wanted(id)) {
      NPME_TRY(apply_change(m_store, session.client, session.upstream, id, true, "", get));
    }
  }
  return {};
}

void Follower::run() {
  auto current = m_settings();
  Session session(current->get("upstream.url"), *current, current->get("upstream.policy"), m_instance_id,
                  [this] { return m_stop.load(); }, k_workers);
  auto get = [&session](const std::string& url, const std::string& what) {
    return session.get(session.client, url, what);
  };
  {
    std::lock_guard lock(m_mutex);
    m_active_clients.push_back(&session.client);
    m_active_fetcher = session.fetcher.get();
    if (m_stop) {
      for (auto* client : m_active_clients) {
        client->abort();
      }
      m_active_fetcher->abort();
    }
  }
  struct Detach {
    Follower& follower;
    ~Detach() {
      std::lock_guard lock(follower.m_mutex);
      follower.m_active_clients.clear();
      follower.m_active_fetcher = nullptr;
    }
  } detach{*this};
  std::mt19937 random(std::random_device{}());
  milliseconds backoff = k_initial_backoff;

  // Waits before the next attempt: capped exponential backoff with jitter
  // (±25%), so that replicas of a failed upstream don't retry in lockstep.
  auto back_off = [&]() {
    std::uniform_real_distribution<double> jitter(0.75, 1.25);
    auto wait = milliseconds(static_cast<long>(static_cast<double>(backoff.count()) * jitter(random)));
    backoff = std::min(backoff * 2, k_max_backoff);
    return sleep_for(wait);
  };

  std::int64_t seq = 0;
  bool have_seq = false; // only a sequence that was read may be written back
  bool caught_up = false;
  // A sync from 0 (a new replica, or after reset-follower) also removes what
  // the upstream does not have: the ids its feed never mentioned.
  bool full_sync = false;
  std::unordered_set<std::string> seen_ids;
  bool handshaken = false;
  while (!m_stop) {
    auto stored = read_sequence(m_data_dir);
    if (!stored) {
      set_error(stored.error().message);
      if (!back_off()) {
        break;
      }
      continue;
    }
    if (!have_seq && *stored == 0) {
      full_sync = true;
    }
    seq = *stored;
    have_seq = true;

    if (!handshaken) {
      auto root = get(session.upstream + "/", "upstream root");
      if (!root) {
        if (root.error().code == Errc::interrupted) {
          break;
        }
        // An npme instance always answers "GET /" (200, or 401 to a wrong secret).
        set_error(root.error().code == Errc::not_found || root.error().code == Errc::failed
                    ? "upstream " + session.upstream + " is not an npme instance (GET / answered: " +
                        root.error().message + "): public packages from an npm registry are configured with "
                        "uplink.url, not upstream.url"
                    : root.error().message);
        if (!back_off()) {
          break;
        }
        continue;
      }
      auto info = json::parse(root->body, nullptr, false);
      if (info.is_discarded() || !info.is_object() || !info.contains("update_seq") || !info.contains("instance") ||
          !info.contains("epoch")) {
        set_error("upstream " + session.upstream + " is not an npme instance (GET / gave no update_seq, instance and "
                  "epoch): public packages from an npm registry are configured with uplink.url, not upstream.url");
        if (!back_off()) {
          break;
        }
        continue;
      }
      // An upstream whose epoch went down is a stale primary that was
      // replaced (and not fenced): following it would undo the failover.
      const auto epoch = info.value("epoch", std::int64_t{0});
      std::int64_t seen = 0;
      if (auto seen_meta = m_store.get_meta("upstream_epoch"); seen_meta && *seen_meta) {
        seen = std::atoll((*seen_meta)->c_str());
      }
      if (epoch < seen) {
        set_error("upstream " + session.upstream + " has epoch " + std::to_string(epoch) + ", lower than the epoch " +
                  std::to_string(seen) + " already seen: refusing to follow a stale primary (reset-follower to "
                  "follow it anyway)");
        if (!back_off()) {
          break;
        }
        continue;
      }
      if (epoch != seen) {
        if (auto epoch_saved = m_store.set_meta("upstream_epoch", std::to_string(epoch)); !epoch_saved) {
          set_error(epoch_saved.error().message);
          if (!back_off()) {
            break;
          }
          continue;
        }
      }
      std::lock_guard lock(m_mutex);
      m_status.upstream_instance = info.value("instance", "");
      m_status.upstream_epoch = epoch;
      m_status.upstream_seq = info.value("update_seq", std::int64_t{0});
      handshaken = true;
    }

    std::string url = session.upstream + "/_changes?since=" + std::to_string(seq) +
                      "&limit=" + std::to_string(k_batch_limit);
    if (caught_up) {
      url += "&feed=longpoll&timeout=" + std::to_string(k_longpoll_timeout_ms);
    }
    auto response = get(url, "changes feed");
    if (!response) {
      if (response.error().code == Errc::interrupted) {
        break;
      }
      set_error(response.error().message);
      caught_up = false;
      if (!back_off()) {
        break;
      }
      continue;
    }
    auto feed = json::parse(response->body, nullptr, false);
    if (feed.is_discarded() || !feed.is_object() || !feed.contains("results") || !feed["results"].is_array()) {
      set_error("upstream sent a malformed changes feed");
      if (!back_off()) {
        break;
      }
      continue;
    }
    // Read after the (long) poll: add-package may have changed it meanwhile.
    if (session.policy != "mirror") {
      auto names = read_whitelist(m_data_dir);
      if (!names) {
        set_error(names.error().message);
        if (!back_off()) {
          break;
        }
        continue;
      }
      session.whitelist = std::set<std::string>(names->begin(), names->end());
    }
    const auto upstream_seq = feed.value("update_seq", feed.value("last_seq", seq));
    const auto& results = feed["results"];
    {
      std::lock_guard lock(m_mutex);
      m_status.upstream_seq = upstream_seq;
      m_status.synchronous = response->headers.get(k_sync_header).value_or("") == "sync";
      if (auto confirmed = response->headers.get(k_sync_confirmed_header)) {
        m_status.upstream_confirmed_seq = std::atoll(std::string(*confirmed).c_str());
      }
      if (!results.empty()) {
        if (auto first = util::parse_iso8601(results[0].value("time", ""))) {
          m_status.lag_seconds =
            std::max(0.0, std::chrono::duration<double>(std::chrono::system_clock::now() - *first).count());
        }
      }
    }

    // Changes go in windows: the wanted ones are prepared in parallel
    // (documents and tarballs fetched, verified and staged), then committed
    // in feed order in one transaction; the sequence advances only past
    // what was committed, so a failed change is retried, never skipped.
    bool failed = false;
    for (std::size_t begin = 0; begin < results.size() && !failed && !m_stop; begin += k_window) {
      const std::size_t end = std::min(results.size(), begin + k_window);
      struct Work {
        std::int64_t seq;
        std::string id;
        bool deleted;
        std::string feed_rev;
        std::optional<Expected<Prepared>> prepared;
      };
      std::vector<Work> work;
      std::int64_t window_last = seq;
      for (std::size_t i = begin; i < end; ++i) {
        const auto& change = results[i];
        if (!change.is_object() || !change.contains("seq") || !change["seq"].is_number_integer() ||
            !change.contains("id") || !change["id"].is_string() || change["seq"].get<std::int64_t>() <= window_last) {
          set_error("upstream sent a malformed changes feed (bad entry after seq " + std::to_string(window_last) + ")");
          failed = true;
          break;
        }
        window_last = change["seq"].get<std::int64_t>();
        auto id = change["id"].get<std::string>();
        if (full_sync) {
          seen_ids.insert(id);
        }
        if (!session.wanted(id)) {
          continue;
        }
        std::string feed_rev;
        if (auto revs = change.find("changes"); revs != change.end() && revs->is_array() && !revs->empty() &&
                                                revs->front().is_object()) {
          feed_rev = revs->front().value("rev", "");
        }
        work.push_back(Work{window_last, std::move(id), change.value("deleted", false), std::move(feed_rev), {}});
      }
      if (failed) {
        // Nothing of this window is applied; the entries before it were.
        break;
      }

      // Few changes (a replica keeping up): fsync each file, so that a lone
      // publish doesn't wait for a flush of the whole file system.
      const auto sync = work.size() > k_small_window ? store::Sync::deferred : store::Sync::now;
      std::vector<http::Fetcher::Job> jobs;
      for (auto& item : work) {
        jobs.push_back([&, item = &item](http::Client& client) {
          auto worker_get = [&session, &client](const std::string& target, const std::string& what) {
            return session.get(client, target, what);
          };
          item->prepared = prepare_change(m_store, client, session.upstream, item->id, item->deleted, item->feed_rev,
                                          worker_get, sync);
        });
      }
      session.fetcher->run_all(std::move(jobs));

      // Commit the prefix that was prepared; stop at the first failure.
      std::vector<store::Store::BatchItem> batch;
      std::int64_t tarballs = 0;
      std::int64_t bytes = 0;
      std::int64_t committed_seq = window_last;
      std::optional<Error> failure;
      std::string failed_label;
      for (auto& item : work) {
        if (!item.prepared || !*item.prepared) {
          failure = item.prepared ? item.prepared->error() : Error{Errc::interrupted, "stopped"};
          failed_label = "change " + std::to_string(item.seq) + " (" + item.id + ")";
          // Everything before this change is committed below, nothing after.
          committed_seq = item.seq - 1;
          break;
        }
        auto& ready = **item.prepared;
        if (ready.kind != store::Write::Kind::none) {
          tarballs += ready.tarballs;
          bytes += ready.bytes;
          batch.push_back(batch_item(ready));
        }
      }
      if (!batch.empty()) {
        if (auto written = m_store.apply_batch(batch); !written) {
          set_error("applying changes after seq " + std::to_string(seq) + ": " + written.error().message);
          failed = true;
          break;
        }
      }
      // The window's last change applied (or the one before the failure;
      // never past it: entries the feed skipped don't exist upstream).
      if (failure) {
        std::int64_t before_failure = seq;
        for (std::size_t i = begin; i < end; ++i) {
          const auto s = results[i]["seq"].get<std::int64_t>();
          if (s > committed_seq) {
            break;
          }
          before_failure = s;
        }
        committed_seq = before_failure;
      }
      seq = std::max(seq, committed_seq);
      {
        std::lock_guard lock(m_mutex);
        m_status.documents_applied += static_cast<std::int64_t>(batch.size());
        m_status.tarballs_fetched += tarballs;
        m_status.tarball_bytes_fetched += bytes;
        if (!batch.empty()) {
          m_status.last_applied_time = util::iso8601();
        }
        m_status.sequence = seq;
        m_status.lag_changes = std::max<std::int64_t>(0, upstream_seq - seq);
        const std::size_t next = std::min(results.size() - 1, end);
        if (auto time = util::parse_iso8601(results[next].value("time", "")); time && seq < upstream_seq) {
          m_status.lag_seconds =
            std::max(0.0, std::chrono::duration<double>(std::chrono::system_clock::now() - *time).count());
        }
      }
      if (auto written = write_sequence(m_data_dir, seq); !written) {
        set_error(written.error().message);
        failed = true;
        break;
      }
      if (failure) {
        if (failure->code != Errc::interrupted) {
          set_error(failed_label + ": " + failure->message);
        }
        failed = true;
      }
    }
    // The sequence only ever names changes that were applied.
    if (auto written = write_sequence(m_data_dir, seq); !written) {
      set_error(written.error().message);
      failed = true;
    }
    if (failed) {
      caught_up = false;
      if (!back_off()) {
        break;
      }
      continue;
    }
    backoff = k_initial_backoff;
    caught_up = seq >= upstream_seq;
    if (caught_up && full_sync) {
      auto removed = remove_unseen(session, seen_ids, get);
      if (!removed) {
        set_error("removing documents the upstream does not have: " + removed.error().message);
        caught_up = false;
        if (!back_off()) {
          break;
        }
        continue;
      }
      full_sync = false;
      seen_ids.clear();
    }
    std::lock_guard lock(m_mutex);
    m_status.sequence = seq;
    m_status.lag_changes = std::max<std::int64_t>(0, upstream_seq - seq);
    if (caught_up) {
      m_status.lag_seconds = 0;
    }
    m_status.state = caught_up ? "caught-up" : "following";
  }
  // A clean stop leaves `sequence` at the last applied change.
  if (have_seq) {
    if (auto written = write_sequence(m_data_dir, seq); !written) {
      set_error(written.error().message);
    }
  }
}

} // namespace npme::replication
