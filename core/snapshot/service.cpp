#include "core/snapshot/service.hpp"

#include "core/util/crypto.hpp"
#include "core/util/time.hpp"

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>

#include <sys/stat.h>

namespace npme::snapshot {

namespace {

using nlohmann::json;

// Finished jobs kept for GET /api/v1/snapshots/jobs/{id}.
constexpr std::size_t k_kept_jobs = 20;

struct Job {
  std::string id;
  std::string state = "running";
  std::string started;
  std::string finished;
  std::uint64_t done_bytes = 0;
  std::uint64_t total_bytes = 0;
  std::string file;
  std::uint64_t bytes = 0;
  std::optional<Error> error;
};

json job_json(const Job& job) {
  return {{"id", job.id},
          {"state", job.state},
          {"started", job.started},
          {"finished", job.finished.empty() ? json(nullptr) : json(job.finished)},
          {"done_bytes", job.done_bytes},
          {"total_bytes", job.total_bytes},
          {"file", job.file.empty() ? json(nullptr) : json(job.file)},
          {"bytes", job.bytes},
          {"error", job.error ? json{{"code", errc_name(job.error->code)}, {"message", job.error->message}}
                              : json(nullptr)}};
}

// snapshot.dir, made when missing (0700: a snapshot holds the whole registry).
Expected<fs::path> ready_dir(const settings::Settings& config) {
  const std::string dir = config.get("snapshot.dir");
  if (dir.empty()) {
    return make_error(Errc::precondition,
                      "no snapshot directory: set snapshot.dir (npme settings set snapshot.dir /path) first");
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) {
      return make_error(Errc::io, "snapshot.dir: cannot make '" + dir + "': " + ec.message());
    }
    ::chmod(dir.c_str(), 0700);
  }
  return fs::path(dir);
}

} // namespace

struct Service::Impl {
  explicit Impl(Context c) : context(std::move(c)) {}

  Context context;
  mutable std::mutex mutex;
  bool stopping = false;
  std::atomic<bool> interrupt{false};
  std::map<std::string, std::shared_ptr<Job>> jobs;
  std::deque<std::string> order; // job ids, oldest first
  std::shared_ptr<Job> running;  // the create under way, if any
  std::thread thread;            // its thread (joined by the next start or stop())

  void run(const std::shared_ptr<Job>& job, const fs::path& dir, std::string actor, std::string address) {
    const auto config = context.settings();
    CreateOptions options;
    options.paths = store::Paths{config->metadata_dir(), config->packages_dir(), config->data_dir()};
    options.role = config->get("upstream.url").empty() ? "primary" : "replica";
    options.admin_url = "npme serve";
    options.status = context.status;
    options.output_dir = dir;
    options.progress = [this, job](std::uint64_t done, std::uint64_t total) {
      std::lock_guard lock(mutex);
      job->done_bytes = done;
      job->total_bytes = total;
    };
    options.interrupted = [this] { return interrupt.load(); };
    auto created = create(options);
    audit::Event event{"", std::move(actor), std::move(address), "snapshot.create", dir.string(), "ok", nullptr};
    std::lock_guard lock(mutex);
    job->finished = util::iso8601();
    if (created) {
      job->state = "done";
      job->file = created->file.string();
      job->bytes = created->file_bytes;
      job->done_bytes = job->total_bytes;
      event.target = job->file;
      event.detail = {{"bytes", created->file_bytes}, {"update_seq", created->manifest.update_seq}};
    } else {
      job->state = created.error().code == Errc::interrupted ? "interrupted" : "failed";
      job->error = created.error();
      event.result = "failed";
      event.detail = {{"error", created.error().message}};
    }
    if (context.audit != nullptr) {
      context.audit->record(std::move(event));
    }
    running.reset();
  }
};

Service::Service(Context context) : m_impl(std::make_unique<Impl>(std::move(context))) {}

Service::~Service() {
  stop();
}

void Service::stop() {
  std::thread thread;
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->stopping = true;
    thread = std::move(m_impl->thread);
  }
  m_impl->interrupt = true;
  if (thread.joinable()) {
    thread.join();
  }
}

Expected<json> Service::list() const {
  const auto config = m_impl->context.settings();
  const std::string dir = config->get("snapshot.dir");
  json snapshots = json::array();
  if (!dir.empty()) {
    auto found = snapshot::list(dir);
    if (!found && found.error().code != Errc::not_found) {
      return util::Unexpected<Error>{found.error()};
    }
    if (found) {
      for (auto it = found->rbegin(); it != found->rend(); ++it) {
        snapshots.push_back(to_json(*it));
      }
    }
  }
  std::lock_guard lock(m_impl->mutex);
  json latest = nullptr;
  if (!m_impl->order.empty()) {
    latest = job_json(*m_impl->jobs.at(m_impl->order.back()));
  }
  return json{{"dir", dir}, {"snapshots", std::move(snapshots)}, {"job", std::move(latest)}};
}

Expected<std::string> Service::start_create(std::string actor, std::string address) {
  NPME_TRY_ASSIGN(const fs::path dir, ready_dir(*m_impl->context.settings()));
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->stopping) {
    return make_error(Errc::failed, "the instance is stopping");
  }
  if (m_impl->running) {
    return make_error(Errc::conflict, "a snapshot is being created already (job " + m_impl->running->id + ")");
  }
  // The previous create's thread has returned from its work: this join does not wait.
  if (m_impl->thread.joinable()) {
    m_impl->thread.join();
  }
  auto job = std::make_shared<Job>();
  job->id = util::hex(util::random_bytes(6));
  job->started = util::iso8601();
  m_impl->jobs[job->id] = job;
  m_impl->order.push_back(job->id);
  while (m_impl->order.size() > k_kept_jobs) {
    m_impl->jobs.erase(m_impl->order.front());
    m_impl->order.pop_front();
  }
  m_impl->running = job;
  m_impl->thread = std::thread([impl = m_impl.get(), job, dir, actor = std::move(actor), address = std::move(address)] {
    impl->run(job, dir, actor, address);
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

} // namespace npme::snapshot
