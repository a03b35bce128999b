#include "core/auth/policy.hpp"

#include "core/util/text.hpp"
#include "core/util/time.hpp"

#include <charconv>

namespace npme::auth {

Expected<std::chrono::seconds> parse_duration(std::string_view text) {
  const std::string shown(text);
  auto refuse = [&] {
    return make_error(Errc::invalid, "duration '" + shown +
                                       "': expected a whole number and a unit: s, m, h, d or w (e.g. 90d, 12h)");
  };
  text = util::trim(text);
  if (text.size() < 2) {
    return refuse();
  }
  std::int64_t unit = 0;
  switch (text.back()) {
  case 's': unit = 1; break;
  case 'm': unit = 60; break;
  case 'h': unit = 3600; break;
  case 'd': unit = 86400; break;
  case 'w': unit = 7 * 86400; break;
  default: return refuse();
  }
  auto digits = text.substr(0, text.size() - 1);
  std::int64_t count = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), count);
  if (ec != std::errc() || end != digits.data() + digits.size() || count <= 0) {
    return refuse();
  }
  constexpr std::int64_t k_max_seconds = 100LL * 366 * 86400;
  if (count > k_max_seconds / unit) {
    return make_error(Errc::invalid, "duration '" + shown + "': more than 100 years");
  }
  return std::chrono::seconds(count * unit);
}

std::string client_address(std::string_view peer, std::string_view forwarded_for,
                           const std::vector<Cidr>& trusted_proxies) {
  if (forwarded_for.empty() || trusted_proxies.empty() || !util::contains_any(trusted_proxies, peer)) {
    return std::string(peer);
  }
  std::string client(peer);
  auto hops = util::split_list(forwarded_for);
  for (auto hop = hops.rbegin(); hop != hops.rend(); ++hop) {
    if (!util::is_address(*hop)) {
      break; // not an address: nothing left of it can be trusted either
    }
    client = *hop;
    if (!util::contains_any(trusted_proxies, *hop)) {
      break;
    }
  }
  return client;
}

Expected<void> check_token_use(std::int64_t expires, const std::vector<Cidr>& ranges, std::string_view address,
                               std::chrono::system_clock::time_point now) {
  if (expires > 0 && std::chrono::system_clock::to_time_t(now) >= expires) {
    return make_error(Errc::unauthorized,
                      "token expired at " + util::iso8601(std::chrono::system_clock::from_time_t(expires)) +
                        "; ask for a new one (npme token create) or run npm login again");
  }
  if (!ranges.empty() && !util::contains_any(ranges, address)) {
    std::string allowed;
    for (const auto& range : ranges) {
      allowed += (allowed.empty() ? "" : ", ") + range.text;
    }
    return make_error(Errc::forbidden,
                      "token not allowed from " + std::string(address) + " (its ranges: " + allowed + ")");
  }
  return {};
}

} // namespace npme::auth
