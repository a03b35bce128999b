#include "cmd/common.hpp"

#include "core/doctor/doctor.hpp"
#include "core/instance/offline.hpp"

#include <chrono>
#include <iostream>
#include <thread>

namespace npme::cmd {

namespace {

struct DoctorOptions {
  bool offline = false;
  bool full = false;
  bool repair = false;
  int timeout = 3600;
};

// Runs the doctor in the running instance (a job of its admin API) and
// returns its report, as Report::to_json() made it.
Expected<nlohmann::json> run_online(const Globals& globals, const DoctorOptions& o) {
  NPME_TRY_ASSIGN(auto client, connect(globals));
  const nlohmann::json body = {{"full", o.full}, {"repair", o.repair}};
  auto started = client.call("POST", "/doctor", &body);
  if (!started && started.error().code == Errc::unreachable) {
    return make_error(Errc::unreachable,
                      started.error().message + "; for a stopped instance use 'npme doctor --offline'");
  }
  NPME_TRY(started);
  const std::string id = started->value("job", "");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.timeout);
  while (true) {
    NPME_TRY_ASSIGN(auto job, client.call("GET", "/doctor/jobs/" + id));
    const std::string state = job.value("state", "");
    if (state == "done") {
      return job["report"];
    }
    if (state != "queued" && state != "running") {
      const auto error = job.value("error", nlohmann::json::object());
      return make_error(errc_from_name(error.value("code", "failed")),
                        error.value("message", "doctor job " + id + " ended " + state));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return make_error(Errc::timeout, "doctor: not finished after " + std::to_string(o.timeout) +
                                         " s; it goes on in the instance (job " + id + ")");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

} // namespace

void add_doctor(CLI::App& app, Globals& globals, Action& action) {
  auto options = std::make_shared<DoctorOptions>();
  auto* sub = app.add_subcommand("doctor", "Check an instance's data as a whole (tarballs, orphans, change log, "
                                           "data files, settings, database) and repair it");
  sub->add_flag("--offline", options->offline, "Check a stopped instance's directories directly (takes its lock)");
  sub->add_flag("--full", options->full, "Hash every tarball against dist.integrity instead of trusting the records");
  sub->add_flag("--repair", options->repair,
                "Quarantine orphans, fetch missing or damaged tarballs again, write missing records, fix data files");
  sub
    ->add_option("--timeout", options->timeout, "Seconds to wait for a running instance's check (default 3600; exit 7)")
    ->type_name("SECONDS");
  sub->callback([&globals, &action, options] {
    action = [&globals, options]() -> Expected<void> {
      const DoctorOptions& o = *options;
      nlohmann::json report;
      if (o.offline) {
        NPME_TRY_ASSIGN(auto done,
                        instance::doctor_offline(layout(globals), o.full ? doctor::Depth::full : doctor::Depth::records,
                                                 o.repair ? doctor::Repair::yes : doctor::Repair::no));
        report = done.to_json();
      } else {
        NPME_TRY_ASSIGN(report, run_online(globals, o));
      }
      const auto remaining = report["counts"].value("remaining", std::int64_t{0});
      if (globals.json) {
        print_json(report);
        globals.result_printed = true;
      } else {
        for (const auto& defect : report.value("defects", nlohmann::json::array())) {
          std::cout << doctor::defect_line(defect) << '\n';
        }
        if (!globals.quiet) {
          std::cout << "summary: " << report.value("summary", "") << '\n';
        }
      }
      if (remaining > 0) {
        return make_error(Errc::verify, "doctor: " + std::to_string(remaining) +
                                          (remaining == 1 ? " defect remains" : " defects remain") +
                                          (o.repair ? "" : " (npme doctor --repair repairs what it can)"));
      }
      return {};
    };
  });
}

} // namespace npme::cmd
