#include "cmd/common.hpp"

#include "core/audit/audit.hpp"
#include "core/snapshot/snapshot.hpp"

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

#include <unistd.h>

namespace npme::cmd {

namespace {

Expected<void> run_restore(const Globals& globals, const std::string& file, bool force, bool dry_run, bool as_replica) {
  const auto where = layout(globals);
  auto loaded = settings::load(where);
  if (!loaded && loaded.error().code != Errc::not_found) {
    return util::Unexpected<Error>{loaded.error()};
  }
  // A fresh install has no settings file yet: its defaults say where to go.
  const settings::Settings s = loaded ? std::move(*loaded) : settings::Settings(where, {});
  snapshot::RestoreOptions options;
  options.file = file;
  options.targets = store::Paths{s.metadata_dir(), s.packages_dir(), s.data_dir()};
  options.force = force ? snapshot::Force::yes : snapshot::Force::no;
  options.dry_run = dry_run ? snapshot::DryRun::yes : snapshot::DryRun::no;
  options.as_replica = as_replica ? snapshot::AsReplica::yes : snapshot::AsReplica::no;
  // A progress bar on a terminal's stderr (never with --json or --quiet).
  if (!globals.json && !globals.quiet && ::isatty(STDERR_FILENO) != 0) {
    auto last = std::make_shared<int>(-1);
    const std::string label = dry_run ? "verify" : "restore";
    options.progress = [label, last](std::uint64_t done, std::uint64_t total) {
      const int percent = total == 0 ? 100 : static_cast<int>(std::min<std::uint64_t>(100, done * 100 / total));
      if (percent == *last) {
        return;
      }
      *last = percent;
      const int width = 30;
      const int filled = percent * width / 100;
      std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %.1f MiB", label.c_str(), filled, "##############################",
                   width - filled, "", percent, static_cast<double>(done) / (1024.0 * 1024.0));
      if (percent == 100) {
        std::fprintf(stderr, "\n");
      }
      std::fflush(stderr);
    };
  }
  // SIGINT/SIGTERM: restore() stops before the swap, nothing changed (exit
  // 130); a dry run only reads, so it ends at once.
  std::optional<InterruptScope> interruptible;
  if (!dry_run) {
    interruptible.emplace();
    options.interrupted = [] { return interrupted(); };
  }
  auto restored = snapshot::restore(options);
  // Recorded in the restored data directory's audit log, which carries the
  // instance's history on (snapshot::restore moves it over). A restore that
  // failed left the directories exactly as they were, the log included.
  if (!dry_run && restored) {
    audit::Event event{"", "", "", "restore", file, "ok",
                       {{"update_seq", restored->manifest.update_seq},
                        {"as_replica", as_replica},
                        {"snapshot_instance", restored->manifest.instance_id}}};
    if (auto recorded = audit::record_cli(s, std::move(event)); !recorded && !globals.quiet) {
      std::cerr << "npme: warning: the audit log was not written: " << recorded.error().message << "\n";
    }
  }
  NPME_TRY_ASSIGN(const auto result, std::move(restored));
  const auto& aside = dry_run ? result.would_keep_aside : result.kept_aside;
  if (globals.json) {
    nlohmann::json kept = nlohmann::json::array();
    for (const auto& path : aside) {
      kept.push_back(path.string());
    }
    print_json({{"file", file},
                {"dry_run", dry_run},
                {"as_replica", as_replica},
                {"targets",
                 {{"metadata", options.targets.metadata.string()},
                  {"packages", options.targets.packages.string()},
                  {"data", options.targets.data.string()}}},
                {dry_run ? "would_keep_aside" : "kept_aside", kept},
                {"sequence", result.sequence_written >= 0 ? nlohmann::json(result.sequence_written) : nlohmann::json()},
                {"manifest", result.manifest.to_json()}});
    return {};
  }
  if (globals.quiet) {
    return {};
  }
  const auto& m = result.manifest;
  if (dry_run) {
    std::cout << "snapshot verified; would restore " << m.packages << " packages, " << m.versions << " versions, "
              << m.tarballs << " tarballs into " << options.targets.metadata.string() << ", "
              << options.targets.packages.string() << ", " << options.targets.data.string() << '\n';
  } else {
    std::cout << "restored " << m.packages << " packages, " << m.versions << " versions, " << m.tarballs
              << " tarballs (update_seq " << m.update_seq << ") into " << options.targets.metadata.string() << ", "
              << options.targets.packages.string() << ", " << options.targets.data.string() << '\n';
  }
  for (const auto& path : aside) {
    std::cout << (dry_run ? "would keep the old directory as " : "old directory kept as ") << path.string() << '\n';
  }
  if (result.sequence_written >= 0) {
    std::cout << "follower sequence: " << result.sequence_written << (as_replica ? " (seeded replica)" : "") << '\n';
  }
  return {};
}

} // namespace

void add_restore(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("restore", "Restore a snapshot into the instance's directories (instance stopped)");
  auto file = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  auto dry_run = std::make_shared<bool>(false);
  auto as_replica = std::make_shared<bool>(false);
  sub->add_option("file", *file, "Snapshot file")->required()->type_name("FILE");
  sub->add_flag("--force", *force, "Restore over non-empty directories (kept aside as <dir>.pre-restore-<UTC>)");
  sub->add_flag("--dry-run", *dry_run, "Verify the snapshot and say what would be done; change nothing");
  sub->add_flag("--as-replica", *as_replica, "Seed a replica: set the follower's sequence to the snapshot's update_seq");
  sub->callback([&globals, &action, file, force, dry_run, as_replica] {
    action = [&globals, file, force, dry_run, as_replica] {
      return run_restore(globals, *file, *force, *dry_run, *as_replica);
    };
  });
}

} // namespace npme::cmd
