#include "core/util/gzip.hpp"

#include <zlib.h>

namespace npme::util {

Expected<std::string> gunzip(std::string_view compressed, std::size_t max_bytes) {
  z_stream stream{};
  // 16 + MAX_WBITS: a gzip header and trailer, not raw zlib.
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) {
    return make_error(Errc::failed, "gunzip: cannot initialize zlib");
  }
  struct End {
    z_stream& stream;
    ~End() { inflateEnd(&stream); }
  } end{stream};
  std::string out;
  char buffer[65536];
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  int result = Z_OK;
  while (result != Z_STREAM_END) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer);
    stream.avail_out = sizeof(buffer);
    result = inflate(&stream, Z_NO_FLUSH);
    if (result != Z_OK && result != Z_STREAM_END) {
      return make_error(Errc::invalid, std::string("gunzip: ") + (stream.msg != nullptr ? stream.msg : "not gzip data"));
    }
    out.append(buffer, sizeof(buffer) - stream.avail_out);
    if (out.size() > max_bytes) {
      return make_error(Errc::too_large, "gunzip: more than " + std::to_string(max_bytes) + " bytes");
    }
    if (result == Z_OK && stream.avail_in == 0 && stream.avail_out != 0) {
      return make_error(Errc::invalid, "gunzip: truncated data");
    }
  }
  return out;
}

} // namespace npme::util
