#include "core/util/bounded_pool.hpp"

#include <algorithm>

namespace npme::util {

BoundedPool::BoundedPool(unsigned threads, std::size_t max_queued) : m_max_queued(max_queued) {
  for (unsigned i = 0; i < std::max(1u, threads); ++i) {
    m_threads.emplace_back([this] { work(); });
  }
}

BoundedPool::~BoundedPool() {
  {
    std::lock_guard lock(m_mutex);
    m_stopping = true;
  }
  m_ready.notify_all();
  for (auto& thread : m_threads) {
    thread.join();
  }
}

bool BoundedPool::try_post(std::function<void()> job) {
  {
    std::lock_guard lock(m_mutex);
    if (m_stopping || m_jobs.size() >= m_max_queued) {
      return false;
    }
    m_jobs.push_back(std::move(job));
  }
  m_ready.notify_one();
  return true;
}

std::size_t BoundedPool::queued() const {
  std::lock_guard lock(m_mutex);
  return m_jobs.size();
}

void BoundedPool::work() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(m_mutex);
      m_ready.wait(lock, [this] { return m_stopping || !m_jobs.empty(); });
      if (m_jobs.empty()) {
        return; // stopping, nothing left
      }
      job = std::move(m_jobs.front());
      m_jobs.pop_front();
    }
    try {
      job();
    } catch (...) {
      // A job reports its own errors (run() through its future); one that
      // throws anyway must not end the thread.
    }
  }
}

} // namespace npme::util
