#include "core/registry/semver.hpp"

#include "core/registry/names.hpp"
#include "core/util/text.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

// node-semver desugars a range into comparator sets by successive regular
// expression rewrites (hyphen ranges, whitespace after operators, carets,
// tildes, x-ranges, stars) and then refuses the whole range when any
// resulting comparator is not "<op><full version>". This file follows the
// same steps on words instead of regular expressions, so that it runs in
// linear time on untrusted input and accepts and refuses what node-semver
// 7 does, odd corners included (tests/unit/test_registry_semver.cpp lists
// some). Comparator versions are checked with validate_version, so "valid
// version" means one thing in npme; the price is that a numeric prerelease
// identifier above 2^53 ("1.2.3-99999999999999999999") is refused where
// node-semver keeps it as a string. Whitespace is ASCII whitespace; Unicode
// spaces, which JavaScript's \s also matches, are not.

namespace npme::registry {

namespace {

constexpr std::size_t k_max_version_length = 256;
// A part larger than this makes an invalid version anyway (node-semver
// refuses parts above Number.MAX_SAFE_INTEGER); saturating here keeps "+1"
// from overflowing.
constexpr std::uint64_t k_number_cap = 9007199254740992ULL;

enum class Op { lt, le, gt, ge, eq };

struct Comparator {
  Op op = Op::eq;
  std::string version; // a valid version without build metadata
};

// Comparators that must all hold. An empty set is node-semver's "*".
using ComparatorSet = std::vector<Comparator>;

// Alternatives ("||"): a version satisfies the range when it satisfies one set.
using Range = std::vector<ComparatorSet>;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_build_char(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

// Splits `text` at runs of whitespace.
std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> words;
  std::size_t pos = 0;
  while (pos < text.size()) {
    while (pos < text.size() && is_space(text[pos])) {
      ++pos;
    }
    std::size_t start = pos;
    while (pos < text.size() && !is_space(text[pos])) {
      ++pos;
    }
    if (pos > start) {
      words.push_back(text.substr(start, pos - start));
    }
  }
  return words;
}

// Removes every "+build.ids" from `text`, as node-semver does with a range
// before reading it: "1.2.3+abc - 2" is "1.2.3 - 2". A '+' without an
// identifier after it stays (and makes the range invalid).
std::string strip_build(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (text[pos] != '+' || pos + 1 >= text.size() || !is_build_char(text[pos + 1])) {
      out += text[pos++];
      continue;
    }
    ++pos;
    for (;;) {
      while (pos < text.size() && is_build_char(text[pos])) {
        ++pos;
      }
      if (pos + 1 < text.size() && text[pos] == '.' && is_build_char(text[pos + 1])) {
        ++pos;
        continue;
      }
      break;
    }
  }
  return out;
}

// node-semver's isX: a missing part, 'x', 'X' or '*'.
bool is_x(std::string_view part) {
  return part.empty() || part == "x" || part == "X" || part == "*";
}

// "0", a number without leading zeros, 'x', 'X' or '*'.
bool is_range_part(std::string_view part) {
  if (part == "x" || part == "X" || part == "*" || part == "0") {
    return true;
  }
  return !part.empty() && part.front() != '0' && std::all_of(part.begin(), part.end(), is_digit);
}

// Dot-separated identifiers of digits, letters and '-', numeric ones
// without leading zeros. Unlike validate_version this sets no limit on
// numeric identifiers, as node-semver does not: "1.2.x-99999999999999999999"
// is a valid range (its prerelease is ignored). A full version in a range
// still goes through validate_version.
bool is_prerelease(std::string_view text) {
  for (;;) {
    std::size_t dot = text.find('.');
    std::string_view identifier = text.substr(0, dot);
    if (identifier.empty() || !std::all_of(identifier.begin(), identifier.end(), is_build_char)) {
      return false;
    }
    if (identifier.size() > 1 && identifier.front() == '0' &&
        std::all_of(identifier.begin(), identifier.end(), is_digit)) {
      return false;
    }
    if (dot == std::string_view::npos) {
      return true;
    }
    text.remove_prefix(dot + 1);
  }
}

// A version as ranges write it (node-semver's XRANGEPLAIN, build metadata
// already stripped): "1", "1.x", "=v1.2.*", "1.2.3-beta.1".
struct Partial {
  std::string_view text;                 // all of it
  std::array<std::string_view, 3> parts; // numbers, x-es, or empty when missing
  std::string_view prerelease;           // after the '-'; only after three parts
};

std::optional<Partial> parse_partial(std::string_view text) {
  Partial partial;
  partial.text = text;
  std::size_t pos = 0;
  // node-semver skips any run of 'v' and '=' here; whether the run is
  // acceptable is decided later, by the comparator it turns into.
  while (pos < text.size() && (text[pos] == 'v' || text[pos] == '=')) {
    ++pos;
  }
  for (std::size_t i = 0; i < 3; ++i) {
    std::size_t start = pos;
    while (pos < text.size() && text[pos] != '.' && text[pos] != '-') {
      ++pos;
    }
    std::string_view part = text.substr(start, pos - start);
    if (!is_range_part(part)) {
      return std::nullopt;
    }
    partial.parts[i] = part;
    if (pos == text.size()) {
      return partial;
    }
    if (text[pos] == '-') {
      if (i < 2) {
        return std::nullopt;
      }
      break;
    }
    if (i == 2) {
      return std::nullopt; // a fourth part
    }
    ++pos;
  }
  partial.prerelease = text.substr(pos + 1);
  if (!is_prerelease(partial.prerelease)) {
    return std::nullopt;
  }
  return partial;
}

std::uint64_t to_number(std::string_view digits) {
  std::uint64_t value = 0;
  for (char c : digits) {
    value = std::min(value * 10 + static_cast<std::uint64_t>(c - '0'), k_number_cap);
  }
  return value;
}

std::string plus_one(std::string_view digits) {
  return std::to_string(to_number(digits) + 1);
}

std::string join(std::string_view major, std::string_view minor, std::string_view patch,
                 std::string_view prerelease = {}) {
  std::string version;
  version.reserve(major.size() + minor.size() + patch.size() + prerelease.size() + 3);
  version.append(major).append(".").append(minor).append(".").append(patch);
  if (!prerelease.empty()) {
    version.append("-").append(prerelease);
  }
  return version;
}

// Adds `op` `version` to `set`; false when `version` is invalid (a part
// beyond Number.MAX_SAFE_INTEGER, too long), which invalidates the range.
// node-semver drops ">=0.0.0" (spelled so) from every set: it is "*".
bool add(ComparatorSet& set, Op op, std::string version) {
  if (!validate_version(version)) {
    return false;
  }
  if (op != Op::ge || version != "0.0.0") {
    set.push_back({op, std::move(version)});
  }
  return true;
}

// Splits node-semver's GTLT, ((?:<|>)?=?), off the front of `text`.
std::string_view take_operator(std::string_view& text) {
  std::size_t length = 0;
  if (!text.empty() && (text[0] == '<' || text[0] == '>')) {
    length = 1;
  }
  if (length < text.size() && text[length] == '=') {
    ++length;
  }
  std::string_view op = text.substr(0, length);
  text.remove_prefix(length);
  return op;
}

Op to_op(std::string_view op) {
  if (op == "<") {
    return Op::lt;
  }
  if (op == "<=") {
    return Op::le;
  }
  if (op == ">") {
    return Op::gt;
  }
  if (op == ">=") {
    return Op::ge;
  }
  return Op::eq;
}

// A final comparator, node-semver's COMPARATOR: an optional operator, one
// optional 'v' and a full version; "" matches everything.
bool add_plain(ComparatorSet& set, std::string_view text) {
  if (text.empty() || text == ">=0.0.0") {
    return true;
  }
  Op op = to_op(take_operator(text));
  if (text.starts_with('v')) {
    text.remove_prefix(1);
  }
  if (!validate_version(text)) {
    return false;
  }
  set.push_back({op, std::string(text.substr(0, text.find('+')))});
  return true;
}

// ^1.2.3 := >=1.2.3 <2.0.0-0, ^0.2.3 := >=0.2.3 <0.3.0-0, ^0.0.3 := >=0.0.3 <0.0.4-0,
// ^1.2.x := >=1.2.0 <2.0.0-0, ^0.0.x := >=0.0.0 <0.1.0-0, ^0.x := >=0.0.0 <1.0.0-0.
bool add_caret(ComparatorSet& set, const Partial& partial) {
  auto [major, minor, patch] = partial.parts;
  if (is_x(major)) {
    return true;
  }
  if (is_x(minor)) {
    return add(set, Op::ge, join(major, "0", "0")) && add(set, Op::lt, join(plus_one(major), "0", "0", "0"));
  }
  if (is_x(patch)) {
    std::string upper = major == "0" ? join(major, plus_one(minor), "0", "0") : join(plus_one(major), "0", "0", "0");
    return add(set, Op::ge, join(major, minor, "0")) && add(set, Op::lt, std::move(upper));
  }
  std::string upper;
  if (major != "0") {
    upper = join(plus_one(major), "0", "0", "0");
  } else if (minor != "0") {
    upper = join(major, plus_one(minor), "0", "0");
  } else {
    upper = join(major, minor, plus_one(patch), "0");
  }
  return add(set, Op::ge, join(major, minor, patch, partial.prerelease)) && add(set, Op::lt, std::move(upper));
}

// ~1.2.3 := >=1.2.3 <1.3.0-0, ~1.2 := >=1.2.0 <1.3.0-0, ~1 := >=1.0.0 <2.0.0-0.
bool add_tilde(ComparatorSet& set, const Partial& partial) {
  auto [major, minor, patch] = partial.parts;
  if (is_x(major)) {
    return true;
  }
  if (is_x(minor)) {
    return add(set, Op::ge, join(major, "0", "0")) && add(set, Op::lt, join(plus_one(major), "0", "0", "0"));
  }
  std::string lower = is_x(patch) ? join(major, minor, "0") : join(major, minor, patch, partial.prerelease);
  return add(set, Op::ge, std::move(lower)) && add(set, Op::lt, join(major, plus_one(minor), "0", "0"));
}

// An x-range with operator `op` ("", "=", "<", "<=", ">", ">="): 1.x :=
// >=1.0.0 <2.0.0-0, >1.2 := >=1.3.0, <=1.x := <2.0.0-0, >* := nothing.
// Without an x it is a plain comparator, `token` as written.
bool add_x_range(ComparatorSet& set, std::string_view op, const Partial& partial, std::string_view token) {
  auto [major, minor, patch] = partial.parts;
  // Recent node-semver releases refuse an x followed by a number ("x.1", "1.x.2").
  if ((is_x(major) && !is_x(minor)) || (is_x(minor) && !patch.empty() && !is_x(patch))) {
    return false;
  }
  bool x_major = is_x(major);
  bool x_minor = x_major || is_x(minor);
  bool x_patch = x_minor || is_x(patch);
  if (!x_patch) {
    return add_plain(set, token);
  }
  if (op == "=") {
    op = "";
  }
  if (x_major) {
    if (op == ">" || op == "<") {
      return add(set, Op::lt, "0.0.0-0"); // nothing is allowed
    }
    return true; // nothing is forbidden
  }
  if (op.empty()) {
    if (x_minor) {
      return add(set, Op::ge, join(major, "0", "0")) && add(set, Op::lt, join(plus_one(major), "0", "0", "0"));
    }
    return add(set, Op::ge, join(major, minor, "0")) && add(set, Op::lt, join(major, plus_one(minor), "0", "0"));
  }
  std::string new_major(major);
  std::string new_minor = x_minor ? "0" : std::string(minor);
  if (op == ">") {
    op = ">="; // >1 := >=2.0.0, >1.2 := >=1.3.0
    if (x_minor) {
      new_major = plus_one(major);
    } else {
      new_minor = plus_one(minor);
    }
  } else if (op == "<=") {
    op = "<"; // <=1 := <2.0.0-0, <=1.2 := <1.3.0-0
    if (x_minor) {
      new_major = plus_one(major);
    } else {
      new_minor = plus_one(minor);
    }
  }
  return add(set, to_op(op), join(new_major, new_minor, "0", op == "<" ? "0" : ""));
}

// 1.2.3 - 2.3.4 := >=1.2.3 <=2.3.4, 1.2 - 2.3 := >=1.2.0 <2.4.0-0; an x on
// either side leaves that side open.
bool add_hyphen(ComparatorSet& set, const Partial& from, const Partial& to) {
  auto [from_major, from_minor, from_patch] = from.parts;
  bool ok = true;
  if (is_x(from_major)) {
    // no lower bound
  } else if (is_x(from_minor)) {
    ok = add(set, Op::ge, join(from_major, "0", "0"));
  } else if (is_x(from_patch)) {
    ok = add(set, Op::ge, join(from_major, from_minor, "0"));
  } else {
    ok = add_plain(set, ">=" + std::string(from.text));
  }
  if (!ok) {
    return false;
  }
  auto [to_major, to_minor, to_patch] = to.parts;
  if (is_x(to_major)) {
    return true;
  }
  if (is_x(to_minor)) {
    return add(set, Op::lt, join(plus_one(to_major), "0", "0", "0"));
  }
  if (is_x(to_patch)) {
    return add(set, Op::lt, join(to_major, plus_one(to_minor), "0", "0"));
  }
  if (!to.prerelease.empty()) {
    return add(set, Op::le, join(to_major, to_minor, to_patch, to.prerelease));
  }
  return add_plain(set, "<=" + std::string(to.text));
}

// Drops node-semver's STAR, (<|>)?=?\*, at its first match in `token`.
std::string drop_first_star(std::string_view token) {
  std::size_t star = token.find('*');
  if (star == std::string_view::npos) {
    return std::string(token);
  }
  std::size_t start = star;
  if (start > 0 && token[start - 1] == '=') {
    --start;
  }
  if (start > 0 && (token[start - 1] == '<' || token[start - 1] == '>')) {
    --start;
  }
  std::string out(token.substr(0, start));
  out.append(token.substr(star + 1));
  return out;
}

// Adds the comparators of one word of a range ("^1.2", ">=1.2.3", "1.x").
bool add_token(ComparatorSet& set, std::string_view token) {
  if (token.starts_with('^')) {
    auto partial = parse_partial(token.substr(1));
    return partial && add_caret(set, *partial);
  }
  if (token.starts_with('~')) {
    std::string_view rest = token.substr(token.starts_with("~>") ? 2 : 1);
    auto partial = parse_partial(rest);
    return partial && add_tilde(set, *partial);
  }
  std::string_view rest = token;
  std::string_view op = take_operator(rest);
  if (auto partial = parse_partial(rest)) {
    ComparatorSet added;
    if (add_x_range(added, op, *partial, token)) {
      set.insert(set.end(), added.begin(), added.end());
      return true;
    }
  }
  // What no rule rewrote loses its first '*' and must then be a plain
  // comparator: node-semver reads "1.2.3*" as "1.2.3".
  return add_plain(set, drop_first_star(token));
}

// True when node-semver's COMPARATORTRIM, (\s*)((?:<|>)?=?)\s*(plain),
// removes the space between words `left` and `right`: `left` ends with an
// operator the scan reaches and `right` starts like a version. A '=' after
// 'v' or '=' is not reached: the version's own [v=]* prefix takes it first.
bool joins_operator(std::string_view left, std::string_view right) {
  std::size_t start = right.find_first_not_of("v=");
  if (start == std::string_view::npos ||
      !(is_digit(right[start]) || right[start] == 'x' || right[start] == 'X' || right[start] == '*')) {
    return false;
  }
  if (left.ends_with('<') || left.ends_with('>')) {
    return true;
  }
  return left.ends_with('=') && (left.size() == 1 || (left[left.size() - 2] != 'v' && left[left.size() - 2] != '='));
}

// Joins the words of a comparator set where node-semver removes the space:
// after an operator ("> 1.2.3", ">= 1"), then after '~', "~>" and '^'
// ("~ 1.2", "^ 1").
std::vector<std::string> join_operators(const std::vector<std::string_view>& words) {
  std::vector<std::string> joined;
  for (std::string_view word : words) {
    if (!joined.empty() && joins_operator(joined.back(), word)) {
      joined.back() += word;
    } else {
      joined.emplace_back(word);
    }
  }
  std::vector<std::string> tilded;
  for (std::string& word : joined) {
    if (!tilded.empty() && tilded.back().ends_with("~>")) {
      tilded.back().pop_back();
      tilded.back() += word;
    } else if (!tilded.empty() && tilded.back().ends_with('~')) {
      tilded.back() += word;
    } else {
      tilded.push_back(std::move(word));
    }
  }
  std::vector<std::string> careted;
  for (std::string& word : tilded) {
    if (!careted.empty() && careted.back().ends_with('^')) {
      careted.back() += word;
    } else {
      careted.push_back(std::move(word));
    }
  }
  return careted;
}

// Reads one side of a hyphen range from `words` at `pos` and moves `pos`
// past it. node-semver's [v=\s]* lets words of only 'v' and '=' come before
// the version ("= v 1.x"); they stay in its text, where a space makes a
// full version invalid.
std::optional<Partial> hyphen_side(const std::vector<std::string_view>& words, std::size_t& pos) {
  std::size_t first = pos;
  while (pos < words.size() && words[pos].find_first_not_of("v=") == std::string_view::npos) {
    ++pos;
  }
  if (pos == words.size()) {
    return std::nullopt;
  }
  auto partial = parse_partial(words[pos]);
  if (partial) {
    const char* begin = words[first].data();
    partial->text = std::string_view(begin, static_cast<std::size_t>(words[pos].data() + words[pos].size() - begin));
  }
  ++pos;
  return partial;
}

// Recognises node-semver's HYPHENRANGE: "<version> - <version>".
std::optional<std::pair<Partial, Partial>> parse_hyphen(const std::vector<std::string_view>& words) {
  std::size_t pos = 0;
  auto from = hyphen_side(words, pos);
  if (!from || pos >= words.size() || words[pos] != "-") {
    return std::nullopt;
  }
  ++pos;
  auto to = hyphen_side(words, pos);
  if (!to || pos != words.size()) {
    return std::nullopt;
  }
  return std::pair{*from, *to};
}

std::optional<ComparatorSet> parse_set(std::string_view text) {
  std::string stripped = strip_build(util::trim(text));
  std::vector<std::string_view> words = split_words(stripped);
  ComparatorSet set;
  if (auto hyphen = parse_hyphen(words)) {
    if (!add_hyphen(set, hyphen->first, hyphen->second)) {
      return std::nullopt;
    }
    return set;
  }
  for (const std::string& token : join_operators(words)) {
    if (!add_token(set, token)) {
      return std::nullopt;
    }
  }
  return set;
}

std::optional<Range> parse_range(std::string_view text) {
  Range range;
  std::size_t start = 0;
  for (;;) {
    std::size_t bar = text.find("||", start);
    auto set = parse_set(text.substr(start, bar == std::string_view::npos ? std::string_view::npos : bar - start));
    if (!set) {
      return std::nullopt;
    }
    range.push_back(std::move(*set));
    if (bar == std::string_view::npos) {
      break;
    }
    start = bar + 2;
  }
  // A "*" alternative makes the whole range "*" in node-semver, which then
  // refuses every prerelease: "1.2.3-beta || *" does not match 1.2.3-beta.
  if (std::any_of(range.begin(), range.end(), [](const ComparatorSet& set) { return set.empty(); })) {
    return Range{ComparatorSet{}};
  }
  return range;
}

// A version being tested: node-semver trims it and allows one 'v'.
struct Candidate {
  std::string_view version; // valid, without the 'v'
  std::string_view core;    // "1.2.3"
  bool prerelease = false;
};

std::optional<Candidate> parse_candidate(std::string_view text) {
  if (text.size() > k_max_version_length) {
    return std::nullopt;
  }
  text = util::trim(text);
  if (text.starts_with('v')) {
    text.remove_prefix(1);
  }
  if (!validate_version(text)) {
    return std::nullopt;
  }
  Candidate candidate;
  candidate.version = text;
  candidate.core = text.substr(0, text.find_first_of("-+"));
  candidate.prerelease = candidate.core.size() < text.size() && text[candidate.core.size()] == '-';
  return candidate;
}

bool holds(Op op, int order) {
  switch (op) {
  case Op::lt:
    return order < 0;
  case Op::le:
    return order <= 0;
  case Op::gt:
    return order > 0;
  case Op::ge:
    return order >= 0;
  case Op::eq:
    return order == 0;
  }
  return false;
}

bool test_set(const ComparatorSet& set, const Candidate& candidate) {
  for (const Comparator& comparator : set) {
    if (!holds(comparator.op, compare_versions(candidate.version, comparator.version))) {
      return false;
    }
  }
  if (!candidate.prerelease) {
    return true;
  }
  // A prerelease only passes where the range opted into prereleases of
  // that very major.minor.patch.
  return std::any_of(set.begin(), set.end(), [&](const Comparator& comparator) {
    std::string_view version = comparator.version;
    std::size_t dash = version.find('-');
    return dash != std::string_view::npos && version.substr(0, dash) == candidate.core;
  });
}

bool test_range(const Range& range, const Candidate& candidate) {
  return std::any_of(range.begin(), range.end(), [&](const ComparatorSet& set) { return test_set(set, candidate); });
}

bool contains(const std::vector<std::string>& versions, const std::string& version) {
  return std::find(versions.begin(), versions.end(), version) != versions.end();
}

} // namespace

bool satisfies(std::string_view version, std::string_view range) {
  auto candidate = parse_candidate(version);
  if (!candidate) {
    return false;
  }
  auto parsed = parse_range(range);
  return parsed && test_range(*parsed, *candidate);
}

std::optional<std::string> max_satisfying(const std::vector<std::string>& versions, std::string_view range) {
  auto parsed = parse_range(range);
  if (!parsed) {
    return std::nullopt;
  }
  const std::string* best = nullptr;
  std::string_view best_version;
  for (const std::string& version : versions) {
    auto candidate = parse_candidate(version);
    if (!candidate || !test_range(*parsed, *candidate)) {
      continue;
    }
    if (best == nullptr || compare_versions(best_version, candidate->version) < 0) {
      best = &version;
      best_version = candidate->version;
    }
  }
  if (best == nullptr) {
    return std::nullopt;
  }
  return *best;
}

std::optional<std::string> pick_version(const std::vector<std::string>& versions,
                                        const std::map<std::string, std::string>& dist_tags, std::string_view range) {
  std::string_view wanted = util::trim(range);
  auto latest = dist_tags.find("latest");
  bool has_latest = latest != dist_tags.end() && contains(versions, latest->second);
  // npm-pick-manifest takes "latest" for "" and "*" without testing it, so
  // a prerelease tagged latest is installed by `npm install pkg`.
  if (wanted.empty() || wanted == "*") {
    if (has_latest) {
      return latest->second;
    }
    return max_satisfying(versions, "*");
  }
  if (auto parsed = parse_range(wanted)) {
    if (has_latest) {
      auto candidate = parse_candidate(latest->second);
      if (candidate && test_range(*parsed, *candidate)) {
        return latest->second;
      }
    }
    return max_satisfying(versions, wanted);
  }
  auto tag = dist_tags.find(std::string(wanted));
  if (tag != dist_tags.end() && contains(versions, tag->second)) {
    return tag->second;
  }
  return std::nullopt;
}

} // namespace npme::registry
