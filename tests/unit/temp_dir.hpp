#pragma once
// The unit tests' scratch directory: a fresh directory under the system temp
// directory, removed with its content when the test ends.

#include "core/util/crypto.hpp"

#include <filesystem>
#include <system_error>

namespace npme::test {

struct TempDir {
  std::filesystem::path path;
  TempDir() : path(std::filesystem::temp_directory_path() / ("npme-test-" + util::random_token(12))) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

} // namespace npme::test
