// The service's decisions (what a read needs), the state of held names, the
// circuit breaker, the white-list, the poller, status and metrics.

#include "core/uplink/service_impl.hpp"

#include "core/util/crypto.hpp"

namespace npme::uplink {


std::shared_ptr<Held> Service::Impl::held_state(const store::Document& doc) {
  {
    std::lock_guard lock(mutex);
    if (auto it = held.find(doc.id); it != held.end() && it->second->rev == doc.rev) {
      return it->second;
    }
  }
  auto parsed = parse_held(doc);
  std::lock_guard lock(mutex);
  auto& slot = held[doc.id];
  if (slot && slot->rev == doc.rev) {
    return slot;
  }
  if (slot && slot->from_uplink && parsed->from_uplink && slot->checked > parsed->checked) {
    parsed->checked = slot->checked; // a 304 since the document was written
  }
  slot = parsed;
  return parsed;
}

std::shared_ptr<Held> Service::Impl::held_state(const store::Head& head) {
  {
    std::lock_guard lock(mutex);
    if (auto it = held.find(head.id); it != held.end() && it->second->rev == head.rev) {
      return it->second;
    }
  }
  auto doc = store.get(head.id);
  if (!doc || !*doc) {
    auto gone = std::make_shared<Held>();
    gone->rev = head.rev;
    gone->from_uplink = head.uplink;
    return gone;
  }
  return held_state(**doc);
}

void Service::Impl::record(bool ok, const std::string& message) {
  std::lock_guard lock(mutex);
  if (ok) {
    failures = 0;
    trips = 0;
    down_until = {};
    last_success_time = util::iso8601();
    return;
  }
  last_error = message;
  last_error_time = util::iso8601();
  if (++failures >= k_breaker_threshold) {
    auto pause = std::min<seconds>(k_breaker_max, k_breaker_base * (1 << std::min(trips, 5)));
    down_until = Clock::now() + pause;
    ++trips;
    failures = k_breaker_threshold - 1; // after the pause, one failure trips it again
  }
}

void Service::Impl::configure(http::Client& client, const Config& c, milliseconds timeout) {
  auto& options = client.options();
  options.bearer_token = c.token;
  options.proxy = c.proxy;
  options.ca_file = c.ca_file;
  options.max_bytes = c.max_body;
  options.timeout = timeout;
  options.connect_timeout = k_connect_timeout;
  options.stall_seconds = k_stall_seconds;
}

Expected<http::ClientResponse> Service::Impl::timed_request(http::Client& client, const std::string& url, const http::Headers& headers) {
  const auto start = Clock::now();
  auto response = client.request("GET", url, "", headers);
  counters.requests += 1;
  counters.latency_us += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  return response;
}

void Service::Impl::reload_whitelist() {
  auto names = replication::read_whitelist(data_dir);
  if (!names) {
    return; // keep the last good copy
  }
  std::lock_guard lock(mutex);
  whitelist = std::set<std::string>(names->begin(), names->end());
}

Expected<void> Service::Impl::add_to_whitelist(const std::vector<std::string>& add) {
  NPME_TRY_ASSIGN(auto names, replication::update_whitelist(data_dir, [&add](std::vector<std::string>& list) -> Expected<void> {
    list.insert(list.end(), add.begin(), add.end());
    return {};
  }));
  std::lock_guard lock(mutex);
  whitelist = std::set<std::string>(names.begin(), names.end());
  return {};
}

void Service::Impl::queue_whitelist(const std::string& name) {
  std::lock_guard lock(mutex);
  if (whitelist.insert(name).second) {
    whitelist_pending.push_back(name);
  }
}

void Service::Impl::flush_whitelist() {
  std::vector<std::string> pending;
  {
    std::lock_guard lock(mutex);
    pending.swap(whitelist_pending);
  }
  if (!pending.empty()) {
    if (auto added = add_to_whitelist(pending); !added) {
      std::lock_guard lock(mutex);
      whitelist_pending.insert(whitelist_pending.end(), pending.begin(), pending.end()); // next round
    }
  }
}

bool Service::Impl::local_name(const std::string& name) {
  auto head = store.get_head(name);
  if (!head || !*head) {
    return false;
  }
  return !(*head)->uplink;
}

void Service::Impl::poll_loop() {
  auto last_poll = Clock::now();
  std::unique_lock lock(mutex);
  while (!stopping.load()) {
    poll_wake.wait_for(lock, seconds(1), [this] { return stopping.load(); });
    if (stopping.load()) {
      break;
    }
    const bool is_down = Clock::now() < down_until;
    lock.unlock();
    flush_whitelist();
    reload_whitelist();
    const Config c = config();
    const auto every = std::clamp<seconds>(c.maxage / 2, seconds(1), seconds(30));
    if (c.mode == Mode::uplink && !is_down && Clock::now() - last_poll >= every) {
      last_poll = Clock::now();
      poll_once(c);
    }
    lock.lock();
  }
}

void Service::Impl::poll_once(const Config& c) {
  std::vector<std::string> names;
  if (auto listed = replication::read_whitelist(data_dir)) {
    names = std::move(*listed);
  }
  std::size_t started_now = 0;
  const auto now = std::chrono::system_clock::now();
  for (const auto& name : names) {
    if (stopping.load() || started_now >= k_poll_batch || fetcher->pending() >= k_connections) {
      break;
    }
    auto current = store.get(name);
    if (!current || !*current) {
      continue;
    }
    auto state = held_state(**current);
    if (!state->from_uplink || now - state->checked < c.maxage) {
      continue;
    }
    fetch(name, Need{Need::Kind::packument, ""}, [](SourceOutcome) {});
    ++started_now;
  }
}


Service::Service(store::Store& store, SettingsSource settings, std::filesystem::path data_dir)
  : m_impl(std::make_unique<Impl>(store, std::move(settings), std::move(data_dir))) {
}

Service::~Service() {
  stop();
}

void Service::start() {
  m_impl->reload_whitelist();
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->started) {
    return;
  }
  m_impl->started = true;
  m_impl->poller = std::thread([impl = m_impl.get()] { impl->poll_loop(); });
}

void Service::stop() {
  Impl& impl = *m_impl;
  if (impl.stopping.exchange(true)) {
    return;
  }
  impl.poll_wake.notify_all();
  impl.fetcher->abort();
  if (impl.poller.joinable()) {
    impl.poller.join();
  }
  impl.flush_whitelist();
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(impl.mutex);
    threads = std::move(impl.job_threads);
  }
  for (auto& thread : threads) {
    thread.join();
  }
  // Queued fetches run with aborted connections and answer their waiters.
  impl.fetcher.reset();
  std::map<std::string, std::vector<std::function<void(SourceOutcome)>>> left;
  {
    std::lock_guard lock(impl.mutex);
    left = std::move(impl.inflight);
  }
  for (auto& [key, waiters] : left) {
    for (auto& waiter : waiters) {
      waiter(failed(503, "the registry is stopping"));
    }
  }
}

bool Service::enabled() const {
  const auto s = m_impl->settings();
  return !s->get("upstream.url").empty() || !s->get("uplink.url").empty();
}

registry::PackageSource::Decision Service::decide(const std::string& name, const std::optional<store::Head>& held,
                                                  const Need& need) {
  Impl& impl = *m_impl;
  Decision decision;
  const Config c = impl.config();
  if (c.mode == Mode::off) {
    return decision;
  }
  if (held) {
    // Most held names are local (the store knows which are copies): their
    // document is never read on this (I/O) thread; a copy's is parsed once
    // per revision.
    if (c.mode == Mode::uplink && !held->uplink) {
      return decision;
    }
    auto state = impl.held_state(*held);
    if (c.mode == Mode::replica) {
      decision.fetch = need.kind == Need::Kind::tarball;
      return decision;
    }
    if (!state->from_uplink) {
      return decision; // local: never fetched
    }
    const bool is_down = impl.down();
    const bool lacks = (need.kind == Need::Kind::version && !state->versions.count(need.detail) &&
                        !state->tags.count(need.detail)) ||
                       (need.kind == Need::Kind::tarball && !state->path_version.count(need.detail));
    if (need.kind == Need::Kind::tarball && is_down) {
      impl.counters.error += 1;
      decision.answer = failed(502, impl.down_message(c));
      return decision;
    }
    if (need.kind == Need::Kind::tarball || (lacks && !is_down)) {
      decision.fetch = true;
      impl.counters.miss += 1;
      return decision;
    }
    // A name taken off the white-list (remove-package) keeps its copy as it is.
    const bool expired =
      std::chrono::system_clock::now() - state->checked >= c.maxage && impl.whitelisted(name);
    if (expired && !is_down) {
      // Served now; the next request sees what the revalidation brings.
      impl.fetch(name, Need{Need::Kind::packument, ""}, [](SourceOutcome) {});
    }
    if (expired && (is_down || state->last_check_failed)) {
      decision.warning = is_down ? impl.down_message(c) : "revalidation failed: " + state->last_check_error;
      impl.counters.stale += 1;
    } else {
      impl.counters.hit += 1;
    }
    return decision;
  }
  // Not held.
  if (PrivateNames(c.privates).matches(name)) {
    decision.answer = not_found("'" + name + "' is private (uplink.private) and not published here");
    return decision;
  }
  if (c.mode == Mode::replica) {
    if (c.policy != "mirror" && !impl.whitelisted(name)) {
      return decision;
    }
    decision.fetch = true;
    impl.counters.miss += 1;
    return decision;
  }
  if (c.policy == "white-list" && !impl.whitelisted(name)) {
    decision.answer = not_found("'" + name + "' is not in the white-list of this registry (npme add-package " + name +
                                " adds it)");
    return decision;
  }
  {
    std::lock_guard lock(impl.mutex);
    if (auto it = impl.negative.find(name); it != impl.negative.end()) {
      if (Clock::now() < it->second) {
        decision.answer = not_found("'" + name + "' is not in this registry or its uplink");
        return decision;
      }
      impl.negative.erase(it);
    }
  }
  if (impl.down()) {
    impl.counters.error += 1;
    decision.answer = failed(502, impl.down_message(c));
    return decision;
  }
  impl.counters.miss += 1;
  decision.fetch = true;
  return decision;
}

void Service::fetch(const std::string& name, const Need& need, std::function<void(SourceOutcome)> done) {
  m_impl->fetch(name, need, std::move(done));
}

Expected<void> Service::check_write(const std::string& name, const std::optional<store::Head>& held) {
  if (!held) {
    return {};
  }
  if (held->uplink) {
    return make_error(Errc::forbidden, "'" + name + "' comes from the uplink (" + m_impl->config().url +
                                         "): it cannot be published or changed here; publish under a private scope, "
                                         "or list the name in uplink.private before its first publish");
  }
  return {};
}

registry::SourceOutcome Service::refresh(const std::string& name) {
  auto held = m_impl->store.get_head(name);
  if (held && !*held && PrivateNames(m_impl->config().privates).matches(name)) {
    return not_found("'" + name + "' is private (uplink.private) and not published here");
  }
  return m_impl->fetch_and_wait(name, Need{Need::Kind::packument, ""});
}

bool Service::is_private(const std::string& name) {
  return PrivateNames(m_impl->config().privates).matches(name) || m_impl->local_name(name);
}

json Service::status() const {
  Impl& impl = *m_impl;
  const Config c = impl.config();
  auto cfg = impl.settings();
  json out = {{"url", cfg->get("uplink.url")}, {"policy", cfg->get("uplink.policy")}};
  std::lock_guard lock(impl.mutex);
  std::string state = "disabled";
  if (c.mode == Mode::replica) {
    state = "via-upstream";
  } else if (c.mode == Mode::uplink) {
    state = Clock::now() < impl.down_until ? "down" : "up";
  }
  out["state"] = state;
  out["last_error"] = impl.last_error.empty() ? json(nullptr) : json(impl.last_error);
  out["last_error_time"] = impl.last_error_time.empty() ? json(nullptr) : json(impl.last_error_time);
  out["last_success_time"] = impl.last_success_time.empty() ? json(nullptr) : json(impl.last_success_time);
  auto counts = impl.store.counts();
  out["names"] = counts ? counts->uplink_packages : 0;
  out["requests"] = {{"hit", impl.counters.hit.load()},
                     {"miss", impl.counters.miss.load()},
                     {"revalidated", impl.counters.revalidated.load()},
                     {"stale", impl.counters.stale.load()},
                     {"error", impl.counters.error.load()}};
  return out;
}

std::string Service::metrics() const {
  const Counters& k = m_impl->counters;
  std::string out =
    "# HELP npme_uplink_requests_total Reads of packages from the uplink, by how they were served.\n"
    "# TYPE npme_uplink_requests_total counter\n";
  for (const auto& [label, value] : std::vector<std::pair<const char*, std::int64_t>>{
         {"hit", k.hit.load()},
         {"miss", k.miss.load()},
         {"revalidated", k.revalidated.load()},
         {"stale", k.stale.load()},
         {"error", k.error.load()}}) {
    out += std::string("npme_uplink_requests_total{result=\"") + label + "\"} " + std::to_string(value) + "\n";
  }
  out += "# HELP npme_uplink_request_seconds Time of the requests sent to the uplink.\n"
         "# TYPE npme_uplink_request_seconds summary\n"
         "npme_uplink_request_seconds_sum " +
         std::to_string(static_cast<double>(k.latency_us.load()) / 1e6) + "\nnpme_uplink_request_seconds_count " +
         std::to_string(k.requests.load()) + "\n";
  out += "# HELP npme_uplink_up 1 when the uplink is configured and not marked down.\n# TYPE npme_uplink_up gauge\n"
         "npme_uplink_up " +
         std::string(m_impl->config().mode == Mode::uplink && !m_impl->down() ? "1" : "0") + "\n";
  out += "# HELP npme_uplink_tarball_bytes_total Bytes of tarballs fetched from the uplink.\n"
         "# TYPE npme_uplink_tarball_bytes_total counter\nnpme_uplink_tarball_bytes_total " +
         std::to_string(k.tarball_bytes.load()) + "\n";
  return out;
}

} // namespace npme::uplink
