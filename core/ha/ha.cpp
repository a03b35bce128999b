#include "core/ha/ha.hpp"

#include "core/ha/etcd.hpp"
#include "core/http/client.hpp"
#include "core/replication/promote.hpp"
#include "core/util/text.hpp"
#include "core/util/time.hpp"

#include <algorithm>
#include <map>
#include <set>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace npme::ha {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

// The leader stops taking writes this long before its lease could end by
// its own clock: covers the time a renewal takes to reach etcd.
constexpr milliseconds k_lease_margin{500};
// How often a replica checks that the leader's registry port still listens.
constexpr milliseconds k_probe_interval{250};
// Refused connections for this long (and at least 3 probes) mean the leader's
// process is gone (killed, crashed): its listening socket was closed by the
// kernel, so it cannot take writes, and its key is released at once instead
// of after its lease. A leader that is frozen or cut off still listens (its
// connections time out instead): that case waits for the lease.
constexpr milliseconds k_refused_for{500};
constexpr int k_refused_probes = 3;
// How long a member asked for its position during an election may take.
constexpr milliseconds k_position_timeout{500};

std::int64_t seconds_setting(const settings::Settings& config, std::string_view key) {
  return std::atoll(config.get(key).c_str());
}

// The host and port of an http(s) URL ("http://127.0.0.1:8080/x").
std::optional<std::pair<std::string, std::string>> host_port(const std::string& url) {
  std::string_view rest = url;
  std::string port = "80";
  if (rest.starts_with("https://")) {
    rest.remove_prefix(8);
    port = "443";
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    return std::nullopt;
  }
  rest = rest.substr(0, rest.find('/'));
  std::string host(rest);
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    if (close == std::string::npos) {
      return std::nullopt;
    }
    if (close + 1 < host.size() && host[close + 1] == ':') {
      port = host.substr(close + 2);
    }
    host = host.substr(1, close - 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  if (host.empty() || port.empty()) {
    return std::nullopt;
  }
  return std::pair{host, port};
}

enum class Probe { open, refused, unknown };

// Connects to `url`'s host and port and closes again: `refused` only when
// the host answered that nothing listens there.
Probe probe_port(const std::string& url, milliseconds timeout) {
  auto target = host_port(url);
  if (!target) {
    return Probe::unknown;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (::getaddrinfo(target->first.c_str(), target->second.c_str(), &hints, &found) != 0 || found == nullptr) {
    return Probe::unknown;
  }
  Probe result = Probe::unknown;
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int rc = ::connect(fd, found->ai_addr, found->ai_addrlen);
    if (rc == 0) {
      result = Probe::open;
    } else if (errno == ECONNREFUSED) {
      result = Probe::refused;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, static_cast<int>(timeout.count())) == 1) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        result = err == 0 ? Probe::open : err == ECONNREFUSED ? Probe::refused : Probe::unknown;
      }
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return result;
}

struct Leader {
  std::string instance;
  std::string url;
  std::string admin_url;
  std::int64_t epoch = 0;
  std::int64_t update_seq = 0;
  std::int64_t mod_revision = 0;
  std::int64_t lease = 0;
};

json leader_json(const Leader& leader) {
  return {{"instance", leader.instance},
          {"url", leader.url},
          {"admin_url", leader.admin_url},
          {"epoch", leader.epoch},
          {"update_seq", leader.update_seq}};
}

std::optional<Leader> leader_from(const KeyValue& kv) {
  auto doc = json::parse(kv.value, nullptr, false);
  if (!doc.is_object() || !doc.contains("instance") || !doc["instance"].is_string()) {
    return std::nullopt;
  }
  Leader leader;
  leader.instance = doc.value("instance", "");
  leader.url = doc.value("url", "");
  leader.admin_url = doc.value("admin_url", "");
  leader.epoch = doc.value("epoch", std::int64_t{0});
  leader.update_seq = doc.value("update_seq", std::int64_t{0});
  leader.mod_revision = kv.mod_revision;
  leader.lease = kv.lease;
  return leader;
}

EtcdOptions etcd_options(const settings::Settings& config) {
  EtcdOptions options;
  options.endpoints = util::split_list(config.get("ha.etcd"));
  // A request must fail well within a round, so that a leader cut off from
  // one endpoint still renews through another before its lease ends.
  const auto loop = std::max<std::int64_t>(1, seconds_setting(config, "ha.loop"));
  options.timeout = std::min<milliseconds>(milliseconds(2000), milliseconds(loop * 1000));
  options.ca_file = config.get("ha.etcd_ca");
  options.cert_file = config.get("ha.etcd_cert");
  options.key_file = config.get("ha.etcd_key");
  options.user = config.get("ha.etcd_user");
  options.password = config.get("ha.etcd_password");
  return options;
}

std::string options_signature(const EtcdOptions& options) {
  std::string out;
  for (const auto& endpoint : options.endpoints) {
    out += endpoint + ",";
  }
  return out + "|" + std::to_string(options.timeout.count()) + "|" + options.ca_file + "|" + options.cert_file + "|" +
         options.key_file + "|" + options.user + "|" + options.password;
}

} // namespace

json to_json(const Member& member) {
  return {{"instance", member.instance},
          {"url", member.url},
          {"admin_url", member.admin_url},
          {"role", member.role},
          {"epoch", member.epoch},
          {"position_of", member.position_of},
          {"position", member.position},
          {"leader_seq_seen", member.leader_seq_seen},
          {"synchronous", member.synchronous},
          {"secret_ok", member.secret_ok},
          {"follower_state", member.follower_state},
          {"last_error", member.last_error.empty() ? json(nullptr) : json(member.last_error)}};
}

Member member_from_json(const json& doc) {
  Member member;
  if (!doc.is_object()) {
    return member;
  }
  auto text = [&doc](const char* key) {
    auto it = doc.find(key);
    return it != doc.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  auto number = [&doc](const char* key) {
    auto it = doc.find(key);
    return it != doc.end() && it->is_number_integer() ? it->get<std::int64_t>() : std::int64_t{0};
  };
  auto flag = [&doc](const char* key, bool fallback) {
    auto it = doc.find(key);
    return it != doc.end() && it->is_boolean() ? it->get<bool>() : fallback;
  };
  member.instance = text("instance");
  member.url = text("url");
  member.admin_url = text("admin_url");
  member.role = text("role");
  member.epoch = number("epoch");
  member.position_of = text("position_of");
  member.position = number("position");
  member.leader_seq_seen = number("leader_seq_seen");
  member.synchronous = flag("synchronous", false);
  member.secret_ok = flag("secret_ok", true);
  member.follower_state = text("follower_state");
  member.last_error = text("last_error");
  return member;
}

Election elect(const std::vector<Member>& members, const std::string& leader_of, std::int64_t leader_seq,
               std::int64_t sync_replicas, std::int64_t max_lag) {
  Election election;
  // The numbering the members share: that of the last leader, which its
  // replicas follow and which it uses itself.
  std::map<std::string, int> votes;
  for (const auto& member : members) {
    if (!member.position_of.empty()) {
      votes[member.position_of] += 1;
    }
  }
  int best_votes = 0;
  for (const auto& [group, count] : votes) {
    if (count > best_votes) {
      best_votes = count;
      election.group = group;
    }
  }
  election.reference = leader_of == election.group ? leader_seq : 0;
  for (const auto& member : members) {
    if (member.position_of == election.group) {
      election.reference = std::max({election.reference, member.position, member.leader_seq_seen});
    }
  }
  std::vector<const Member*> eligible;
  for (const auto& member : members) {
    if (!member.secret_ok) {
      election.excluded.emplace_back(member.instance, "its secret is refused by the leader");
    } else if (member.position_of != election.group) {
      election.excluded.emplace_back(member.instance, member.position_of.empty() ? "it has not followed the leader yet"
                                                                                 : "it follows " + member.position_of +
                                                                                     ", not " + election.group);
    } else if (election.reference - member.position > max_lag) {
      election.excluded.emplace_back(member.instance, "it lags " +
                                                        std::to_string(election.reference - member.position) +
                                                        " changes (ha.max_lag " + std::to_string(max_lag) + ")");
    } else {
      eligible.push_back(&member);
    }
  }
  if (sync_replicas > 0 &&
      std::any_of(eligible.begin(), eligible.end(), [](const Member* m) { return m->synchronous; })) {
    std::vector<const Member*> synchronous;
    for (const auto* member : eligible) {
      if (member->synchronous) {
        synchronous.push_back(member);
      } else {
        election.excluded.emplace_back(member->instance, "not synchronous, and a synchronous member is eligible");
      }
    }
    eligible = std::move(synchronous);
  }
  std::sort(eligible.begin(), eligible.end(), [](const Member* a, const Member* b) {
    if (a->position != b->position) {
      return a->position > b->position;
    }
    return a->instance < b->instance;
  });
  for (const auto* member : eligible) {
    election.eligible.push_back(member->instance);
  }
  return election;
}

Keys keys_of(const settings::Settings& config) {
  std::string cluster = config.get("ha.cluster");
  return Keys{"/npme/" + (cluster.empty() ? std::string("npme") : cluster) + "/"};
}

steady_clock::time_point loop_deadline(bool on, steady_clock::time_point next_round, steady_clock::time_point now) {
  if (!on) {
    return now + milliseconds(1000);
  }
  return std::min(next_round, now + k_probe_interval);
}

bool enabled(const settings::Settings& config) {
  return !config.get("ha.etcd").empty();
}

namespace {

// The cluster's keys as one range read them.
struct Cluster {
  std::optional<Leader> leader;
  std::vector<Member> members;
  bool paused = false;
  std::optional<json> switchover;
  json optime; // the optime document, or null
  std::string optime_of;
  std::int64_t optime_seq = 0;
};

Cluster read_cluster(const RangeResult& range, const Keys& keys) {
  Cluster cluster;
  for (const auto& kv : range.kvs) {
    if (kv.key == keys.leader()) {
      cluster.leader = leader_from(kv);
    } else if (kv.key == keys.optime()) {
      auto doc = json::parse(kv.value, nullptr, false);
      if (doc.is_object()) {
        cluster.optime_of = doc.value("instance", "");
        cluster.optime_seq = doc.value("update_seq", std::int64_t{0});
        cluster.optime = std::move(doc);
      }
    } else if (kv.key == keys.pause()) {
      cluster.paused = true;
    } else if (kv.key == keys.switchover()) {
      auto doc = json::parse(kv.value, nullptr, false);
      if (doc.is_object()) {
        cluster.switchover = std::move(doc);
      }
    } else if (kv.key.starts_with(keys.members())) {
      cluster.members.push_back(member_from_json(json::parse(kv.value, nullptr, false)));
    }
  }
  return cluster;
}

} // namespace

struct Ha::Impl {
  Context context;

  mutable std::mutex mutex; // guards everything below that is not atomic
  std::condition_variable wake;
  bool stopping = false;
  bool woken = false;
  std::thread loop_thread;
  std::thread watch_thread;

  std::shared_ptr<Etcd> etcd;
  std::string etcd_signature;
  Keys keys;

  std::int64_t lease = 0;
  steady_clock::time_point lease_deadline{};
  bool leading = false;
  std::optional<Leader> leader; // as last read
  std::string last_leader;      // the instance that led last
  std::int64_t leader_seq_seen = 0;
  std::string optime_of; // the optime key: the last leader's position
  std::int64_t optime_seq = 0;
  bool secret_ok = true;
  std::string last_error;
  std::string last_event;
  std::int64_t watch_revision = 0;
  // The fast check of the leader's port.
  int refused = 0;
  steady_clock::time_point refused_since{};

  // Read on every write.
  std::atomic<bool> enabled{false};
  std::atomic<bool> paused{false};
  std::atomic<bool> handing_over{false};
  std::atomic<std::int64_t> leader_until{0};    // steady_clock ticks; 0: not leading
  std::atomic<std::int64_t> lead_generation{0}; // +1 each time this instance starts leading

  explicit Impl(Context c) : context(std::move(c)) {}

  std::shared_ptr<const settings::Settings> config() const { return context.settings.get(); }

  std::string self_url(const settings::Settings& config) const {
    const std::string url = config.get("ha.url");
    return url.empty() ? context.listen_url : url;
  }

  void log(const std::string& line) {
    {
      std::lock_guard lock(mutex);
      last_event = util::iso8601() + " " + line;
    }
    if (context.log) {
      context.log("ha: " + line);
    }
  }

  void set_error(const std::string& message) {
    std::lock_guard lock(mutex);
    last_error = message;
  }

  std::shared_ptr<Etcd> client() {
    std::lock_guard lock(mutex);
    return etcd;
  }

  // Stops taking writes at once.
  void fence(const std::string& why) {
    const bool was = leader_until.exchange(0) != 0;
    bool had = false;
    {
      std::lock_guard lock(mutex);
      had = leading;
      leading = false;
    }
    if (was || had) {
      log("fenced: no longer taking writes (" + why + ")");
      if (context.audit) {
        context.audit("fence", why);
      }
    }
  }

  Member self() const {
    auto config_now = config();
    Member member;
    member.instance = context.instance_id;
    const bool upstream_empty = config_now->get("upstream.url").empty();
    {
      std::lock_guard lock(mutex);
      member.url = self_url(*config_now);
      member.admin_url = context.admin_url;
      member.leader_seq_seen = leader_seq_seen;
      member.secret_ok = secret_ok;
      member.last_error = last_error;
      if (leading) {
        member.role = leader_until.load() > steady_clock::now().time_since_epoch().count() ? "leader" : "fenced";
      } else {
        member.role = upstream_empty ? "candidate" : "replica";
      }
    }
    member.epoch = replication::read_epoch(context.store);
    const auto follower = context.follower.status();
    member.follower_state = follower.state;
    if (upstream_empty) {
      member.position_of = context.instance_id;
      member.position = context.store.update_seq();
    } else {
      member.position_of = follower.upstream_instance;
      member.position = follower.sequence;
      member.synchronous = follower.synchronous;
    }
    return member;
  }

  // Makes this instance the primary: epoch above `revision` and every epoch
  // seen, no upstream, publishes accepted.
  Expected<void> become_primary(std::int64_t revision) {
    auto current = config();
    const std::string upstream = current->get("upstream.url");
    if (!upstream.empty()) {
      context.follower.stop();
    }
    std::int64_t upstream_epoch = 0;
    if (auto stored = context.store.get_meta("upstream_epoch"); stored && *stored) {
      upstream_epoch = std::atoll((*stored)->c_str());
    }
    const std::int64_t epoch = std::max({replication::read_epoch(context.store) + 1, upstream_epoch + 1, revision,
                                         context.follower.status().upstream_epoch + 1});
    NPME_TRY(context.store.set_meta("epoch", std::to_string(epoch)));
    std::string publication = "all";
    if (auto kept = context.store.get_meta("ha_publication"); kept && *kept && !(*kept)->empty()) {
      publication = **kept;
    }
    NPME_TRY(context.settings.update({{"upstream.url", ""}, {"upstream.secret", ""}, {"publication", publication}}));
    return {};
  }

  // Makes this instance a replica of `leader` (a full resync that fetches
  // only what is missing and drops what the leader does not have); true
  // when it was not one already.
  Expected<bool> follow(const Leader& target) {
    auto current = config();
    if (current->get("upstream.url") == target.url && current->get("publication") == "read-only" &&
        current->get("upstream.secret") == current->get("secret")) {
      return false;
    }
    const std::string publication = current->get("publication");
    if (publication != "read-only") {
      NPME_TRY(context.store.set_meta("ha_publication", publication));
    }
    NPME_TRY(context.settings.update({{"upstream.url", target.url},
                                      {"upstream.secret", current->get("secret")},
                                      {"upstream.policy", "mirror"},
                                      {"publication", "read-only"}}));
    NPME_TRY(context.follower.reset());
    log("following the leader " + target.instance + " at " + target.url);
    return true;
  }

  // Asks a member for its position directly (fresher than its etcd record).
  std::optional<Member> ask(const std::string& url, const std::string& secret) {
    http::ClientOptions options{k_position_timeout, k_position_timeout, secret, {}};
    options.ca_file = settings::ca_file(*config(), "upstream.ca_file");
    http::Client client(std::move(options));
    auto response = client.request("GET", url + "/-/ha");
    if (!response || response->status != 200) {
      return std::nullopt;
    }
    auto doc = json::parse(response->body, nullptr, false);
    if (!doc.is_object()) {
      return std::nullopt;
    }
    return member_from_json(doc);
  }

  // One round: renew the lease, read the cluster, publish this member, act.
  void round() {
    auto current = config();
    auto options = etcd_options(*current);
    const auto signature = options_signature(options);
    std::shared_ptr<Etcd> db;
    {
      std::lock_guard lock(mutex);
      if (!etcd || signature != etcd_signature) {
        etcd = std::make_shared<Etcd>(options);
        etcd_signature = signature;
        keys = keys_of(*current);
        lease = 0; // a new etcd (or cluster) needs a new lease
      }
      keys = keys_of(*current);
      db = etcd;
    }
    const auto ttl = std::max<std::int64_t>(2, seconds_setting(*current, "ha.ttl"));

    // The lease: renewed every round; its deadline by our clock is when we
    // sent the renewal plus what etcd says is left, minus a margin.
    {
      const auto sent = steady_clock::now();
      std::int64_t held = 0;
      {
        std::lock_guard lock(mutex);
        held = lease;
      }
      if (held != 0) {
        auto left = db->keepalive(held);
        if (!left) {
          if (left.error().code == Errc::not_found) {
            fence("its lease ended in etcd");
            std::lock_guard lock(mutex);
            lease = 0;
          } else {
            set_error("etcd: " + left.error().message);
            check_deadline();
            return;
          }
        } else {
          const auto deadline = sent + std::chrono::seconds(*left) - k_lease_margin;
          std::lock_guard lock(mutex);
          lease_deadline = deadline;
          if (leading) {
            leader_until = deadline.time_since_epoch().count();
          }
        }
      }
      {
        std::lock_guard lock(mutex);
        held = lease;
      }
      if (held == 0) {
        const auto granted_at = steady_clock::now();
        auto granted = db->grant(ttl);
        if (!granted) {
          set_error("etcd: " + granted.error().message);
          return;
        }
        std::lock_guard lock(mutex);
        lease = *granted;
        lease_deadline = granted_at + std::chrono::seconds(ttl) - k_lease_margin;
      }
    }

    auto range = db->range(keys.prefix, true);
    if (!range) {
      set_error("etcd: " + range.error().message);
      check_deadline();
      return;
    }
    Cluster cluster = read_cluster(*range, keys);
    const std::optional<Leader>& found_leader = cluster.leader;
    const std::optional<json>& switchover = cluster.switchover;
    const bool pause = cluster.paused;
    const std::vector<Member>& members = cluster.members;
    const std::string& found_optime_of = cluster.optime_of;
    const std::int64_t found_optime_seq = cluster.optime_seq;
    paused = pause;
    std::int64_t my_lease = 0;
    bool was_leading = false;
    {
      std::lock_guard lock(mutex);
      my_lease = lease;
      was_leading = leading;
      leader = found_leader;
      watch_revision = std::max(watch_revision, range->revision);
      last_error.clear();
      if (found_leader && found_leader->instance != context.instance_id) {
        // Positions count in the numbering of one leader: start again with a new one.
        leader_seq_seen = found_leader->instance == last_leader ? std::max(leader_seq_seen, found_leader->update_seq)
                                                                : found_leader->update_seq;
        last_leader = found_leader->instance;
      }
      optime_of = found_optime_of;
      optime_seq = found_optime_seq;
    }

    // This member's record, under its lease.
    if (auto put = db->put(keys.member(context.instance_id), to_json(self()).dump(), my_lease); !put) {
      set_error("etcd: " + put.error().message);
    }

    if (found_leader && found_leader->instance == context.instance_id) {
      if (found_leader->lease != my_lease) {
        // Left by an earlier run of this instance: release it, then race.
        fence("the leader key is from an earlier run of this instance");
        static_cast<void>(db->remove_if(keys.leader(), found_leader->mod_revision));
        wake_up();
        return;
      }
      if (!was_leading) {
        // The key is ours (a renewal after etcd came back): lead again.
        if (auto made = become_primary(found_leader->epoch); !made) {
          set_error("cannot become primary: " + made.error().message);
          return;
        }
        std::lock_guard lock(mutex);
        leading = true;
        lead_generation += 1;
        leader_until = lease_deadline.time_since_epoch().count();
      }
      lead(*db, *found_leader, switchover);
      return;
    }
    if (was_leading) {
      fence(found_leader ? "the leader key names " + found_leader->instance : "the leader key is gone");
    }
    if (found_leader) {
      if (auto followed = follow(*found_leader); !followed) {
        set_error("cannot follow " + found_leader->instance + ": " + followed.error().message);
      } else if (*followed) {
        // The others see the new role now, not a round later.
        static_cast<void>(db->put(keys.member(context.instance_id), to_json(self()).dump(), my_lease));
      }
      check_secret(*found_leader, current->get("secret"));
      return;
    }
    if (pause) {
      return;
    }
    if (switchover && switchover->value("to", "") != context.instance_id) {
      return; // a hand-over to another member: only it may take the key
    }
    race(*db, *current, members, my_lease, switchover.has_value());
  }

  // A leader's round: keep the key's update_seq current, and carry out a
  // switchover that names it.
  void lead(Etcd& db, const Leader& held, const std::optional<json>& switchover) {
    Leader next = held;
    next.update_seq = context.store.update_seq();
    next.epoch = replication::read_epoch(context.store);
    if (next.update_seq != held.update_seq || next.epoch != held.epoch) {
      auto put = db.put_if(keys.leader(), leader_json(next).dump(), held.lease, held.mod_revision);
      if (put && put->succeeded) {
        next.mod_revision = put->revision; // what a release below must name
      }
    }
    bool optime_stale = false;
    {
      std::lock_guard lock(mutex);
      optime_stale = optime_of != context.instance_id || optime_seq != next.update_seq;
    }
    if (optime_stale) {
      json optime = {{"instance", context.instance_id}, {"update_seq", next.update_seq}, {"time", util::iso8601()}};
      if (db.put(keys.optime(), optime.dump())) {
        std::lock_guard lock(mutex);
        optime_of = context.instance_id;
        optime_seq = next.update_seq;
      }
    }
    if (!switchover || switchover->value("from", "") != context.instance_id) {
      handing_over = false;
      return;
    }
    const std::string target = switchover->value("to", "");
    const std::string target_url = switchover->value("url", "");
    if (!handing_over.exchange(true)) {
      log("switchover to " + target + ": no longer taking writes, waiting for it to catch up");
    }
    // A write that passed the check just before must be committed (and so
    // in update_seq) before the target's position is compared with it.
    if (context.writes_idle && !context.writes_idle(std::chrono::seconds(2))) {
      return; // the next round waits again
    }
    // Wait (in short steps, renewing nothing meanwhile: well within a round)
    // for the target to hold every change, then release the key to it.
    const auto secret = config()->get("secret");
    const auto until = steady_clock::now() + std::chrono::seconds(2);
    while (steady_clock::now() < until) {
      auto position = ask(target_url, secret);
      if (position && position->position_of == context.instance_id &&
          position->position >= context.store.update_seq()) {
        fence("switchover to " + target);
        auto released = db.remove_if(keys.leader(), next.mod_revision);
        if (!released || !released->succeeded) {
          // The key stays ours: the next round tries again.
          set_error("switchover: cannot release the leader key: " +
                    (released ? std::string("it changed meanwhile") : released.error().message));
          return;
        }
        handing_over = false;
        log("switchover: released the leader key to " + target + " at change " +
            std::to_string(context.store.update_seq()));
        return;
      }
      std::unique_lock lock(mutex);
      if (wake.wait_for(lock, milliseconds(50), [this] { return stopping; })) {
        return;
      }
    }
  }

  void check_secret(const Leader& target, const std::string& secret) {
    http::ClientOptions options{milliseconds(1000), milliseconds(2000), secret, {}};
    options.ca_file = settings::ca_file(*config(), "upstream.ca_file");
    http::Client client(std::move(options));
    auto response = client.request("GET", target.url + "/");
    if (!response) {
      return; // unreachable: says nothing about the secret
    }
    const bool ok = response->status != 401 && response->status != 403;
    bool changed = false;
    {
      std::lock_guard lock(mutex);
      changed = secret_ok != ok;
      secret_ok = ok;
    }
    if (changed && !ok) {
      log("the leader " + target.instance + " refuses this member's secret: set the same `secret` on every member");
    }
  }

  // The leader key is free: race for it when this member is among the best.
  void race(Etcd& db, const settings::Settings& current, const std::vector<Member>& recorded, std::int64_t my_lease,
            bool switchover_to_me) {
    const Member me = self();
    if (!me.secret_ok) {
      return;
    }
    if (!switchover_to_me) {
      // The others' positions as they are now: a member that does not answer
      // cannot lead either, and its record may be a round old.
      std::vector<Member> members{me};
      const std::string secret = current.get("secret");
      for (const auto& member : recorded) {
        if (member.instance == context.instance_id || member.url.empty()) {
          continue;
        }
        if (auto fresh = ask(member.url, secret)) {
          members.push_back(*fresh);
        }
      }
      std::string leader_of;
      std::int64_t leader_seq = 0;
      {
        std::lock_guard lock(mutex);
        leader_of = optime_of;
        leader_seq = optime_seq;
      }
      const auto election =
        elect(members, leader_of, leader_seq, std::atoll(current.get("replication.sync_replicas").c_str()),
              std::atoll(current.get("ha.max_lag").c_str()));
      if (election.eligible.empty()) {
        return;
      }
      // Race only with the best position (ties race; etcd picks one).
      const auto best = std::find_if(members.begin(), members.end(),
                                     [&](const Member& m) { return m.instance == election.eligible.front(); });
      const bool me_eligible =
        std::find(election.eligible.begin(), election.eligible.end(), me.instance) != election.eligible.end();
      if (!me_eligible || best == members.end() || me.position < best->position) {
        return;
      }
    }
    Leader mine;
    mine.instance = context.instance_id;
    mine.url = me.url;
    mine.admin_url = me.admin_url;
    mine.epoch = me.epoch;
    mine.update_seq = me.position;
    auto created = db.create(keys.leader(), leader_json(mine).dump(), my_lease);
    if (!created) {
      set_error("etcd: " + created.error().message);
      return;
    }
    if (!created->succeeded) {
      return; // another member won: it is followed next round
    }
    if (auto made = become_primary(created->revision); !made) {
      // Hand the key back rather than lead without being a primary.
      set_error("cannot become primary: " + made.error().message);
      static_cast<void>(db.remove(keys.leader()));
      return;
    }
    {
      std::lock_guard lock(mutex);
      leading = true;
      lead_generation += 1;
      leader_until = lease_deadline.time_since_epoch().count();
    }
    mine.epoch = replication::read_epoch(context.store);
    static_cast<void>(db.put(keys.leader(), leader_json(mine).dump(), my_lease));
    if (switchover_to_me) {
      static_cast<void>(db.remove(keys.switchover()));
    }
    log("leading the cluster (epoch " + std::to_string(mine.epoch) + ", change " + std::to_string(mine.update_seq) +
        ")");
    if (context.audit) {
      context.audit("promote", "leading the cluster (epoch " + std::to_string(mine.epoch) + ")");
    }
  }

  // A round that could not reach etcd: past the lease deadline the leader
  // is already refusing writes (may_write); say so once.
  void check_deadline() {
    const auto until = leader_until.load();
    if (until != 0 && steady_clock::now().time_since_epoch().count() >= until) {
      fence("cannot renew its lease in etcd");
    }
  }

  // Between rounds, on a replica: is the leader's process still there?
  void probe_leader() {
    std::optional<Leader> target;
    {
      std::lock_guard lock(mutex);
      if (leader && leader->instance != context.instance_id) {
        target = leader;
      }
    }
    if (!target || paused) {
      refused = 0;
      return;
    }
    const auto result = probe_port(target->url, milliseconds(200));
    if (result != Probe::refused) {
      refused = 0;
      return;
    }
    const auto now = steady_clock::now();
    if (refused++ == 0) {
      refused_since = now;
    }
    if (refused < k_refused_probes || now - refused_since < k_refused_for) {
      return;
    }
    refused = 0;
    auto db = client();
    if (!db) {
      return;
    }
    auto removed = db->remove_if(keys.leader(), target->mod_revision);
    if (removed && removed->succeeded) {
      static_cast<void>(db->revoke(target->lease));
      log("the leader " + target->instance + " refuses connections at " + target->url +
          " (its process is gone): released its key");
      wake_up();
    }
  }

  void wake_up() {
    {
      std::lock_guard lock(mutex);
      woken = true;
    }
    wake.notify_all();
  }

  void run() {
    auto next_round = steady_clock::now();
    while (true) {
      {
        std::lock_guard lock(mutex);
        if (stopping) {
          break;
        }
      }
      auto current = config();
      const bool on = ha::enabled(*current);
      if (on != enabled.load()) {
        enabled = on;
        if (!on) {
          fence("ha.etcd was cleared: manual failover");
        }
      }
      const auto now = steady_clock::now();
      bool due = false;
      {
        std::lock_guard lock(mutex);
        due = woken || now >= next_round;
        woken = false;
      }
      if (on && due) {
        round();
        next_round =
          steady_clock::now() + std::chrono::seconds(std::max<std::int64_t>(1, seconds_setting(*current, "ha.loop")));
      }
      if (on) {
        probe_leader();
      }
      std::unique_lock lock(mutex);
      wake.wait_until(lock, loop_deadline(on, next_round, steady_clock::now()), [this] { return stopping || woken; });
    }
    // A clean stop hands the lead over at once instead of after the lease.
    fence("stopping");
    std::shared_ptr<Etcd> db;
    std::int64_t held = 0;
    {
      std::lock_guard lock(mutex);
      db = etcd;
      held = lease;
      lease = 0;
    }
    if (db && held != 0) {
      static_cast<void>(db->revoke(held));
    }
  }

  // Wakes the loop as soon as the leader key changes (deleted, taken).
  void watch() {
    while (true) {
      std::shared_ptr<Etcd> db;
      std::string key;
      std::int64_t from = 0;
      {
        std::unique_lock lock(mutex);
        if (stopping) {
          return;
        }
        db = etcd;
        key = keys.leader();
        from = watch_revision == 0 ? 0 : watch_revision + 1;
        if (!db || key.size() <= 7) {
          wake.wait_for(lock, milliseconds(500), [this] { return stopping; });
          continue;
        }
      }
      auto watched = db->watch(key, false, from, milliseconds(10000), [this](const KeyValue& kv, bool) {
        {
          std::lock_guard lock(mutex);
          watch_revision = std::max(watch_revision, kv.mod_revision);
          woken = true;
        }
        wake.notify_all();
        std::lock_guard lock(mutex);
        return !stopping;
      });
      if (!watched) {
        std::unique_lock lock(mutex);
        wake.wait_for(lock, milliseconds(500), [this] { return stopping; });
      }
    }
  }
};

Ha::Ha(Context context) : m_impl(std::make_unique<Impl>(std::move(context))) {
  m_impl->enabled = enabled(*m_impl->config());
}

Ha::~Ha() {
  stop();
}

void Ha::set_addresses(std::string listen_url, std::string admin_url) {
  std::lock_guard lock(m_impl->mutex);
  m_impl->context.listen_url = std::move(listen_url);
  m_impl->context.admin_url = std::move(admin_url);
}

const std::string& Ha::instance_id() const {
  return m_impl->context.instance_id;
}

void Ha::start() {
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->loop_thread.joinable()) {
    return;
  }
  m_impl->stopping = false;
  m_impl->loop_thread = std::thread([this] { m_impl->run(); });
  m_impl->watch_thread = std::thread([this] { m_impl->watch(); });
}

void Ha::stop() {
  std::shared_ptr<Etcd> db;
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->stopping = true;
    db = m_impl->etcd;
  }
  m_impl->wake.notify_all();
  if (db) {
    db->abort();
  }
  if (m_impl->watch_thread.joinable()) {
    m_impl->watch_thread.join();
  }
  if (m_impl->loop_thread.joinable()) {
    m_impl->loop_thread.join();
  }
}

bool Ha::may_write() const {
  if (!m_impl->enabled) {
    return true;
  }
  if (m_impl->paused) {
    // Paused: the settings decide, as in manual mode.
    return m_impl->config()->get("upstream.url").empty() || m_impl->leader_until.load() != 0;
  }
  if (m_impl->handing_over) {
    return false;
  }
  return steady_clock::now().time_since_epoch().count() < m_impl->leader_until.load();
}

std::int64_t Ha::term() const {
  if (!m_impl->enabled || m_impl->paused) {
    return -1; // the settings decide, as in manual mode: one endless term
  }
  if (steady_clock::now().time_since_epoch().count() >= m_impl->leader_until.load()) {
    return 0;
  }
  return m_impl->lead_generation.load();
}

std::string Ha::refusal() const {
  if (m_impl->handing_over) {
    return "this instance is handing the lead over (switchover); retry in a moment";
  }
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->leading) {
    return "this instance cannot renew its leader lease in etcd, so it takes no writes (self-fenced)";
  }
  if (m_impl->leader) {
    return "this instance is not the leader; publish to the leader (" + m_impl->leader->url + ")";
  }
  return "no leader is elected yet (automatic failover, ha.etcd); retry in a moment";
}

bool Ha::automatic() const {
  return m_impl->enabled && !m_impl->paused;
}

Member Ha::self() const {
  return m_impl->self();
}

json Ha::status_json() const {
  const bool on = m_impl->enabled;
  if (!on) {
    return {{"enabled", false}};
  }
  const auto member = self();
  std::lock_guard lock(m_impl->mutex);
  json out = {{"enabled", true},
              {"cluster", m_impl->keys.prefix},
              {"role", member.role},
              {"paused", m_impl->paused.load()},
              {"handing_over", m_impl->handing_over.load()},
              {"leader", m_impl->leader ? json(m_impl->leader->instance) : json(nullptr)},
              {"leader_url", m_impl->leader ? json(m_impl->leader->url) : json(nullptr)},
              {"secret_ok", m_impl->secret_ok},
              {"last_error", m_impl->last_error.empty() ? json(nullptr) : json(m_impl->last_error)},
              {"last_event", m_impl->last_event.empty() ? json(nullptr) : json(m_impl->last_event)}};
  const auto until = m_impl->leader_until.load();
  if (until != 0) {
    const auto left = steady_clock::time_point(steady_clock::duration(until)) - steady_clock::now();
    out["lease_seconds_left"] = std::max(0.0, std::chrono::duration<double>(left).count());
  }
  return out;
}

Expected<json> Ha::cluster_status() {
  auto current = m_impl->config();
  if (!enabled(*current)) {
    return make_error(Errc::precondition, "automatic failover is off on this instance (ha.etcd is empty)");
  }
  Etcd db(etcd_options(*current));
  const auto keys = keys_of(*current);
  NPME_TRY_ASSIGN(auto range, db.range(keys.prefix, true));
  const Cluster cluster = read_cluster(range, keys);
  const auto& leader = cluster.leader;
  const auto& members = cluster.members;
  json out = {{"cluster", keys.prefix},
              {"paused", cluster.paused},
              {"switchover", cluster.switchover ? *cluster.switchover : json(nullptr)},
              {"revision", range.revision}};
  std::int64_t leader_seq = 0;
  const std::string& optime_of = cluster.optime_of;
  const std::int64_t optime_seq = cluster.optime_seq;
  if (!cluster.optime.is_null()) {
    out["optime"] = cluster.optime;
  }
  if (leader) {
    out["leader"] = leader_json(*leader);
    leader_seq = leader->update_seq;
    if (auto left = db.time_to_live(leader->lease); left && left->found) {
      out["leader"]["lease_ttl"] = left->ttl;
      out["leader"]["lease_granted"] = left->granted;
    }
  } else {
    out["leader"] = nullptr;
  }
  json rows = json::array();
  for (const auto& member : members) {
    json row = to_json(member);
    if (leader && member.instance == leader->instance) {
      row["lag"] = 0;
    } else if (leader && member.position_of == leader->instance) {
      row["lag"] = std::max<std::int64_t>(0, leader_seq - member.position);
    } else {
      row["lag"] = nullptr;
    }
    rows.push_back(row);
  }
  out["members"] = rows;
  // Who would lead if the leader went now: the members other than it.
  std::vector<Member> others;
  for (const auto& member : members) {
    if (!leader || member.instance != leader->instance) {
      others.push_back(member);
    }
  }
  const auto election = elect(
    others, leader ? leader->instance : optime_of,
    leader ? std::max(leader_seq, optime_of == leader->instance ? optime_seq : 0) : optime_seq,
    std::atoll(current->get("replication.sync_replicas").c_str()), std::atoll(current->get("ha.max_lag").c_str()));
  json excluded = json::object();
  for (const auto& [instance, reason] : election.excluded) {
    excluded[instance] = reason;
  }
  out["would_win"] = election.eligible.empty() ? json(nullptr) : json(election.eligible.front());
  out["eligible"] = election.eligible;
  out["excluded"] = excluded;
  out["max_lag"] = std::atoll(current->get("ha.max_lag").c_str());
  out["ttl"] = seconds_setting(*current, "ha.ttl");
  out["loop"] = seconds_setting(*current, "ha.loop");
  return out;
}

Expected<void> Ha::set_paused(bool paused) {
  auto current = m_impl->config();
  if (!enabled(*current)) {
    return make_error(Errc::precondition, "automatic failover is off on this instance (ha.etcd is empty)");
  }
  Etcd db(etcd_options(*current));
  const auto keys = keys_of(*current);
  if (paused) {
    NPME_TRY(db.put(keys.pause(), json{{"since", util::iso8601()}, {"by", m_impl->context.instance_id}}.dump()));
  } else {
    NPME_TRY(db.remove(keys.pause()));
  }
  m_impl->paused = paused;
  m_impl->wake_up();
  return {};
}

Expected<json> Ha::switchover(const std::string& to, std::chrono::seconds timeout) {
  auto current = m_impl->config();
  if (!enabled(*current)) {
    return make_error(Errc::precondition, "automatic failover is off on this instance (ha.etcd is empty)");
  }
  Etcd db(etcd_options(*current));
  const auto keys = keys_of(*current);
  NPME_TRY_ASSIGN(auto range, db.range(keys.prefix, true));
  const Cluster cluster = read_cluster(range, keys);
  if (cluster.paused) {
    return make_error(Errc::precondition, "automatic failover is paused: 'npme ha resume' first, or use "
                                          "promote-to-primary by hand");
  }
  if (cluster.switchover) {
    return make_error(Errc::conflict, "a switchover is already under way: " + cluster.switchover->dump());
  }
  const auto& leader = cluster.leader;
  std::optional<Member> target;
  for (const auto& member : cluster.members) {
    if (member.instance == to) {
      target = member;
    }
  }
  if (!leader) {
    return make_error(Errc::precondition, "no member leads now: nothing to hand over (see 'npme ha status')");
  }
  if (leader->instance == to) {
    return make_error(Errc::precondition, "'" + to + "' already leads");
  }
  if (!target) {
    return make_error(Errc::not_found, "no member '" + to + "' in " + keys.prefix + " (see 'npme ha status')");
  }
  if (!target->secret_ok) {
    return make_error(Errc::precondition, "'" + to + "' cannot read the leader (its secret is refused)");
  }
  const auto started = steady_clock::now();
  // The request lives as long as the switchover may take, and no longer.
  NPME_TRY_ASSIGN(auto lease, db.grant(timeout.count() + 5));
  json request = {{"from", leader->instance}, {"to", to}, {"url", target->url}, {"requested", util::iso8601()}};
  NPME_TRY_ASSIGN(auto created, db.create(keys.switchover(), request.dump(), lease));
  if (!created.succeeded) {
    static_cast<void>(db.revoke(lease));
    return make_error(Errc::conflict, "a switchover is already under way");
  }
  while (steady_clock::now() - started < timeout) {
    std::this_thread::sleep_for(milliseconds(100));
    auto now = db.range(keys.leader());
    if (now && !now->kvs.empty()) {
      if (auto holder = leader_from(now->kvs.front()); holder && holder->instance == to) {
        static_cast<void>(db.revoke(lease));
        return json{{"from", leader->instance},
                    {"to", to},
                    {"epoch", holder->epoch},
                    {"seconds", std::chrono::duration<double>(steady_clock::now() - started).count()}};
      }
    }
  }
  static_cast<void>(db.revoke(lease)); // the old leader takes writes again
  return make_error(Errc::timeout, "switchover to '" + to + "' did not complete within " +
                                     std::to_string(timeout.count()) +
                                     " s (it did not catch up, or did not take "
                                     "the key); the old leader keeps leading");
}

} // namespace npme::ha
