#include "core/replication/lag_history.hpp"

#include <algorithm>

namespace npme::replication {

namespace {

std::int64_t unix_seconds(LagHistory::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

// A state worth showing over a calmer one in the same step.
int severity(const std::string& state) {
  if (state == "caught-up") {
    return 0;
  }
  if (state == "following" || state == "starting") {
    return 1;
  }
  return 2; // stopped, error
}

} // namespace

LagHistory::LagHistory(std::chrono::seconds step, std::chrono::seconds span)
    : m_step(std::max<std::int64_t>(1, step.count())), m_span(std::max<std::int64_t>(step.count(), span.count())) {}

void LagHistory::record(const FollowerStatus& status, Clock::time_point now) {
  if (status.state == "disabled") {
    return;
  }
  const std::int64_t seconds = unix_seconds(now);
  const std::int64_t slot = seconds - seconds % m_step;
  std::lock_guard lock(m_mutex);
  if (!m_points.empty() && m_points.back().time == slot) {
    Point& point = m_points.back();
    point.changes = std::max(point.changes, status.lag_changes);
    point.seconds = std::max(point.seconds, status.lag_seconds);
    if (severity(status.state) > severity(point.state)) {
      point.state = status.state;
    }
  } else if (m_points.empty() || m_points.back().time < slot) {
    m_points.push_back(Point{slot, status.lag_changes, status.lag_seconds, status.state});
  }
  // (A clock stepped back: the sample is older than the last point; dropped.)
  prune_locked(seconds);
}

nlohmann::json LagHistory::to_json(Clock::time_point now) const {
  const std::int64_t seconds = unix_seconds(now);
  nlohmann::json points = nlohmann::json::array();
  std::lock_guard lock(m_mutex);
  for (const Point& point : m_points) {
    if (point.time + m_span < seconds) {
      continue;
    }
    points.push_back({{"time", point.time}, {"changes", point.changes}, {"seconds", point.seconds}, {"state", point.state}});
  }
  return {{"step_seconds", m_step}, {"span_seconds", m_span}, {"points", std::move(points)}};
}

void LagHistory::prune_locked(std::int64_t now_seconds) {
  while (!m_points.empty() && m_points.front().time + m_span < now_seconds) {
    m_points.pop_front();
  }
}

} // namespace npme::replication
