#pragma once
// A few threads with a bounded queue, for work that must never take more
// than its share of the machine however much of it arrives: password
// hashing (logins). A job that finds the queue full is refused at once
// instead of waiting, so the caller can answer "busy" (503 + Retry-After).

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

namespace npme::util {

class BoundedPool {
public:
  // `threads` workers (at least one); up to `max_queued` jobs wait for one.
  BoundedPool(unsigned threads, std::size_t max_queued);
  // Runs the jobs already queued, then joins.
  ~BoundedPool();
  BoundedPool(const BoundedPool&) = delete;
  BoundedPool& operator=(const BoundedPool&) = delete;

  // Queues `job`; false when max_queued jobs are waiting already.
  bool try_post(std::function<void()> job);

  // Runs `job` on the pool and waits for its result; nullopt when the
  // queue is full (the job did not run).
  template <class F>
  std::optional<std::invoke_result_t<F>> run(F job) {
    using Result = std::invoke_result_t<F>;
    auto task = std::make_shared<std::packaged_task<Result()>>(std::move(job));
    auto result = task->get_future();
    if (!try_post([task] { (*task)(); })) {
      return std::nullopt;
    }
    return result.get();
  }

  // Jobs waiting now (not those running).
  std::size_t queued() const;

private:
  void work();

  const std::size_t m_max_queued;
  mutable std::mutex m_mutex;
  std::condition_variable m_ready;
  std::deque<std::function<void()>> m_jobs;
  bool m_stopping = false;
  std::vector<std::thread> m_threads;
};

} // namespace npme::util
