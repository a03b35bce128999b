#pragma once
// Non-throwing accessors for JSON documents that come from clients or from
// the store: a missing member or one of the wrong type is "absent", never an
// exception.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>

namespace npme::registry {

// Returns member `key` of `object`, or nullptr when `object` is not an
// object or has no such member.
inline const nlohmann::json* member(const nlohmann::json& object, std::string_view key) {
  if (!object.is_object()) {
    return nullptr;
  }
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

inline nlohmann::json* member(nlohmann::json& object, std::string_view key) {
  if (!object.is_object()) {
    return nullptr;
  }
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// Returns member `key` of `object` when it is a string.
inline std::optional<std::string> string_member(const nlohmann::json& object, std::string_view key) {
  const nlohmann::json* value = member(object, key);
  if (value == nullptr || !value->is_string()) {
    return std::nullopt;
  }
  return value->get<std::string>();
}

// The deepest nesting of arrays and objects accepted in a request body.
// Copying and serializing JSON recurses, so a body of a million '[' must be
// refused before it is parsed.
inline constexpr std::size_t k_max_json_depth = 128;

// Returns the deepest nesting of arrays and objects in `text`, outside of
// strings, without parsing it.
inline std::size_t json_nesting_depth(std::string_view text) {
  std::size_t depth = 0;
  std::size_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// Parses `text`; nullopt when it is not valid JSON or nested deeper than
// k_max_json_depth.
inline std::optional<nlohmann::json> parse_json(std::string_view text) {
  if (json_nesting_depth(text) > k_max_json_depth) {
    return std::nullopt;
  }
  nlohmann::json value = nlohmann::json::parse(text, nullptr, false);
  if (value.is_discarded()) {
    return std::nullopt;
  }
  return value;
}

} // namespace npme::registry
