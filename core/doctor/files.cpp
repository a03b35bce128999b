// The small files: the follower's position, the white-list and the settings
// file.

#include "core/doctor/checks.hpp"

#include "core/registry/names.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/fs.hpp"
#include "core/util/text.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <sstream>
#include <sys/stat.h>

namespace npme::doctor::detail {

namespace {

// `text` for a message: at most 40 characters, control bytes escaped.
std::string shown(std::string_view text) {
  std::string out;
  for (unsigned char c : text.substr(0, 40)) {
    if (c < 0x20 || c == 0x7f) {
      const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return text.size() > 40 ? out + "..." : out;
}

std::string octal_mode(mode_t mode) {
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "%04o", static_cast<unsigned>(mode & 07777));
  return buffer;
}

// Keeps a copy of the sequence file `path` in quarantine, then empties it.
Expected<fs::path> empty_sequence(Run& run, const fs::path& data, const fs::path& path) {
  NPME_TRY_ASSIGN(fs::path kept, run.quarantine.keep_copy(path, "data", "sequence"));
  NPME_TRY(replication::truncate_sequence(data));
  return kept;
}

// Keeps a copy of the white-list `path` in quarantine, then rewrites it
// without the names that are not package names.
Expected<fs::path> clean_whitelist(Run& run, const fs::path& data, const fs::path& path) {
  NPME_TRY_ASSIGN(fs::path kept, run.quarantine.keep_copy(path, "data", "whitelist"));
  NPME_TRY(replication::update_whitelist(data, [](std::vector<std::string>& names) -> Expected<void> {
    names.erase(std::remove_if(names.begin(), names.end(),
                               [](const std::string& name) { return !registry::validate_package_name(name); }),
                names.end());
    return {};
  }));
  return kept;
}

} // namespace

void check_sequence(Run& run) {
  const fs::path data = run.options.paths.data;
  const fs::path path = data / "sequence";
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) {
    return; // missing: start from 0 (DESIGN.md §2)
  }
  auto seq = replication::read_sequence(data);
  if (seq) {
    return;
  }
  Defect defect{"sequence", "", path.string(), seq.error().message, false, "", false};
  if (seq.error().code == Errc::invalid) {
    const auto text = util::read_file(path);
    defect.detail = "holds '" + shown(text ? *text : "") +
                    "', not a change number and a newline (or nothing): the follower cannot start";
  }
  if (run.repairing()) {
    if (auto kept = empty_sequence(run, data, path)) {
      defect.repaired = true;
      defect.action = "emptied (the old file is " + kept->string() +
                      "): a replica resyncs from its upstream's first change, fetching only what differs";
    } else {
      defect.action = "not repaired: " + kept.error().message;
    }
  }
  run.add(std::move(defect));
}

void check_whitelist(Run& run) {
  const fs::path data = run.options.paths.data;
  const fs::path path = data / "whitelist";
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) {
    return;
  }
  auto text = util::read_file(path);
  if (!text) {
    run.add(Defect{"whitelist", "", path.string(), text.error().message, false,
                   run.repairing() ? "not repaired: the file cannot be read" : "", false});
    return;
  }
  // The names the follower and the uplink read (replication::read_whitelist):
  // every line but blank ones and '#' comments, spaces around removed.
  std::vector<std::string> problems;
  std::istringstream lines(*text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    const std::string name = std::string(util::trim(line));
    if (name.empty() || name.front() == '#') {
      continue;
    }
    if (auto valid = registry::validate_package_name(name); !valid) {
      problems.push_back("line " + std::to_string(number) + " '" + shown(name) + "' is not a package name");
    }
  }
  if (problems.empty()) {
    return;
  }
  std::string detail = problems.front();
  if (problems.size() > 1) {
    detail += " (and " + std::to_string(problems.size() - 1) + " more lines)";
  }
  Defect defect{"whitelist", "", path.string(), detail, false, "", false};
  if (run.repairing()) {
    if (auto kept = clean_whitelist(run, data, path)) {
      defect.repaired = true;
      defect.action =
        "removed " + std::to_string(problems.size()) + " invalid line(s) (the old file is " + kept->string() + ")";
    } else {
      defect.action = "not repaired: " + kept.error().message;
    }
  }
  run.add(std::move(defect));
}

void check_settings(Run& run) {
  const fs::path& path = run.options.settings_file;
  if (path.empty()) {
    return;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      // An instance restored into a new root and not started yet: `npme
      // serve` makes the file (defaults, new secrets) on its first start.
      run.report.skipped.push_back("the settings checks: there is no settings file yet ('npme serve' makes one on "
                                   "its first start)");
      return;
    }
    run.add(Defect{"settings", "", path.string(), util::io_error("stat", path, err).message, false, "", false});
    return;
  }
  const mode_t mode = st.st_mode & 07777;
  if (mode != 0600) {
    Defect defect{
      "settings",    "",
      path.string(), "mode " + octal_mode(mode) + ", but it holds the admin token and the secrets: it must be 0600",
      false,         "",
      false};
    if (run.repairing()) {
      if (::chmod(path.c_str(), 0600) == 0) {
        defect.repaired = true;
        defect.action = "mode set to 0600";
      } else {
        defect.action = "not repaired: " + util::io_error("chmod", path, errno).message;
      }
    }
    run.add(std::move(defect));
  }
  if (auto loaded = settings::load(run.options.layout); !loaded) {
    run.add(Defect{"settings", "", path.string(), loaded.error().message, false,
                   run.repairing() ? "not repaired: correct it with 'npme settings set --offline KEY=VALUE' or an "
                                     "editor"
                                   : "",
                   false});
  }
}

} // namespace npme::doctor::detail
