#include "core/registry/publish_body.hpp"

#include "core/registry/json_util.hpp"

#include <optional>

namespace npme::registry {

namespace {

// Decoded tarball bytes are handed to the sink in pieces of about this size.
constexpr std::size_t k_flush_bytes = 256u << 10;
// Keys longer than this never name what the scanner looks for.
constexpr std::size_t k_max_key = 4096;
// The tarball's data is three levels deep; deeper levels need no tracking
// (a hostile body of nested brackets costs no memory but its JSON text,
// which parse_json() then refuses).
constexpr std::size_t k_max_tracked = 3;

// One open object or array, and in an object the member being read.
struct Level {
  bool object = false;
  bool expecting_key = false; // after '{' or ','
  std::string key;            // the last key read, escapes decoded
  bool key_truncated = false; // longer than k_max_key: matches nothing
};

enum class InString { none, key, value, tarball };

// The character a one-letter escape stands for, or 0 for an invalid escape.
char unescaped(char c) {
  switch (c) {
  case '"': return '"';
  case '\\': return '\\';
  case '/': return '/';
  case 'b': return '\b';
  case 'f': return '\f';
  case 'n': return '\n';
  case 'r': return '\r';
  case 't': return '\t';
  default: return 0;
  }
}

util::Unexpected<Error> invalid(std::string message) {
  return make_error(Errc::invalid, std::move(message));
}

} // namespace

struct BodySplitter::State {
  Sink sink;
  std::string json;           // the body without the tarball's data
  std::size_t depth = 0;      // of the open objects and arrays
  std::vector<Level> stack;   // the outermost k_max_tracked of them
  InString in_string = InString::none;
  bool escape = false;        // after a backslash
  int unicode_left = 0;       // hex digits of a \u escape still to come
  std::uint32_t unicode = 0;

  bool split = false;         // a tarball's data was taken out
  std::string attachment;
  util::Base64Decoder decoder;
  std::string decoded;        // decoded bytes not yet given to the sink
  util::Hasher sha512{util::Hasher::Algorithm::sha512};
  util::Hasher sha1{util::Hasher::Algorithm::sha1};
  std::uint64_t size = 0;
  std::optional<Error> failure; // sticky

  explicit State(Sink s) : sink(std::move(s)) {}

  // The string that starts now is `_attachments.<*.tgz>.data` of the root.
  bool at_tarball_data() const {
    if (depth != 3 || !stack[0].object || !stack[1].object || !stack[2].object || stack[2].expecting_key) {
      return false;
    }
    return !stack[0].key_truncated && stack[0].key == "_attachments" && !stack[1].key_truncated &&
           stack[1].key.ends_with(".tgz") && !stack[2].key_truncated && stack[2].key == "data";
  }

  Expected<void> flush() {
    if (decoded.empty()) {
      return {};
    }
    sha512.update(decoded);
    sha1.update(decoded);
    size += decoded.size();
    NPME_TRY(sink(decoded));
    decoded.clear();
    return {};
  }

  Expected<void> decode(std::string_view text) {
    if (!decoder.update(text, decoded)) {
      return invalid("invalid publish body: the tarball attachment's data is not valid base64");
    }
    if (decoded.size() >= k_flush_bytes) {
      return flush();
    }
    return {};
  }

  void start_string() {
    InString kind = InString::value;
    if (depth <= k_max_tracked && !stack.empty() && stack.back().object && stack.back().expecting_key) {
      kind = InString::key;
      stack.back().key.clear();
      stack.back().key_truncated = false;
    } else if (at_tarball_data()) {
      kind = InString::tarball;
    }
    in_string = kind;
    escape = false;
    unicode_left = 0;
    json.push_back('"');
  }

  Expected<void> start_tarball() {
    if (split) {
      return invalid("invalid publish body: more than one tarball attachment");
    }
    split = true;
    attachment = stack[1].key;
    return {};
  }

  Expected<void> end_string() {
    json.push_back('"');
    if (in_string == InString::key) {
      stack.back().expecting_key = false;
    } else if (in_string == InString::tarball) {
      if (!decoder.finish()) {
        return invalid("invalid publish body: the tarball attachment's data is not valid base64");
      }
      NPME_TRY(flush());
    }
    in_string = InString::none;
    return {};
  }

  void key_char(char c) {
    Level& level = stack.back();
    if (level.key.size() >= k_max_key) {
      level.key_truncated = true;
      return;
    }
    level.key.push_back(c);
  }

  // Structure between strings: copied, and the nesting followed.
  std::size_t structure(std::string_view bytes) {
    std::size_t i = 0;
    while (i < bytes.size()) {
      const char c = bytes[i];
      switch (c) {
      case '"':
        return i;
      case '{':
      case '[':
        if (++depth <= k_max_tracked) {
          stack.push_back(Level{c == '{', c == '{', {}, false});
        }
        break;
      case '}':
      case ']':
        if (depth > 0 && depth-- <= k_max_tracked) {
          stack.pop_back();
        }
        break;
      case ',':
        if (depth > 0 && depth <= k_max_tracked && stack.back().object) {
          stack.back().expecting_key = true;
        }
        break;
      default:
        break;
      }
      json.push_back(c);
      ++i;
    }
    return i;
  }

  // Inside a key or another value: copied; a key's text also decoded.
  Expected<std::size_t> copy_string(std::string_view bytes) {
    const bool is_key = in_string == InString::key;
    std::size_t i = 0;
    while (i < bytes.size()) {
      const char c = bytes[i];
      if (unicode_left > 0) {
        const int digit = util::hex_value(c);
        unicode = (unicode << 4) | static_cast<std::uint32_t>(digit < 0 ? 0 : digit);
        if (--unicode_left == 0 && is_key) {
          // Non-ASCII never occurs in the names looked for.
          key_char(unicode < 0x80 ? static_cast<char>(unicode) : '\x01');
        }
      } else if (escape) {
        escape = false;
        if (c == 'u') {
          unicode_left = 4;
          unicode = 0;
        } else if (is_key) {
          key_char(unescaped(c));
        }
      } else if (c == '\\') {
        escape = true;
      } else if (c == '"') {
        NPME_TRY(end_string());
        return i + 1;
      } else if (is_key) {
        key_char(c);
      } else {
        // A run of plain characters at once.
        std::size_t end = bytes.find_first_of("\"\\", i);
        if (end == std::string_view::npos) {
          end = bytes.size();
        }
        json.append(bytes.substr(i, end - i));
        i = end;
        continue;
      }
      json.push_back(c);
      ++i;
    }
    return i;
  }

  // Inside the tarball's data: decoded, never copied.
  Expected<std::size_t> tarball_string(std::string_view bytes) {
    std::size_t i = 0;
    while (i < bytes.size()) {
      const char c = bytes[i];
      if (unicode_left > 0) {
        const int digit = util::hex_value(c);
        if (digit < 0) {
          return invalid("invalid publish body: a bad \\u escape in the tarball attachment's data");
        }
        unicode = (unicode << 4) | static_cast<std::uint32_t>(digit);
        if (--unicode_left == 0) {
          // Only ASCII can be base64; anything else fails as a bad character.
          const char decoded_char = unicode < 0x80 ? static_cast<char>(unicode) : '\x80';
          NPME_TRY(decode(std::string_view(&decoded_char, 1)));
        }
        ++i;
      } else if (escape) {
        escape = false;
        if (c == 'u') {
          unicode_left = 4;
          unicode = 0;
        } else {
          const char decoded_char = unescaped(c);
          if (decoded_char == 0) {
            return invalid("invalid publish body: a bad escape in the tarball attachment's data");
          }
          NPME_TRY(decode(std::string_view(&decoded_char, 1)));
        }
        ++i;
      } else if (c == '\\') {
        escape = true;
        ++i;
      } else if (c == '"') {
        NPME_TRY(end_string());
        return i + 1;
      } else {
        std::size_t end = bytes.find_first_of("\"\\", i);
        if (end == std::string_view::npos) {
          end = bytes.size();
        }
        NPME_TRY(decode(bytes.substr(i, end - i)));
        i = end;
      }
    }
    return i;
  }

  Expected<void> feed(std::string_view bytes) {
    while (!bytes.empty()) {
      std::size_t used = 0;
      switch (in_string) {
      case InString::none:
        used = structure(bytes);
        if (used < bytes.size()) { // at a '"'
          start_string();
          if (in_string == InString::tarball) {
            NPME_TRY(start_tarball());
          }
          ++used;
        }
        break;
      case InString::key:
      case InString::value: {
        NPME_TRY_ASSIGN(used, copy_string(bytes));
        break;
      }
      case InString::tarball: {
        NPME_TRY_ASSIGN(used, tarball_string(bytes));
        break;
      }
      }
      bytes.remove_prefix(used);
    }
    return {};
  }
};

BodySplitter::BodySplitter(Sink sink) : m_state(std::make_unique<State>(std::move(sink))) {}

BodySplitter::~BodySplitter() = default;

Expected<void> BodySplitter::feed(std::string_view bytes) {
  State& state = *m_state;
  if (state.failure) {
    return util::Unexpected<Error>{*state.failure};
  }
  auto fed = state.feed(bytes);
  if (!fed) {
    state.failure = fed.error();
  }
  return fed;
}

Expected<PutBody> BodySplitter::finish() {
  State& state = *m_state;
  if (state.failure) {
    return util::Unexpected<Error>{*state.failure};
  }
  auto parsed = parse_json(state.json);
  if (!parsed) {
    return invalid("invalid request body: expected a JSON object");
  }
  PutBody body;
  body.json = std::move(*parsed);
  if (state.split) {
    body.attachment = std::move(state.attachment);
    body.tarball.size = state.size;
    body.tarball.sha512 = state.sha512.finish();
    body.tarball.sha1 = state.sha1.finish();
  }
  state.failure = Error{Errc::failed, "the body splitter is finished"};
  return body;
}

Expected<PutBody> split_body(std::string_view bytes, const BodySplitter::Sink& sink) {
  BodySplitter splitter(sink);
  NPME_TRY(splitter.feed(bytes));
  return splitter.finish();
}

} // namespace npme::registry
