// BodySplitter: a PUT body read in pieces, its tarball decoded out of it.

#include "core/registry/publish_body.hpp"
#include "core/util/crypto.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <string>

using nlohmann::json;
using namespace npme;
using namespace npme::registry;

namespace {

std::string tarball_bytes(std::size_t size) {
  std::string out(size, '\0');
  for (std::size_t i = 0; i < size; ++i) {
    out[i] = static_cast<char>((i * 131) ^ (i >> 5));
  }
  return out;
}

json body_with(const std::string& tarball) {
  return {{"_id", "@s/p"},
          {"name", "@s/p"},
          {"versions", {{"1.0.0", {{"name", "@s/p"}, {"version", "1.0.0"}, {"readme", "say \"hi\" \\ \u00e9"}}}}},
          {"_attachments",
           {{"@s/p-1.0.0.tgz", {{"content_type", "application/octet-stream"},
                                {"data", util::base64_encode(tarball)},
                                {"length", tarball.size()}}},
            {"@s/p-1.0.0.sigstore", {{"data", "{\"a\":\"b\"}"}, {"length", 9}}}}}};
}

struct Split {
  Expected<PutBody> body;
  std::string tarball;
};

// Splits `text` fed in pieces of `piece` bytes.
Split split(std::string_view text, std::size_t piece) {
  Split out{make_error(Errc::failed, "not run"), {}};
  BodySplitter splitter([&out](std::string_view bytes) -> Expected<void> {
    out.tarball.append(bytes);
    return {};
  });
  while (!text.empty()) {
    const std::size_t n = std::min(piece, text.size());
    if (auto fed = splitter.feed(text.substr(0, n)); !fed) {
      out.body = util::Unexpected<Error>{fed.error()};
      return out;
    }
    text.remove_prefix(n);
  }
  out.body = splitter.finish();
  return out;
}

std::string error_of(const Split& result) {
  return result.body ? std::string() : result.body.error().message;
}

} // namespace

TEST_CASE("BodySplitter takes the tarball's data out of the JSON, decoded, whatever the pieces") {
  const std::string tarball = tarball_bytes(5000);
  const json body = body_with(tarball);
  const std::string text = body.dump();
  json expected = body;
  expected["_attachments"]["@s/p-1.0.0.tgz"]["data"] = "";
  for (std::size_t piece : {text.size(), std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{7},
                            std::size_t{64}, std::size_t{4095}}) {
    CAPTURE(piece);
    auto result = split(text, piece);
    REQUIRE_MESSAGE(result.body, error_of(result));
    CHECK(result.tarball == tarball);
    CHECK(result.body->json == expected);
    CHECK(result.body->attachment == "@s/p-1.0.0.tgz");
    CHECK(result.body->tarball.size == tarball.size());
    CHECK(result.body->tarball.sha512 == util::sha512(tarball));
    CHECK(result.body->tarball.sha1 == util::sha1(tarball));
  }
}

TEST_CASE("BodySplitter reads JSON escapes in keys and in the data as a JSON parser does") {
  const std::string tarball = std::string("\xff\xff\xff\0\0\0tarball bytes", 19); // "////AAAA..."
  std::string data = util::base64_encode(tarball);
  REQUIRE(data.find('/') != std::string::npos);
  // "\/" for '/', and a \u escape for a letter, in the data; escaped keys.
  std::string escaped;
  for (char c : data) {
    escaped += c == '/' ? std::string("\\/") : c == 'A' ? std::string("\\u0041") : std::string(1, c);
  }
  const std::string text = R"({"name":"p","_attach\u006dents":{"p-1.0.0\u002etgz":{"d\u0061ta":")" + escaped +
                           R"(","length":19}}})";
  for (std::size_t piece : {text.size(), std::size_t{1}, std::size_t{5}}) {
    auto result = split(text, piece);
    REQUIRE_MESSAGE(result.body, error_of(result));
    CHECK(result.tarball == tarball);
    CHECK(result.body->attachment == "p-1.0.0.tgz");
    CHECK(result.body->json["_attachments"]["p-1.0.0.tgz"]["data"] == "");
  }
}

TEST_CASE("BodySplitter leaves every other string in the JSON") {
  // "data" elsewhere, a .tgz key elsewhere, a non-string data, a body
  // without attachments (a metadata update), arrays on the way.
  for (const char* text : {R"({"data":"QUJD","x":{"a.tgz":{"data":"QUJD"}}})",
                           R"({"_attachments":{"a.tgz":{"data":5,"other":"QUJD"}}})",
                           R"({"_attachments":{"a.sigstore":{"data":"QUJD"}}})",
                           R"({"_attachments":[{"data":"QUJD"}]})",
                           R"([{"_attachments":{"a.tgz":{"data":"QUJD"}}}])",
                           R"({"versions":{"1.0.0":{"deprecated":"use \"b\" instead"}},"_rev":"3-abc"})"}) {
    CAPTURE(text);
    auto result = split(text, 3);
    REQUIRE_MESSAGE(result.body, error_of(result));
    CHECK(result.body->attachment.empty());
    CHECK(result.tarball.empty());
    CHECK(result.body->json == json::parse(text));
  }
}

TEST_CASE("BodySplitter refuses bad data, a second tarball, bad JSON and a failing sink") {
  CHECK(error_of(split(R"({"_attachments":{"a.tgz":{"data":"not base64!"}}})", 4)) ==
        "invalid publish body: the tarball attachment's data is not valid base64");
  CHECK(error_of(split(R"({"_attachments":{"a.tgz":{"data":"QUJD="}}})", 4)) ==
        "invalid publish body: the tarball attachment's data is not valid base64");
  CHECK(error_of(split(R"({"_attachments":{"a.tgz":{"data":"QU\x"}}})", 4)) ==
        "invalid publish body: a bad escape in the tarball attachment's data");
  CHECK(error_of(split(R"({"_attachments":{"a.tgz":{"data":"QUJD"},"b.tgz":{"data":"QUJD"}}})", 4)) ==
        "invalid publish body: more than one tarball attachment");
  CHECK(error_of(split(R"({"_attachments":{"a.tgz":{"data":"QUJD","data":"QUJD"}}})", 4)) ==
        "invalid publish body: more than one tarball attachment");
  for (const std::string& text : {std::string(R"({"_attachments":{"a.tgz":{"data":"QUJD)"), std::string("{\"a\":"),
                                 std::string("not json"), std::string(200000, '[')}) {
    CHECK(error_of(split(text, 1000)) == "invalid request body: expected a JSON object");
  }

  // A sink that fails (a full disk) stops the split with its error, at once.
  int calls = 0;
  BodySplitter failing([&calls](std::string_view) -> Expected<void> {
    ++calls;
    return make_error(Errc::no_space, "cannot write: No space left on device");
  });
  const std::string text = body_with(tarball_bytes(1u << 20)).dump();
  auto fed = failing.feed(text);
  REQUIRE_FALSE(fed);
  CHECK(fed.error().code == Errc::no_space);
  CHECK_FALSE(failing.feed("more"));
  CHECK_FALSE(failing.finish());
  CHECK(calls == 1);
}

TEST_CASE("split_body splits a body held in memory") {
  std::string collected;
  auto body = split_body(body_with("abc").dump(), [&collected](std::string_view bytes) -> Expected<void> {
    collected.append(bytes);
    return {};
  });
  REQUIRE(body);
  CHECK(collected == "abc");
  CHECK(body->tarball.size == 3);
}
