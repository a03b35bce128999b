#include "core/util/crypto.hpp"
#include "core/util/gzip.hpp"
#include "core/util/integrity.hpp"

#include <doctest/doctest.h>

#include <zlib.h>

using namespace npme;
using namespace npme::util;

TEST_CASE("util::expected_digest takes the strongest algorithm and every digest of it") {
  const std::string a = "aaa";
  const std::string b = "bbb";
  auto two = expected_digest(sri_sha512(a) + " " + sri_sha512(b) + " sha1-" + base64_encode(sha1(a)));
  REQUIRE(two);
  CHECK(two->algorithm == Hasher::Algorithm::sha512);
  CHECK(two->digests.size() == 2);
  CHECK(digest_matches(*two, sha512(a)));
  CHECK(digest_matches(*two, sha512(b)));
  CHECK(!digest_matches(*two, sha512("c")));
  auto weak = expected_digest("sha1-" + base64_encode(sha1(a)) + " sha256-" + base64_encode(sha256(a)));
  REQUIRE(weak);
  CHECK(weak->algorithm == Hasher::Algorithm::sha256);
  // Bad base64, wrong sizes, unknown algorithms and options are skipped or ignored.
  auto odd = expected_digest("sha512-!!!! sha512-" + base64_encode("short") + " md5-xyz " + sri_sha512(a) + "?opt");
  REQUIRE(odd);
  CHECK(odd->digests.size() == 1);
  CHECK(digest_matches(*odd, sha512(a)));
  CHECK(!expected_digest("", ""));
  CHECK(!expected_digest("sha512-bad", "nothex"));
}

TEST_CASE("util::expected_digest falls back to dist.shasum") {
  auto shasum = expected_digest("", hex(sha1("x")));
  REQUIRE(shasum);
  CHECK(shasum->algorithm == Hasher::Algorithm::sha1);
  CHECK(shasum->field == "dist.shasum");
  CHECK(digest_matches(*shasum, sha1("x")));
  // An integrity with a usable hash wins over the shasum.
  auto both = expected_digest(sri_sha512("x"), hex(sha1("y")));
  REQUIRE(both);
  CHECK(both->algorithm == Hasher::Algorithm::sha512);
}

TEST_CASE("util::check_tarball names the package and both values on a mismatch") {
  CHECK(check_tarball("a@1.0.0", sri_sha512("bytes"), "", "bytes"));
  auto bad = check_tarball("a@1.0.0", sri_sha512("bytes"), "", "other");
  REQUIRE(!bad);
  CHECK(bad.error().code == Errc::verify);
  CHECK(bad.error().message.find("a@1.0.0") != std::string::npos);
  CHECK(bad.error().message.find("dist.integrity") != std::string::npos);
  CHECK(bad.error().message.find(sri_sha512("other")) != std::string::npos);
  auto bad_sha1 = check_tarball("a@1.0.0", "", hex(sha1("bytes")), "other");
  REQUIRE(!bad_sha1);
  CHECK(bad_sha1.error().message.find("dist.shasum") != std::string::npos);
  auto nothing = check_tarball("a@1.0.0", "", "", "bytes");
  REQUIRE(!nothing);
  CHECK(nothing.error().code == Errc::verify);
}

TEST_CASE("util::gunzip decodes gzip and refuses garbage, truncation and bombs") {
  const std::string text(100000, 'z');
  uLongf size = compressBound(text.size()) + 64;
  std::string out(size, '\0');
  z_stream stream{};
  REQUIRE(deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  stream.avail_in = static_cast<uInt>(text.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&stream, Z_FINISH) == Z_STREAM_END);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  auto decoded = gunzip(out, 1 << 20);
  REQUIRE(decoded);
  CHECK(*decoded == text);
  CHECK(!gunzip("not gzip at all", 1 << 20));
  CHECK(!gunzip(out.substr(0, out.size() / 2), 1 << 20));
  auto bomb = gunzip(out, 1000);
  REQUIRE(!bomb);
  CHECK(bomb.error().code == Errc::too_large);
}
