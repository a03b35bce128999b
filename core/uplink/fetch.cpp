// Requests to the uplink (or, on a replica, the upstream): packuments,
// tarballs, and the single-flight bookkeeping around them. Runs on the
// service's pooled connections (http::Fetcher).

#include "core/uplink/service_impl.hpp"

#include "core/util/crypto.hpp"

#include <future>

namespace npme::uplink {


SourceOutcome Service::Impl::fetch_packument(http::Client& client, const Config& c, const std::string& name) {
  auto current = store.get(name);
  if (!current) {
    return failed(500, current.error().message);
  }
  std::shared_ptr<Held> held_copy;
  if (*current) {
    held_copy = held_state(**current);
    if (!held_copy->from_uplink) {
      return ready(); // published here meanwhile: local, never fetched
    }
  }
  configure(client, c, k_packument_timeout);
  http::Headers headers;
  headers.add("Accept", "application/json");
  // Packuments come compressed (a tenth of the bytes); the client decodes.
  headers.add("Accept-Encoding", "gzip");
  if (held_copy && !held_copy->etag.empty()) {
    headers.add("If-None-Match", held_copy->etag);
  }
  if (held_copy && !held_copy->last_modified.empty()) {
    headers.add("If-Modified-Since", held_copy->last_modified);
  }
  const std::string url = c.url + "/" + package_path(name);
  auto response = timed_request(client, url, headers);
  auto give_up = [&](Errc code, const std::string& message) -> SourceOutcome {
    counters.error += 1;
    if (is_availability_failure(code)) {
      record(false, message);
    }
    if (held_copy) {
      mark_checked(name, false, message);
      counters.stale += 1;
      return stale("served from cache: " + message);
    }
    return failed(code == Errc::forbidden ? 502 : status_of(code), message);
  };
  if (!response) {
    if (response.error().code == Errc::interrupted) {
      return failed(503, "the registry is stopping");
    }
    if (response.error().code == Errc::too_large) {
      return give_up(Errc::invalid, "uplink packument of '" + name + "' is larger than registry.max_body (" +
                                      std::to_string(c.max_body) + " bytes)");
    }
    return give_up(response.error().code, "uplink " + c.url + ": " + response.error().message);
  }
  const int status = response->status;
  if (status == 304 && held_copy) {
    record(true, "");
    mark_checked(name, true, "");
    counters.revalidated += 1;
    return ready();
  }
  if (status == 404) {
    record(true, "");
    if (held_copy) {
      mark_checked(name, true, "");
      return ready(); // gone upstream: the copy stays (never a 404 for a held name)
    }
    std::lock_guard lock(mutex);
    negative[name] = Clock::now() + k_negative_ttl;
    return not_found("'" + name + "' is not in this registry or its uplink");
  }
  if (status == 401 || status == 403) {
    record(true, "");
    return give_up(Errc::forbidden, "uplink " + c.url + " refused " +
                                       (c.token.empty() ? std::string("the request (no uplink.token is set)")
                                                        : std::string("uplink.token")) +
                                       " (" + std::to_string(status) + ")");
  }
  if (status >= 500 || status != 200) {
    return give_up(Errc::failed, "uplink " + c.url + " answered " + std::to_string(status) + " for '" + name + "'");
  }
  record(true, "");
  auto fetched = json::parse(response->body, nullptr, false);
  if (fetched.is_discarded()) {
    return give_up(Errc::invalid, "uplink sent a malformed packument for '" + name + "': not JSON");
  }
  Validators validators{std::string(response->headers.get("ETag").value_or("")),
                        std::string(response->headers.get("Last-Modified").value_or(""))};
  auto doc = normalize_packument(fetched, name, c.url, validators, util::iso8601());
  if (!doc) {
    if (doc.error().code == Errc::not_found && !held_copy) {
      return not_found(doc.error().message);
    }
    return give_up(Errc::invalid, doc.error().message);
  }
  const std::string digest = (*doc)[std::string(k_origin_member)].value("digest", "");
  bool changed = false;
  auto written = store.apply(name, [&](const std::optional<store::Document>& now) -> Expected<store::Write> {
    store::Write write;
    if (now) {
      auto body = json::parse(now->body, nullptr, false);
      const json* origin = body.is_object() ? registry::member(body, k_origin_member) : nullptr;
      if (origin == nullptr) {
        return write; // published here meanwhile: keep it
      }
      if (origin->value("digest", "") == digest && origin->value("etag", "") == validators.etag) {
        return write; // nothing changed upstream
      }
      // Versions gone upstream take their tarballs with them.
      const json held_versions = body.value("versions", json::object());
      for (const auto& [version, manifest] : held_versions.items()) {
        if (!(*doc)["versions"].contains(version)) {
          write.remove_files.push_back(registry::tarball_rel_path(name, version));
        }
      }
    }
    write.kind = store::Write::Kind::put;
    write.body = doc->dump();
    changed = true;
    return write;
  });
  if (!written) {
    return failed(500, "cannot store the packument of '" + name + "': " + written.error().message);
  }
  {
    std::lock_guard lock(mutex);
    negative.erase(name);
  }
  if (!changed) {
    mark_checked(name, true, "");
  }
  if (held_copy) {
    counters.revalidated += 1;
  }
  if (c.policy == "read-through" && !held_copy) {
    queue_whitelist(name);
  }
  return ready();
}

SourceOutcome Service::Impl::fetch_from_upstream(http::Client& client, const Config& c, const std::string& name) {
  configure(client, c, k_packument_timeout);
  auto response = timed_request(client, c.url + "/_fetch/" + http::percent_encode(name, "@"), {});
  if (!response) {
    if (response.error().code == Errc::interrupted) {
      return failed(503, "the registry is stopping");
    }
    counters.error += 1;
    return failed(status_of(response.error().code), "upstream " + c.url + ": " + response.error().message);
  }
  if (response->status == 404) {
    return not_found("'" + name + "' is not in this registry or its upstream");
  }
  if (response->status != 200) {
    counters.error += 1;
    auto body = json::parse(response->body, nullptr, false);
    std::string message = body.is_object() && body.contains("error") && body["error"].is_string()
                            ? body["error"].get<std::string>()
                            : "answered " + std::to_string(response->status);
    return failed(response->status == 504 ? 504 : 502, "upstream " + c.url + ": " + message);
  }
  auto doc = json::parse(response->body, nullptr, false);
  if (!doc.is_object() || doc.value("_id", "") != name) {
    return failed(502, "upstream " + c.url + " sent a malformed document for '" + name + "'");
  }
  const std::string rev = doc.value("_rev", "");
  doc.erase("_rev");
  // A package published on the upstream comes with every tarball, as the
  // follower would bring it (a replica never holds a local package without
  // its tarballs: snapshots rely on it); copies of uplink packages come
  // bare, their tarballs on demand.
  std::vector<store::StagedFile> staged;
  if (!doc.contains(std::string(k_origin_member))) {
    configure(client, c, k_tarball_timeout);
    const json versions = doc.value("versions", json::object());
    for (const auto& [version, manifest] : versions.items()) {
      const json* dist = registry::member(manifest, "dist");
      const std::string rel = registry::tarball_rel_path(name, version);
      auto path = dist != nullptr ? registry::string_member(*dist, "tarball") : std::nullopt;
      if (!path || *path != rel) {
        return failed(502, "upstream " + c.url + " sent '" + name + "' with an unexpected tarball path for " + version);
      }
      std::error_code ec;
      if (std::filesystem::is_regular_file(store.file_path(rel), ec)) {
        continue;
      }
      auto bytes = http::fetch_tarball(client, c.url + "/" + rel,
                                       http::TarballCheck{name + "@" + version,
                                                          registry::string_member(*dist, "integrity").value_or(""),
                                                          registry::string_member(*dist, "shasum").value_or("")});
      if (!bytes) {
        counters.error += 1;
        return failed(bytes.error().code == Errc::timeout ? 504 : 502, bytes.error().message);
      }
      auto file = store.stage_file(rel, *bytes, store::Sync::now);
      if (!file) {
        return failed(500, file.error().message);
      }
      staged.push_back(std::move(*file));
    }
  }
  auto written = store.apply(name, [&](const std::optional<store::Document>& now) -> Expected<store::Write> {
    store::Write write;
    if (now && now->rev == rev) {
      return write; // the feed brought it meanwhile
    }
    write.kind = store::Write::Kind::put;
    write.body = doc.dump();
    write.rev = rev;
    write.add_files = std::move(staged);
    return write;
  });
  if (!written) {
    return failed(500, "cannot store '" + name + "': " + written.error().message);
  }
  return ready();
}

SourceOutcome Service::Impl::run_fetch(http::Client& client, const std::string& name, const Need& need) {
  const Config c = config();
  if (c.mode == Mode::off) {
    return not_found("not found");
  }
  if (need.kind == Need::Kind::tarball) {
    if (c.mode == Mode::replica) {
      auto current = store.get(name);
      if (current && !*current) {
        auto outcome = fetch_from_upstream(client, c, name);
        if (outcome.kind != SourceOutcome::Kind::ready) {
          return outcome;
        }
      }
    } else if (auto current = store.get(name); current && !*current) {
      auto outcome = fetch_packument(client, c, name);
      if (outcome.kind != SourceOutcome::Kind::ready) {
        return outcome;
      }
    }
    return fetch_tarball(client, c, name, need.detail);
  }
  if (c.mode == Mode::replica) {
    return fetch_from_upstream(client, c, name);
  }
  return fetch_packument(client, c, name);
}

void Service::Impl::complete(const std::string& key, const SourceOutcome& outcome) {
  std::vector<std::function<void(SourceOutcome)>> waiters;
  {
    std::lock_guard lock(mutex);
    auto it = inflight.find(key);
    if (it == inflight.end()) {
      return;
    }
    waiters = std::move(it->second);
    inflight.erase(it);
  }
  for (auto& waiter : waiters) {
    try {
      waiter(outcome);
    } catch (...) {
    }
  }
}

void Service::Impl::fetch(const std::string& name, const Need& need, std::function<void(SourceOutcome)> done) {
  const std::string key = need.kind == Need::Kind::tarball ? "t:" + need.detail : "p:" + name;
  {
    std::lock_guard lock(mutex);
    if (stopping.load()) {
      // Answered below, outside the lock.
    } else {
      auto [it, first] = inflight.try_emplace(key);
      it->second.push_back(std::move(done));
      if (!first) {
        return; // one fetch serves every concurrent miss
      }
    }
  }
  if (stopping.load()) {
    if (done) {
      done(failed(503, "the registry is stopping"));
    }
    return;
  }
  fetcher->post([this, key, name, need](http::Client& client) {
    SourceOutcome outcome;
    try {
      outcome = run_fetch(client, name, need);
    } catch (const std::exception& e) {
      outcome = failed(500, std::string("internal error: ") + e.what());
    }
    complete(key, outcome);
  });
}

SourceOutcome Service::Impl::fetch_and_wait(const std::string& name, const Need& need) {
  auto promise = std::make_shared<std::promise<SourceOutcome>>();
  auto future = promise->get_future();
  fetch(name, need, [promise](SourceOutcome outcome) { promise->set_value(std::move(outcome)); });
  return future.get();
}

SourceOutcome Service::Impl::fetch_tarball(http::Client& client, const Config& c, const std::string& name,
                                            const std::string& rel_path) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto current = store.get(name);
    if (!current) {
      return failed(500, current.error().message);
    }
    std::shared_ptr<Held> state = *current ? held_state(**current) : nullptr;
    std::string version;
    if (state) {
      if (auto it = state->path_version.find(rel_path); it != state->path_version.end()) {
        version = it->second;
      }
    }
    if (version.empty()) {
      if (attempt > 0 || c.mode != Mode::uplink) {
        return not_found("not found");
      }
      // A version the copy lacks: revalidate now, then look again.
      auto outcome = fetch_packument(client, c, name);
      if (outcome.kind == SourceOutcome::Kind::failed || outcome.kind == SourceOutcome::Kind::not_found) {
        return outcome;
      }
      continue;
    }
    if (!state->from_uplink && c.mode == Mode::uplink) {
      return not_found("not found");
    }
    std::string url;
    if (c.mode == Mode::replica) {
      url = c.url + "/" + rel_path;
    } else {
      auto recorded = state->tarball_urls.count(version) ? state->tarball_urls[version] : std::string();
      auto source = tarball_source(c.url, recorded, rel_path);
      if (!source) {
        counters.error += 1;
        return failed(502, source.error().message);
      }
      url = *source;
    }
    configure(client, c, k_tarball_timeout);
    const auto& check = state->checks[version];
    const auto start = Clock::now();
    auto bytes = http::fetch_tarball(client, url, http::TarballCheck{name + "@" + version, check.first, check.second});
    counters.requests += 1;
    counters.latency_us += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    if (!bytes) {
      const auto code = bytes.error().code;
      if (code == Errc::interrupted) {
        return failed(503, "the registry is stopping");
      }
      counters.error += 1;
      if (is_availability_failure(code)) {
        record(false, bytes.error().message);
      }
      if (code == Errc::not_found) {
        return not_found(bytes.error().message);
      }
      return failed(code == Errc::verify ? 502 : status_of(code), bytes.error().message);
    }
    record(true, "");
    auto staged = store.stage_file(rel_path, *bytes, store::Sync::now);
    if (!staged) {
      return failed(500, staged.error().message);
    }
    auto added = store.add_file(name, state->rev, std::move(*staged));
    if (!added) {
      if (added.error().code == Errc::conflict) {
        continue; // the document changed meanwhile: look again
      }
      return failed(500, added.error().message);
    }
    counters.tarballs += 1;
    counters.tarball_bytes += static_cast<std::int64_t>(bytes->size());
    return ready();
  }
  return failed(502, "the document of '" + name + "' kept changing while its tarball was fetched");
}

} // namespace npme::uplink
