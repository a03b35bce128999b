#pragma once
// The doctor inside `npme serve`: runs of `npme doctor` asked through the
// admin API (POST /api/v1/doctor → a job), and the periodic scrub (setting
// `scrub.interval`: every so many seconds the check part, never a repair),
// whose result /metrics exports as `npme_scrub_defects`.
//
// Threads: start_job(), job() and metrics() answer from memory, so the
// admin API's I/O thread may call them. Each job runs on a thread of its
// own and the scrub on one more; one run at a time (a job waits for the run
// under way; a scrub round due while another run goes on is skipped).

#include "core/doctor/doctor.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace npme::doctor {

class Service {
public:
  struct Context {
    store::Store& store;
    // The settings in force now (read at every run and scrub round).
    std::function<std::shared_ptr<const settings::Settings>()> settings;
    // Called with a package whose file a repair changed: drop cached copies.
    std::function<void(const std::string& name)> changed;
    // One-line diagnostics (defects the scrub found).
    std::function<void(const std::string& line)> log;
  };

  explicit Service(Context context);
  // Stops first (see stop()).
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Starts the scrub's thread (it idles while scrub.interval is 0). Idempotent.
  void start();
  // Interrupts the run under way (Errc::interrupted: its job ends
  // "interrupted"), ends waiting jobs the same way, joins every thread.
  // Idempotent.
  void stop();

  // Starts a run with `depth` and `repair`; returns its job id at once.
  // Errc::failed once stopping.
  Expected<std::string> start_job(Depth depth, Repair repair);
  // {"id","state":"queued|running|done|failed|interrupted","full","repair",
  //  "started","finished","report":<Report::to_json()>|null,
  //  "error":{"code","message"}|null}; nullopt for an unknown id.
  std::optional<nlohmann::json> job(const std::string& id) const;

  // npme_scrub_defects (what the latest run, scrub or job, left unrepaired),
  // npme_scrub_last_run_timestamp_seconds, npme_scrub_last_duration_seconds,
  // npme_scrub_runs_total and npme_scrub_interval_seconds, in Prometheus text.
  std::string metrics() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::doctor
