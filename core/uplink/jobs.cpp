// add-package and lockfile imports: a thread per job that takes packuments
// (and tarballs) through the service, reporting progress as it goes.

#include "core/uplink/service_impl.hpp"

#include "core/registry/semver.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/integrity.hpp"

#include <deque>

namespace npme::uplink {


Expected<std::string> Service::start_job(JobRequest request) {
  Impl& impl = *m_impl;
  const Config c = impl.config();
  if (c.mode != Mode::uplink) {
    return make_error(Errc::precondition, "this instance has no uplink (set uplink.url first)");
  }
  for (const auto& spec : request.specs) {
    const auto at = spec.find('@', 1);
    const std::string name = spec.substr(0, at);
    if (auto valid = registry::validate_package_name(name); !valid) {
      return make_error(Errc::invalid, valid.error().message);
    }
  }
  auto job = std::make_shared<Job>();
  job->id = util::hex(util::random_bytes(6));
  job->kind = request.locked.empty() ? "add-package" : "lockfile";
  job->started = util::iso8601();
  std::lock_guard lock(impl.mutex);
  if (impl.stopping.load()) {
    return make_error(Errc::failed, "the registry is stopping");
  }
  impl.jobs[job->id] = job;
  impl.job_threads.emplace_back([&impl, job, request = std::move(request)]() mutable {
    impl.run_job(job, std::move(request));
  });
  return job->id;
}

std::optional<json> Service::job(const std::string& id) const {
  std::lock_guard lock(m_impl->mutex);
  auto it = m_impl->jobs.find(id);
  if (it == m_impl->jobs.end()) {
    return std::nullopt;
  }
  return job_json(*it->second);
}

void Service::Impl::run_job(const std::shared_ptr<Job>& job, JobRequest request) {
  // (name, range) to take; versions taken, so that a closure ends.
  std::deque<std::pair<std::string, std::string>> queue;
  std::set<std::string> taken;
  std::vector<std::string> names;
  for (const auto& spec : request.specs) {
    const auto at = spec.find('@', 1);
    queue.emplace_back(spec.substr(0, at), at == std::string::npos ? "latest" : spec.substr(at + 1));
  }
  job_update(job, [&](Job& j) { j.total = static_cast<std::int64_t>(queue.size() + request.locked.size()); });
  auto error = [&](const std::string& name, const std::string& message) {
    job_update(job, [&](Job& j) { j.errors.push_back({{"name", name}, {"message", message}}); });
  };
  auto take_tarball = [&](const std::string& name, const std::string& version) {
    auto outcome = fetch_and_wait(name, Need{Need::Kind::tarball, registry::tarball_rel_path(name, version)});
    if (outcome.kind != SourceOutcome::Kind::ready) {
      error(name + "@" + version, outcome.message);
      return;
    }
    std::error_code ec;
    auto size = std::filesystem::file_size(store.file_path(registry::tarball_rel_path(name, version)), ec);
    job_update(job, [&](Job& j) {
      j.tarballs += 1;
      j.bytes += ec ? 0 : static_cast<std::int64_t>(size);
    });
  };
  // The packument of `name`, fetched (or revalidated) first.
  auto packument = [&](const std::string& name, std::set<std::string>& fetched) -> std::optional<json> {
    if (!fetched.count(name)) {
      auto outcome = fetch_and_wait(name, Need{Need::Kind::packument, ""});
      if (outcome.kind == SourceOutcome::Kind::not_found || outcome.kind == SourceOutcome::Kind::failed) {
        error(name, outcome.message);
        return std::nullopt;
      }
      fetched.insert(name);
    }
    auto doc = store.get(name);
    if (!doc || !*doc) {
      error(name, "not found");
      return std::nullopt;
    }
    auto body = json::parse((*doc)->body, nullptr, false);
    if (!body.is_object()) {
      error(name, "the stored document is not valid JSON");
      return std::nullopt;
    }
    if (!body.contains(std::string(k_origin_member))) {
      return std::nullopt; // local: its dependencies are the publisher's business
    }
    return body;
  };
  std::set<std::string> fetched;
  while (!queue.empty() && !stopping.load()) {
    // Not a structured binding: lambdas below capture them (clang 14 cannot).
    const std::string name = queue.front().first;
    const std::string range = queue.front().second;
    queue.pop_front();
    job_update(job, [&](Job& j) { j.current = name + "@" + range; });
    if (auto valid = registry::validate_package_name(name); !valid) {
      error(name, valid.error().message);
    } else if (PrivateNames(config().privates).matches(name)) {
      error(name, "private (uplink.private): never taken from the uplink");
    } else if (auto body = packument(name, fetched)) {
      std::vector<std::string> versions;
      for (const auto& [version, manifest] : (*body)["versions"].items()) {
        versions.push_back(version);
      }
      std::map<std::string, std::string> tags;
      const json dist_tags = body->value("dist-tags", json::object());
      for (const auto& [tag, version] : dist_tags.items()) {
        if (version.is_string()) {
          tags[tag] = version.get<std::string>();
        }
      }
      auto version = registry::pick_version(versions, tags, range);
      if (!version) {
        error(name, "no version of '" + name + "' matches '" + range + "'");
      } else if (taken.insert(name + "@" + *version).second) {
        names.push_back(name);
        job_update(job, [&](Job& j) { j.packages.push_back({{"name", name}, {"version", *version}}); });
        if (request.prefetch) {
          take_tarball(name, *version);
        }
        if (request.dependencies) {
          const json& manifest = (*body)["versions"][*version];
          for (const char* field : {"dependencies", "optionalDependencies", "peerDependencies"}) {
            const json* deps = registry::member(manifest, field);
            if (deps == nullptr || !deps->is_object()) {
              continue;
            }
            for (const auto& [dep, spec] : deps->items()) {
              if (!spec.is_string()) {
                continue;
              }
              std::string dep_name = dep;
              std::string dep_range = spec.get<std::string>();
              // "npm:real@range" installs another package under this name.
              if (dep_range.starts_with("npm:")) {
                auto alias = dep_range.substr(4);
                auto at = alias.find('@', 1);
                dep_name = alias.substr(0, at);
                dep_range = at == std::string::npos ? "latest" : alias.substr(at + 1);
              }
              if (dep_range.find(':') != std::string::npos || dep_range.find('/') != std::string::npos) {
                continue; // git, file, URL: not from a registry
              }
              queue.emplace_back(dep_name, dep_range.empty() ? "*" : dep_range);
              job_update(job, [&](Job& j) { j.total += 1; });
            }
          }
        }
      }
    }
    job_update(job, [&](Job& j) { j.done += 1; });
  }
  for (const auto& locked : request.locked) {
    if (stopping.load()) {
      break;
    }
    job_update(job, [&](Job& j) { j.current = locked.name + "@" + locked.version; });
    if (PrivateNames(config().privates).matches(locked.name)) {
      error(locked.name, "private (uplink.private): never taken from the uplink");
    } else if (auto body = packument(locked.name, fetched)) {
      const json* manifest = registry::member((*body)["versions"], locked.version);
      if (manifest == nullptr) {
        error(locked.name + "@" + locked.version, "the uplink has no version " + locked.version);
      } else {
        const json* dist = registry::member(*manifest, "dist");
        std::string integrity = dist != nullptr ? registry::string_member(*dist, "integrity").value_or("") : "";
        auto lock_digest = util::expected_digest(locked.integrity);
        auto doc_digest = util::expected_digest(integrity);
        bool agrees = !lock_digest || (doc_digest && lock_digest->algorithm == doc_digest->algorithm &&
                                       std::any_of(lock_digest->digests.begin(), lock_digest->digests.end(),
                                                   [&](const std::string& d) { return util::digest_matches(*doc_digest, d); }));
        if (!agrees && lock_digest && doc_digest && lock_digest->algorithm != doc_digest->algorithm) {
          agrees = true; // checked against the tarball's bytes below
        }
        if (!agrees) {
          error(locked.name + "@" + locked.version, "the lockfile's integrity " + locked.integrity +
                                                      " differs from the uplink's " + integrity);
        } else {
          names.push_back(locked.name);
          job_update(job, [&](Job& j) {
            j.packages.push_back({{"name", locked.name}, {"version", locked.version}});
          });
          take_tarball(locked.name, locked.version);
          if (!locked.integrity.empty()) {
            auto bytes = util::read_file(store.file_path(registry::tarball_rel_path(locked.name, locked.version)));
            if (bytes) {
              if (auto checked = util::check_tarball(locked.name + "@" + locked.version, locked.integrity, "", *bytes);
                  !checked) {
                error(locked.name + "@" + locked.version, checked.error().message);
              }
            }
          }
        }
      }
    }
    job_update(job, [&](Job& j) { j.done += 1; });
  }
  if (auto added = add_to_whitelist(names); !added) {
    error("whitelist", added.error().message);
  }
  job_update(job, [&](Job& j) {
    j.current.clear();
    j.finished = util::iso8601();
    j.state = stopping.load() ? "interrupted" : j.errors.empty() ? "done" : "done-with-errors";
  });
}

} // namespace npme::uplink
