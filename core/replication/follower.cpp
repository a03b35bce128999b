#include "core/replication/follower.hpp"

#include "core/http/client.hpp"
#include "core/http/fetcher.hpp"
#include "core/replication/feed.hpp"
#include "core/replication/prepare.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/crypto.hpp"
#include "core/util/time.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <random>
#include <set>
#include <unordered_set>

namespace npme::replication {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;

constexpr int k_batch_limit = 500;
// The key of the database's meta table that holds "1" while a full resync
// (a sync from 0) is unfinished.
constexpr std::string_view k_resync_meta = "resync";
constexpr int k_longpoll_timeout_ms = 25000;
constexpr milliseconds k_initial_backoff{500};
constexpr milliseconds k_max_backoff{30000};
constexpr std::size_t k_workers = 4;      // parallel fetches of documents and tarballs
constexpr std::size_t k_small_window = 8; // up to this many changes: fsync per file, not syncfs
constexpr std::size_t k_window = 256;     // changes prepared, then committed in one transaction
// The first and the last changes of a batch go in windows of at most this
// many: the first window is prepared with nothing to commit meanwhile, and
// the last one's commit overlaps nothing (the next batch is asked for only
// once everything before it is committed), so both are kept short.
constexpr std::size_t k_edge_window = 64;
constexpr std::size_t k_bulk_slice = 16;  // changes of a large window prepared by one bulk job
constexpr std::size_t k_ahead = 2;        // windows prepared while the one before them commits

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

// Returns member `key` of `object` when it is an integer; nullopt when it
// is absent, or present and not an integer when `absent` is set to false.
std::optional<std::int64_t> integer_member(const json& object, const char* key, bool* absent = nullptr) {
  const auto it = object.find(key);
  if (absent != nullptr) {
    *absent = it == object.end();
  }
  if (it == object.end() || !it->is_number_integer()) {
    return std::nullopt;
  }
  return it->get<std::int64_t>();
}

// Returns member `key` of `object` when it is a string, else "".
std::string string_member(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

} // namespace

Expected<UpstreamRoot> parse_upstream_root(std::string_view body) {
  const auto info = json::parse(body, nullptr, false);
  if (info.is_object()) {
    const auto update_seq = integer_member(info, "update_seq");
    const auto epoch = integer_member(info, "epoch");
    const auto instance = info.find("instance");
    if (update_seq && epoch && instance != info.end() && instance->is_string()) {
      return UpstreamRoot{*update_seq, instance->get<std::string>(), *epoch};
    }
  }
  return make_error(Errc::invalid, "GET / gave no update_seq, instance and epoch");
}

Expected<FeedAnswer> parse_feed_answer(std::string_view body, std::int64_t since) {
  const auto feed = json::parse(body, nullptr, false);
  const auto results = feed.is_object() ? feed.find("results") : feed.end();
  if (!feed.is_object() || results == feed.end() || !results->is_array()) {
    return make_error(Errc::invalid, "upstream sent a malformed changes feed");
  }
  FeedAnswer answer;
  // Either position may be absent; one of another type is a broken feed.
  bool update_absent = false;
  bool last_absent = false;
  const auto update_seq = integer_member(feed, "update_seq", &update_absent);
  const auto last_seq = integer_member(feed, "last_seq", &last_absent);
  if ((!update_seq && !update_absent) || (!last_seq && !last_absent)) {
    return make_error(Errc::invalid, "upstream sent a malformed changes feed (update_seq or last_seq)");
  }
  answer.update_seq = update_seq.value_or(last_seq.value_or(since));
  answer.entries = results->size();
  std::int64_t last = since;
  for (const auto& entry : *results) {
    const bool object = entry.is_object();
    const std::int64_t seq = object ? integer_member(entry, "seq").value_or(last) : last;
    const auto id = object ? entry.find("id") : entry.end();
    const auto deleted = object ? entry.find("deleted") : entry.end();
    if (seq <= last || id == entry.end() || !id->is_string() || (deleted != entry.end() && !deleted->is_boolean())) {
      answer.problem = "upstream sent a malformed changes feed (bad entry after seq " + std::to_string(last) + ")";
      break;
    }
    FeedChange change;
    change.seq = last = seq;
    change.id = id->get<std::string>();
    change.deleted = deleted != entry.end() && deleted->get<bool>();
    if (const auto revs = entry.find("changes");
        revs != entry.end() && revs->is_array() && !revs->empty() && revs->front().is_object()) {
      change.rev = string_member(revs->front(), "rev");
    }
    change.time = string_member(entry, "time");
    answer.changes.push_back(std::move(change));
  }
  return answer;
}

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
  // Whether large windows go through the upstream's bulk route; cleared
  // for the rest of the session when the upstream has none (an older npme).
  std::atomic<bool> bulk{true};

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
    options.ca_file = settings::ca_file(config, "upstream.ca_file");
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
  // Whose changes `sequence` counts, as of the last run: automatic failover
  // compares positions only within one upstream's numbering, even before
  // the follower reaches that upstream again.
  if (auto known = m_store.get_meta("upstream_instance"); known && *known) {
    m_status.upstream_instance = **known;
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
  NPME_TRY(m_store.set_meta("upstream_instance", ""));
  {
    std::lock_guard lock(m_mutex);
    m_status.sequence = 0;
    m_status.upstream_instance.clear();
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

Expected<std::unordered_set<std::string>> Follower::upstream_ids(Session& session, const Getter& get) {
  std::unordered_set<std::string> ids;
  std::int64_t since = 0;
  while (!m_stop) {
    NPME_TRY_ASSIGN(auto response, get(session.upstream + "/_changes?since=" + std::to_string(since) +
                                         "&limit=" + std::to_string(k_batch_limit),
                                       "changes feed"));
    NPME_TRY_ASSIGN(auto feed, parse_feed_answer(response.body, since));
    if (!feed.problem.empty()) {
      return make_error(Errc::invalid, feed.problem);
    }
    if (feed.changes.empty()) {
      return ids;
    }
    for (auto& change : feed.changes) {
      since = change.seq;
      ids.insert(std::move(change.id));
    }
  }
  return make_error(Errc::interrupted, "stopped");
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

  // The jobs that prepare a window's changes on the prefetch connections:
  // a large window (an initial sync, a replica catching up) in slices
  // through the upstream's bulk route, a few requests per slice; a small one
  // (a replica keeping up), or any against an upstream without that route,
  // one request per document and per tarball.
  auto prepare_jobs = [this, &session](std::vector<WindowItem>& work, store::Sync sync) {
    std::vector<http::Fetcher::Job> jobs;
    auto one_by_one = [this, &session, sync](WindowItem& item, http::Client& client) {
      auto worker_get = [&session, &client](const std::string& target, const std::string& what) {
        return session.get(client, target, what);
      };
      item.prepared = prepare_change(m_store, client, session.upstream, item.id, item.deleted, item.feed_rev,
                                     worker_get, sync);
    };
    if (work.size() <= k_small_window || !session.bulk) {
      for (auto& item : work) {
        jobs.push_back([one_by_one, item = &item](http::Client& client) { one_by_one(*item, client); });
      }
    } else {
      for (std::size_t begin = 0; begin < work.size(); begin += k_bulk_slice) {
        std::vector<WindowItem*> slice;
        for (std::size_t i = begin; i < std::min(work.size(), begin + k_bulk_slice); ++i) {
          slice.push_back(&work[i]);
        }
        jobs.push_back([this, &session, sync, one_by_one, slice = std::move(slice)](http::Client& client) mutable {
          auto worker_get = [&session, &client](const std::string& target, const std::string& what) {
            return session.get(client, target, what);
          };
          if (session.bulk) {
            auto done = prepare_bulk(m_store, client, session.upstream, session.identity, slice, worker_get, sync);
            if (done || done.error().code != Errc::not_found) {
              return;
            }
            session.bulk = false; // an older upstream: item by item from now on
          }
          for (auto* item : slice) {
            one_by_one(*item, client);
          }
        });
      }
    }
    if (sync == store::Sync::deferred) {
      // The last job to finish puts the window's staged files on stable
      // storage, on its connection's thread: for a window prepared ahead,
      // that flush overlaps the commit before it instead of starting its own
      // commit. (If it fails, the commit flushes them itself.)
      struct Flush {
        std::atomic<std::size_t> left;
        std::vector<WindowItem*> items;
      };
      auto flush = std::make_shared<Flush>();
      flush->left = jobs.size();
      for (auto& item : work) {
        flush->items.push_back(&item);
      }
      for (auto& job : jobs) {
        job = [this, flush, job = std::move(job)](http::Client& client) {
          job(client);
          if (flush->left.fetch_sub(1) != 1) {
            return;
          }
          std::vector<store::StagedFile*> files;
          for (auto* item : flush->items) {
            if (item->prepared && *item->prepared) {
              for (auto& file : (*item->prepared)->staged) {
                files.push_back(&file);
              }
            }
          }
          if (!files.empty()) {
            static_cast<void>(m_store.sync_staged(files));
          }
        };
      }
    }
    return jobs;
  };

  std::int64_t seq = 0;
  bool have_seq = false; // only a sequence that was read may be written back
  // The sequence file is rewritten after every commit without fsyncs, and
  // durably at most once a second and on a clean stop: the commit itself is
  // durable, and a sequence a power loss sets back only means changes
  // applied again (idempotent). A publish on a synchronous replica then
  // costs the fsyncs of its tarball and its commit, no more.
  std::int64_t saved_seq = -1;   // in the file (maybe not yet on disk)
  std::int64_t durable_seq = -1; // on disk
  auto durable_at = std::chrono::steady_clock::time_point{};
  auto save_sequence = [&](bool stopping) -> Expected<void> {
    const auto now = std::chrono::steady_clock::now();
    const bool durable = stopping || now - durable_at >= std::chrono::seconds(1);
    if (seq == durable_seq || (seq == saved_seq && !durable)) {
      return {};
    }
    NPME_TRY(write_sequence(m_data_dir, seq, durable ? util::Durability::durable : util::Durability::relaxed));
    saved_seq = seq;
    if (durable) {
      durable_seq = seq;
      durable_at = now;
    }
    return {};
  };
  bool caught_up = false;
  // A sync from 0 (a new replica, or after reset-follower) also removes what
  // the upstream does not have: the ids its feed never mentioned. It checks
  // the tarballs of the documents it already holds (prepare_change), and it
  // is remembered in the database (meta "resync") until it is done, so that
  // one interrupted by a restart still ends with the removals.
  bool full_sync = false;
  bool resumed_sync = false; // the ids seen before the restart are unknown: the feed is read again
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
    if (!have_seq) {
      auto marked = m_store.get_meta(k_resync_meta);
      if (!marked) {
        set_error(marked.error().message);
        if (!back_off()) {
          break;
        }
        continue;
      }
      const bool unfinished = *marked && **marked == "1";
      if (*stored == 0 || unfinished) {
        if (!unfinished) {
          if (auto saved = m_store.set_meta(k_resync_meta, "1"); !saved) {
            set_error(saved.error().message);
            if (!back_off()) {
              break;
            }
            continue;
          }
        }
        full_sync = true;
        resumed_sync = *stored > 0;
      }
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
      auto info = parse_upstream_root(root->body);
      if (!info) {
        set_error("upstream " + session.upstream + " is not an npme instance (GET / gave no update_seq, instance and "
                  "epoch): public packages from an npm registry are configured with uplink.url, not upstream.url");
        if (!back_off()) {
          break;
        }
        continue;
      }
      // An upstream whose epoch went down is a stale primary that was
      // replaced (and not fenced): following it would undo the failover.
      const auto epoch = info->epoch;
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
      const std::string upstream_instance = info->instance;
      if (auto known = m_store.get_meta("upstream_instance"); !known || !*known || **known != upstream_instance) {
        static_cast<void>(m_store.set_meta("upstream_instance", upstream_instance));
      }
      std::lock_guard lock(m_mutex);
      m_status.upstream_instance = upstream_instance;
      m_status.upstream_epoch = epoch;
      m_status.upstream_seq = info->update_seq;
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
    auto feed = parse_feed_answer(response->body, seq);
    if (!feed) {
      set_error(feed.error().message);
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
    const auto upstream_seq = feed->update_seq;
    const auto& results = feed->changes;
    {
      std::lock_guard lock(m_mutex);
      m_status.upstream_seq = upstream_seq;
      m_status.synchronous = response->headers.get(k_sync_header).value_or("") == "sync";
      if (auto confirmed = response->headers.get(k_sync_confirmed_header)) {
        m_status.upstream_confirmed_seq = std::atoll(std::string(*confirmed).c_str());
      }
      if (!results.empty()) {
        if (auto first = util::parse_iso8601(results[0].time)) {
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
    // A window of the feed: its wanted changes, and their preparation.
    struct Window {
      std::size_t begin = 0;
      std::size_t end = 0;   // index after its last entry
      std::int64_t last = 0; // seq of its last entry
      std::vector<WindowItem> work;
      std::unique_ptr<http::Fetcher::Group> jobs;
    };
    // Where the window starting at `begin` ends: k_window changes on, but
    // the batch's first and last ones go in windows of k_edge_window.
    const std::size_t entries = feed->entries;
    auto window_end = [entries](std::size_t begin) {
      const std::size_t left = entries - begin;
      if (left <= k_edge_window) {
        return entries;
      }
      if (left <= k_window + k_edge_window) {
        return entries - k_edge_window;
      }
      return begin + (begin == 0 ? k_edge_window : k_window);
    };
    // Reads the entries of the window at `begin`, which follow seq `after`;
    // false with `problem` on a malformed entry.
    auto collect = [&](std::size_t begin, std::int64_t after, Window& window, std::string& problem) {
      window.begin = begin;
      window.end = window_end(begin);
      window.last = after;
      const std::size_t end = window.end;
      for (std::size_t i = begin; i < end; ++i) {
        // parse_feed_answer() checked the entries before the first malformed one.
        if (i >= results.size()) {
          problem = feed->problem;
          return false;
        }
        const auto& change = results[i];
        window.last = change.seq;
        if (full_sync) {
          seen_ids.insert(change.id);
        }
        if (!session.wanted(change.id)) {
          continue;
        }
        window.work.push_back(WindowItem{window.last, change.id, change.deleted, change.rev, {}, full_sync});
      }
      return true;
    };
    auto start_preparing = [&](Window& window) {
      // Few changes (a replica keeping up): fsync each file, so that a lone
      // publish doesn't wait for a flush of the whole file system.
      const auto sync = window.work.size() > k_small_window ? store::Sync::deferred : store::Sync::now;
      window.jobs = session.fetcher->start_all(prepare_jobs(window.work, sync));
    };
    // The windows after the one being committed, prepared meanwhile.
    std::deque<Window> ahead;
    for (std::size_t begin = 0, end = 0; begin < entries && !failed && !m_stop; begin = end) {
      end = window_end(begin);
      Window window;
      if (!ahead.empty() && ahead.front().begin == begin) {
        window = std::move(ahead.front());
        ahead.pop_front();
      } else {
        ahead.clear();
        std::string problem;
        if (!collect(begin, seq, window, problem)) {
          set_error(problem);
          // Nothing of this window is applied; the entries before it were.
          failed = true;
          break;
        }
        start_preparing(window);
      }
      // While this window is prepared and committed (its syncs and its
      // transaction), up to k_ahead windows after it are fetched and staged
      // too, their jobs queued behind its own: the network, the disk and
      // the committing thread stay busy. Only after a large window, and only
      // while no document is in two of them: preparing a change reads the
      // local revision that an earlier window's commit may write. (A
      // malformed window is reported when its turn comes.)
      if (window.work.size() > k_small_window) {
        std::unordered_set<std::string_view> ids;
        for (const auto& item : window.work) {
          ids.insert(item.id);
        }
        for (const auto& held : ahead) {
          for (const auto& item : held.work) {
            ids.insert(item.id);
          }
        }
        while (ahead.size() < k_ahead) {
          const std::size_t next_begin = ahead.empty() ? end : ahead.back().end;
          if (next_begin >= entries) {
            break;
          }
          Window next;
          std::string ignored;
          if (!collect(next_begin, ahead.empty() ? window.last : ahead.back().last, next, ignored) ||
              std::any_of(next.work.begin(), next.work.end(),
                          [&ids](const WindowItem& item) { return ids.count(item.id) != 0; })) {
            break;
          }
          for (const auto& item : next.work) {
            ids.insert(item.id);
          }
          start_preparing(next);
          ahead.push_back(std::move(next));
        }
      }
      window.jobs->wait();
      auto& work = window.work;
      const std::int64_t window_last = window.last;

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
          const auto s = results[i].seq;
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
        const std::size_t next = std::min(entries - 1, end);
        if (auto time = util::parse_iso8601(next < results.size() ? results[next].time : "");
            time && seq < upstream_seq) {
          m_status.lag_seconds =
            std::max(0.0, std::chrono::duration<double>(std::chrono::system_clock::now() - *time).count());
        }
      }
      if (auto written = save_sequence(false); !written) {
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
    // Windows prepared ahead of a failure are dropped (their staged files with them).
    ahead.clear();
    // The sequence only ever names changes that were applied.
    if (auto written = save_sequence(false); !written) {
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
      Expected<void> removed;
      if (resumed_sync) {
        // The ids listed before the restart: the whole feed once more.
        auto all = upstream_ids(session, get);
        if (all) {
          seen_ids.merge(*all);
        } else {
          removed = util::Unexpected<Error>{all.error()};
        }
      }
      if (removed) {
        removed = remove_unseen(session, seen_ids, get);
      }
      if (removed) {
        removed = m_store.set_meta(k_resync_meta, "0");
      }
      if (!removed) {
        set_error("removing documents the upstream does not have: " + removed.error().message);
        caught_up = false;
        if (!back_off()) {
          break;
        }
        continue;
      }
      full_sync = false;
      resumed_sync = false;
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
    if (auto written = save_sequence(true); !written) {
      set_error(written.error().message);
    }
  }
}

} // namespace npme::replication
