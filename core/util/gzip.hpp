#pragma once
// gzip decoding (zlib), for request bodies npm sends compressed (audits).

#include "core/util/error.hpp"

#include <cstddef>
#include <string>
#include <string_view>

namespace npme::util {

// Returns the decompressed bytes of gzip data `compressed`. Errc::invalid
// when it is not gzip or is truncated; Errc::too_large past `max_bytes`.
Expected<std::string> gunzip(std::string_view compressed, std::size_t max_bytes);

} // namespace npme::util
