#include "core/util/gzip.hpp"

#include "core/util/text.hpp"

#include <zlib.h>

#include <cctype>
#include <new>

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

std::string gzip(std::string_view data, int level) {
  z_stream stream{};
  // 16 + MAX_WBITS: a gzip header (no name, mtime 0) and trailer.
  if (deflateInit2(&stream, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    throw std::bad_alloc(); // deflateInit2 fails only without memory (the arguments are valid)
  }
  struct End {
    z_stream& stream;
    ~End() { deflateEnd(&stream); }
  } end{stream};
  std::string out;
  out.resize(deflateBound(&stream, static_cast<uLong>(data.size())));
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  // deflateBound() is enough for one Z_FINISH call.
  if (deflate(&stream, Z_FINISH) != Z_STREAM_END) {
    throw std::bad_alloc();
  }
  out.resize(stream.total_out);
  return out;
}

bool accepts_gzip(std::string_view accept_encoding) {
  bool star = false;
  for (const std::string& item : split_list(accept_encoding)) {
    const auto semicolon = item.find(';');
    std::string coding(trim(std::string_view(item).substr(0, semicolon)));
    for (auto& c : coding) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    // A weight of 0 (q=0, q=0.000) refuses the coding.
    bool refused = false;
    if (semicolon != std::string::npos) {
      for (const std::string& parameter : split_list(std::string_view(item).substr(semicolon + 1), ';')) {
        if (parameter.size() > 2 && (parameter[0] == 'q' || parameter[0] == 'Q') && parameter[1] == '=') {
          refused = parameter.find_first_not_of("0.", 2) == std::string::npos;
        }
      }
    }
    if (coding == "gzip" || coding == "x-gzip") {
      return !refused;
    }
    if (coding == "*") {
      star = !refused;
    }
  }
  return star;
}

} // namespace npme::util
