#include "core/registry/cache.hpp"

#include <sys/stat.h>

namespace npme::registry {

namespace {

// Package names never contain a newline, so "<name>\n" prefixes exactly the
// keys of one package ("@s/a\n" does not prefix "@s/ab\n...").
constexpr char k_separator = '\n';

// Bookkeeping per entry besides the body: key, list node, map node.
constexpr std::size_t k_entry_overhead = 256;

} // namespace

std::optional<FileStamp> file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return std::nullopt;
  }
  constexpr std::int64_t k_ns = 1000000000;
  return FileStamp{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                   static_cast<std::int64_t>(st.st_size),
                   static_cast<std::int64_t>(st.st_mtim.tv_sec) * k_ns + st.st_mtim.tv_nsec,
                   static_cast<std::int64_t>(st.st_ctim.tv_sec) * k_ns + st.st_ctim.tv_nsec};
}

ResponseCache::ResponseCache(std::size_t capacity_bytes, std::size_t max_entry_bytes)
  : m_capacity(capacity_bytes), m_max_entry(max_entry_bytes) {}

std::string ResponseCache::key(std::string_view name, std::string_view what) {
  std::string out;
  out.reserve(name.size() + what.size() + 1);
  out += name;
  out += k_separator;
  out += what;
  return out;
}

std::optional<CachedBody> ResponseCache::get(const std::string& key) {
  std::lock_guard lock(m_mutex);
  auto it = find_locked(key);
  if (it == m_entries.end()) {
    return std::nullopt;
  }
  m_lru.splice(m_lru.begin(), m_lru, it->second.lru);
  return it->second.value;
}

std::optional<CachedBody> ResponseCache::get_file(const std::string& key, const FileStamp& current) {
  std::lock_guard lock(m_mutex);
  auto it = find_locked(key);
  if (it == m_entries.end()) {
    return std::nullopt;
  }
  if (it->second.stamp != current) {
    erase_locked(it);
    return std::nullopt;
  }
  it->second.confirmed = std::chrono::steady_clock::now();
  m_lru.splice(m_lru.begin(), m_lru, it->second.lru);
  return it->second.value;
}

std::optional<CachedBody> ResponseCache::get_confirmed(const std::string& key,
                                                       std::chrono::steady_clock::duration valid) {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(m_mutex);
  auto it = find_locked(key);
  if (it == m_entries.end() || !it->second.stamp || now - it->second.confirmed > valid) {
    return std::nullopt;
  }
  m_lru.splice(m_lru.begin(), m_lru, it->second.lru);
  return it->second.value;
}

void ResponseCache::put(const std::string& key, CachedBody value, std::uint64_t generation,
                        std::optional<FileStamp> stamp) {
  if (!value.body && !value.gzip) {
    return;
  }
  const std::size_t bodies = (value.body ? value.body->size() : 0) + (value.gzip ? value.gzip->size() : 0);
  std::size_t bytes = bodies + key.size() + value.etag.size() + value.variant.size() + k_entry_overhead;
  if (bodies > m_max_entry || bytes > m_capacity) {
    return;
  }
  std::lock_guard lock(m_mutex);
  // Checked under the lock: invalidate() bumps the generation under it too,
  // so a body read before an invalidation can never be stored after it.
  if (m_generation.load(std::memory_order_relaxed) != generation) {
    return;
  }
  erase_locked(find_locked(key));
  while (m_bytes + bytes > m_capacity && !m_lru.empty()) {
    erase_locked(find_locked(m_lru.back()));
  }
  m_lru.push_front(key);
  auto it = m_entries.emplace(key, Entry{std::move(value), bytes, m_lru.begin(), stamp, std::chrono::steady_clock::now()})
                .first;
  m_index.emplace(std::string_view(it->first), it);
  m_bytes += bytes;
}

void ResponseCache::invalidate(std::string_view name) {
  std::string prefix(name);
  prefix += k_separator;
  std::lock_guard lock(m_mutex);
  m_generation.fetch_add(1, std::memory_order_acq_rel);
  auto it = m_entries.lower_bound(prefix);
  while (it != m_entries.end() && std::string_view(it->first).starts_with(prefix)) {
    auto next = std::next(it);
    erase_locked(it);
    it = next;
  }
}

ResponseCache::Entries::iterator ResponseCache::find_locked(std::string_view key) {
  auto found = m_index.find(key);
  return found == m_index.end() ? m_entries.end() : found->second;
}

void ResponseCache::erase_locked(Entries::iterator it) {
  if (it == m_entries.end()) {
    return;
  }
  m_bytes -= it->second.bytes;
  m_lru.erase(it->second.lru);
  m_index.erase(std::string_view(it->first));
  m_entries.erase(it);
}

std::size_t ResponseCache::size_bytes() const {
  std::lock_guard lock(m_mutex);
  return m_bytes;
}

std::size_t ResponseCache::entry_count() const {
  std::lock_guard lock(m_mutex);
  return m_entries.size();
}

} // namespace npme::registry
