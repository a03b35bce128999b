#include "core/doctor/checks.hpp"

#include "core/util/time.hpp"

#include <chrono>
#include <ctime>

namespace npme::doctor {

namespace detail {

namespace {

std::string compact_utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%dT%H%M%SZ", &tm);
  return buffer;
}

} // namespace

Run::Run(const Options& o, Report& r)
  : options(o), report(r), quarantine(o.paths.data, o.now_utc ? o.now_utc : compact_utc_now), store(o.store) {}

Expected<void> Run::check_cancelled() const {
  if (options.cancelled && options.cancelled()) {
    return make_error(Errc::interrupted, "doctor: interrupted");
  }
  return {};
}

void Run::changed(const std::string& package) const {
  if (options.changed && !package.empty()) {
    options.changed(package);
  }
}

Expected<store::Store*> Run::writable_store() {
  if (store == nullptr) {
    // A stopped instance (the caller holds its lock): repairs go through
    // the same store code as a running one's.
    NPME_TRY_ASSIGN(own_store, store::Store::open(options.paths));
    store = own_store.get();
  }
  return store;
}

std::string package_of_path(std::string_view rel_path) {
  const auto dash = rel_path.find("/-/");
  if (dash == std::string_view::npos || dash == 0) {
    return "";
  }
  return std::string(rel_path.substr(0, dash));
}

} // namespace detail

Expected<Report> run(const Options& options) {
  const auto start = std::chrono::steady_clock::now();
  Report report;
  report.full = options.depth == Depth::full;
  report.repair = options.repair == Repair::yes;
  report.offline = options.offline;
  report.started = util::iso8601();
  detail::Run run(options, report);

  // The database first: the checks of the metadata trust what it says.
  NPME_TRY(detail::check_database(run));
  if (run.db) {
    NPME_TRY(detail::check_changelog(run));
    NPME_TRY(detail::check_tarballs(run));
    NPME_TRY(detail::check_orphans(run));
  }
  NPME_TRY(run.check_cancelled());
  detail::check_sequence(run);
  detail::check_whitelist(run);
  detail::check_settings(run);

  report.quarantine = run.quarantine.folder().string();
  report.finished = util::iso8601();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

} // namespace npme::doctor
