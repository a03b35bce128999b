#include "core/registry/names.hpp"

#include "core/http/message.hpp"
#include "core/util/text.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace npme::registry {

namespace {

constexpr std::size_t k_max_version_length = 256;
// node-semver refuses numeric parts above Number.MAX_SAFE_INTEGER.
constexpr std::uint64_t k_max_safe_integer = 9007199254740991ULL;

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_alnum(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// The characters encodeURIComponent leaves alone.
bool is_uri_component_char(char c) {
  return is_alnum(c) || c == '-' || c == '_' || c == '.' || c == '!' || c == '~' || c == '*' || c == '\'' ||
         c == '(' || c == ')';
}

bool is_uri_component(std::string_view text) {
  return std::all_of(text.begin(), text.end(), is_uri_component_char);
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  });
  return out;
}

util::Unexpected<Error> invalid_name(std::string_view name, std::string_view reason) {
  return make_error(Errc::invalid, "invalid package name '" + std::string(name) + "': " + std::string(reason));
}

// "0" or a number without leading zeros, within JavaScript's safe integers.
bool is_numeric_identifier(std::string_view text) {
  if (text.empty() || text.size() > 16 || !std::all_of(text.begin(), text.end(), is_digit)) {
    return false;
  }
  if (text.size() > 1 && text.front() == '0') {
    return false;
  }
  std::uint64_t value = 0;
  for (char c : text) {
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return value <= k_max_safe_integer;
}

bool is_identifier_char(char c) {
  return is_alnum(c) || c == '-';
}

// A prerelease identifier: numeric without leading zeros, or alphanumeric
// with at least one non-digit.
bool is_prerelease_identifier(std::string_view text) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), is_identifier_char)) {
    return false;
  }
  if (std::all_of(text.begin(), text.end(), is_digit)) {
    return is_numeric_identifier(text);
  }
  return true;
}

bool is_build_identifier(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), is_identifier_char);
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  for (;;) {
    auto pos = text.find(separator);
    parts.push_back(text.substr(0, pos));
    if (pos == std::string_view::npos) {
      return parts;
    }
    text.remove_prefix(pos + 1);
  }
}

// Checks "pre.release" (after '-') and "build" (after '+') parts.
bool valid_qualifier(std::string_view qualifier) {
  if (qualifier.empty()) {
    return true;
  }
  std::string_view build;
  auto plus = qualifier.find('+');
  if (plus != std::string_view::npos) {
    build = qualifier.substr(plus + 1);
    qualifier = qualifier.substr(0, plus);
    auto parts = split(build, '.');
    if (!std::all_of(parts.begin(), parts.end(), is_build_identifier)) {
      return false;
    }
  }
  if (qualifier.empty()) {
    return plus != std::string_view::npos;
  }
  if (qualifier.front() != '-') {
    return false;
  }
  auto parts = split(qualifier.substr(1), '.');
  return std::all_of(parts.begin(), parts.end(), is_prerelease_identifier);
}

struct ParsedVersion {
  std::array<std::uint64_t, 3> numbers{};
  std::vector<std::string_view> prerelease;
};

bool parse_version(std::string_view text, ParsedVersion& out) {
  if (text.empty() || text.size() > k_max_version_length) {
    return false;
  }
  std::size_t pos = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    std::size_t start = pos;
    while (pos < text.size() && is_digit(text[pos])) {
      ++pos;
    }
    std::string_view number = text.substr(start, pos - start);
    if (!is_numeric_identifier(number)) {
      return false;
    }
    out.numbers[i] = std::stoull(std::string(number));
    if (i < 2) {
      if (pos >= text.size() || text[pos] != '.') {
        return false;
      }
      ++pos;
    }
  }
  std::string_view qualifier = text.substr(pos);
  if (!valid_qualifier(qualifier)) {
    return false;
  }
  auto plus = qualifier.find('+');
  std::string_view pre = qualifier.substr(0, plus);
  if (!pre.empty()) {
    out.prerelease = split(pre.substr(1), '.');
  }
  return true;
}

// One "xr" of a range: a number, 'x', 'X' or '*'.
bool is_x_range_part(std::string_view text) {
  return text == "x" || text == "X" || text == "*" || is_numeric_identifier(text);
}

// node-semver's XRANGEPLAIN: [v=\s]* xr ( . xr ( . xr qualifier? )? )?
bool is_partial_version(std::string_view text) {
  while (!text.empty() && (text.front() == 'v' || text.front() == '=')) {
    text.remove_prefix(1);
  }
  if (text.empty()) {
    return false;
  }
  std::string_view qualifier;
  std::vector<std::string_view> parts;
  std::size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    std::size_t start = pos;
    while (pos < text.size() && text[pos] != '.' && text[pos] != '-' && text[pos] != '+') {
      ++pos;
    }
    parts.push_back(text.substr(start, pos - start));
    if (pos < text.size() && text[pos] == '.' && i < 2) {
      ++pos;
      continue;
    }
    break;
  }
  qualifier = text.substr(pos);
  if (!std::all_of(parts.begin(), parts.end(), is_x_range_part)) {
    return false;
  }
  if (!qualifier.empty()) {
    return parts.size() == 3 && valid_qualifier(qualifier);
  }
  return true;
}

bool is_operator_char(char c) {
  return c == '<' || c == '>' || c == '=' || c == '~' || c == '^';
}

// One comparator: an optional operator (<, <=, >, >=, =, ~, ~>, ^) and a
// partial version.
bool is_comparator(std::string_view token) {
  static constexpr std::array<std::string_view, 8> k_operators{">=", "<=", "~>", ">", "<", "=", "~", "^"};
  for (std::string_view op : k_operators) {
    if (token.starts_with(op)) {
      token.remove_prefix(op.size());
      break;
    }
  }
  return is_partial_version(token);
}

bool is_simple_range(std::string_view range) {
  range = util::trim(range);
  if (range.empty()) {
    return true; // "" means "*" to node-semver
  }
  std::vector<std::string> tokens;
  std::string pending_operator;
  for (std::string_view word : split(range, ' ')) {
    if (word.empty()) {
      continue;
    }
    // node-semver lets whitespace separate an operator from its version.
    if (std::all_of(word.begin(), word.end(), is_operator_char)) {
      pending_operator += std::string(word);
      continue;
    }
    tokens.push_back(pending_operator + std::string(word));
    pending_operator.clear();
  }
  if (!pending_operator.empty()) {
    return false;
  }
  if (tokens.size() == 3 && tokens[1] == "-") {
    return is_partial_version(tokens[0]) && is_partial_version(tokens[2]);
  }
  return std::all_of(tokens.begin(), tokens.end(), [](const std::string& token) { return is_comparator(token); });
}

} // namespace

Expected<void> validate_package_name(std::string_view name) {
  if (name.empty()) {
    return invalid_name(name, "name length must be greater than zero");
  }
  if (name.size() > k_max_name_length) {
    return invalid_name(name.substr(0, 32), "name cannot contain more than 214 characters");
  }
  if (name.front() == '.') {
    return invalid_name(name, "name cannot start with a period");
  }
  if (name.front() == '-') {
    return invalid_name(name, "name cannot start with a hyphen");
  }
  if (name.front() == '_') {
    return invalid_name(name, "name cannot start with an underscore");
  }
  if (util::trim(name) != name) {
    return invalid_name(name, "name cannot contain leading or trailing spaces");
  }
  std::string lowered = lower(name);
  if (lowered == "node_modules" || lowered == "favicon.ico") {
    return invalid_name(name, std::string(name) + " is not a valid package name");
  }
  if (is_uri_component(name)) {
    return {};
  }
  // Only a scoped name may hold characters encodeURIComponent changes, and
  // only its one '/' and leading '@'.
  if (name.front() == '@') {
    auto slash = name.find('/');
    if (slash != std::string_view::npos) {
      std::string_view scope = name.substr(1, slash - 1);
      std::string_view package = name.substr(slash + 1);
      if (scope.empty()) {
        return invalid_name(name, "scope cannot be empty");
      }
      if (package.empty()) {
        return invalid_name(name, "name after the scope cannot be empty");
      }
      // npm only refuses the period after the scope; a scope starting with
      // one is refused too so that no path segment can start with '.'.
      if (scope.front() == '.') {
        return invalid_name(name, "scope cannot start with a period");
      }
      if (package.front() == '.') {
        return invalid_name(name, "name cannot start with a period");
      }
      if (is_uri_component(scope) && is_uri_component(package)) {
        return {};
      }
    }
  }
  return invalid_name(name, "name can only contain URL-friendly characters");
}

bool is_scoped(std::string_view name) {
  return name.size() > 1 && name.front() == '@' && name.find('/') != std::string_view::npos;
}

std::string_view unscoped_name(std::string_view name) {
  if (!is_scoped(name)) {
    return name;
  }
  return name.substr(name.find('/') + 1);
}

Expected<std::string> name_from_param(std::string_view decoded) {
  NPME_TRY(validate_package_name(decoded));
  return std::string(decoded);
}

Expected<std::string> name_from_params(std::string_view scope, std::string_view name) {
  if (scope.size() < 2 || scope.front() != '@' || scope.find('/') != std::string_view::npos ||
      name.find('/') != std::string_view::npos) {
    return invalid_name(std::string(scope) + "/" + std::string(name), "not a scoped package name");
  }
  std::string full = std::string(scope) + "/" + std::string(name);
  NPME_TRY(validate_package_name(full));
  return full;
}

Expected<std::string> name_from_url_segment(std::string_view raw) {
  auto decoded = http::percent_decode(raw);
  if (!decoded) {
    return invalid_name(raw, "malformed percent-encoding");
  }
  return name_from_param(*decoded);
}

Expected<void> validate_version(std::string_view version) {
  ParsedVersion parsed;
  if (!parse_version(version, parsed)) {
    return make_error(Errc::invalid, "invalid version '" + std::string(version.substr(0, 64)) +
                                       "': expected a semantic version such as 1.2.3 or 1.2.3-beta.1");
  }
  return {};
}

int compare_versions(std::string_view a, std::string_view b) {
  ParsedVersion left;
  ParsedVersion right;
  bool left_ok = parse_version(a, left);
  bool right_ok = parse_version(b, right);
  if (!left_ok || !right_ok) {
    return static_cast<int>(left_ok) - static_cast<int>(right_ok);
  }
  for (std::size_t i = 0; i < 3; ++i) {
    if (left.numbers[i] != right.numbers[i]) {
      return left.numbers[i] < right.numbers[i] ? -1 : 1;
    }
  }
  // A version without prerelease ranks above one with.
  if (left.prerelease.empty() || right.prerelease.empty()) {
    return static_cast<int>(left.prerelease.empty()) - static_cast<int>(right.prerelease.empty());
  }
  for (std::size_t i = 0; i < std::min(left.prerelease.size(), right.prerelease.size()); ++i) {
    std::string_view x = left.prerelease[i];
    std::string_view y = right.prerelease[i];
    bool x_numeric = std::all_of(x.begin(), x.end(), is_digit);
    bool y_numeric = std::all_of(y.begin(), y.end(), is_digit);
    if (x_numeric && y_numeric) {
      if (x.size() != y.size()) {
        return x.size() < y.size() ? -1 : 1;
      }
      if (x != y) {
        return x < y ? -1 : 1;
      }
    } else if (x_numeric != y_numeric) {
      return x_numeric ? -1 : 1; // numeric identifiers rank lower
    } else if (x != y) {
      return x < y ? -1 : 1;
    }
  }
  if (left.prerelease.size() != right.prerelease.size()) {
    return left.prerelease.size() < right.prerelease.size() ? -1 : 1;
  }
  return 0;
}

bool is_version_range(std::string_view text) {
  // node-semver splits the range set on "||" with optional spaces around.
  std::size_t start = 0;
  for (;;) {
    auto pos = text.find("||", start);
    if (!is_simple_range(text.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start))) {
      return false;
    }
    if (pos == std::string_view::npos) {
      return true;
    }
    start = pos + 2;
  }
}

Expected<void> validate_dist_tag(std::string_view tag) {
  std::string shown(tag.substr(0, 64));
  if (tag.empty()) {
    return make_error(Errc::invalid, "invalid dist-tag '': a tag cannot be empty");
  }
  if (tag.size() > k_max_name_length) {
    return make_error(Errc::invalid, "invalid dist-tag '" + shown + "': longer than 214 characters");
  }
  if (!is_uri_component(tag)) {
    return make_error(Errc::invalid, "invalid dist-tag '" + shown + "': tags can only contain URL-friendly characters");
  }
  if (is_version_range(tag)) {
    return make_error(Errc::invalid, "invalid dist-tag '" + shown +
                                       "': tags that are versions or version ranges would be ambiguous");
  }
  return {};
}

std::string tarball_file_name(std::string_view name, std::string_view version) {
  std::string file(unscoped_name(name));
  file += '-';
  file += version;
  file += ".tgz";
  return file;
}

std::string tarball_rel_path(std::string_view name, std::string_view version) {
  std::string path(name);
  path += "/-/";
  path += tarball_file_name(name, version);
  return path;
}

Expected<std::string> tarball_rel_path_for_file(std::string_view name, std::string_view file) {
  std::string prefix(unscoped_name(name));
  prefix += '-';
  bool shaped = file.size() > prefix.size() + 4 && file.starts_with(prefix) && file.ends_with(".tgz");
  // The version part must be a plain version: no path characters can slip
  // into the packages directory through a tarball request.
  std::string_view version = shaped ? file.substr(prefix.size(), file.size() - prefix.size() - 4) : "";
  if (!shaped || !validate_version(version)) {
    return make_error(Errc::not_found, "no tarball '" + std::string(file.substr(0, 128)) + "' for package " +
                                         std::string(name));
  }
  std::string path(name);
  path += "/-/";
  path += file;
  return path;
}

} // namespace npme::registry
