#pragma once
// gzip (zlib): decoding request bodies npm sends compressed (audits), and
// encoding the JSON answers of clients that accept gzip.

#include "core/util/error.hpp"

#include <cstddef>
#include <string>
#include <string_view>

namespace npme::util {

// Returns the decompressed bytes of gzip data `compressed`. Errc::invalid
// when it is not gzip or is truncated; Errc::too_large past `max_bytes`.
Expected<std::string> gunzip(std::string_view compressed, std::size_t max_bytes);

// Returns `data` gzip-compressed at `level` (1 fastest .. 9 smallest), with
// no file name and a zero timestamp: the same input always gives the same
// bytes (an ETag of the compressed form stays valid across restarts).
std::string gzip(std::string_view data, int level = 6);

// Returns true when an Accept-Encoding header value allows gzip ("gzip",
// "gzip;q=0.5", "*"; not "gzip;q=0" nor "identity").
bool accepts_gzip(std::string_view accept_encoding);

} // namespace npme::util
