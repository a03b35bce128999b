#pragma once
// A bounded in-memory LRU cache of response bodies (rendered packuments,
// tarball bytes) keyed by package, so that repeated installs are answered
// from memory without touching SQLite or the file system.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace npme::registry {

// Which version of a file a body was read from: a file replaced (renamed
// over, as every repair does) or written in place shows a new stamp.
struct FileStamp {
  std::uint64_t device = 0;
  std::uint64_t inode = 0;
  std::int64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};

// The stamp of the regular file at `path`; nullopt when there is none.
std::optional<FileStamp> file_stamp(const std::string& path);

struct CachedBody {
  // The body; null in an entry that keeps only the compressed form (a large
  // JSON answer, whose plain form a client without gzip gets inflated).
  std::shared_ptr<const std::string> body;
  std::string etag;
  std::string variant; // what the body depends on besides the document (registry.url)
  // The body gzip-compressed, made once with it (JSON answers only; null
  // for tarballs, which are gzip already, and for small bodies).
  std::shared_ptr<const std::string> gzip;
};

class ResponseCache {
public:
  // Keeps at most `capacity_bytes` of bodies; an entry whose bodies (plain
  // and compressed) take more than `max_entry_bytes` is never kept.
  ResponseCache(std::size_t capacity_bytes, std::size_t max_entry_bytes);

  // Returns the cache key of entry `what` ("full", "abbrev", a tarball file
  // name) of package `name`.
  static std::string key(std::string_view name, std::string_view what);

  // Returns the entry at `key`, marking it recently used.
  std::optional<CachedBody> get(const std::string& key);

  // The generation to pass to put(): read it before reading the store, so
  // that a body rendered from data older than an invalidation is dropped.
  std::uint64_t generation() const { return m_generation.load(std::memory_order_acquire); }

  // Returns the entry at `key` read from a file whose stamp was `current`
  // (see put()); an entry read from another version of the file is dropped,
  // so a file repaired on disk (by npme doctor or by hand) is never served
  // stale.
  std::optional<CachedBody> get_file(const std::string& key, const FileStamp& current);

  // Returns the entry at `key` read from a file whose stamp put() or
  // get_file() confirmed at most `valid` ago, without looking at the file:
  // a hit costs no system call. As nginx's open_file_cache_valid, a file
  // replaced on disk may be served from memory for that long.
  std::optional<CachedBody> get_confirmed(const std::string& key, std::chrono::steady_clock::duration valid);

  // Stores `value` at `key` unless an invalidation happened since
  // `generation` was read or the body is too large; evicts the least
  // recently used entries to stay within capacity. `stamp`: the file the
  // body was read from, taken before reading it (for get_file()).
  void put(const std::string& key, CachedBody value, std::uint64_t generation,
           std::optional<FileStamp> stamp = std::nullopt);

  // Drops every entry of package `name`.
  void invalidate(std::string_view name);

  std::size_t size_bytes() const;
  std::size_t entry_count() const;

private:
  struct Entry {
    CachedBody value;
    std::size_t bytes = 0;
    std::list<std::string>::iterator lru;
    std::optional<FileStamp> stamp;
    std::chrono::steady_clock::time_point confirmed; // when `stamp` was last found current
  };

  using Entries = std::map<std::string, Entry, std::less<>>;
  void erase_locked(Entries::iterator it);
  // The entry at `key`, or end(): a hash lookup (a tarball hit's), not a
  // walk of the ordered map, whose keys share long prefixes.
  Entries::iterator find_locked(std::string_view key);

  const std::size_t m_capacity;
  const std::size_t m_max_entry;
  mutable std::mutex m_mutex;
  Entries m_entries; // ordered: a package's keys are adjacent (invalidate())
  std::unordered_map<std::string_view, Entries::iterator> m_index; // views of m_entries' keys
  std::list<std::string> m_lru; // front: most recently used
  std::size_t m_bytes = 0;
  std::atomic<std::uint64_t> m_generation{0};
};

} // namespace npme::registry
