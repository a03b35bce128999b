#include "core/util/cidr.hpp"

#include "core/util/text.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>

namespace npme::util {

namespace {

using Bytes = std::array<std::uint8_t, 16>;

// An IPv4 or IPv6 address in its 16-byte form (IPv4 mapped into ::ffff:0:0/96);
// `v4` tells which was written.
std::optional<Bytes> parse_address(std::string_view text, bool* v4 = nullptr) {
  if (text.empty() || text.size() > INET6_ADDRSTRLEN) {
    return std::nullopt;
  }
  // An IPv6 zone ("fe80::1%eth0") names an interface, not part of the address.
  if (auto percent = text.find('%'); percent != std::string_view::npos) {
    text = text.substr(0, percent);
  }
  const std::string z(text);
  Bytes bytes{};
  in_addr a4{};
  if (::inet_pton(AF_INET, z.c_str(), &a4) == 1) {
    bytes[10] = bytes[11] = 0xff;
    std::memcpy(bytes.data() + 12, &a4, 4);
    if (v4 != nullptr) {
      *v4 = true;
    }
    return bytes;
  }
  in6_addr a6{};
  if (::inet_pton(AF_INET6, z.c_str(), &a6) == 1) {
    std::memcpy(bytes.data(), &a6, 16);
    if (v4 != nullptr) {
      *v4 = false;
    }
    return bytes;
  }
  return std::nullopt;
}

bool prefix_matches(const Bytes& range, int prefix, const Bytes& address) {
  int whole = prefix / 8;
  for (int i = 0; i < whole; ++i) {
    if (range[static_cast<std::size_t>(i)] != address[static_cast<std::size_t>(i)]) {
      return false;
    }
  }
  int rest = prefix % 8;
  if (rest == 0) {
    return true;
  }
  auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (range[static_cast<std::size_t>(whole)] & mask) == (address[static_cast<std::size_t>(whole)] & mask);
}

std::string address_text(const Bytes& bytes, bool v4) {
  char out[INET6_ADDRSTRLEN] = {};
  if (v4) {
    ::inet_ntop(AF_INET, bytes.data() + 12, out, sizeof out);
  } else {
    ::inet_ntop(AF_INET6, bytes.data(), out, sizeof out);
  }
  return out;
}

} // namespace

Expected<Cidr> parse_cidr(std::string_view text) {
  const std::string shown(text);
  auto refuse = [&](const std::string& why) {
    return make_error(Errc::invalid, "address range '" + shown + "': " + why +
                                       " (expected CIDR notation such as 10.0.0.0/8 or 2001:db8::/32)");
  };
  auto slash = text.find('/');
  bool v4 = false;
  auto address = parse_address(text.substr(0, slash), &v4);
  if (!address) {
    return refuse("not an IPv4 or IPv6 address");
  }
  const int width = v4 ? 32 : 128;
  int bits = width;
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), bits);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || bits < 0 || bits > width) {
      return refuse("the prefix length must be 0 to " + std::to_string(width));
    }
  }
  Cidr range;
  range.address = *address;
  range.prefix = bits + (v4 ? 96 : 0);
  // Host bits set below the prefix are a typo more often than an intent.
  Bytes masked{};
  for (std::size_t i = 0; i < masked.size(); ++i) {
    const int keep = std::min(8, std::max(0, range.prefix - static_cast<int>(i) * 8));
    masked[i] = static_cast<std::uint8_t>(range.address[i] & (keep == 0 ? 0 : (0xff << (8 - keep)) & 0xff));
  }
  if (masked != range.address) {
    return refuse("has bits set past the prefix; did you mean " + address_text(masked, v4) + "/" +
                  std::to_string(bits) + "?");
  }
  range.text = address_text(range.address, v4) + "/" + std::to_string(bits);
  return range;
}

Expected<std::vector<Cidr>> parse_cidrs(std::string_view text) {
  std::vector<Cidr> ranges;
  for (const auto& item : split_list(text)) {
    NPME_TRY_ASSIGN(auto range, parse_cidr(item));
    ranges.push_back(std::move(range));
  }
  return ranges;
}

bool contains(const Cidr& range, std::string_view address) {
  auto bytes = parse_address(trim(address));
  return bytes && prefix_matches(range.address, range.prefix, *bytes);
}

bool is_address(std::string_view text) {
  return parse_address(trim(text)).has_value();
}

bool contains_any(const std::vector<Cidr>& ranges, std::string_view address) {
  auto bytes = parse_address(trim(address));
  if (!bytes) {
    return false;
  }
  for (const auto& range : ranges) {
    if (prefix_matches(range.address, range.prefix, *bytes)) {
      return true;
    }
  }
  return false;
}

} // namespace npme::util
