// Repairs: the quarantine folder, and tarballs put (back) in place through
// the store's one atomic write path, which also records their digest.

#include "core/doctor/checks.hpp"

#include "core/util/fs.hpp"
#include "core/util/integrity.hpp"

#include <cerrno>
#include <unistd.h>

namespace npme::doctor::detail {

Quarantine::Quarantine(fs::path data_dir, std::function<std::string()> now_utc)
  : m_data_dir(std::move(data_dir)), m_now_utc(std::move(now_utc)) {}

Expected<fs::path> Quarantine::target(std::string_view area, std::string_view rel_path) {
  if (m_folder.empty()) {
    fs::path folder = m_data_dir / "quarantine" / m_now_utc();
    // Two runs within a second each get their own folder.
    for (int n = 2; fs::exists(folder); ++n) {
      folder = m_data_dir / "quarantine" / (m_now_utc() + "-" + std::to_string(n));
    }
    NPME_TRY(util::create_dirs(folder, fs::perms(0700)));
    m_folder = std::move(folder);
  }
  fs::path target = m_folder / std::string(area) / std::string(rel_path);
  NPME_TRY(util::create_dirs(target.parent_path(), fs::perms(0700)));
  return target;
}

Expected<fs::path> Quarantine::move(const fs::path& source, std::string_view area, std::string_view rel_path) {
  NPME_TRY_ASSIGN(fs::path target, this->target(area, rel_path));
  if (::rename(source.c_str(), target.c_str()) == 0) {
    NPME_TRY(util::fsync_dir(target.parent_path()));
    NPME_TRY(util::fsync_dir(source.parent_path()));
    return target;
  }
  if (errno != EXDEV) {
    return util::Unexpected<Error>{util::io_error("move to quarantine", source, errno)};
  }
  // Another file system: a durable copy first, then the original goes.
  NPME_TRY(keep_copy(source, area, rel_path));
  if (::unlink(source.c_str()) != 0) {
    return util::Unexpected<Error>{util::io_error("remove", source, errno)};
  }
  NPME_TRY(util::fsync_dir(source.parent_path()));
  return target;
}

Expected<fs::path> Quarantine::keep_copy(const fs::path& source, std::string_view area, std::string_view rel_path) {
  NPME_TRY_ASSIGN(fs::path target, this->target(area, rel_path));
  if (::link(source.c_str(), target.c_str()) != 0) {
    NPME_TRY_ASSIGN(const std::string bytes, util::read_file(source));
    NPME_TRY(util::write_file_atomic(target, bytes, fs::perms(0600)));
  }
  NPME_TRY(util::fsync_dir(target.parent_path()));
  return target;
}

Expected<void> rewrite_with_record(Run& run, const std::string& id, const std::string& rev, const std::string& rel_path,
                                   std::string_view bytes) {
  NPME_TRY_ASSIGN(store::Store * store, run.writable_store());
  NPME_TRY_ASSIGN(auto staged, store->stage_file(rel_path, bytes, store::Sync::now));
  auto added = store->add_file(id, rev, std::move(staged));
  if (!added && added.error().code == Errc::conflict) {
    return make_error(Errc::conflict, "the document changed while it was checked; run npme doctor again");
  }
  NPME_TRY(added);
  run.changed(id);
  return {};
}

Expected<std::string> refetch(Run& run, const Wanted& wanted, const std::string& rev) {
  TarballSource& source = *run.options.source;
  auto fetched = source.fetch(wanted);
  if (!fetched) {
    return make_error(fetched.error().code,
                      "cannot fetch it from " + source.describe() + ": " + fetched.error().message);
  }
  // Whatever the source checked, nothing goes in place unchecked here.
  NPME_TRY(util::check_tarball(wanted.package + "@" + wanted.version, wanted.integrity, wanted.shasum, *fetched));
  const fs::path path = run.options.paths.packages / wanted.rel_path;
  std::string kept;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(path, ec))) {
    NPME_TRY_ASSIGN(const fs::path copy, run.quarantine.keep_copy(path, "packages", wanted.rel_path));
    kept = "; the damaged file is kept in " + copy.string();
  }
  NPME_TRY(rewrite_with_record(run, wanted.package, rev, wanted.rel_path, *fetched));
  return "fetched again from " + source.describe() + " and checked against dist.integrity" + kept;
}

} // namespace npme::doctor::detail
