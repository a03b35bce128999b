#include "core/http/fetcher.hpp"

#include "core/util/integrity.hpp"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace npme::http {

struct Fetcher::Impl {
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::thread> threads;
  mutable std::mutex mutex;
  std::condition_variable wake;
  // A job, and what to do once the pool no longer counts it (a group's
  // bookkeeping: when run_all() returns, pending() no longer counts its jobs).
  struct Queued {
    Job job;
    std::function<void()> finished;
  };
  std::deque<Queued> queue;
  std::size_t running = 0;
  bool stopping = false;

  void run(Client& client) {
    for (;;) {
      Queued next;
      {
        std::unique_lock lock(mutex);
        wake.wait(lock, [this] { return stopping || !queue.empty(); });
        if (queue.empty()) {
          return; // stopping and drained
        }
        next = std::move(queue.front());
        queue.pop_front();
        ++running;
      }
      try {
        next.job(client);
      } catch (...) {
        // A job reports its own errors; one that throws must not end the pool.
      }
      {
        std::lock_guard lock(mutex);
        --running;
      }
      if (next.finished) {
        next.finished();
      }
    }
  }
};

Fetcher::Fetcher(std::size_t connections, const ClientOptions& options) : m_impl(std::make_unique<Impl>()) {
  connections = std::max<std::size_t>(1, connections);
  for (std::size_t i = 0; i < connections; ++i) {
    m_impl->clients.push_back(std::make_unique<Client>(options));
  }
  for (auto& client : m_impl->clients) {
    Client* raw = client.get();
    m_impl->threads.emplace_back([this, raw] { m_impl->run(*raw); });
  }
}

Fetcher::~Fetcher() {
  abort();
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->stopping = true;
  }
  m_impl->wake.notify_all();
  for (auto& thread : m_impl->threads) {
    thread.join();
  }
}

void Fetcher::post(Job job) {
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->queue.push_back(Impl::Queued{std::move(job), {}});
  }
  m_impl->wake.notify_one();
}

struct Fetcher::Group::State {
  std::mutex mutex;
  std::condition_variable done;
  std::size_t left = 0;
};

Fetcher::Group::~Group() {
  wait();
}

void Fetcher::Group::wait() {
  std::unique_lock lock(m_state->mutex);
  m_state->done.wait(lock, [this] { return m_state->left == 0; });
}

std::unique_ptr<Fetcher::Group> Fetcher::start_all(std::vector<Job> jobs) {
  auto state = std::make_shared<Group::State>();
  state->left = jobs.size();
  {
    std::lock_guard lock(m_impl->mutex);
    for (auto& job : jobs) {
      m_impl->queue.push_back(Impl::Queued{std::move(job), [state] {
                                             std::lock_guard group(state->mutex);
                                             if (--state->left == 0) {
                                               state->done.notify_all();
                                             }
                                           }});
    }
  }
  m_impl->wake.notify_all();
  return std::make_unique<Group>(std::move(state));
}

void Fetcher::run_all(std::vector<Job> jobs) {
  start_all(std::move(jobs))->wait();
}

void Fetcher::abort() {
  for (auto& client : m_impl->clients) {
    client->abort();
  }
}

std::size_t Fetcher::pending() const {
  std::lock_guard lock(m_impl->mutex);
  return m_impl->queue.size() + m_impl->running;
}

Expected<std::string> fetch_tarball(Client& client, const std::string& url, const TarballCheck& check,
                                    const Headers& headers) {
  std::string bytes;
  auto response = client.download(
    url,
    [&bytes](std::string_view chunk) {
      bytes.append(chunk);
      return true;
    },
    headers);
  if (!response) {
    return util::Unexpected<Error>{response.error()};
  }
  const std::string what = "tarball of " + check.label + " (" + url + ")";
  if (response->status == 401 || response->status == 403) {
    return make_error(Errc::unauthorized, what + ": refused with " + std::to_string(response->status));
  }
  if (response->status == 404) {
    return make_error(Errc::not_found, what + ": not found (404)");
  }
  if (response->status != 200) {
    return make_error(Errc::failed, what + ": answered " + std::to_string(response->status));
  }
  NPME_TRY(util::check_tarball(check.label, check.integrity, check.shasum, bytes));
  return bytes;
}

} // namespace npme::http
