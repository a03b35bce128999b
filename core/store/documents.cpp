#include "core/store/documents.hpp"

#include "core/util/crypto.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace npme::store::documents {

namespace {

using Json = nlohmann::ordered_json;
using sqlite::Statement;

constexpr std::string_view k_versions_tail = "\"versions\":{}}";

std::string json_key(const std::string& key) {
  return Json(key).dump();
}

// Calls `out` with the pieces of the whole document, in order.
template <typename Out>
void each_piece(std::string_view head, const std::vector<Version>& versions, Out&& out) {
  out(head.substr(0, head.size() - 2));
  bool first = true;
  for (const auto& [key, manifest] : versions) {
    if (!first) {
      out(",");
    }
    first = false;
    out(json_key(key));
    out(":");
    out(manifest);
  }
  out("}}");
}

} // namespace

bool is_package_id(std::string_view id) {
  return !id.empty() && id.front() != '_';
}

std::size_t rev_offset(const std::string& id) {
  return std::string_view("{\"_id\":").size() + Json(id).dump().size() + std::string_view(",\"_rev\":\"").size();
}

Expected<Prepared> prepare(const std::string& id, std::string_view body, Form form) {
  try {
    Json parsed = Json::parse(body);
    if (!parsed.is_object()) {
      return make_error(Errc::invalid, "document '" + id + "': body is not a JSON object");
    }
    Prepared prepared;
    Json out = Json::object();
    out["_id"] = id;
    out["_rev"] = "";
    Json* versions = nullptr;
    for (auto it = parsed.begin(); it != parsed.end(); ++it) {
      if (it.key() == "_id" || it.key() == "_rev") {
        continue;
      }
      if (it.key() == "versions" && is_package_id(id) && (form == Form::head || it.value().is_object())) {
        versions = &it.value();
        continue;
      }
      out[it.key()] = std::move(it.value());
    }
    const auto origin = out.find("_uplink");
    prepared.uplink = origin != out.end() && origin->is_object();
    if (versions == nullptr && form == Form::whole) {
      // Kept whole; no "versions" object, or not a package.
      const auto kept = out.find("versions");
      prepared.version_count = kept != out.end() && kept->is_object() ? static_cast<std::int64_t>(kept->size()) : 0;
      prepared.text = out.dump();
      return prepared;
    }
    prepared.split = true;
    if (form == Form::whole) {
      prepared.versions.reserve(versions->size());
      for (auto it = versions->begin(); it != versions->end(); ++it) {
        prepared.versions.emplace_back(it.key(), it.value().dump());
      }
      std::sort(prepared.versions.begin(), prepared.versions.end(),
                [](const Version& a, const Version& b) { return a.first < b.first; });
      prepared.version_count = static_cast<std::int64_t>(prepared.versions.size());
    }
    out["versions"] = Json::object();
    prepared.text = out.dump();
    if (!prepared.text.ends_with(k_versions_tail)) {
      return make_error(Errc::failed, "document '" + id + "': unexpected serialization of its head");
    }
    return prepared;
  } catch (const std::exception& e) {
    return make_error(Errc::invalid, "document '" + id + "': invalid JSON: " + e.what());
  }
}

std::string whole_digest(const Prepared& prepared) {
  if (!prepared.split) {
    return util::sha256(prepared.text);
  }
  util::Hasher hasher(util::Hasher::Algorithm::sha256);
  each_piece(prepared.text, prepared.versions, [&](std::string_view piece) { hasher.update(piece); });
  return hasher.finish();
}

std::string assemble(std::string_view head, const std::vector<Version>& versions) {
  std::size_t size = head.size() + versions.size() * 4;
  for (const auto& [key, manifest] : versions) {
    size += key.size() + manifest.size();
  }
  std::string out;
  out.reserve(size);
  each_piece(head, versions, [&](std::string_view piece) { out.append(piece); });
  return out;
}

Expected<std::vector<Version>> read_versions(sqlite::Database& db, std::string_view id) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT version, body FROM doc_versions WHERE id = ?1 ORDER BY version"));
  NPME_TRY(stmt.bind_text(1, id));
  std::vector<Version> versions;
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step == Statement::Step::done) {
      return versions;
    }
    versions.emplace_back(stmt.column_text(0), stmt.column_text(1));
  }
}

Expected<std::vector<std::string>> read_version_keys(sqlite::Database& db, std::string_view id) {
  NPME_TRY_ASSIGN(Statement stmt, db.cached("SELECT version FROM doc_versions WHERE id = ?1 ORDER BY version"));
  NPME_TRY(stmt.bind_text(1, id));
  std::vector<std::string> keys;
  while (true) {
    NPME_TRY_ASSIGN(const auto step, stmt.step());
    if (step == Statement::Step::done) {
      return keys;
    }
    keys.push_back(stmt.column_text(0));
  }
}

Expected<Reader> Reader::open(sqlite::Database& db) {
  NPME_TRY_ASSIGN(Statement stmt, db.prepare("SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = 'split'"));
  NPME_TRY(stmt.step());
  return Reader(db, stmt.column_int64(0) != 0);
}

Expected<void> Reader::each_package(
  const std::function<Expected<void>(const std::string& id, const std::string& rev, std::string body)>& visit) {
  // '`' is the character after '_': every id outside ['_', '`') is a package.
  NPME_TRY_ASSIGN(Statement docs,
                  m_db->prepare(std::string("SELECT id, rev, body, ") + (m_has_split ? "split" : "0") +
                                " FROM docs WHERE id < '_' OR id >= '`' ORDER BY id"));
  while (true) {
    NPME_TRY_ASSIGN(const auto step, docs.step());
    if (step == Statement::Step::done) {
      return {};
    }
    const std::string id = docs.column_text(0);
    std::string body = docs.column_text(2);
    if (docs.column_int64(3) != 0) {
      NPME_TRY_ASSIGN(auto versions, read_versions(*m_db, id));
      body = assemble(body, versions);
    }
    NPME_TRY(visit(id, docs.column_text(1), std::move(body)));
  }
}

Expected<std::optional<std::string>> Reader::body(std::string_view id) {
  NPME_TRY_ASSIGN(Statement stmt, m_db->prepare(std::string("SELECT body, ") + (m_has_split ? "split" : "0") +
                                                " FROM docs WHERE id = ?1"));
  NPME_TRY(stmt.bind_text(1, id));
  NPME_TRY_ASSIGN(const auto step, stmt.step());
  if (step == Statement::Step::done) {
    return std::optional<std::string>();
  }
  std::string body = stmt.column_text(0);
  if (stmt.column_int64(1) != 0) {
    NPME_TRY_ASSIGN(auto versions, read_versions(*m_db, id));
    body = assemble(body, versions);
  }
  return std::optional<std::string>(std::move(body));
}

} // namespace npme::store::documents
