#include "core/audit/audit.hpp"

#include "core/util/fs.hpp"
#include "core/util/time.hpp"

#include <algorithm>
#include <cerrno>
#include <deque>
#include <fstream>

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::audit {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view k_file = "audit.log";
constexpr std::string_view k_lock = "audit.lock";

fs::path rotated(const fs::path& data_dir, unsigned n) {
  return data_dir / (std::string(k_file) + "." + std::to_string(n));
}

// Holds the writers' lock (an flock of data/audit.lock) while alive.
class WriteLock {
public:
  static Expected<WriteLock> take(const fs::path& data_dir) {
    const fs::path path = data_dir / k_lock;
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return util::Unexpected<Error>{util::io_error("open", path, errno)};
    }
    util::Fd owned(fd);
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        return util::Unexpected<Error>{util::io_error("lock", path, errno)};
      }
    }
    return WriteLock(std::move(owned));
  }

private:
  explicit WriteLock(util::Fd fd) : m_fd(std::move(fd)) {}
  util::Fd m_fd; // closing it releases the lock
};

// audit.log → audit.log.1 → ... → audit.log.KEEP (the oldest dropped).
Expected<void> rotate(const fs::path& data_dir, unsigned keep) {
  std::error_code ec;
  if (keep == 0) {
    fs::remove(data_dir / k_file, ec);
    return {};
  }
  fs::remove(rotated(data_dir, keep), ec);
  for (unsigned n = keep; n > 1; --n) {
    if (fs::exists(rotated(data_dir, n - 1), ec)) {
      fs::rename(rotated(data_dir, n - 1), rotated(data_dir, n), ec);
      if (ec) {
        return make_error(Errc::io, "cannot rotate the audit log: " + ec.message());
      }
    }
  }
  fs::rename(data_dir / k_file, rotated(data_dir, 1), ec);
  if (ec) {
    return make_error(Errc::io, "cannot rotate the audit log: " + ec.message());
  }
  return {};
}

std::string string_field(const json& doc, const char* name) {
  auto it = doc.find(name);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : "";
}

} // namespace

std::string to_line(const Event& event) {
  json doc = {{"time", event.time},     {"actor", event.actor},   {"address", event.address},
              {"action", event.action}, {"target", event.target}, {"result", event.result}};
  if (!event.detail.is_null()) {
    doc["detail"] = event.detail;
  }
  // A name or message with invalid UTF-8 must not lose the line.
  return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

Expected<Event> parse_line(std::string_view line) {
  auto doc = json::parse(line, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("action")) {
    return make_error(Errc::invalid, "not an audit line");
  }
  Event event{string_field(doc, "time"),   string_field(doc, "actor"),  string_field(doc, "address"),
              string_field(doc, "action"), string_field(doc, "target"), string_field(doc, "result"),
              doc.value("detail", json())};
  return event;
}

Limits limits(const settings::Settings& config) {
  Limits out;
  out.max_size = std::max<std::uint64_t>(4096, settings::parse_size(config.get("audit.max_size")));
  try {
    out.keep = static_cast<unsigned>(std::stoul(config.get("audit.keep")));
  } catch (const std::exception&) {
    // validate() admits only counts; the default stands otherwise.
  }
  return out;
}

fs::path log_path(const fs::path& data_dir) {
  return data_dir / k_file;
}

Expected<void> append(const fs::path& data_dir, Event event, const Limits& limits) {
  if (event.time.empty()) {
    event.time = util::iso8601();
  }
  std::string line = to_line(event) + "\n";
  NPME_TRY_ASSIGN(auto lock, WriteLock::take(data_dir));
  const fs::path path = data_dir / k_file;
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0 && info.st_size > 0 &&
      static_cast<std::uint64_t>(info.st_size) + line.size() > limits.max_size) {
    NPME_TRY(rotate(data_dir, limits.keep));
  }
  const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return util::Unexpected<Error>{util::io_error("open", path, errno)};
  }
  util::Fd owned(fd);
  // A line torn by a crash (or a full disk) must not swallow this one.
  if (::fstat(fd, &info) == 0 && info.st_size > 0) {
    char last = '\n';
    if (::pread(fd, &last, 1, info.st_size - 1) == 1 && last != '\n') {
      line.insert(line.begin(), '\n');
    }
  }
  // A file made by another umask or copied in: the log holds who did what.
  ::fchmod(fd, 0600);
  return util::write_all(fd, line, path);
}

Expected<std::vector<Event>> read(const fs::path& data_dir, std::optional<std::chrono::system_clock::time_point> since,
                                  std::size_t limit) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (unsigned n = 1; n < 1000; ++n) {
    if (!fs::exists(rotated(data_dir, n), ec)) {
      break;
    }
    files.push_back(rotated(data_dir, n));
  }
  std::reverse(files.begin(), files.end()); // oldest first
  files.push_back(data_dir / k_file);
  std::deque<Event> events;
  for (const auto& file : files) {
    std::ifstream in(file);
    if (!in) {
      if (fs::exists(file, ec)) {
        return make_error(Errc::io, "cannot read the audit log " + file.string());
      }
      continue; // rotated away meanwhile, or no event yet
    }
    std::string line;
    while (std::getline(in, line)) {
      auto event = parse_line(line);
      if (!event) {
        continue;
      }
      if (since) {
        auto at = util::parse_iso8601(event->time);
        if (!at || *at < *since) {
          continue;
        }
      }
      events.push_back(std::move(*event));
      if (limit != 0 && events.size() > limit) {
        events.pop_front();
      }
    }
  }
  return std::vector<Event>(std::make_move_iterator(events.begin()), std::make_move_iterator(events.end()));
}

Log::Log(fs::path data_dir, std::function<Limits()> limits, std::function<void(const std::string&)> warn)
  : m_data_dir(std::move(data_dir)), m_limits(std::move(limits)), m_warn(std::move(warn)) {}

void Log::record(Event event) noexcept {
  try {
    const Limits limits = m_limits ? m_limits() : Limits{};
    std::lock_guard lock(m_mutex);
    auto written = append(m_data_dir, std::move(event), limits);
    if (written) {
      m_written += 1;
      return;
    }
    if (m_errors++ == 0 && m_warn) {
      m_warn("warning: cannot write the audit log (" + written.error().message +
             "); events are lost until it can (npme_audit_write_errors_total counts them)");
    }
  } catch (...) {
    std::lock_guard lock(m_mutex);
    m_errors += 1;
  }
}

std::string Log::metrics() const {
  std::lock_guard lock(m_mutex);
  return "# HELP npme_audit_events_total Events written to the audit log.\n"
         "# TYPE npme_audit_events_total counter\n"
         "npme_audit_events_total " +
         std::to_string(m_written) +
         "\n"
         "# HELP npme_audit_write_errors_total Events that could not be written to the audit log.\n"
         "# TYPE npme_audit_write_errors_total counter\n"
         "npme_audit_write_errors_total " +
         std::to_string(m_errors) + "\n";
}

nlohmann::json settings_changes(const settings::Settings& before, const settings::Settings& after,
                                const std::vector<std::string>& changed) {
  json out = json::array();
  for (const auto& name : changed) {
    const auto* key = settings::find_key(name);
    if (key != nullptr && key->secret) {
      out.push_back({{"key", name}, {"changed", true}});
    } else {
      out.push_back({{"key", name}, {"old", before.get(name)}, {"new", after.get(name)}});
    }
  }
  return out;
}

Expected<void> record_cli(const settings::Settings& config, Event event) {
  event.actor = cli_actor();
  return append(config.data_dir(), std::move(event), limits(config));
}

std::string cli_actor() {
  std::string name;
  if (const passwd* entry = ::getpwuid(::getuid())) {
    name = entry->pw_name;
  } else {
    name = "uid " + std::to_string(::getuid());
  }
  return "cli (" + name + ")";
}

} // namespace npme::audit
