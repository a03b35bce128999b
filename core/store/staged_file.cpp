#include "core/store/store.hpp"

#include <unistd.h>

namespace npme::store {

void start_file_tag(util::Checksum& checksum, std::string_view sha256) {
  checksum.update(sha256);
}

std::uint64_t file_tag(std::string_view sha256, std::string_view bytes) {
  util::Checksum checksum;
  start_file_tag(checksum, sha256);
  checksum.update(bytes);
  return checksum.value();
}

StagedFile::StagedFile(fs::path temp, std::string rel_path, FileDigest digest)
  : m_temp(std::move(temp)), m_rel_path(std::move(rel_path)), m_digest(std::move(digest)) {}

StagedFile::StagedFile(StagedFile&& other) noexcept
  : m_temp(std::move(other.m_temp)), m_rel_path(std::move(other.m_rel_path)), m_digest(std::move(other.m_digest)),
    m_synced(other.m_synced) {
  other.m_temp.clear();
}

StagedFile& StagedFile::operator=(StagedFile&& other) noexcept {
  if (this != &other) {
    if (!m_temp.empty()) {
      ::unlink(m_temp.c_str());
    }
    m_temp = std::move(other.m_temp);
    m_rel_path = std::move(other.m_rel_path);
    m_digest = std::move(other.m_digest);
    m_synced = other.m_synced;
    other.m_temp.clear();
  }
  return *this;
}

StagedFile::~StagedFile() {
  // Not committed: the temp file is garbage. A failure to remove it is
  // harmless, Store::open() clears the staging directory anyway.
  if (!m_temp.empty()) {
    ::unlink(m_temp.c_str());
  }
}

} // namespace npme::store
