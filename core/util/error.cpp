#include "core/util/error.hpp"

#include <array>
#include <utility>

namespace npme {

namespace {

struct ErrcInfo {
  Errc code;
  std::string_view name;
  int exit_status;
  int http_status;
};

constexpr std::array k_errc_table{
  ErrcInfo{Errc::failed, "failed", 1, 500},
  ErrcInfo{Errc::usage, "usage", 2, 400},
  ErrcInfo{Errc::invalid, "invalid", 2, 400},
  ErrcInfo{Errc::not_found, "not_found", 1, 404},
  ErrcInfo{Errc::conflict, "conflict", 1, 409},
  ErrcInfo{Errc::forbidden, "forbidden", 4, 403},
  ErrcInfo{Errc::unauthorized, "unauthorized", 4, 401},
  ErrcInfo{Errc::too_large, "too_large", 1, 413},
  ErrcInfo{Errc::unreachable, "unreachable", 3, 502},
  ErrcInfo{Errc::verify, "verify", 5, 400},
  ErrcInfo{Errc::precondition, "precondition", 6, 409},
  ErrcInfo{Errc::timeout, "timeout", 7, 504},
  ErrcInfo{Errc::interrupted, "interrupted", 130, 503},
  ErrcInfo{Errc::io, "io", 1, 500},
  ErrcInfo{Errc::unavailable, "unavailable", 6, 503},
  ErrcInfo{Errc::no_space, "no_space", 1, 507},
};

const ErrcInfo& info(Errc code) {
  for (const auto& entry : k_errc_table) {
    if (entry.code == code) {
      return entry;
    }
  }
  return k_errc_table[0];
}

} // namespace

std::string_view errc_name(Errc code) {
  return info(code).name;
}

Errc errc_from_name(std::string_view name) {
  for (const auto& entry : k_errc_table) {
    if (entry.name == name) {
      return entry.code;
    }
  }
  return Errc::failed;
}

int exit_code(Errc code) {
  return info(code).exit_status;
}

int http_status(Errc code) {
  return info(code).http_status;
}

} // namespace npme
