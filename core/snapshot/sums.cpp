// SHA256SUMS: its lines, written and parsed.

#include "core/snapshot/format.hpp"

#include "core/util/crypto.hpp"

#include <charconv>

namespace npme::snapshot {

namespace detail {

Expected<void> SumsParser::feed(std::string_view data) {
  while (!data.empty()) {
    const auto newline = data.find('\n');
    if (newline == std::string_view::npos) {
      m_partial.append(data);
      // A line is a digest and an entry name: a few hundred bytes at most.
      if (m_partial.size() > 64 * 1024) {
        return make_error(Errc::verify, "SHA256SUMS: line " + std::to_string(m_line_no + 1) + " is too long");
      }
      return {};
    }
    if (m_partial.empty()) {
      NPME_TRY(line(data.substr(0, newline)));
    } else {
      m_partial.append(data.substr(0, newline));
      std::string whole = std::move(m_partial);
      m_partial.clear();
      NPME_TRY(line(whole));
    }
    data.remove_prefix(newline + 1);
  }
  return {};
}

Expected<void> SumsParser::finish() {
  if (!m_partial.empty()) {
    return make_error(Errc::verify, "SHA256SUMS: last line is not terminated");
  }
  return {};
}

Expected<void> SumsParser::line(std::string_view text) {
  ++m_line_no;
  if (text.size() < 67 || text.substr(64, 2) != "  ") {
    return make_error(Errc::verify, "SHA256SUMS: malformed line " + std::to_string(m_line_no));
  }
  std::string raw;
  for (std::size_t i = 0; i < 64; i += 2) {
    unsigned value = 0;
    const auto [ptr, ec] = std::from_chars(text.data() + i, text.data() + i + 2, value, 16);
    if (ec != std::errc() || ptr != text.data() + i + 2) {
      return make_error(Errc::verify, "SHA256SUMS: malformed digest on line " + std::to_string(m_line_no));
    }
    raw += static_cast<char>(value);
  }
  if (m_catalog == nullptr) {
    return {};
  }
  NPME_TRY_ASSIGN(const bool added, m_catalog->add_sum(std::string(text.substr(66)), raw));
  if (!added) {
    return make_error(Errc::verify, "SHA256SUMS: duplicate entry on line " + std::to_string(m_line_no));
  }
  return {};
}

std::string sums_line(std::string_view name, std::string_view sha256) {
  std::string text = util::hex(sha256);
  text += "  ";
  text += name;
  text += '\n';
  return text;
}

} // namespace detail

} // namespace npme::snapshot
