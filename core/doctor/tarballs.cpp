// Tarballs against the metadata: every version's file is there and holds
// the bytes of its dist.integrity; every file is some version's.

#include "core/doctor/checks.hpp"

#include "core/registry/json_util.hpp"
#include "core/store/documents.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/integrity.hpp"

#include <algorithm>
#include <cerrno>
#include <sys/stat.h>

namespace npme::doctor::detail {

namespace {

using nlohmann::json;
using store::sqlite::Statement;

constexpr std::string_view k_staging_dir = ".staging";
constexpr std::string_view k_origin_member = store::k_uplink_member; // a copy of an uplink's package (core/uplink)

// Why `rel_path` cannot name a file inside the packages directory; nullopt
// when it can.
std::optional<std::string> unsafe_reason(std::string_view rel_path) {
  if (rel_path.empty() || rel_path.front() == '/') {
    return std::string("not a relative path");
  }
  if (rel_path.find_first_of(std::string_view("\\\0\n", 3)) != std::string_view::npos) {
    return std::string("forbidden character");
  }
  std::size_t start = 0;
  while (start <= rel_path.size()) {
    auto end = rel_path.find('/', start);
    if (end == std::string_view::npos) {
      end = rel_path.size();
    }
    const auto segment = rel_path.substr(start, end - start);
    if (segment.empty() || segment == "." || segment == ".." || (start == 0 && segment == k_staging_dir)) {
      return "bad path segment '" + std::string(segment) + "'";
    }
    start = end + 1;
  }
  return std::nullopt;
}

std::string digest_of(util::Hasher::Algorithm algorithm, std::string_view bytes) {
  switch (algorithm) {
  case util::Hasher::Algorithm::sha1:
    return util::sha1(bytes);
  case util::Hasher::Algorithm::sha256:
    return util::sha256(bytes);
  case util::Hasher::Algorithm::sha512:
    return util::sha512(bytes);
  }
  return {};
}

// One version's tarball as the metadata describes it.
struct Ref {
  std::string id;  // the package
  std::string rev; // the document's revision, for repairs
  Wanted wanted;
  std::optional<util::ExpectedDigest> expected;
};

class TarballChecker {
public:
  explicit TarballChecker(Run& run) : m_run(run) {}

  Expected<void> prepare() {
    NPME_TRY_ASSIGN(m_records, m_run.db->prepare("SELECT size, sha256, tag FROM tarballs WHERE path = ?1"));
    return {};
  }

  Expected<void> check_document(const std::string& id, const std::string& rev, const std::string& body) {
    ++m_run.report.counts.packages;
    const json doc = json::parse(body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      m_run.add(document_defect(id, "the stored document is not a JSON object"));
      return {};
    }
    const json* versions = registry::member(doc, "versions");
    if (versions == nullptr) {
      return {};
    }
    if (!versions->is_object()) {
      m_run.add(document_defect(id, "\"versions\" is not an object"));
      return {};
    }
    const json* origin = registry::member(doc, k_origin_member);
    const bool uplink_copy = origin != nullptr && origin->is_object();
    const json* uplink_urls = uplink_copy ? registry::member(*origin, "tarballs") : nullptr;
    for (const auto& [version, manifest] : versions->items()) {
      NPME_TRY(m_run.check_cancelled());
      ++m_run.report.counts.versions;
      const json* dist = registry::member(manifest, "dist");
      const auto tarball = dist != nullptr ? registry::string_member(*dist, "tarball") : std::nullopt;
      if (!tarball) {
        m_run.add(document_defect(id + "@" + version, "the version has no dist.tarball"));
        continue;
      }
      if (tarball->find("://") != std::string::npos) {
        continue; // a tarball elsewhere: nothing of this instance's to check
      }
      if (auto reason = unsafe_reason(*tarball)) {
        m_run.add(document_defect(id + "@" + version, "dist.tarball '" + *tarball + "' is unsafe: " + *reason));
        continue;
      }
      m_run.referenced.insert(*tarball);
      Ref ref;
      ref.id = id;
      ref.rev = rev;
      ref.wanted.package = id;
      ref.wanted.version = version;
      ref.wanted.rel_path = *tarball;
      ref.wanted.integrity = registry::string_member(*dist, "integrity").value_or("");
      ref.wanted.shasum = registry::string_member(*dist, "shasum").value_or("");
      ref.wanted.uplink_copy = uplink_copy;
      if (uplink_urls != nullptr) {
        ref.wanted.uplink_url = registry::string_member(*uplink_urls, version).value_or("");
      }
      ref.expected = util::expected_digest(ref.wanted.integrity, ref.wanted.shasum);
      if (!ref.expected) {
        m_run.add(document_defect(id + "@" + version,
                                  "the version has no usable dist.integrity or dist.shasum: its tarball cannot "
                                  "be verified"));
      }
      NPME_TRY(check_file(ref));
    }
    return {};
  }

private:
  Defect document_defect(std::string id, std::string detail) const {
    Defect defect{"document", std::move(id), "", std::move(detail), false, "", false};
    if (m_run.repairing()) {
      defect.action = "not repaired: a document is only changed by a publish, an unpublish or the follower";
    }
    return defect;
  }

  Expected<std::optional<store::FileDigest>> record_of(const std::string& rel_path) {
    m_records.reset();
    NPME_TRY(m_records.bind_text(1, rel_path));
    NPME_TRY_ASSIGN(const auto step, m_records.step());
    if (step == Statement::Step::done) {
      return std::optional<store::FileDigest>{};
    }
    return std::optional<store::FileDigest>{store::FileDigest{
      m_records.column_blob(1), static_cast<std::uint64_t>(m_records.column_int64(2)), m_records.column_int64(0)}};
  }

  // A missing or damaged tarball: reported, and fetched again when asked.
  void bad_file(const Ref& ref, std::string kind, std::string detail) {
    Defect defect{
      std::move(kind), ref.id + "@" + ref.wanted.version, ref.wanted.rel_path, std::move(detail), false, "", false};
    if (m_run.repairing()) {
      if (m_run.options.source == nullptr) {
        defect.lost = true;
        defect.action = "lost: this instance has no upstream and no uplink to fetch it from (restore it from a "
                        "snapshot, or publish a new version)";
      } else if (auto done = refetch(m_run, ref.wanted, ref.rev)) {
        defect.repaired = true;
        defect.action = *done;
      } else {
        const Errc code = done.error().code;
        defect.lost = code == Errc::not_found || code == Errc::verify || code == Errc::forbidden;
        defect.action = (defect.lost ? "lost: " : "not repaired: ") + done.error().message;
      }
    }
    m_run.add(std::move(defect));
  }

  // Checks the file of `ref`: present, then its bytes against the record or
  // dist.integrity.
  Expected<void> check_file(const Ref& ref) {
    const fs::path path = m_run.options.paths.packages / ref.wanted.rel_path;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      const int err = errno;
      if (err != ENOENT && err != ENOTDIR) {
        bad_file(ref, "damaged", util::io_error("stat", path, err).message);
        return {};
      }
      if (ref.wanted.uplink_copy) {
        ++m_run.report.counts.absent_lazy; // fetched on first request: normal
        return {};
      }
      bad_file(ref, "missing", "the tarball does not exist");
      return {};
    }
    if (!S_ISREG(st.st_mode)) {
      bad_file(ref, "damaged", "not a regular file");
      return {};
    }
    auto& counts = m_run.report.counts;
    ++counts.tarballs;
    counts.tarball_bytes += static_cast<std::int64_t>(st.st_size);
    NPME_TRY_ASSIGN(const auto record, record_of(ref.wanted.rel_path));
    auto bytes = util::read_file(path);
    if (!bytes) {
      bad_file(ref, "damaged", bytes.error().message);
      return {};
    }
    if (record && m_run.options.depth == Depth::records) {
      if (record->size != static_cast<std::int64_t>(bytes->size())) {
        // Not worth hashing: these are not the bytes that were committed.
        bad_file(ref, "damaged",
                 std::to_string(bytes->size()) + " bytes, but " + std::to_string(record->size) +
                   " were committed (the store's record)");
        return {};
      }
      if (store::file_tag(record->sha256, *bytes) == record->tag) {
        return {}; // the bytes that were checked against dist.integrity when committed
      }
      // Hashed below: the bytes, or only the record, changed.
    }
    if (!ref.expected) {
      return {}; // reported with the document; nothing to compare with
    }
    ++counts.hashed;
    if (!util::digest_matches(*ref.expected, digest_of(ref.expected->algorithm, *bytes))) {
      std::string size_note;
      if (record && record->size != static_cast<std::int64_t>(bytes->size())) {
        size_note =
          " (" + std::to_string(bytes->size()) + " bytes, but " + std::to_string(record->size) + " were committed)";
      }
      bad_file(ref, "damaged",
               "its bytes do not match " + std::string(ref.expected->field) + " " + ref.expected->text + size_note);
      return {};
    }
    return settle_record(ref, record, *bytes);
  }

  // `bytes`, the file of `ref`, match dist.integrity: the record must say
  // so, so that the next default check and every snapshot trust it without
  // hashing. A wrong record is a defect; a missing one (an npme older than
  // the records stored the file) is written on repair.
  Expected<void> settle_record(const Ref& ref, const std::optional<store::FileDigest>& record, std::string_view bytes) {
    auto& counts = m_run.report.counts;
    const std::string sha256 = util::sha256(bytes);
    const bool record_ok = record && record->sha256 == sha256 && record->tag == store::file_tag(sha256, bytes) &&
                           record->size == static_cast<std::int64_t>(bytes.size());
    if (record_ok) {
      return {};
    }
    if (record) {
      Defect defect{"record",
                    ref.id + "@" + ref.wanted.version,
                    ref.wanted.rel_path,
                    "the file matches " + std::string(ref.expected->field) +
                      ", but the store's record of it does not (every check and snapshot hash it in full)",
                    false,
                    "",
                    false};
      if (m_run.repairing()) {
        if (auto written = rewrite_with_record(m_run, ref.id, ref.rev, ref.wanted.rel_path, bytes)) {
          defect.repaired = true;
          defect.action = "record written again from the file";
        } else {
          defect.action = "not repaired: " + written.error().message;
        }
      }
      m_run.add(std::move(defect));
      return {};
    }
    ++counts.unrecorded;
    if (m_run.repairing()) {
      // Not a defect: stored by an npme older than the records. Writing one
      // makes every later check and snapshot of it fast.
      if (rewrite_with_record(m_run, ref.id, ref.rev, ref.wanted.rel_path, bytes)) {
        ++counts.records_written;
      }
    }
    return {};
  }

  Run& m_run;
  Statement m_records;
};

} // namespace

Expected<void> check_tarballs(Run& run) {
  TarballChecker checker(run);
  NPME_TRY(checker.prepare());
  // '`' is the character after '_': every id outside ['_', '`') is a package.
  NPME_TRY_ASSIGN(auto reader, store::documents::Reader::open(*run.db));
  return reader.each_package([&](const std::string& id, const std::string& rev, std::string body) -> Expected<void> {
    NPME_TRY(run.check_cancelled());
    return checker.check_document(id, rev, body);
  });
}

namespace {

// True when the current document of `package` has a version whose tarball is
// `rel_path`: read from the running store when there is one (it sees every
// commit), else from the database the run reads.
Expected<bool> referenced_now(Run& run, const std::string& package, const std::string& rel_path) {
  if (package.empty()) {
    return false;
  }
  std::optional<std::string> body;
  if (run.store != nullptr) {
    NPME_TRY_ASSIGN(auto doc, run.store->get(package));
    if (doc) {
      body = doc->body;
    }
  } else {
    NPME_TRY_ASSIGN(auto reader, store::documents::Reader::open(*run.db));
    NPME_TRY_ASSIGN(body, reader.body(package));
  }
  if (!body) {
    return false;
  }
  const json doc = json::parse(*body, nullptr, false);
  const json* versions = registry::member(doc, "versions");
  if (versions == nullptr || !versions->is_object()) {
    return false;
  }
  for (const auto& [version, manifest] : versions->items()) {
    const json* dist = registry::member(manifest, "dist");
    if (dist != nullptr && registry::string_member(*dist, "tarball").value_or("") == rel_path) {
      return true;
    }
  }
  return false;
}

// Removes the directories of `rel_path` under `root` that are empty now.
void remove_empty_parents(const fs::path& root, const std::string& rel_path) {
  auto parents = std::count(rel_path.begin(), rel_path.end(), '/');
  for (fs::path dir = (root / rel_path).parent_path(); parents > 0; --parents, dir = dir.parent_path()) {
    if (::rmdir(dir.c_str()) != 0) {
      break;
    }
  }
}

struct Candidate {
  std::string rel_path;
  std::int64_t size = 0;
};

// Reports (and with a repair moves) each candidate that no document refers
// to now.
Expected<void> settle_orphans(Run& run, const std::vector<Candidate>& candidates) {
  for (const auto& candidate : candidates) {
    NPME_TRY(run.check_cancelled());
    const std::string package = package_of_path(candidate.rel_path);
    NPME_TRY_ASSIGN(const bool referenced, referenced_now(run, package, candidate.rel_path));
    if (referenced) {
      continue; // published while the check ran
    }
    Defect defect{"orphan",
                  "",
                  candidate.rel_path,
                  "no version refers to this file (" + std::to_string(candidate.size) + " bytes)",
                  false,
                  "",
                  false};
    if (run.repairing()) {
      auto moved = run.quarantine.move(run.options.paths.packages / candidate.rel_path, "packages", candidate.rel_path);
      if (moved) {
        remove_empty_parents(run.options.paths.packages, candidate.rel_path);
        run.changed(package);
        defect.repaired = true;
        defect.action = "moved to " + moved->string();
      } else {
        defect.action = "not repaired: " + moved.error().message;
      }
    }
    run.add(std::move(defect));
  }
  return {};
}

} // namespace

Expected<void> check_orphans(Run& run) {
  const fs::path& root = run.options.paths.packages;
  std::vector<Candidate> candidates;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, ec);
  for (const fs::recursive_directory_iterator end; !ec && it != end; it.increment(ec)) {
    if (it.depth() == 0 && it->path().filename() == k_staging_dir) {
      it.disable_recursion_pending(); // the store's own: cleaned when it opens
      continue;
    }
    std::error_code type_ec;
    if (it->is_directory(type_ec) && !it->is_symlink(type_ec)) {
      continue;
    }
    ++run.report.counts.files;
    const std::string rel = it->path().lexically_relative(root).generic_string();
    if (run.referenced.count(rel) != 0) {
      continue;
    }
    std::error_code size_ec;
    const auto size = it->is_regular_file(size_ec) ? it->file_size(size_ec) : 0;
    candidates.push_back(Candidate{rel, static_cast<std::int64_t>(size_ec ? 0 : size)});
  }
  if (ec) {
    return make_error(Errc::io, "cannot list '" + root.string() + "': " + ec.message());
  }
  if (candidates.empty()) {
    return {};
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const Candidate& a, const Candidate& b) { return a.rel_path < b.rel_path; });
  if (!run.repairing() && run.store == nullptr) {
    return settle_orphans(run, candidates); // a stopped instance: nothing commits meanwhile
  }
  // A publish puts its file in place just before its document commits, both
  // under the store's write lock: deciding under that lock that a file is
  // an orphan (and moving it) can never take a file a commit is about to
  // name. A mutation that writes nothing is the store's way to run there.
  NPME_TRY_ASSIGN(store::Store * store, run.writable_store());
  Expected<void> settled;
  auto applied = store->apply("_doctor:orphans", [&](const std::optional<store::Document>&) -> Expected<store::Write> {
    settled = settle_orphans(run, candidates);
    return store::Write{};
  });
  NPME_TRY(settled);
  if (!applied && applied.error().code != Errc::not_found) {
    return util::Unexpected<Error>{applied.error()};
  }
  return {};
}

} // namespace npme::doctor::detail
