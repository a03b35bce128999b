#pragma once
// `npm search` (GET /-/v1/search): matches packages by name, description,
// keywords and maintainers and answers in the shape of npm's registry.

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace npme::registry {

struct SearchQuery {
  // Words to match (all must match, case-insensitive). Qualifiers as npm's
  // registry knows them: "keywords:a,b", "scope:s", "author:u",
  // "maintainer:u".
  std::string text;
  std::size_t size = 20; // at most 250
  std::size_t from = 0;
};

// Returns {"objects":[...],"total":N,"time":"..."} for the stored package
// documents `docs`, best matches first; `now` is the "time" reported.
nlohmann::json search_packages(const std::vector<nlohmann::json>& docs, const SearchQuery& query,
                               const std::string& now);

} // namespace npme::registry
