#include "core/replication/prepare.hpp"

#include "core/http/fetcher.hpp"
#include "core/http/message.hpp"
#include "core/replication/bulk.hpp"
#include "core/store/store.hpp"
#include "core/util/fs.hpp"
#include "core/util/integrity.hpp"

#include <nlohmann/json.hpp>

#include <cctype>
#include <deque>
#include <filesystem>
#include <map>
#include <set>

namespace npme::replication {

namespace {

using nlohmann::json;

// The tarballs one bulk request asks for (files of several plans).
constexpr std::size_t k_bulk_files = 64;

// Returns member `key` of `object` when it is a string, else "".
std::string string_member(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::vector<TarballRef> tarballs_of(const json& doc) {
  std::vector<TarballRef> refs;
  auto versions = doc.find("versions");
  if (versions == doc.end() || !versions->is_object()) {
    return refs;
  }
  for (const auto& [version, manifest] : versions->items()) {
    if (!manifest.is_object()) {
      continue;
    }
    auto dist = manifest.find("dist");
    if (dist == manifest.end() || !dist->is_object()) {
      continue;
    }
    // Not value(): it throws on a member of another type.
    TarballRef ref{version, string_member(*dist, "tarball"), string_member(*dist, "integrity"),
                   string_member(*dist, "shasum")};
    refs.push_back(std::move(ref));
  }
  return refs;
}

// A tarball a change needs from the upstream.
struct TarballNeed {
  std::string path; // relative to the packages directory
  http::TarballCheck check;
  // Of a copy of an uplink package: taken only when the upstream holds it
  // ("?held=1"); the others come on demand.
  bool lazy = false;
};

// One change on its way: what the local store says first, then what the
// upstream's document adds.
struct Plan {
  Prepared prepared;
  bool needs_document = false; // the upstream's document must be fetched
  std::optional<std::string> local_rev;
  std::optional<json> local_doc;
  std::vector<TarballNeed> tarballs; // still to fetch, verify and stage
  bool check_files = false;          // a resync: a document in sync still needs intact tarballs
};

// Whether the local tarball `ref` holds what its version names: checked
// against the store's record (size and tag), or, for a file placed without
// one, hashed against dist.integrity.
Expected<bool> tarball_intact(const store::Store& store, const std::string& id, const TarballRef& ref) {
  NPME_TRY_ASSIGN(const auto state, store.check_file(ref.path));
  switch (state) {
  case store::Store::FileState::intact:
    return true;
  case store::Store::FileState::missing:
    return false;
  case store::Store::FileState::unrecorded: {
    NPME_TRY_ASSIGN(const auto bytes, util::read_file(store.file_path(ref.path)));
    return static_cast<bool>(util::check_tarball(id + "@" + ref.version, ref.integrity, ref.shasum, bytes));
  }
  case store::Store::FileState::wrong_size:
  case store::Store::FileState::wrong_tag:
    break;
  }
  return false;
}

// For a document already at the upstream's revision (`local`): the
// tarballs it names that are missing or damaged here, to fetch again and
// commit with the same document and revision. None: nothing to do.
Expected<void> plan_repair(const store::Store& store, Plan& plan, const store::Document& local) {
  auto doc = json::parse(local.body, nullptr, false);
  if (!doc.is_object()) {
    return {};
  }
  const bool lazy = doc.contains(store::k_uplink_member);
  for (const auto& ref : tarballs_of(doc)) {
    if (ref.path.empty() || ref.path.find("://") != std::string::npos) {
      continue;
    }
    std::error_code ec;
    if (lazy && !std::filesystem::exists(store.file_path(ref.path), ec)) {
      continue; // an uplink copy's tarball comes on demand
    }
    NPME_TRY_ASSIGN(const bool intact, tarball_intact(store, local.id, ref));
    if (!intact) {
      plan.tarballs.push_back(
        TarballNeed{ref.path, http::TarballCheck{local.id + "@" + ref.version, ref.integrity, ref.shasum}, false});
    }
  }
  if (!plan.tarballs.empty()) {
    plan.prepared.kind = store::Write::Kind::put;
    plan.prepared.body = local.body;
    plan.prepared.rev = local.rev;
  }
  return {};
}

// Decides from the local store what the upstream's change of document `id`
// needs: nothing (in sync, or a removal), its document, or (`check_files`,
// a full resync) the tarballs of a document in sync that are missing or
// damaged here.
Expected<Plan> plan_change(store::Store& store, const std::string& id, bool deleted, const std::string& feed_rev,
                           bool check_files) {
  Plan plan;
  plan.prepared.id = id;
  plan.check_files = check_files;
  NPME_TRY_ASSIGN(auto local, store.get(id));
  if (!deleted && local && !feed_rev.empty() && local->rev == feed_rev) {
    // Revisions are kept from the upstream: in sync, nothing to fetch,
    // unless a resync finds its tarballs damaged.
    if (check_files && is_package_id(id)) {
      NPME_TRY(plan_repair(store, plan, *local));
    }
    return plan;
  }
  if (local) {
    plan.local_rev = local->rev;
    auto parsed = json::parse(local->body, nullptr, false);
    if (parsed.is_object()) {
      plan.local_doc = std::move(parsed);
    }
  }
  if (deleted) {
    if (!local) {
      return plan;
    }
    plan.prepared.kind = store::Write::Kind::remove;
    if (is_package_id(id) && plan.local_doc) {
      for (const auto& ref : tarballs_of(*plan.local_doc)) {
        plan.prepared.removed_files.push_back(ref.path);
      }
    }
    return plan;
  }
  plan.needs_document = true;
  return plan;
}

// Takes the upstream's document `body` (as "/_doc" serves it) for `plan`:
// the write to commit and the tarballs this instance lacks. Nothing is
// fetched here.
Expected<void> read_document(const store::Store& store, Plan& plan, std::string_view body) {
  const std::string& id = plan.prepared.id;
  plan.needs_document = false;
  NPME_TRY_ASSIGN(const UpstreamDocument wanted, parse_upstream_document(id, body));
  const std::string& upstream_rev = wanted.rev;
  if (plan.local_rev && *plan.local_rev == upstream_rev) {
    // Already in sync: nothing to download or write (but what a resync finds damaged).
    if (plan.check_files && is_package_id(id)) {
      NPME_TRY_ASSIGN(auto local, store.get(id));
      if (local && local->rev == upstream_rev) {
        NPME_TRY(plan_repair(store, plan, *local));
      }
    }
    return {};
  }

  std::set<std::string> referenced;
  if (is_package_id(id)) {
    std::map<std::string, std::string> local_integrity; // path → integrity+shasum held locally
    if (plan.local_doc) {
      for (const auto& ref : tarballs_of(*plan.local_doc)) {
        local_integrity[ref.path] = ref.integrity + "|" + ref.shasum;
      }
    }
    const bool lazy = wanted.uplink_copy;
    for (const auto& ref : wanted.tarballs) {
      referenced.insert(ref.path);
      auto held = local_integrity.find(ref.path);
      if (held != local_integrity.end() && held->second == ref.integrity + "|" + ref.shasum) {
        // Verified when it was written; a resync checks it is still intact.
        bool intact = false;
        if (plan.check_files) {
          NPME_TRY_ASSIGN(intact, tarball_intact(store, id, ref));
        } else {
          std::error_code ec;
          intact = std::filesystem::is_regular_file(store.file_path(ref.path), ec);
        }
        if (intact) {
          continue;
        }
      }
      plan.tarballs.push_back(
        TarballNeed{ref.path, http::TarballCheck{id + "@" + ref.version, ref.integrity, ref.shasum}, lazy});
    }
  }
  if (plan.local_doc && is_package_id(id)) {
    for (const auto& ref : tarballs_of(*plan.local_doc)) {
      if (!referenced.count(ref.path)) {
        plan.prepared.removed_files.push_back(ref.path);
      }
    }
  }
  plan.prepared.kind = store::Write::Kind::put;
  // The text as the upstream stores it: the store drops "_id" and "_rev"
  // and puts its own (the kept revision) first, and both parsers keep the
  // last of repeated keys, so what is written is what was checked above,
  // byte for byte the upstream's document, without serializing it again.
  plan.prepared.body = std::string(body);
  plan.prepared.rev = upstream_rev;
  return {};
}

// Stages `bytes`, already checked against `need`, for `prepared`.
Expected<void> stage_tarball(store::Store& store, Prepared& prepared, const TarballNeed& need, std::string_view bytes,
                             store::Sync sync) {
  NPME_TRY_ASSIGN(auto file, store.stage_file(need.path, bytes, sync));
  prepared.staged.push_back(std::move(file));
  prepared.tarballs += 1;
  prepared.bytes += static_cast<std::int64_t>(bytes.size());
  return {};
}

// Downloads one tarball on its own (http::fetch_tarball verifies it);
// nullopt for a lazy one the upstream does not hold.
Expected<std::optional<std::string>> fetch_one_tarball(http::Client& client, const std::string& upstream,
                                                       const TarballNeed& need) {
  auto bytes = http::fetch_tarball(client, upstream + "/" + need.path + (need.lazy ? "?held=1" : ""), need.check);
  if (!bytes && need.lazy && bytes.error().code == Errc::not_found) {
    return std::optional<std::string>{};
  }
  if (!bytes) {
    switch (bytes.error().code) {
    case Errc::interrupted:
    case Errc::verify:
      return util::Unexpected<Error>{bytes.error()};
    case Errc::unauthorized:
      return make_error(Errc::unauthorized, "upstream refused the secret (" + bytes.error().message + ")");
    case Errc::unreachable:
    case Errc::timeout:
      return make_error(Errc::unreachable, "cannot download " + need.path + ": " + bytes.error().message);
    default:
      return make_error(Errc::failed, "tarball " + need.path + ": " + bytes.error().message);
    }
  }
  return std::optional<std::string>{std::move(*bytes)};
}

// Fetches one by one what `plan` still needs — its document, then every
// tarball — verifies and stages the tarballs with `sync`.
Expected<void> complete_plan(store::Store& store, http::Client& client, const std::string& upstream, Plan& plan,
                             const Getter& get, store::Sync sync) {
  if (plan.needs_document) {
    const std::string& id = plan.prepared.id;
    auto fetched = get(upstream + "/_doc/" + http::percent_encode(id, "@:"), "document '" + id + "'");
    if (!fetched) {
      if (fetched.error().code == Errc::not_found) {
        // Deleted upstream since the feed listed it: its tombstone comes later in the feed.
        plan.needs_document = false;
        return {};
      }
      return util::Unexpected<Error>{fetched.error()};
    }
    NPME_TRY(read_document(store, plan, fetched->body));
  }
  for (const auto& need : plan.tarballs) {
    NPME_TRY_ASSIGN(auto bytes, fetch_one_tarball(client, upstream, need));
    if (bytes) {
      NPME_TRY(stage_tarball(store, plan.prepared, need, *bytes, sync));
    }
  }
  plan.tarballs.clear();
  return {};
}

// One bulk slice on its way: the items' plans, and each one's first failure.
struct Slice {
  store::Store& store;
  http::Client& client;
  const std::string& upstream;
  const http::Headers& headers;
  store::Sync sync;
  std::vector<std::optional<Plan>> plans;
  std::vector<std::optional<Error>> failures;

  void fail(std::size_t item, Error error) {
    if (!failures[item]) {
      failures[item] = std::move(error);
    }
  }
};

// Fetches the documents of `by_id` (id to item), in as many requests as the
// answers' cap takes. Errc::not_found when the first request finds no bulk
// route; other failures are the items'.
Expected<void> fetch_documents(Slice& slice, std::map<std::string, std::size_t> by_id) {
  bool first_request = true;
  while (!by_id.empty()) {
    BulkRequest request;
    for (const auto& [id, index] : by_id) {
      if (request.docs.size() == k_bulk_max_items) {
        break;
      }
      request.docs.push_back(id);
    }
    auto answer = fetch_bulk(slice.client, slice.upstream, request, slice.headers);
    if (!answer && first_request && answer.error().code == Errc::not_found) {
      return util::Unexpected<Error>{answer.error()};
    }
    first_request = false;
    if (!answer) {
      for (const auto& [id, index] : by_id) {
        slice.fail(index, answer.error());
      }
      return {};
    }
    if (answer->frames.empty()) {
      // An answer covering nothing makes no progress: the upstream is broken.
      for (const auto& [id, index] : by_id) {
        slice.fail(index, Error{Errc::invalid, "upstream's bulk answer left out document '" + id + "'"});
      }
      return {};
    }
    // fetch_bulk checked that each frame names a document asked for, once.
    for (const auto& frame : answer->frames) {
      const std::size_t index = by_id.at(frame.name);
      by_id.erase(frame.name);
      Plan& plan = *slice.plans[index];
      if (frame.kind == BulkFrame::Kind::doc) {
        if (auto read = read_document(slice.store, plan, frame.bytes); !read) {
          slice.fail(index, read.error());
        }
      } else if (frame.kind == BulkFrame::Kind::missing) {
        // Deleted upstream since the feed listed it: its tombstone comes later in the feed.
        plan.needs_document = false;
      }
      // "large": still needed, fetched on its own with its tarballs.
    }
  }
  return {};
}

// Checks the tarball `bytes` against `need` and stages them for `item`.
void take_tarball(Slice& slice, std::size_t item, const TarballNeed& need, std::string_view bytes) {
  if (slice.failures[item]) {
    return;
  }
  if (auto checked = util::check_tarball(need.check.label, need.check.integrity, need.check.shasum, bytes);
      !checked) {
    slice.fail(item, checked.error());
  } else if (auto staged = stage_tarball(slice.store, slice.plans[item]->prepared, need, bytes, slice.sync);
             !staged) {
    slice.fail(item, staged.error());
  }
}

// Fetches, checks and stages every tarball the slice's plans still need:
// in requests of up to k_bulk_files, what an answer leaves out asked again,
// and one by one what the bulk route does not serve.
void fetch_tarballs(Slice& slice) {
  struct Wanted {
    std::size_t item;
    const TarballNeed* need;
  };
  std::map<std::string, Wanted> pending; // by path
  std::deque<std::string> queue;         // paths not yet answered, in order
  std::vector<Wanted> alone; // one by one: too large, not held by the bulk route, or named twice
  for (std::size_t i = 0; i < slice.plans.size(); ++i) {
    if (!slice.plans[i] || slice.failures[i]) {
      continue;
    }
    for (const auto& need : slice.plans[i]->tarballs) {
      if (pending.emplace(need.path, Wanted{i, &need}).second) {
        queue.push_back(need.path);
      } else {
        alone.push_back(Wanted{i, &need});
      }
    }
  }
  while (!queue.empty()) {
    BulkRequest request;
    while (!queue.empty() && request.files.size() < k_bulk_files) {
      request.files.push_back(std::move(queue.front()));
      queue.pop_front();
    }
    auto answer = fetch_bulk(slice.client, slice.upstream, request, slice.headers);
    if (!answer || answer->frames.empty()) {
      // An answer covering nothing makes no progress: the upstream is broken.
      const Error error = answer ? Error{Errc::invalid, "upstream's bulk answer left out every tarball asked for"}
                                 : answer.error();
      for (const auto& path : request.files) {
        slice.fail(pending.at(path).item, error);
      }
      continue;
    }
    std::set<std::string_view> answered;
    // fetch_bulk checked that each frame names a file asked for, once.
    for (const auto& frame : answer->frames) {
      const Wanted wanted = pending.at(frame.name);
      answered.insert(frame.name);
      if (frame.kind == BulkFrame::Kind::file) {
        take_tarball(slice, wanted.item, *wanted.need, frame.bytes);
      } else if (frame.kind == BulkFrame::Kind::large || !wanted.need->lazy) {
        // Too large for an answer; or not held here, and the upstream may
        // still get it as a single download does (from its own upstream).
        alone.push_back(wanted);
      }
      // A lazy one (an uplink copy's) not held upstream comes on demand.
    }
    // What the answer left out (its cap reached) is asked again first.
    for (auto it = request.files.rbegin(); it != request.files.rend(); ++it) {
      if (!answered.count(*it)) {
        queue.push_front(*it);
      }
    }
  }
  for (const auto& wanted : alone) {
    if (slice.failures[wanted.item]) {
      continue;
    }
    auto bytes = fetch_one_tarball(slice.client, slice.upstream, *wanted.need);
    if (!bytes) {
      slice.fail(wanted.item, bytes.error());
    } else if (*bytes) {
      // Already checked by the single download.
      if (auto staged = stage_tarball(slice.store, slice.plans[wanted.item]->prepared, *wanted.need, **bytes,
                                      slice.sync);
          !staged) {
        slice.fail(wanted.item, staged.error());
      }
    }
  }
}

} // namespace

bool is_package_id(std::string_view id) {
  return !id.empty() && id.front() != '_';
}

Expected<UpstreamDocument> parse_upstream_document(std::string_view id, std::string_view body) {
  const auto malformed = [id](std::string_view what) {
    return make_error(Errc::invalid,
                      "upstream sent a malformed document for '" + std::string(id) + "'" + std::string(what));
  };
  const auto doc = json::parse(body, nullptr, false);
  if (!doc.is_object()) {
    return malformed("");
  }
  const auto doc_id = doc.find("_id");
  const auto rev = doc.find("_rev");
  if (doc_id == doc.end() || !doc_id->is_string() || doc_id->get_ref<const std::string&>() != id ||
      (rev != doc.end() && !rev->is_string())) {
    return malformed("");
  }
  UpstreamDocument upstream;
  upstream.rev = rev != doc.end() ? rev->get<std::string>() : std::string();
  upstream.uplink_copy = doc.contains(store::k_uplink_member);
  if (!is_package_id(id)) {
    return upstream;
  }
  if (auto versions = doc.find("versions"); versions != doc.end() && !versions->is_object()) {
    return malformed(": versions");
  }
  upstream.tarballs = tarballs_of(doc);
  for (const auto& ref : upstream.tarballs) {
    if (ref.path.empty() || ref.path.find("://") != std::string::npos) {
      return make_error(Errc::invalid, "upstream document '" + std::string(id) + "' version " + ref.version +
                                         ": dist.tarball is not a relative path");
    }
  }
  return upstream;
}

Expected<Prepared> prepare_change(store::Store& store, http::Client& client, const std::string& upstream,
                                  const std::string& id, bool deleted, const std::string& feed_rev,
                                  const Getter& get, store::Sync sync, bool check_files) {
  NPME_TRY_ASSIGN(auto plan, plan_change(store, id, deleted, feed_rev, check_files));
  NPME_TRY(complete_plan(store, client, upstream, plan, get, sync));
  return std::move(plan.prepared);
}

Expected<void> prepare_bulk(store::Store& store, http::Client& client, const std::string& upstream,
                            const http::Headers& headers, std::span<WindowItem*> items, const Getter& get,
                            store::Sync sync) {
  Slice slice{store, client, upstream, headers, sync, std::vector<std::optional<Plan>>(items.size()),
              std::vector<std::optional<Error>>(items.size())};
  std::map<std::string, std::size_t> documents; // to fetch: id to item
  for (std::size_t i = 0; i < items.size(); ++i) {
    auto plan = plan_change(store, items[i]->id, items[i]->deleted, items[i]->feed_rev, items[i]->check_files);
    if (!plan) {
      slice.fail(i, plan.error());
      continue;
    }
    if (plan->needs_document) {
      // (An id named twice keeps needing its document: fetched on its own below.)
      documents.emplace(items[i]->id, i);
    }
    slice.plans[i] = std::move(*plan);
  }
  NPME_TRY(fetch_documents(slice, std::move(documents)));
  fetch_tarballs(slice);

  for (std::size_t i = 0; i < items.size(); ++i) {
    if (slice.failures[i]) {
      items[i]->prepared = util::Unexpected<Error>{*slice.failures[i]};
      continue;
    }
    Plan& plan = *slice.plans[i];
    plan.tarballs.clear();
    if (plan.needs_document) {
      // Larger than a bulk answer may be (or named twice): fetched on its own.
      if (auto done = complete_plan(store, client, upstream, plan, get, sync); !done) {
        items[i]->prepared = util::Unexpected<Error>{done.error()};
        continue;
      }
    }
    items[i]->prepared = std::move(plan.prepared);
  }
  return {};
}

} // namespace npme::replication
