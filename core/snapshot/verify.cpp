#include "core/snapshot/format.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <sys/stat.h>
#include <unistd.h>

namespace npme::snapshot {

using namespace detail;

Expected<VerifyReport> detail::check_snapshot(const fs::path& file, const fs::path& temp_dir,
                                              WrittenLog* written, const Progress& progress, OutputFile* follow) {
  std::string pattern = (temp_dir / "npme-verify.XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    return util::Unexpected<Error>{io_error("create a temp directory in", temp_dir, errno)};
  }
  const fs::path dir = pattern;
  ReadPlan plan;
  plan.database_dir = dir;
  plan.scratch_dir = dir;
  plan.written = written;
  plan.follow = follow;
  plan.progress = progress;
  auto outcome = read_snapshot(file, plan);
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!outcome) {
    return util::Unexpected<Error>{outcome.error()};
  }
  return std::move(outcome->report);
}

Expected<VerifyReport> verify(const fs::path& file, const Progress& progress, const std::optional<fs::path>& temp_dir) {
  fs::path base = temp_dir.value_or(fs::path());
  if (base.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  return check_snapshot(file, base, nullptr, progress);
}

Expected<Manifest> inspect(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    return make_error(Errc::not_found, "cannot open snapshot '" + file.string() + "': " + std::strerror(errno));
  }
  NPME_TRY_ASSIGN(auto reader, open_reader(file));
  ::archive_entry* header = nullptr;
  const int r = archive_read_next_header(reader.get(), &header);
  if (r < ARCHIVE_WARN || r == ARCHIVE_EOF) {
    return make_error(Errc::verify, "cannot read snapshot '" + file.string() + "': not an npme snapshot (" +
                                      (r == ARCHIVE_EOF ? std::string("empty archive") : archive_message(reader.get())) +
                                      ")");
  }
  const char* name = archive_entry_pathname(header);
  if (name == nullptr || name != k_manifest_entry || archive_entry_filetype(header) != AE_IFREG ||
      archive_entry_size(header) > (1 << 20)) {
    return make_error(Errc::verify,
                      "cannot read snapshot '" + file.string() + "': not an npme snapshot (no snapshot.json first)");
  }
  std::string text;
  std::vector<char> buffer(64 * 1024);
  while (true) {
    const la_ssize_t n = archive_read_data(reader.get(), buffer.data(), buffer.size());
    if (n < 0) {
      return make_error(Errc::verify, "cannot read snapshot '" + file.string() + "': " + archive_message(reader.get()));
    }
    if (n == 0) {
      break;
    }
    text.append(buffer.data(), static_cast<std::size_t>(n));
  }
  auto manifest = Manifest::from_json(text);
  if (!manifest) {
    return make_error(Errc::verify, "snapshot '" + file.string() + "': " + manifest.error().message);
  }
  return manifest;
}

namespace {

bool is_snapshot_name(const std::string& name) {
  const auto ends_with = [&](std::string_view suffix) {
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".tar") || ends_with(".tar.zst") || ends_with(".tar.gz");
}

// Parses the manifest's "created" (ISO 8601 UTC).
std::optional<std::chrono::system_clock::time_point> parse_created(const std::string& text) {
  std::tm tm{};
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &year, &month, &day, &hour, &minute, &second) != 6) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  const std::time_t t = timegm(&tm);
  if (t == static_cast<std::time_t>(-1)) {
    return std::nullopt;
  }
  return std::chrono::system_clock::from_time_t(t);
}

} // namespace

nlohmann::json to_json(const Listed& listed) {
  nlohmann::json item = {{"file", listed.file.string()}, {"bytes", listed.bytes}};
  if (!listed.manifest) {
    item["problem"] = listed.problem;
    return item;
  }
  const Manifest& m = *listed.manifest;
  item["created"] = m.created;
  item["instance_id"] = m.instance_id;
  item["role"] = m.role;
  item["update_seq"] = m.update_seq;
  item["counts"] = {{"packages", m.packages}, {"versions", m.versions}, {"tarballs", m.tarballs},
                    {"tarball_bytes", m.tarball_bytes}};
  return item;
}

Expected<std::vector<Listed>> list(const fs::path& dir) {
  std::vector<Listed> found;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    return make_error(ec == std::errc::no_such_file_or_directory ? Errc::not_found : Errc::io,
                      "cannot list snapshots in '" + dir.string() + "': " + ec.message());
  }
  for (const fs::directory_iterator end; it != end; it.increment(ec)) {
    if (ec) {
      return make_error(Errc::io, "cannot list snapshots in '" + dir.string() + "': " + ec.message());
    }
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (!is_snapshot_name(name) || !it->is_regular_file(type_ec) || it->is_symlink(type_ec)) {
      continue;
    }
    Listed listed;
    listed.file = it->path();
    listed.bytes = it->file_size(type_ec);
    auto manifest = inspect(it->path());
    if (manifest) {
      listed.manifest = std::move(*manifest);
    } else {
      listed.problem = manifest.error().message;
    }
    found.push_back(std::move(listed));
  }
  std::sort(found.begin(), found.end(), [](const Listed& a, const Listed& b) {
    const std::string ka = a.manifest ? a.manifest->created : "";
    const std::string kb = b.manifest ? b.manifest->created : "";
    if (ka != kb) {
      return ka < kb;
    }
    return a.file.filename() < b.file.filename();
  });
  return found;
}

Expected<PruneResult> prune(const PruneOptions& options) {
  NPME_TRY_ASSIGN(auto found, list(options.dir));
  PruneResult result;
  // Newest first; unreadable files are never candidates.
  std::vector<const Listed*> valid;
  for (const auto& listed : found) {
    if (listed.manifest) {
      valid.push_back(&listed);
    }
  }
  std::reverse(valid.begin(), valid.end());
  for (std::size_t i = 0; i < valid.size(); ++i) {
    const Listed& listed = *valid[i];
    bool keep = i < options.keep;
    if (!keep && options.keep_within) {
      const auto created = parse_created(listed.manifest->created);
      keep = created && options.now - *created <= *options.keep_within;
    }
    if (keep) {
      result.kept.push_back(listed.file);
      continue;
    }
    if (options.dry_run == DryRun::no && ::unlink(listed.file.c_str()) != 0 && errno != ENOENT) {
      return util::Unexpected<Error>{io_error("delete", listed.file, errno)};
    }
    result.deleted.push_back(listed.file);
  }
  return result;
}

} // namespace npme::snapshot
