#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/gzip.hpp"
#include "core/util/time.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <set>
#include <sys/stat.h>

namespace {

namespace fs = std::filesystem;
using namespace npme;

using test::TempDir;

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.insert(entry.path().filename().string());
  }
  return names;
}

} // namespace

TEST_CASE("util::sha1 matches known answers") {
  CHECK(util::hex(util::sha1("")) == "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  CHECK(util::hex(util::sha1("abc")) == "a9993e364706816aba3e25717850c26c9cd0d89d");
  CHECK(util::sha1("abc").size() == 20);
}

TEST_CASE("util::sha256 matches known answers") {
  CHECK(util::hex(util::sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(util::hex(util::sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("util::sha512 matches known answers") {
  CHECK(util::hex(util::sha512("")) == "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
                                       "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e");
  CHECK(util::hex(util::sha512("abc")) == "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                                          "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
}

TEST_CASE("util::hex encodes every byte value in lowercase") {
  CHECK(util::hex("") == "");
  CHECK(util::hex(std::string("\x00\x0f\xf0\xff", 4)) == "000ff0ff");
}

TEST_CASE("util::sri_sha512 matches known answers") {
  CHECK(util::sri_sha512("") == "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+"
                                "DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==");
  CHECK(util::sri_sha512("abc") == "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/"
                                   "BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==");
}

TEST_CASE("util::base64_encode matches RFC 4648 vectors") {
  CHECK(util::base64_encode("") == "");
  CHECK(util::base64_encode("f") == "Zg==");
  CHECK(util::base64_encode("fo") == "Zm8=");
  CHECK(util::base64_encode("foo") == "Zm9v");
  CHECK(util::base64_encode("foob") == "Zm9vYg==");
  CHECK(util::base64_encode("fooba") == "Zm9vYmE=");
  CHECK(util::base64_encode("foobar") == "Zm9vYmFy");
}

TEST_CASE("util::base64_decode round-trips every length and byte value") {
  std::string all;
  for (int i = 0; i < 256; ++i) {
    all.push_back(static_cast<char>(i));
  }
  for (std::size_t n = 0; n <= all.size(); n += 1) {
    const std::string bytes = all.substr(0, n);
    const auto decoded = util::base64_decode(util::base64_encode(bytes));
    REQUIRE(decoded);
    CHECK(*decoded == bytes);
  }
  const std::string random = util::random_bytes(4099);
  CHECK(util::base64_decode(util::base64_encode(random)).value() == random);
}

TEST_CASE("util::base64_decode accepts missing padding") {
  CHECK(util::base64_decode("Zg").value() == "f");
  CHECK(util::base64_decode("Zm8").value() == "fo");
  CHECK(util::base64_decode("Zm9vYmE").value() == "fooba");
}

TEST_CASE("util::base64_decode rejects a bad character") {
  for (const char* text : {"Zm9v!mFy", "Zm9v YmFy", "Zm9v\nYmFy", "Zm9v-mFy", "Zm9v_mFy"}) {
    const auto decoded = util::base64_decode(text);
    REQUIRE_FALSE(decoded);
    CHECK(decoded.error().code == Errc::invalid);
    CHECK(decoded.error().message.find("base64") != std::string::npos);
  }
}

TEST_CASE("util::base64_decode rejects wrong padding") {
  for (const char* text : {"Zg=", "Zg===", "Zm8==", "Zm9v=", "=", "Z===", "Zg==Zg==", "Z", "Zm9vY"}) {
    CAPTURE(text);
    const auto decoded = util::base64_decode(text);
    REQUIRE_FALSE(decoded);
    CHECK(decoded.error().code == Errc::invalid);
  }
}

TEST_CASE("util::Base64Decoder fed in pieces decodes and refuses as base64_decode does") {
  const std::string bytes = util::random_bytes(1000);
  const std::string text = util::base64_encode(bytes);
  for (std::size_t piece : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{5}, std::size_t{999}}) {
    util::Base64Decoder decoder;
    std::string out;
    for (std::size_t at = 0; at < text.size(); at += piece) {
      REQUIRE(decoder.update(std::string_view(text).substr(at, piece), out));
    }
    REQUIRE(decoder.finish());
    CHECK(out == bytes);
  }
  for (const char* bad : {"Zm9v!mFy", "Zg=", "Zg===", "Zm8==", "=", "Zg==Zg==", "Z", "Zm9vY"}) {
    CAPTURE(bad);
    const auto whole = util::base64_decode(bad);
    REQUIRE_FALSE(whole);
    util::Base64Decoder decoder;
    std::string out;
    std::string error;
    for (const char* c = bad; *c != 0 && error.empty(); ++c) {
      if (auto fed = decoder.update(std::string_view(c, 1), out); !fed) {
        error = fed.error().message;
      }
    }
    if (error.empty()) {
      auto finished = decoder.finish();
      REQUIRE_FALSE(finished);
      error = finished.error().message;
    }
    CHECK(error == whole.error().message);
  }
}

TEST_CASE("util::Hasher gives the one-shot digest for data in pieces") {
  const std::string data = util::random_bytes(100000);
  for (const auto algorithm :
       {util::Hasher::Algorithm::sha1, util::Hasher::Algorithm::sha256, util::Hasher::Algorithm::sha512}) {
    util::Hasher hasher(algorithm);
    for (std::size_t pos = 0; pos < data.size(); pos += 777) {
      hasher.update(std::string_view(data).substr(pos, 777));
    }
    const std::string digest = hasher.finish();
    switch (algorithm) {
    case util::Hasher::Algorithm::sha1:
      CHECK(digest == util::sha1(data));
      break;
    case util::Hasher::Algorithm::sha256:
      CHECK(digest == util::sha256(data));
      break;
    case util::Hasher::Algorithm::sha512:
      CHECK(digest == util::sha512(data));
      break;
    }
  }
}

TEST_CASE("util::xxh3 matches xxHash's known answer, and util::Checksum it in any split") {
  CHECK(util::xxh3("") == 0x2D06800538D394C2ull);
  const std::string data = util::random_bytes(100003);
  const std::uint64_t whole = util::xxh3(data);
  for (std::size_t split : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, data.size()}) {
    CAPTURE(split);
    const std::string_view view(data);
    util::Checksum checksum;
    checksum.update(view.substr(0, split));
    checksum.update(view.substr(split));
    CHECK(checksum.value() == whole);
  }
  std::string flipped = data;
  flipped[50000] = static_cast<char>(flipped[50000] ^ 0x10);
  CHECK(util::xxh3(flipped) != whole);
}

TEST_CASE("util::random_token uses only letters and digits") {
  const std::string token = util::random_token(500);
  CHECK(token.size() == 500);
  for (const char c : token) {
    CHECK(((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')));
  }
  CHECK(util::random_token(32) != util::random_token(32));
  CHECK(util::random_token(0).empty());
  CHECK(util::random_bytes(64).size() == 64);
}

TEST_CASE("util::constant_time_equal compares content and length") {
  CHECK(util::constant_time_equal("", ""));
  CHECK(util::constant_time_equal("secret", "secret"));
  CHECK_FALSE(util::constant_time_equal("secret", "secreT"));
  CHECK_FALSE(util::constant_time_equal("secret", "secret2"));
  CHECK_FALSE(util::constant_time_equal("", "x"));
}

TEST_CASE("util::hash_password verifies the right password and rejects others") {
  const std::string stored = util::hash_password("correct horse");
  CHECK(stored.rfind("scrypt$16384$8$1$", 0) == 0);
  CHECK(util::verify_password("correct horse", stored));
  CHECK_FALSE(util::verify_password("correct horsE", stored));
  CHECK_FALSE(util::verify_password("", stored));
  // Salted: the same password hashes differently each time.
  const std::string again = util::hash_password("correct horse");
  CHECK(again != stored);
  CHECK(util::verify_password("correct horse", again));
}

TEST_CASE("util::verify_password rejects malformed and tampered hashes") {
  const std::string stored = util::hash_password("pw");
  std::string tampered = stored;
  tampered[tampered.size() - 3] = tampered[tampered.size() - 3] == 'A' ? 'B' : 'A';
  CHECK_FALSE(util::verify_password("pw", tampered));
  CHECK_FALSE(util::verify_password("pw", ""));
  CHECK_FALSE(util::verify_password("pw", "pw"));
  CHECK_FALSE(util::verify_password("pw", "scrypt$16384$8$1$!!$!!"));
  CHECK_FALSE(util::verify_password("pw", "bcrypt$16384$8$1$AAAA$AAAA"));
  // Parameters that would cost gigabytes are refused without trying.
  CHECK_FALSE(util::verify_password("pw", "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA"));
  CHECK_FALSE(util::verify_password("pw", "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA"));
}

TEST_CASE("util::iso8601 formats UTC with milliseconds") {
  using namespace std::chrono;
  CHECK(util::iso8601(system_clock::time_point{}) == "1970-01-01T00:00:00.000Z");
  CHECK(util::iso8601(system_clock::time_point{milliseconds{1795655643123}}) == "2026-11-26T01:14:03.123Z");
  CHECK(util::iso8601(system_clock::time_point{milliseconds{-1}}) == "1969-12-31T23:59:59.999Z");
  CHECK(util::iso8601(system_clock::time_point{milliseconds{951782400000}}) == "2000-02-29T00:00:00.000Z");
  CHECK(util::iso8601().size() == 24);
}

TEST_CASE("util::write_file_atomic creates the file with its mode") {
  TempDir dir;
  const fs::path path = dir.path / "settings.json";
  REQUIRE(util::write_file_atomic(path, "{\"a\":1}\n", fs::perms(0600)));
  CHECK(util::read_file(path).value() == "{\"a\":1}\n");
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);

  // Replacing keeps one file and applies the new mode.
  REQUIRE(util::write_file_atomic(path, "second", fs::perms(0644)));
  CHECK(util::read_file(path).value() == "second");
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644);
  CHECK(names_in(dir.path) == std::set<std::string>{"settings.json"});
}

TEST_CASE("util::write_file_atomic fails on a missing parent directory") {
  TempDir dir;
  const fs::path path = dir.path / "missing" / "file";
  const auto written = util::write_file_atomic(path, "x");
  REQUIRE_FALSE(written);
  CHECK(written.error().code == Errc::io);
  CHECK(written.error().message == "cannot write '" + path.string() + "': No such file or directory");
  CHECK(names_in(dir.path).empty());
}

TEST_CASE("util::write_file_atomic leaves no temp file when the rename fails") {
  TempDir dir;
  // A directory in the way makes the final rename fail after the temp file
  // was written.
  const fs::path path = dir.path / "target";
  fs::create_directories(path / "child");
  const auto written = util::write_file_atomic(path, "content");
  REQUIRE_FALSE(written);
  CHECK(written.error().code == Errc::io);
  CHECK(written.error().message.find("cannot write '" + path.string() + "': ") == 0);
  CHECK(names_in(dir.path) == std::set<std::string>{"target"});
}

TEST_CASE("util::read_file reads content and reports a missing file") {
  TempDir dir;
  const std::string big = util::random_bytes(300000);
  REQUIRE(util::write_file_atomic(dir.path / "big", big));
  CHECK(util::read_file(dir.path / "big").value() == big);
  const auto absent = util::read_file(dir.path / "empty");
  REQUIRE_FALSE(absent);
  CHECK(absent.error().code == Errc::not_found);
  REQUIRE(util::write_file_atomic(dir.path / "empty", ""));
  CHECK(util::read_file(dir.path / "empty").value().empty());
  const auto on_dir = util::read_file(dir.path);
  REQUIRE_FALSE(on_dir);
  CHECK(on_dir.error().code == Errc::io);
}

TEST_CASE("util::create_dirs creates nested directories and accepts existing ones") {
  TempDir dir;
  const fs::path nested = dir.path / "a" / "b" / "c";
  REQUIRE(util::create_dirs(nested));
  CHECK(fs::is_directory(nested));
  REQUIRE(util::create_dirs(nested));
  REQUIRE(util::fsync_dir(nested));

  REQUIRE(util::write_file_atomic(dir.path / "file", "x"));
  const auto blocked = util::create_dirs(dir.path / "file" / "sub");
  REQUIRE_FALSE(blocked);
  CHECK(blocked.error().code == Errc::io);
  const auto not_there = util::fsync_dir(dir.path / "nope");
  REQUIRE_FALSE(not_there);
  CHECK(not_there.error().code == Errc::io);
}

TEST_CASE("util::temp_path_beside names a unique file in the same directory") {
  const fs::path path = "/var/lib/npme/data/sequence";
  const fs::path a = util::temp_path_beside(path);
  const fs::path b = util::temp_path_beside(path);
  CHECK(a.parent_path() == path.parent_path());
  CHECK(a.filename().string().rfind("sequence.tmp.", 0) == 0);
  CHECK(a != b);
}

TEST_CASE("util::io_error: a full device is Errc::no_space (HTTP 507), anything else Errc::io") {
  for (int full : {ENOSPC, EDQUOT}) {
    const Error error = util::io_error("write", "/srv/npme/packages/.staging/x.tmp", full);
    CHECK(error.code == Errc::no_space);
    CHECK(error.message.find("cannot write '/srv/npme/packages/.staging/x.tmp'") == 0);
  }
  CHECK(util::io_error("read", "/x", EIO).code == Errc::io);
  CHECK(util::io_error("read", "/x", EACCES).code == Errc::io);
  CHECK(http_status(Errc::no_space) == 507);
  CHECK(exit_code(Errc::no_space) == 1);
  CHECK(errc_name(Errc::no_space) == "no_space");
  CHECK(errc_from_name("no_space") == Errc::no_space);
}

TEST_CASE("util::gzip round-trips through gunzip and gives the same bytes for the same input") {
  std::string text;
  for (int i = 0; i < 500; ++i) {
    text += "{\"version\":\"1." + std::to_string(i) + ".0\",\"dist\":{\"integrity\":\"sha512-abc\"}},";
  }
  const std::string once = util::gzip(text);
  CHECK(once == util::gzip(text));
  CHECK(once.size() * 4 < text.size());
  CHECK(static_cast<unsigned char>(once[0]) == 0x1f);
  CHECK(static_cast<unsigned char>(once[1]) == 0x8b);
  auto back = util::gunzip(once, text.size());
  REQUIRE(back);
  CHECK(*back == text);
  CHECK(*util::gunzip(util::gzip(""), 10) == "");
  CHECK(util::gunzip(once, text.size() - 1).error().code == Errc::too_large);
}

TEST_CASE("util::accepts_gzip reads Accept-Encoding with weights and wildcards") {
  CHECK(util::accepts_gzip("gzip"));
  CHECK(util::accepts_gzip("gzip, deflate, br"));
  CHECK(util::accepts_gzip("br;q=1.0, GZIP;q=0.5"));
  CHECK(util::accepts_gzip("deflate, gzip ; q=0.1"));
  CHECK(util::accepts_gzip("x-gzip"));
  CHECK(util::accepts_gzip("*"));
  CHECK_FALSE(util::accepts_gzip(""));
  CHECK_FALSE(util::accepts_gzip("identity"));
  CHECK_FALSE(util::accepts_gzip("br, deflate"));
  CHECK_FALSE(util::accepts_gzip("gzip;q=0"));
  CHECK_FALSE(util::accepts_gzip("gzip; q=0.000, *"));
  CHECK_FALSE(util::accepts_gzip("*;q=0"));
  CHECK_FALSE(util::accepts_gzip("gzipped"));
}

TEST_CASE("util::unsafe_relative_path refuses every way out of the directory") {
  for (const char* safe : {"a", "a/-/a-1.0.0.tgz", "@s/p/-/p-1.0.0.tgz", "x/.staging", "..a/b..", ".x"}) {
    CHECK_MESSAGE(!util::unsafe_relative_path(safe, ".staging").has_value(), safe);
  }
  const std::pair<std::string, std::string> unsafe[] = {
    {"", "empty path"},
    {"/etc/passwd", "absolute path"},
    {"a\\b", "forbidden character in path"},
    {std::string("a\0b", 3), "forbidden character in path"},
    {"a\nb", "forbidden character in path"},
    {"a//b", "empty path segment"},
    {"a/", "empty path segment"},
    {"a/../../b", "'..' path segment"},
    {"./a", "'.' path segment"},
    {".staging/x.tmp", "path inside '.staging'"},
  };
  for (const auto& entry : unsafe) {
    const std::string& path = entry.first;
    CAPTURE(path);
    CHECK(util::unsafe_relative_path(path, ".staging") == std::optional<std::string>(entry.second));
  }
  CHECK_FALSE(util::unsafe_relative_path(".staging/x").has_value());
}
