// The body of a PUT to a package's URL, as the registry reads it
// (core/registry/registry.cpp, put_package): split by BodySplitter (the
// tarball's base64 decoded out of the JSON as it streams), then a publish
// (parse_publish, merge_publish) when it carries attachments, else a
// metadata update (apply_metadata_update) of a stored document. Input: the
// body's bytes; the URL's package is the body's "name" when it is a string.
// Checked besides: the split is the same whatever pieces the body arrives
// in, and agrees with parsing the whole body and decoding its data.

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/registry/packument.hpp"
#include "core/registry/publish.hpp"
#include "core/registry/publish_body.hpp"
#include "core/util/crypto.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <string>

using namespace npme;
using nlohmann::json;
using npme::fuzz::require;

namespace {

constexpr std::string_view k_now = "2024-05-01T12:00:00.000Z";

// A stored document for metadata updates: two versions, a tag, a deprecation.
const json& stored_document() {
  static const json doc = json::parse(R"({
    "_id": "fuzz-pkg", "name": "fuzz-pkg", "description": "d", "readme": "",
    "dist-tags": {"latest": "1.1.0", "beta": "1.0.0"},
    "maintainers": [{"name": "alice"}],
    "time": {"created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-02T00:00:00.000Z",
             "1.0.0": "2024-01-01T00:00:00.000Z", "1.1.0": "2024-01-02T00:00:00.000Z"},
    "versions": {
      "1.0.0": {"name": "fuzz-pkg", "version": "1.0.0", "deprecated": "old",
                "dist": {"tarball": "fuzz-pkg/-/fuzz-pkg-1.0.0.tgz", "shasum": "0000000000000000000000000000000000000000",
                         "integrity": "sha512-AAAA"}},
      "1.1.0": {"name": "fuzz-pkg", "version": "1.1.0",
                "dist": {"tarball": "fuzz-pkg/-/fuzz-pkg-1.1.0.tgz", "shasum": "1111111111111111111111111111111111111111",
                         "integrity": "sha512-BBBB"}}
    }
  })");
  return doc;
}

void check_publish(const registry::PublishRequest& request, const std::string& tarball) {
  require(!tarball.empty() && request.size == tarball.size(), "publish: a tarball");
  require(static_cast<bool>(registry::validate_package_name(request.name)), "publish: a valid name");
  require(static_cast<bool>(registry::validate_version(request.version)), "publish: a valid version");
  require(request.shasum == util::hex(util::sha1(tarball)), "publish: shasum of the tarball");
  require(static_cast<bool>(registry::check_integrity(request.integrity, util::sha512(tarball))),
          "publish: integrity of the tarball");
  for (const auto& [tag, version] : request.dist_tags) {
    require(version == request.version, "publish: tags point at the version");
  }

  registry::Publisher publisher{"alice", "alice@example.com"};
  auto merged = registry::merge_publish(std::nullopt, request, publisher, k_now);
  require(static_cast<bool>(merged), "publish: a new package merges");
  // The stored document as the store keeps it, and as a reader gets it.
  const std::string stored = merged->dump();
  auto reread = registry::parse_json(stored);
  require(reread.has_value(), "publish: the stored document parses again");
  const auto paths = registry::tarball_paths(*reread);
  require(paths.size() == 1 && paths.front() == registry::tarball_rel_path(request.name, request.version),
          "publish: the stored document names the tarball");
  static_cast<void>(registry::render_full(*reread, "http://127.0.0.1:8080"));
  static_cast<void>(registry::render_abbreviated(*reread, "http://127.0.0.1:8080/"));
  require(static_cast<bool>(registry::render_version(*reread, "latest", "http://r")), "publish: latest renders");
  // The same version again is refused.
  auto again = registry::merge_publish(*reread, request, publisher, k_now);
  require(!again && again.error().code == Errc::forbidden, "publish: a version cannot be published twice");
}

// Splits `text` fed in pieces of `piece` bytes; the tarball goes to `tarball`.
Expected<registry::PutBody> split(std::string_view text, std::size_t piece, std::string& tarball) {
  registry::BodySplitter splitter([&tarball](std::string_view bytes) -> Expected<void> {
    tarball.append(bytes);
    return {};
  });
  while (!text.empty()) {
    const std::size_t n = std::min(piece, text.size());
    NPME_TRY(splitter.feed(text.substr(0, n)));
    text.remove_prefix(n);
  }
  return splitter.finish();
}

// The split agrees with parsing `text` whole: the same JSON but the data
// of the attachment taken out, which decodes to the bytes taken out.
void check_split(std::string_view text, const registry::PutBody& put, const std::string& tarball) {
  auto whole = registry::parse_json(text);
  require(whole.has_value(), "split: the body is valid JSON when its split is");
  if (put.attachment.empty()) {
    require(*whole == put.json, "split: nothing taken out, the same JSON");
    return;
  }
  const json* data = whole->is_object() ? registry::member(*whole, "_attachments") : nullptr;
  data = data != nullptr && data->is_object() ? registry::member(*data, put.attachment) : nullptr;
  data = data != nullptr && data->is_object() ? registry::member(*data, "data") : nullptr;
  if (data == nullptr || !data->is_string()) {
    return; // a duplicate key replaced what was taken out
  }
  auto decoded = util::base64_decode(data->get_ref<const std::string&>());
  require(decoded.has_value() && *decoded == tarball, "split: the bytes taken out are the data decoded");
  json expected = *whole;
  expected["_attachments"][put.attachment]["data"] = "";
  require(expected == put.json, "split: the JSON is the body's, the data emptied");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::text(data, size);
  std::string tarball;
  auto put = split(text, text.size() + 1, tarball);
  // In pieces of 1 to 64 bytes (from the input's length), the same result.
  std::string tarball_in_pieces;
  auto in_pieces = split(text, 1 + size % 64, tarball_in_pieces);
  require(put.has_value() == in_pieces.has_value(), "split: pieces change nothing");
  if (!put) {
    require(put.error().message == in_pieces.error().message, "split: pieces change no error");
    return 0;
  }
  require(put->json == in_pieces->json && put->attachment == in_pieces->attachment && tarball == tarball_in_pieces,
          "split: pieces change nothing");
  check_split(text, *put, tarball);
  if (!put->json.is_object()) {
    return 0;
  }
  const json& body = put->json;
  const std::string url_name = registry::string_member(body, "name").value_or("fuzz-pkg");
  if (registry::has_attachments(body)) {
    if (auto request = registry::parse_publish(url_name, *put)) {
      check_publish(*request, tarball);
    }
    // Another package's URL: refused.
    require(!registry::parse_publish(url_name + "x", *put), "publish: the body names the URL's package");
    return 0;
  }
  auto update = registry::apply_metadata_update(stored_document(), body, k_now);
  if (update) {
    require(update->removed_files.size() <= update->removed_versions.size(), "update: files of removed versions");
    if (!update->removes_package) {
      static_cast<void>(registry::render_abbreviated(update->doc, "http://r"));
      static_cast<void>(update->doc.dump(-1, ' ', false, json::error_handler_t::replace));
    }
  }
  return 0;
}
