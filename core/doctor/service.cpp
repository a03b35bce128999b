#include "core/doctor/service.hpp"

#include "core/util/crypto.hpp"
#include "core/util/time.hpp"

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace npme::doctor {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Finished jobs kept for GET /api/v1/doctor/jobs/{id}.
constexpr std::size_t k_kept_jobs = 20;
// Defect lines a scrub round logs; the rest are counted.
constexpr std::size_t k_logged_defects = 20;

struct Job {
  std::string id;
  std::string state = "queued";
  bool full = false;
  bool repair = false;
  std::string started;
  std::string finished;
  std::optional<json> report;
  std::optional<Error> error;
};

json job_json(const Job& job) {
  return {
    {"id", job.id},
    {"state", job.state},
    {"full", job.full},
    {"repair", job.repair},
    {"started", job.started},
    {"finished", job.finished.empty() ? json(nullptr) : json(job.finished)},
    {"report", job.report ? *job.report : json(nullptr)},
    {"error", job.error ? json{{"code", errc_name(job.error->code)}, {"message", job.error->message}} : json(nullptr)}};
}

std::int64_t seconds_setting(const settings::Settings& config, std::string_view key) {
  const std::string text = config.get(key);
  std::int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return ec == std::errc() && ptr == text.data() + text.size() && value > 0 ? value : 0;
}

} // namespace

struct Service::Impl {
  explicit Impl(Context c) : context(std::move(c)) {}

  Context context;
  mutable std::mutex mutex;
  std::condition_variable changed; // stopping, a run ended
  bool stopping = false;
  bool running = false; // a run holds the store's doctor slot
  bool started = false;
  std::map<std::string, std::shared_ptr<Job>> jobs;
  std::deque<std::string> finished_order;
  // A job's thread, joined by the next start_job() once it ended (or by stop()).
  struct Runner {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> ended;
  };
  std::vector<Runner> runners;
  std::thread scrubber;

  // For /metrics.
  std::int64_t remaining = 0;
  std::int64_t scrub_runs = 0;
  double scrub_last_finished = 0; // Unix time
  double scrub_last_seconds = 0;
  std::int64_t interval = 0;

  Options options_for(Depth depth, Repair repair, const settings::Settings& config, TarballSource* source) {
    Options options;
    options.depth = depth;
    options.repair = repair;
    options.paths = store::Paths{config.metadata_dir(), config.packages_dir(), config.data_dir()};
    options.layout = config.layout();
    options.settings_file = config.layout().config_file;
    options.store = &context.store;
    options.source = source;
    options.changed = context.changed;
    options.cancelled = [this] {
      std::lock_guard lock(mutex);
      return stopping;
    };
    return options;
  }

  // Waits for the slot; false when stopping.
  bool acquire() {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return stopping || !running; });
    if (stopping) {
      return false;
    }
    running = true;
    return true;
  }

  // Gives the slot back; `left`: what the run left unrepaired (nullopt when
  // it failed: the gauge keeps the last result).
  void release(std::optional<std::int64_t> left) {
    {
      std::lock_guard lock(mutex);
      running = false;
      if (left) {
        remaining = *left;
      }
    }
    changed.notify_all();
  }

  void run_job(const std::shared_ptr<Job>& job, Depth depth, Repair repair) {
    if (!acquire()) {
      finish(job, "interrupted", std::nullopt, Error{Errc::interrupted, "doctor: the instance is stopping"});
      return;
    }
    update(job, [](Job& j) { j.state = "running"; });
    const auto config = context.settings();
    const auto source = repair == Repair::yes ? make_source(*config) : nullptr;
    auto report = run(options_for(depth, repair, *config, source.get()));
    if (report) {
      release(report->remaining());
      finish(job, "done", report->to_json(), std::nullopt);
    } else {
      release(std::nullopt);
      finish(job, report.error().code == Errc::interrupted ? "interrupted" : "failed", std::nullopt, report.error());
    }
  }

  void update(const std::shared_ptr<Job>& job, const std::function<void(Job&)>& change) {
    std::lock_guard lock(mutex);
    change(*job);
  }

  void finish(const std::shared_ptr<Job>& job, std::string state, std::optional<json> report,
              std::optional<Error> error) {
    std::lock_guard lock(mutex);
    job->state = std::move(state);
    job->finished = util::iso8601();
    job->report = std::move(report);
    job->error = std::move(error);
    finished_order.push_back(job->id);
    while (finished_order.size() > k_kept_jobs) {
      jobs.erase(finished_order.front());
      finished_order.pop_front();
    }
  }

  void scrub_round(const settings::Settings& config) {
    {
      std::lock_guard lock(mutex);
      if (running || stopping) {
        return; // a doctor run is under way: the next round checks
      }
      running = true;
    }
    const auto start = Clock::now();
    auto report = run(options_for(Depth::records, Repair::no, config, nullptr));
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    {
      std::lock_guard lock(mutex);
      scrub_runs += 1;
      scrub_last_finished = now;
      scrub_last_seconds = seconds;
    }
    if (!report) {
      release(std::nullopt);
      if (report.error().code != Errc::interrupted && context.log) {
        context.log("scrub failed: " + report.error().message);
      }
      return;
    }
    const std::int64_t before = [&] {
      std::lock_guard lock(mutex);
      return remaining;
    }();
    release(report->remaining());
    if (!context.log || (report->defects.empty() && before == 0)) {
      return;
    }
    context.log("scrub: " + report->summary() + (report->defects.empty() ? "" : " (npme doctor --repair repairs)"));
    const json doc = report->to_json();
    std::size_t logged = 0;
    for (const auto& defect : doc["defects"]) {
      if (logged++ == k_logged_defects) {
        context.log("scrub: ... and " + std::to_string(doc["defects"].size() - k_logged_defects) + " more");
        break;
      }
      context.log("scrub: " + defect_line(defect));
    }
  }

  void scrub_loop() {
    std::optional<Clock::time_point> due;
    std::int64_t last_interval = 0;
    std::unique_lock lock(mutex);
    while (!stopping) {
      changed.wait_for(lock, std::chrono::seconds(1), [&] { return stopping; });
      if (stopping) {
        break;
      }
      lock.unlock();
      const auto config = context.settings();
      const std::int64_t every = seconds_setting(*config, "scrub.interval");
      if (every != last_interval) {
        // Off, on, or a new interval: the first round one interval from now.
        last_interval = every;
        due = every > 0 ? std::optional(Clock::now() + std::chrono::seconds(every)) : std::nullopt;
      }
      if (due && Clock::now() >= *due) {
        scrub_round(*config);
        due = Clock::now() + std::chrono::seconds(every);
      }
      lock.lock();
      interval = every;
    }
  }
};

Service::Service(Context context) : m_impl(std::make_unique<Impl>(std::move(context))) {}

Service::~Service() {
  stop();
}

void Service::start() {
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->started || m_impl->stopping) {
    return;
  }
  m_impl->started = true;
  m_impl->scrubber = std::thread([impl = m_impl.get()] { impl->scrub_loop(); });
}

void Service::stop() {
  std::vector<Impl::Runner> runners;
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->stopping = true;
    runners = std::move(m_impl->runners);
  }
  m_impl->changed.notify_all();
  for (auto& runner : runners) {
    runner.thread.join();
  }
  if (m_impl->scrubber.joinable()) {
    m_impl->scrubber.join();
  }
}

Expected<std::string> Service::start_job(Depth depth, Repair repair) {
  auto job = std::make_shared<Job>();
  job->id = util::hex(util::random_bytes(6));
  job->full = depth == Depth::full;
  job->repair = repair == Repair::yes;
  job->started = util::iso8601();
  std::vector<Impl::Runner> ended;
  {
    std::lock_guard lock(m_impl->mutex);
    if (m_impl->stopping) {
      return make_error(Errc::failed, "the instance is stopping");
    }
    auto& runners = m_impl->runners;
    for (auto it = runners.begin(); it != runners.end();) {
      if (it->ended->load()) {
        ended.push_back(std::move(*it));
        it = runners.erase(it);
      } else {
        ++it;
      }
    }
    m_impl->jobs[job->id] = job;
    auto flag = std::make_shared<std::atomic<bool>>(false);
    runners.push_back(Impl::Runner{std::thread([impl = m_impl.get(), job, depth, repair, flag] {
                                     impl->run_job(job, depth, repair);
                                     flag->store(true);
                                   }),
                                   flag});
  }
  // Their threads have returned from their work: these joins do not wait.
  for (auto& runner : ended) {
    runner.thread.join();
  }
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

std::string Service::metrics() const {
  std::lock_guard lock(m_impl->mutex);
  const auto number = [](double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), "%.3f", value);
    return std::string(buffer);
  };
  return "# HELP npme_scrub_defects Defects the latest check (scrub or npme doctor) found and left unrepaired.\n"
         "# TYPE npme_scrub_defects gauge\n"
         "npme_scrub_defects " +
         std::to_string(m_impl->remaining) +
         "\n"
         "# HELP npme_scrub_last_run_timestamp_seconds Unix time the last scrub finished; 0 before the first.\n"
         "# TYPE npme_scrub_last_run_timestamp_seconds gauge\n"
         "npme_scrub_last_run_timestamp_seconds " +
         number(m_impl->scrub_last_finished) +
         "\n"
         "# HELP npme_scrub_last_duration_seconds How long the last scrub took.\n"
         "# TYPE npme_scrub_last_duration_seconds gauge\n"
         "npme_scrub_last_duration_seconds " +
         number(m_impl->scrub_last_seconds) +
         "\n"
         "# HELP npme_scrub_runs_total Scrub rounds since the instance started.\n"
         "# TYPE npme_scrub_runs_total counter\n"
         "npme_scrub_runs_total " +
         std::to_string(m_impl->scrub_runs) +
         "\n"
         "# HELP npme_scrub_interval_seconds The scrub.interval setting; 0 = off.\n"
         "# TYPE npme_scrub_interval_seconds gauge\n"
         "npme_scrub_interval_seconds " +
         std::to_string(m_impl->interval) + "\n";
}

} // namespace npme::doctor
