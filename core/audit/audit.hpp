#pragma once
// The audit log: one JSON line per security event in data/audit.log (mode
// 0600), rotated by size into audit.log.1 ... audit.log.N (settings
// audit.max_size and audit.keep). The running instance writes logins,
// token and user changes, settings changes, follower resets, promotions
// and refused admin-token attempts; the CLI, for what it does without the
// instance (snapshot create, restore, offline settings edits), appends to
// the same file. Writers serialize on an flock of data/audit.lock, so the
// instance and a CLI never interleave or rotate under each other.
//
// A line never holds a secret: settings changes of secrets say "changed",
// tokens are named by id, passwords never appear.
//
//   {"time":"2026-12-04T10:00:00.000Z","actor":"alice","address":"10.1.2.3",
//    "action":"login","target":"alice","result":"failed"}

#include "core/settings/settings.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace npme::audit {

struct Event {
  std::string time;    // ISO 8601 UTC; record() fills it when empty
  std::string actor;   // a user name, "admin token", "cli (root)", "unknown"
  std::string address; // the client's address; empty for the local CLI
  std::string action;  // "login", "token.create", "settings.change", ...
  std::string target;  // what it acted on: a user, a token id, a path
  std::string result;  // "ok", "failed", "refused", "throttled"
  nlohmann::json detail = nullptr; // more, by action (settings changes, the error)
};

// One line (no newline) and back.
std::string to_line(const Event& event);
Expected<Event> parse_line(std::string_view line);

struct Limits {
  std::uint64_t max_size = 10u << 20; // bytes of audit.log before it is rotated
  unsigned keep = 5;                  // rotated files kept
};

// The limits that settings audit.max_size and audit.keep give.
Limits limits(const settings::Settings& config);

std::filesystem::path log_path(const std::filesystem::path& data_dir);

// Appends `event` to data_dir's audit log, rotating first when it would
// grow past limits.max_size. For the CLI; the instance uses Log.
Expected<void> append(const std::filesystem::path& data_dir, Event event, const Limits& limits);

// The events of data_dir's audit log and its rotated files, oldest first,
// at or after `since` when given; at most the newest `limit` (0: all).
// Lines that do not parse are skipped.
Expected<std::vector<Event>> read(const std::filesystem::path& data_dir,
                                  std::optional<std::chrono::system_clock::time_point> since, std::size_t limit);

// The instance's writer: limits from the live settings, and a failure to
// write (a full disk) never fails the request it records; it is counted
// (npme_audit_write_errors_total) and told once on stderr.
class Log {
public:
  Log(std::filesystem::path data_dir, std::function<Limits()> limits,
      std::function<void(const std::string&)> warn = {});

  void record(Event event) noexcept;
  const std::filesystem::path& data_dir() const { return m_data_dir; }
  std::string metrics() const;

private:
  std::filesystem::path m_data_dir;
  std::function<Limits()> m_limits;
  std::function<void(const std::string&)> m_warn;
  mutable std::mutex m_mutex;
  std::uint64_t m_written = 0;
  std::uint64_t m_errors = 0;
};

// "cli (NAME)" for the user running this process.
std::string cli_actor();

// What a settings change did, for an event's detail: [{"key","old","new"}],
// and for a secret only {"key","changed":true}.
nlohmann::json settings_changes(const settings::Settings& before, const settings::Settings& after,
                                const std::vector<std::string>& changed);

// For the CLI: records `event` as done by cli_actor() in the audit log of
// `config`'s data directory. A failure to write is returned for the caller
// to warn about; it never undoes what was recorded.
Expected<void> record_cli(const settings::Settings& config, Event event);

} // namespace npme::audit
