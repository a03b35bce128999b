#include "cmd/common.hpp"

#include "core/audit/audit.hpp"
#include "core/instance/instance.hpp"
#include "core/snapshot/snapshot.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>

#include <unistd.h>

namespace npme::cmd {

namespace {

using Json = nlohmann::json;

// The settings of the selected instance, or its defaults when it has no
// settings file yet (a fresh install being restored).
Expected<settings::Settings> instance_settings(const Globals& globals) {
  const auto where = layout(globals);
  auto loaded = settings::load(where);
  if (!loaded) {
    if (loaded.error().code == Errc::not_found) {
      return settings::Settings(where, {});
    }
    return util::Unexpected<Error>{loaded.error()};
  }
  return std::move(*loaded);
}

store::Paths paths_of(const settings::Settings& s) {
  return store::Paths{s.metadata_dir(), s.packages_dir(), s.data_dir()};
}

// A progress bar on a terminal's stderr; nothing otherwise.
snapshot::Progress progress_bar(const Globals& globals, const std::string& label) {
  if (globals.json || globals.quiet || ::isatty(STDERR_FILENO) == 0) {
    return {};
  }
  auto last = std::make_shared<int>(-1);
  return [label, last](std::uint64_t done, std::uint64_t total) {
    const int percent = total == 0 ? 100 : static_cast<int>(std::min<std::uint64_t>(100, done * 100 / total));
    if (percent == *last) {
      return;
    }
    *last = percent;
    const int width = 30;
    const int filled = percent * width / 100;
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %s", label.c_str(), filled, "##############################",
                 width - filled, "", percent, human_bytes(done).c_str());
    if (percent == 100) {
      std::fprintf(stderr, "\n");
    }
    std::fflush(stderr);
  };
}

std::vector<std::vector<std::string>> manifest_rows(const snapshot::Manifest& m) {
  return {
    {"format version", std::to_string(m.format_version)},
    {"npme version", m.npme_version},
    {"created", m.created},
    {"instance", m.instance_id.empty() ? "-" : m.instance_id},
    {"role", m.role},
    {"update seq", std::to_string(m.update_seq)},
    {"sequence", m.sequence ? std::to_string(*m.sequence) : "-"},
    {"packages", std::to_string(m.packages)},
    {"versions", std::to_string(m.versions)},
    {"tarballs", std::to_string(m.tarballs) + " (" + human_bytes(static_cast<std::uint64_t>(m.tarball_bytes)) + ")"},
    {"compression", m.compression},
    {"taken while running", m.instance_running ? "yes" : "no"},
    {"reported state", m.reported ? m.reported->role + ", update_seq " + std::to_string(m.reported->update_seq) +
                                      (m.reported->follower_sequence
                                         ? ", follower at " + std::to_string(*m.reported->follower_sequence)
                                         : std::string()) +
                                      " (admin API)"
                                  : "-"},
  };
}

Expected<void> run_create(const Globals& globals, const std::string& output, const std::string& dir,
                          const std::string& compression_name) {
  NPME_TRY_ASSIGN(const auto compression, snapshot::parse_compression(compression_name));
  NPME_TRY_ASSIGN(const auto s, instance_settings(globals));
  snapshot::CreateOptions options;
  options.paths = paths_of(s);
  options.role = s.get("upstream.url").empty() ? "primary" : "replica";
  // A running instance is asked for its state (role, update_seq, follower).
  if (auto runtime = instance::read_runtime(s.data_dir())) {
    options.admin_url = globals.admin_url.empty() ? runtime->admin_url : globals.admin_url;
    options.admin_token = s.get("admin.token");
    options.admin_ca_file = admin_ca_file(globals, &s);
  }
  options.compression = compression;
  options.output = output;
  options.output_dir = dir.empty() ? "." : dir;
  options.progress = progress_bar(globals, "snapshot");
  // SIGINT/SIGTERM: create() stops and removes what it wrote (exit 130).
  InterruptScope interruptible;
  options.interrupted = [] { return interrupted(); };
  // A file size limit (ulimit -f) must give an error, not kill us mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  const auto start = std::chrono::steady_clock::now();
  NPME_TRY_ASSIGN(const auto result, snapshot::create(options));
  // A snapshot holds the whole registry: who took one, and where, is recorded.
  audit::Event event{"", "", "", "snapshot.create", result.file.string(), "ok",
                     {{"bytes", result.file_bytes}, {"update_seq", result.manifest.update_seq}}};
  if (auto recorded = audit::record_cli(s, std::move(event)); !recorded && !globals.quiet) {
    std::cerr << "npme: warning: the audit log was not written: " << recorded.error().message << "\n";
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (globals.json) {
    print_json({{"file", result.file.string()},
                {"bytes", result.file_bytes},
                {"seconds", seconds},
                {"attempts", result.attempts},
                {"verified", true},
                {"manifest", result.manifest.to_json()}});
  } else if (!globals.quiet) {
    std::cout << "snapshot written and verified: " << result.file.string() << " (" << human_bytes(result.file_bytes)
              << ", " << result.manifest.packages << " packages, " << result.manifest.versions << " versions, "
              << result.manifest.tarballs << " tarballs, update_seq " << result.manifest.update_seq << ")\n";
  }
  return {};
}

Expected<void> run_list(const Globals& globals, const std::string& dir) {
  NPME_TRY_ASSIGN(const auto found, snapshot::list(dir));
  if (globals.json) {
    Json items = Json::array();
    for (const auto& listed : found) {
      items.push_back(snapshot::to_json(listed));
    }
    print_json({{"snapshots", items}});
    return {};
  }
  std::vector<std::vector<std::string>> rows = {{"NAME", "CREATED", "SIZE", "INSTANCE", "PACKAGES", "VERSIONS", "TARBALLS"}};
  for (const auto& listed : found) {
    if (listed.manifest) {
      const auto& m = *listed.manifest;
      rows.push_back({listed.file.filename().string(), m.created, human_bytes(listed.bytes),
                      m.instance_id.empty() ? "-" : m.instance_id, std::to_string(m.packages),
                      std::to_string(m.versions), std::to_string(m.tarballs)});
    } else {
      rows.push_back({listed.file.filename().string(), "unreadable", human_bytes(listed.bytes), "-", "-", "-", "-"});
    }
  }
  print_table(rows);
  return {};
}

Expected<void> run_inspect(const Globals& globals, const std::string& file) {
  NPME_TRY_ASSIGN(const auto manifest, snapshot::inspect(file));
  if (globals.json) {
    print_json(manifest.to_json());
  } else {
    print_table(manifest_rows(manifest));
  }
  return {};
}

Expected<void> run_verify(const Globals& globals, const std::string& file) {
  NPME_TRY_ASSIGN(const auto report, snapshot::verify(file, progress_bar(globals, "verify")));
  if (!report.ok()) {
    if (!globals.json) {
      for (const auto& problem : report.problems) {
        std::cerr << "npme: problem: " << problem << '\n';
      }
    }
    std::string message = "snapshot '" + file + "' failed verification (" + std::to_string(report.problems.size()) +
                          (report.problems.size() == 1 ? " problem" : " problems") + "): " + report.problems.front();
    return make_error(Errc::verify, message);
  }
  if (globals.json) {
    print_json({{"file", file},
                {"ok", true},
                {"entries", report.entries},
                {"tarballs", report.tarballs},
                {"bytes", report.bytes},
                {"manifest", report.manifest.to_json()}});
  } else if (!globals.quiet) {
    std::cout << "snapshot verified: " << file << " (" << report.entries << " entries, " << report.tarballs
              << " tarballs, " << human_bytes(report.bytes) << ", database integrity ok)\n";
  }
  return {};
}

Expected<void> run_prune(const Globals& globals, const std::string& dir, std::size_t keep,
                         const std::string& keep_within, bool dry_run) {
  snapshot::PruneOptions options;
  options.dir = dir;
  options.keep = keep;
  if (!keep_within.empty()) {
    NPME_TRY_ASSIGN(options.keep_within, snapshot::parse_duration(keep_within));
  }
  options.dry_run = dry_run ? snapshot::DryRun::yes : snapshot::DryRun::no;
  NPME_TRY_ASSIGN(const auto result, snapshot::prune(options));
  if (globals.json) {
    Json deleted = Json::array();
    Json kept = Json::array();
    for (const auto& path : result.deleted) {
      deleted.push_back(path.string());
    }
    for (const auto& path : result.kept) {
      kept.push_back(path.string());
    }
    print_json({{"dry_run", dry_run}, {"deleted", deleted}, {"kept", kept}});
  } else if (!globals.quiet) {
    for (const auto& path : result.deleted) {
      std::cout << (dry_run ? "would delete " : "deleted ") << path.string() << '\n';
    }
    std::cout << result.kept.size() << " kept, " << result.deleted.size() << (dry_run ? " to delete\n" : " deleted\n");
  }
  return {};
}

} // namespace

void add_snapshot(CLI::App& app, Globals& globals, Action& action) {
  auto* group = app.add_subcommand("snapshot", "Create, list, inspect, verify and prune snapshots");
  group->require_subcommand(1);

  auto* create = group->add_subcommand("create", "Write a verified snapshot of the instance (running or stopped)");
  auto output = std::make_shared<std::string>();
  auto dir = std::make_shared<std::string>();
  auto compression = std::make_shared<std::string>("zstd");
  auto* out_opt = create->add_option("-o,--output", *output, "Snapshot file to write (must not exist)")->type_name("FILE");
  auto* dir_opt =
    create->add_option("--dir", *dir, "Directory for a snapshot with the default sortable name")->type_name("DIR");
  out_opt->excludes(dir_opt);
  create->add_option("--compression", *compression, "zstd (default), gzip or none")
    ->check(CLI::IsMember({"zstd", "gzip", "none"}))
    ->type_name("ALGO");
  create->callback([&globals, &action, output, dir, compression] {
    action = [&globals, output, dir, compression] { return run_create(globals, *output, *dir, *compression); };
  });

  auto* list = group->add_subcommand("list", "List the snapshots of a directory (ignores .part files)");
  auto list_dir = std::make_shared<std::string>();
  list->add_option("--dir", *list_dir, "Directory holding snapshots")->required()->type_name("DIR");
  list->callback([&globals, &action, list_dir] {
    action = [&globals, list_dir] { return run_list(globals, *list_dir); };
  });

  auto* inspect = group->add_subcommand("inspect", "Print a snapshot's snapshot.json without reading it all");
  auto inspect_file = std::make_shared<std::string>();
  inspect->add_option("file", *inspect_file, "Snapshot file")->required()->type_name("FILE");
  inspect->callback([&globals, &action, inspect_file] {
    action = [&globals, inspect_file] { return run_inspect(globals, *inspect_file); };
  });

  auto* verify = group->add_subcommand("verify", "Check every checksum, the database and every tarball's integrity");
  auto verify_file = std::make_shared<std::string>();
  verify->add_option("file", *verify_file, "Snapshot file")->required()->type_name("FILE");
  verify->callback([&globals, &action, verify_file] {
    action = [&globals, verify_file] { return run_verify(globals, *verify_file); };
  });

  auto* prune = group->add_subcommand("prune", "Delete the oldest snapshots of a directory");
  auto prune_dir = std::make_shared<std::string>();
  auto keep = std::make_shared<std::size_t>(0);
  auto keep_within = std::make_shared<std::string>();
  auto dry_run = std::make_shared<bool>(false);
  prune->add_option("--dir", *prune_dir, "Directory holding snapshots")->required()->type_name("DIR");
  prune->add_option("--keep", *keep, "Keep the newest N snapshots")->required()->type_name("N");
  prune->add_option("--keep-within", *keep_within, "Also keep snapshots younger than DURATION (36h, 7d, 2w)")
    ->type_name("DURATION");
  prune->add_flag("--dry-run", *dry_run, "Print what would be deleted, delete nothing");
  prune->callback([&globals, &action, prune_dir, keep, keep_within, dry_run] {
    action = [&globals, prune_dir, keep, keep_within, dry_run] {
      return run_prune(globals, *prune_dir, *keep, *keep_within, *dry_run);
    };
  });
}

} // namespace npme::cmd
