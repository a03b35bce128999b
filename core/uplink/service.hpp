#pragma once
// The uplink service inside `npme serve` (DESIGN.md §9): public packages
// from any npm-compatible registry, fetched by name and kept as ordinary
// documents. It is the registry's PackageSource:
// - on an instance with `uplink.url` (and no upstream), misses are fetched
//   from the uplink (read-through, or white-listed names only), packuments
//   are revalidated after `uplink.maxage` in the background, tarballs are
//   fetched on first request and verified before anything is stored;
// - on a replica (`upstream.url` set), misses are asked of the upstream by
//   name (GET /_fetch/{name} with the upstream secret): the primary stays
//   the one source of truth, and never-fetched tarballs of its uplink copies
//   are fetched from it the same way. A replica never talks to the uplink.
// A name is local or from the uplink, never both: a locally published name,
// or one matching `uplink.private`, is never fetched, and writes to a name
// held from the uplink are refused.
//
// Threads: decide() runs on the registry's I/O threads and only reads
// memory (and one stored row). Fetches run on the service's own pool of
// connections (http::Fetcher) and answer the registry's deferred requests
// from there. Jobs (add-package, lockfile imports) run on a thread each; a
// poller thread keeps white-listed names fresh.

#include "core/http/fetcher.hpp"
#include "core/registry/source.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace npme::uplink {

// What `npme add-package` and `--from-lockfile` ask for.
struct JobRequest {
  std::vector<std::string> specs; // "name", "name@range" (add-package)
  bool dependencies = true;       // take each spec's dependency closure
  bool prefetch = false;          // also download the chosen versions' tarballs
  struct Locked {
    std::string name;
    std::string version;
    std::string integrity;
  };
  std::vector<Locked> locked; // exact versions with tarballs (--from-lockfile)
};

class Service : public registry::PackageSource {
public:
  using SettingsSource = std::function<std::shared_ptr<const settings::Settings>()>;

  // Serves packages into `store`; `data_dir` holds the white-list.
  Service(store::Store& store, SettingsSource settings, std::filesystem::path data_dir);
  ~Service() override;
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Starts the poller. Idempotent.
  void start();
  // Answers every waiting request (interrupted fetches: 503), stops jobs,
  // the poller and the connections. Call before the registry's server stops.
  void stop();

  // registry::PackageSource
  bool enabled() const override;
  Decision decide(const std::string& name, const std::optional<store::Head>& held,
                  const registry::Need& need) override;
  void fetch(const std::string& name, const registry::Need& need,
             std::function<void(registry::SourceOutcome)> done) override;
  Expected<void> check_write(const std::string& name, const std::optional<store::Head>& held) override;

  // Fetches `name` now (revalidating a held copy whatever its age) and
  // waits. Used by `npme refresh` and jobs.
  registry::SourceOutcome refresh(const std::string& name);

  // Starts a job; returns its id (see job()). Errc::precondition without an
  // uplink (or upstream, for names), Errc::invalid for a bad spec.
  Expected<std::string> start_job(JobRequest request);
  // The job's progress and, once done, its summary; nullopt for an unknown id.
  std::optional<nlohmann::json> job(const std::string& id) const;

  // The uplink's part of `npme status`.
  nlohmann::json status() const;
  // The uplink's Prometheus metrics.
  std::string metrics() const;

  // Forwards an npm audit request (`path` under /-/npm/v1/security/) to the
  // uplink, or on a replica to the upstream, and answers through `done`.
  void forward_audit(const std::string& path, const std::string& body, const std::string& content_encoding,
                     std::function<void(int status, std::string body)> done);

  // The names this instance must never fetch: uplink.private, and names
  // published here. Exposed for the audit filter.
  bool is_private(const std::string& name);

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::uplink
