#pragma once
// A bounded in-memory LRU cache of response bodies (rendered packuments,
// tarball bytes) keyed by package, so that repeated installs are answered
// from memory without touching SQLite or the file system.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace npme::registry {

struct CachedBody {
  std::shared_ptr<const std::string> body;
  std::string etag;
  std::string variant; // what the body depends on besides the document (registry.url)
};

class ResponseCache {
public:
  // Keeps at most `capacity_bytes` of bodies; larger single bodies than
  // `max_entry_bytes` are never kept.
  ResponseCache(std::size_t capacity_bytes, std::size_t max_entry_bytes);

  // Returns the cache key of entry `what` ("full", "abbrev", a tarball file
  // name) of package `name`.
  static std::string key(std::string_view name, std::string_view what);

  // Returns the entry at `key`, marking it recently used.
  std::optional<CachedBody> get(const std::string& key);

  // The generation to pass to put(): read it before reading the store, so
  // that a body rendered from data older than an invalidation is dropped.
  std::uint64_t generation() const { return m_generation.load(std::memory_order_acquire); }

  // Stores `value` at `key` unless an invalidation happened since
  // `generation` was read or the body is too large; evicts the least
  // recently used entries to stay within capacity.
  void put(const std::string& key, CachedBody value, std::uint64_t generation);

  // Drops every entry of package `name`.
  void invalidate(std::string_view name);

  std::size_t size_bytes() const;
  std::size_t entry_count() const;

private:
  struct Entry {
    CachedBody value;
    std::size_t bytes = 0;
    std::list<std::string>::iterator lru;
  };

  void erase_locked(std::map<std::string, Entry, std::less<>>::iterator it);

  const std::size_t m_capacity;
  const std::size_t m_max_entry;
  mutable std::mutex m_mutex;
  std::map<std::string, Entry, std::less<>> m_entries;
  std::list<std::string> m_lru; // front: most recently used
  std::size_t m_bytes = 0;
  std::atomic<std::uint64_t> m_generation{0};
};

} // namespace npme::registry
