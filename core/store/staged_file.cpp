#include "core/store/store.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

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

FileStage::FileStage(fs::path temp, util::Fd fd)
  : m_temp(std::move(temp)), m_fd(std::move(fd)),
    m_sha256(std::make_unique<util::Hasher>(util::Hasher::Algorithm::sha256)) {}

FileStage::FileStage(FileStage&& other) noexcept
  : m_temp(std::move(other.m_temp)), m_fd(std::move(other.m_fd)), m_sha256(std::move(other.m_sha256)),
    m_size(other.m_size) {
  other.m_temp.clear();
}

FileStage::~FileStage() {
  if (!m_temp.empty()) {
    ::unlink(m_temp.c_str());
  }
}

Expected<void> FileStage::write(std::string_view bytes) {
  if (!m_fd) {
    return make_error(Errc::failed, "staged file '" + m_temp.string() + "' is finished");
  }
  NPME_TRY(util::write_all(m_fd.get(), bytes, m_temp));
  m_sha256->update(bytes);
  m_size += bytes.size();
  return {};
}

Expected<StagedFile> FileStage::finish(const std::string& rel_path, Sync sync) {
  if (!m_fd) {
    return make_error(Errc::failed, "staged file '" + m_temp.string() + "' is finished");
  }
  util::Fd fd = std::move(m_fd);
  // Tarballs are world-readable like npm's cache; the umask must not change that.
  if (::fchmod(fd.get(), 0644) != 0) {
    return util::Unexpected<Error>{util::io_error("write", m_temp, errno)};
  }
  if (sync == Sync::now && ::fsync(fd.get()) != 0) {
    return util::Unexpected<Error>{util::io_error("write", m_temp, errno)};
  }
  // The tag hashes the SHA-256 before the bytes, so it takes a second
  // pass: over the page cache, a small fraction of the first one's cost.
  std::string sha256 = m_sha256->finish();
  util::Checksum tag;
  start_file_tag(tag, sha256);
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) {
    return util::Unexpected<Error>{util::io_error("read", m_temp, errno)};
  }
  std::uint64_t read = 0;
  NPME_TRY(util::read_chunks(fd.get(), m_temp, 256u << 10, [&](std::string_view chunk) {
    tag.update(chunk);
    read += chunk.size();
  }));
  if (read != m_size) {
    return make_error(Errc::io, "staged file '" + m_temp.string() + "' holds " + std::to_string(read) +
                                  " bytes, " + std::to_string(m_size) + " were written");
  }
  NPME_TRY(fd.close(m_temp));
  StagedFile staged(m_temp, rel_path, FileDigest{std::move(sha256), tag.value(), static_cast<std::int64_t>(m_size)});
  staged.set_synced(sync == Sync::now);
  m_temp.clear(); // the StagedFile owns it now
  return staged;
}

} // namespace npme::store
