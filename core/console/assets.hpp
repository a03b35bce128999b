#pragma once
// The admin console's files (console/ in the source tree: HTML, CSS and
// JavaScript modules), embedded into the binary at build time by
// cmake/embed_console.cmake: nothing is read from disk or fetched.

#include <string_view>
#include <vector>

namespace npme::console {

struct Asset {
  std::string_view name;         // "index.html", "app.js"
  std::string_view content_type; // "text/javascript; charset=utf-8"
  std::string_view body;
};

const std::vector<Asset>& assets();

// The asset called `name`; nullptr when there is none.
inline const Asset* find_asset(std::string_view name) {
  for (const auto& asset : assets()) {
    if (asset.name == name) {
      return &asset;
    }
  }
  return nullptr;
}

} // namespace npme::console
