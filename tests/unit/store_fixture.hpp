#pragma once
// A store under a test's scratch directory: <root>/couchdb, <root>/packages
// and <root>/data, as an instance lays them out.

#include "core/store/store.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <memory>

namespace npme::test {

inline store::Paths store_paths(const std::filesystem::path& root) {
  return {root / "couchdb", root / "packages", root / "data"};
}

inline std::unique_ptr<store::Store> open_store(const std::filesystem::path& root) {
  auto opened = store::Store::open(store_paths(root));
  REQUIRE_MESSAGE(opened, (opened ? "" : opened.error().message));
  return std::move(*opened);
}

} // namespace npme::test
