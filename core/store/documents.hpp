#pragma once
// How documents are laid out in the database. A package document with a
// "versions" object is kept split: `docs.body` holds its head (the document
// with "versions" emptied and moved last: `{"_id":…,"_rev":…,…,"versions":{}}`)
// and `doc_versions` one row per version (its key and its manifest's JSON),
// with `docs.split` = 1. So a publish writes one version's row and the head,
// not a document that grows with every version (`@types/node`: 12 MB), and
// reads the head without the versions. The whole document is the head with
// the manifests put back, in bytewise key order (the order of nlohmann::json,
// which the registry writes). Other documents (users, tokens, a package
// without versions) are kept whole, `docs.split` = 0.

#include "core/store/sqlite.hpp"
#include "core/util/error.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace npme::store::documents {

// A version's key and its manifest's JSON text.
using Version = std::pair<std::string, std::string>;

// A document prepared for the database: its text with an empty "_rev"
// right after "_id" (Store puts the revision in), split or whole.
struct Prepared {
  std::string text;              // the head when split, else the whole document
  bool split = false;
  std::vector<Version> versions; // when split: every version, sorted by key
  std::int64_t version_count = 0; // members of "versions" (docs.versions)
  bool uplink = false;            // an object member "_uplink" (docs.uplink)
};

enum class Form {
  whole, // `body` is the whole document: its versions are split out of it
  head,  // `body` is a head: a "versions" member in it is ignored
};

// True for ids of package documents (not starting with '_').
bool is_package_id(std::string_view id);

// Parses JSON object `body` and prepares document `id`: "_id" and an empty
// "_rev" first, the other members in their order; a package's "versions"
// object split out (Form::whole) or dropped (Form::head), "versions":{}
// last. Errc::invalid when `body` is not a JSON object.
Expected<Prepared> prepare(const std::string& id, std::string_view body, Form form);

// The length of `"_id":<id>,"_rev":"` plus the opening brace: where the
// revision goes in a prepared text.
std::size_t rev_offset(const std::string& id);

// The SHA-256 of the whole document that `prepared` describes, with an empty
// revision, without assembling it.
std::string whole_digest(const Prepared& prepared);

// The whole document from `head` (a split document's docs.body) and its
// versions in key order.
std::string assemble(std::string_view head, const std::vector<Version>& versions);

// Reads what the database holds of split document `id`.
Expected<std::vector<Version>> read_versions(sqlite::Database& db, std::string_view id);
Expected<std::vector<std::string>> read_version_keys(sqlite::Database& db, std::string_view id);

// Reads package documents whole from a database that no Store has open
// (npme doctor, snapshots), of this layout or of one from before it.
class Reader {
public:
  static Expected<Reader> open(sqlite::Database& db);

  // Calls `visit(id, rev, body)` for every package document, ordered by id.
  Expected<void> each_package(
    const std::function<Expected<void>(const std::string& id, const std::string& rev, std::string body)>& visit);
  // The whole body of document `id`; nullopt when there is none.
  Expected<std::optional<std::string>> body(std::string_view id);

private:
  explicit Reader(sqlite::Database& db, bool has_split) : m_db(&db), m_has_split(has_split) {}
  sqlite::Database* m_db;
  bool m_has_split;
};

} // namespace npme::store::documents
