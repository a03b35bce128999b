#pragma once
// The metadata store: documents (packuments, users, tokens) in SQLite (WAL),
// a change log with monotonically increasing sequence numbers written in the
// same transaction as each change, and the tarball files of the packages
// directory. Writes are serialized; reads run concurrently.
//
// Document ids: a package's id is its name ("lodash", "@scope/pkg"). Other
// documents use ids that can never be package names because they start with
// '_' ("_user:alice", "_token:<id>").

#include "core/util/crypto.hpp"
#include "core/util/error.hpp"
#include "core/util/fs.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace npme::store {

namespace fs = std::filesystem;

// The member of a package document that marks it as a copy of an uplink's
// package (core/uplink writes it); the store counts such documents.
inline constexpr std::string_view k_uplink_member = "_uplink";

struct Paths {
  fs::path metadata; // holds registry.sqlite (+ -wal, -shm)
  fs::path packages; // tarballs in npm's layout
  fs::path data;     // small files (sequence, whitelist, identity, lock)
};

struct Document {
  std::string id;
  std::string rev;   // "<n>-<32 hex>", n counts the document's writes
  std::string body;  // JSON text; "_id" and "_rev" inside are kept equal to id/rev
  std::int64_t seq = 0; // sequence of the change that wrote this revision
};

// A package document without its versions' manifests: what a write that adds
// or removes single versions (a publish) needs, read without the whole
// document (see core/store/documents.hpp).
struct Head {
  std::string id;
  std::string rev;
  std::int64_t seq = 0;
  std::string body;                  // the document with an empty "versions" (its last member)
  std::vector<std::string> versions; // the keys of "versions", sorted bytewise
  bool uplink = false;               // an uplink's copy (k_uplink_member)
};

struct Change {
  std::int64_t seq = 0;
  std::string id;
  std::string rev;
  bool deleted = false;
  std::string time; // ISO 8601 of the change
};

// What the store knows of a tarball's bytes when it commits them.
struct FileDigest {
  std::string sha256; // raw, 32 bytes
  // file_tag(sha256, bytes): binds the bytes to this SHA-256 (see there).
  std::uint64_t tag = 0;
  std::int64_t size = 0;
};

// The XXH3-64 (util::Checksum) of `sha256` followed by `bytes`. A file
// whose tag, taken with a recorded SHA-256, equals the recorded tag still
// holds the bytes that were committed, and that SHA-256 is theirs: short of
// a deliberate collision (and whoever can write the packages directory can
// rewrite the database too), a changed byte in the file, the SHA-256 or the
// tag shows. Checking it costs a fraction of hashing the file again.
std::uint64_t file_tag(std::string_view sha256, std::string_view bytes);
// The same, fed in pieces: `checksum` is fresh; the bytes follow.
void start_file_tag(util::Checksum& checksum, std::string_view sha256);

// A tarball written to a temp file in the packages directory and fsynced,
// waiting to be renamed into place by Store::apply(). Removed on destruction
// unless it was committed.
class StagedFile {
public:
  StagedFile() = default;
  StagedFile(fs::path temp, std::string rel_path, FileDigest digest = {});
  StagedFile(StagedFile&& other) noexcept;
  StagedFile& operator=(StagedFile&& other) noexcept;
  ~StagedFile();
  const fs::path& temp() const { return m_temp; }
  const std::string& rel_path() const { return m_rel_path; }
  // The staged bytes' SHA-256 and size (an empty sha256 when unknown).
  const FileDigest& digest() const { return m_digest; }
  void release() { m_temp.clear(); } // committed: nothing to clean up
  // False for a file staged with Sync::deferred: not yet on stable storage.
  bool synced() const { return m_synced; }
  void set_synced(bool synced) { m_synced = synced; }

private:
  fs::path m_temp;
  std::string m_rel_path;
  FileDigest m_digest;
  bool m_synced = true;
};

// When a staged file reaches stable storage: at once (fsync), or with the
// commit that uses it (one syncfs for a whole batch; see Store::apply_batch).
enum class Sync { now, deferred };

// A tarball being written to the staging directory in pieces (a publish
// decodes its attachment while it reads the body), hashed on the way.
// finish() names it and turns it into a StagedFile; a stage dropped before
// that removes its file.
class FileStage {
public:
  FileStage(FileStage&& other) noexcept;
  FileStage& operator=(FileStage&&) = delete;
  ~FileStage();

  Expected<void> write(std::string_view bytes);
  std::uint64_t size() const { return m_size; }
  // Flushes per `sync` and returns the file, to be committed as `rel_path`.
  // The stage is spent afterwards, whether it succeeded or not.
  Expected<StagedFile> finish(const std::string& rel_path, Sync sync = Sync::now);

private:
  friend class Store;
  FileStage(fs::path temp, util::Fd fd);

  fs::path m_temp;
  util::Fd m_fd;
  std::unique_ptr<util::Hasher> m_sha256;
  std::uint64_t m_size = 0;
};

// What a mutation decides: write `body` as the new revision, delete the
// document, or change nothing.
struct Write {
  enum class Kind { put, remove, none };
  Kind kind = Kind::none;
  std::string body; // for put: the JSON document; _id/_rev are (re)set by the store
  // For put: the revision to keep instead of deriving a new one — a follower
  // keeps its upstream's revisions, so that "in sync" is a comparison of revs.
  // Must be "<n>-<hex>" (Errc::invalid otherwise).
  std::string rev;
  std::vector<StagedFile> add_files;        // renamed into place before commit
  std::vector<std::string> remove_files;    // rel paths deleted after commit
  // Only for a put decided by a HeadMutation (Store::apply_head): `body` is
  // the document without its versions' manifests (a "versions" member in it
  // is ignored); `put_versions` are the manifests added or replaced
  // (version → the JSON text of an object), `remove_versions` the versions
  // dropped; the others stay as they are.
  std::vector<std::pair<std::string, std::string>> put_versions;
  std::vector<std::string> remove_versions;
};

// Decides the write from the current revision (nullopt when the document
// does not exist). Runs under the store's write lock, so it sees the latest
// state and nothing changes between its decision and the commit.
using Mutation = std::function<Expected<Write>(const std::optional<Document>& current)>;
// The same, deciding from the current head of a package document.
using HeadMutation = std::function<Expected<Write>(const std::optional<Head>& current)>;

struct Counts {
  std::int64_t packages = 0;
  std::int64_t versions = 0;
  std::int64_t tarballs = 0;
  std::int64_t tarball_bytes = 0;
  std::int64_t uplink_packages = 0; // packages that are uplink copies (k_uplink_member)
};

// Watches the commits of the calling thread while it lives: a write handler
// learns the sequence of what it committed (synchronous replication waits
// for followers to pass it) without every write path returning it. Scopes
// nest; a commit is seen by the innermost scope of its thread.
class CommitScope {
public:
  CommitScope();
  ~CommitScope();
  CommitScope(const CommitScope&) = delete;
  CommitScope& operator=(const CommitScope&) = delete;
  // The sequence of the last change committed on this thread in this scope; 0 if none.
  std::int64_t last_seq() const { return m_last_seq; }

private:
  friend class Store;
  std::int64_t m_last_seq = 0;
  CommitScope* m_outer;
};

class Store {
public:
  // Opens (creating when missing) the database under `paths.metadata` and the
  // packages directory. Fails with Errc::io naming the path and the reason.
  static Expected<std::unique_ptr<Store>> open(const Paths& paths);
  ~Store();

  const Paths& paths() const { return m_paths; }

  // Returns the current revision of `id`, or nullopt when it does not exist.
  Expected<std::optional<Document>> get(std::string_view id) const;
  // Returns the current head of package document `id` (nullopt when it does
  // not exist): its revision, its versions' keys and the rest of it, without
  // reading its manifests. Errc::invalid for an id that is not a package's.
  Expected<std::optional<Head>> get_head(std::string_view id) const;

  // Returns every live document whose id starts with `prefix` ("" for all,
  // "_user:" for users). Package documents are those not starting with '_'.
  Expected<std::vector<Document>> list(std::string_view prefix) const;
  Expected<std::vector<Document>> list_packages() const;
  // Every live document id, without bodies (cheap on a large registry).
  Expected<std::vector<std::string>> list_ids() const;
  // The number of package documents.
  Expected<std::int64_t> count_packages() const;

  // Puts the tarball `file` in place for document `id` without changing the
  // document: a tarball of a version the document already lists, fetched
  // later (the uplink's lazily fetched tarballs). Refused with
  // Errc::conflict unless `id` is still at revision `rev`, so a file never
  // lands beside a document that changed meanwhile. Records the file's
  // digest like apply() does; writes no change record.
  Expected<void> add_file(const std::string& id, const std::string& rev, StagedFile file);

  // Atomically reads the current revision of `id`, calls `mutation`, and
  // commits its decision: staged files are renamed into place (and the
  // directory fsynced) before the metadata transaction commits, so a crash
  // never leaves metadata pointing at a missing tarball; one change record is
  // written in the same transaction; removed files are deleted after commit.
  // Returns the document as written (a tombstone with the new seq and an
  // empty body when removed; the current one when the mutation chose none).
  Expected<Document> apply(const std::string& id, const Mutation& mutation);
  // The same for a package document, decided from its head: the write adds,
  // replaces or removes single versions (Write::put_versions,
  // remove_versions) and rewrites the head, so its cost does not grow with
  // the versions the document has. The revision derives from the previous
  // one and the change. Returns the document's id, rev and seq (no body).
  Expected<Document> apply_head(const std::string& id, const HeadMutation& mutation);

  // Applies several documents' mutations in one transaction (a follower's
  // batch): all or nothing. Files staged with Sync::deferred go to stable
  // storage with one syncfs before the renames, and the directories of a
  // large batch with one syncfs after (a few are fsynced one by one); one
  // change record per item, in order. Items that change nothing, and
  // removals of missing documents, are skipped.
  struct BatchItem {
    std::string id;
    Mutation mutation;
  };
  Expected<std::vector<Document>> apply_batch(const std::vector<BatchItem>& items);

  // Writes `bytes` to a temp file in the packages directory, fsynced, to be
  // committed as `rel_path` by apply(). Callers stage only bytes they have
  // checked against the version's dist.integrity: the commit records the
  // file's SHA-256 and size (see tarball_digests()), and whoever finds the
  // same SHA-256 in the file later knows it still holds those checked bytes.
  Expected<StagedFile> stage_file(const std::string& rel_path, std::string_view bytes, Sync sync = Sync::now);
  // The same for bytes that arrive in pieces: a new file in the staging
  // directory, written with FileStage::write(), named by FileStage::finish().
  Expected<FileStage> begin_stage();

  // Puts every file of `files` staged with Sync::deferred on stable storage
  // at once (one syncfs of the packages directory's file system) and marks
  // them synced, so that the commit using them needs no flush of its own
  // first: a follower does it for the window it prepares while the one
  // before it commits. Errc::io when the flush fails (nothing is marked).
  Expected<void> sync_staged(const std::vector<StagedFile*>& files);

  // The directory of staged files (in the packages directory, emptied by
  // open()); a server keeps large request bodies there too.
  fs::path staging_dir() const;

  // Returns the absolute path of the tarball `rel_path` ("a/-/a-1.0.0.tgz").
  fs::path file_path(std::string_view rel_path) const;
  // The same as a plain string, for a hot path that only hands it to a
  // system call: a std::filesystem::path splits itself into its components,
  // with allocations, whenever one is made.
  std::string file_path_native(std::string_view rel_path) const;

  // Returns up to `limit` changes with seq > `since`, oldest first: one per
  // document (its latest change), tombstones included.
  Expected<std::vector<Change>> changes_since(std::int64_t since, std::size_t limit) const;

  // The sequence of the latest change (0 for an empty store).
  std::int64_t update_seq() const { return m_update_seq.load(); }

  // Blocks until update_seq() > `seq` or `timeout` passes; returns update_seq().
  std::int64_t wait_for_change(std::int64_t seq, std::chrono::milliseconds timeout) const;
  // Test seam: `hook` runs in wait_for_change() whenever a caller is about to
  // block, under the lock a commit takes to advance update_seq(), so a commit
  // begun after the hook returned must wake that caller. Set it before any
  // wait starts.
  void set_before_wait_hook(std::function<void()> hook);

  // Registers `listener`, called after every commit (on the writing thread)
  // with the change just written. Used to invalidate caches.
  void on_change(std::function<void(const Change&)> listener);

  // Counts packages, versions (keys of "versions" in package documents) and
  // the tarballs the store committed (files and bytes of table `tarballs`:
  // an orphan file is not counted, nor a file placed by an npme older than
  // the digests until `npme doctor --repair` records it). Kept by the
  // database in the transactions that change them: one row to read.
  Expected<Counts> counts() const;
  // Counts everything again from the rows and keeps the result; returns it.
  Expected<Counts> recount();

  // The digest recorded for the tarball `rel_path` when it was committed
  // through stage_file(); nullopt for files placed by other means (an older
  // npme, a restore of an older snapshot). A commit that removes a file drops
  // its digest. Kept in the table `tarballs`, so a copy of the database
  // carries them (snapshots check tarballs with them, see core/snapshot).
  Expected<std::optional<FileDigest>> tarball_digest(std::string_view rel_path) const;

  // What a tarball's file is against the record its commit made.
  enum class FileState {
    intact,     // the recorded size, and the tag shows the recorded bytes
    missing,    // no such file
    wrong_size, // its size differs from the record
    wrong_tag,  // same size, other bytes (or another SHA-256 recorded)
    unrecorded, // present, but no record (placed by an older npme or a restore of one)
  };
  // Checks the tarball `rel_path` against its record: a stat, then one XXH3
  // pass over the bytes (store::file_tag); no SHA. Errc::io when it cannot be read.
  Expected<FileState> check_file(std::string_view rel_path) const;

  // Copies the database to `target` with SQLite's online backup API, safe
  // while writes go on (used by snapshots).
  Expected<void> backup_to(const fs::path& target) const;

  // A value kept in the database's key/value table (instance epoch etc.).
  Expected<std::optional<std::string>> get_meta(std::string_view key) const;
  Expected<void> set_meta(std::string_view key, std::string_view value);

private:
  enum class Batch { single, many };
  struct Item;
  Expected<std::vector<Document>> commit(const std::vector<Item>& items, Batch batch);
  explicit Store(Paths paths);
  struct Impl;
  Paths m_paths;
  std::unique_ptr<Impl> m_impl;
  std::atomic<std::int64_t> m_update_seq{0};
};

} // namespace npme::store
