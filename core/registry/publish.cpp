#include "core/registry/publish.hpp"

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/util/crypto.hpp"
#include "core/util/integrity.hpp"

#include <vector>

namespace npme::registry {

namespace {

using nlohmann::json;

util::Unexpected<Error> invalid(std::string message) {
  return make_error(Errc::invalid, std::move(message));
}

// Shortens a value quoted in an error message.
std::string shown(std::string_view text, std::size_t limit = 120) {
  if (text.size() <= limit) {
    return std::string(text);
  }
  return std::string(text.substr(0, limit)) + "...";
}

// Finds the tarball among the attachments: npm names it after the full
// package name ("@scope/pkg-1.0.0.tgz"), older clients after the unscoped one.
// The attachment name npm gives a tarball: the full package name's.
std::string attachment_key(std::string_view name, std::string_view version) {
  return std::string(name) + "-" + std::string(version) + ".tgz";
}

Expected<const json*> find_tarball_attachment(const json& attachments, std::string_view name,
                                              std::string_view version) {
  std::string full_key = attachment_key(name, version);
  std::string short_key = tarball_file_name(name, version);
  const json* found = nullptr;
  for (const auto& [key, value] : attachments.items()) {
    if (key == full_key || key == short_key) {
      if (found != nullptr) {
        return invalid("invalid publish body: more than one tarball attachment for " + std::string(name) + "@" +
                       std::string(version));
      }
      found = &value;
      continue;
    }
    // Provenance bundles travel as a second attachment; the registry does
    // not keep them, but they must not make the publish fail.
    if (key.ends_with(".sigstore")) {
      continue;
    }
    return invalid("invalid publish body: unexpected attachment '" + shown(key) + "', expected '" + full_key + "'");
  }
  if (found == nullptr) {
    return invalid("invalid publish body: no attachment '" + full_key + "'");
  }
  return found;
}

} // namespace

bool has_attachments(const json& body) {
  const json* attachments = member(body, "_attachments");
  return attachments != nullptr && attachments->is_object() && !attachments->empty();
}

Expected<std::string> check_integrity(std::string_view integrity, std::string_view sha512) {
  std::string actual = "sha512-" + util::base64_encode(sha512);
  auto expected = util::expected_digest(integrity);
  if (!expected || expected->algorithm != util::Hasher::Algorithm::sha512) {
    return invalid("tarball integrity: dist.integrity '" + shown(integrity) + "' holds no sha512 hash, the attachment is " +
                   actual);
  }
  if (util::digest_matches(*expected, sha512)) {
    return actual;
  }
  return invalid("tarball integrity mismatch: dist.integrity says " + shown(integrity) + ", the attachment is " + actual);
}

Expected<PublishRequest> parse_publish(std::string_view url_name, const PutBody& put) {
  const json& body = put.json;
  if (!body.is_object()) {
    return invalid("invalid publish body: expected a JSON object");
  }
  auto body_name = string_member(body, "name");
  if (!body_name) {
    return invalid("invalid publish body: \"name\" is missing or not a string");
  }
  if (*body_name != url_name) {
    return invalid("invalid publish body: name '" + shown(*body_name) + "' does not match the URL's package '" +
                   std::string(url_name) + "'");
  }
  if (const json* id = member(body, "_id"); id != nullptr && (!id->is_string() || id->get_ref<const std::string&>() != url_name)) {
    return invalid("invalid publish body: _id does not match the URL's package '" + std::string(url_name) + "'");
  }
  NPME_TRY(validate_package_name(url_name));

  const json* versions = member(body, "versions");
  if (versions == nullptr || !versions->is_object()) {
    return invalid("invalid publish body: \"versions\" is missing or not an object");
  }
  if (versions->size() != 1) {
    return invalid("invalid publish body: expected exactly one version, got " + std::to_string(versions->size()));
  }
  PublishRequest request;
  request.name = std::string(url_name);
  request.version = versions->begin().key();
  request.manifest = versions->begin().value();
  if (auto valid = validate_version(request.version); !valid) {
    return invalid("invalid publish body: " + valid.error().message);
  }
  const json& manifest = request.manifest;
  if (!manifest.is_object()) {
    return invalid("invalid publish body: the manifest of " + request.version + " is not an object");
  }
  auto manifest_version = string_member(manifest, "version");
  if (!manifest_version || *manifest_version != request.version) {
    return invalid("invalid publish body: the manifest's version '" + shown(manifest_version.value_or("")) +
                   "' does not match its key '" + request.version + "'");
  }
  auto manifest_name = string_member(manifest, "name");
  if (!manifest_name || *manifest_name != url_name) {
    return invalid("invalid publish body: the manifest's name '" + shown(manifest_name.value_or("")) +
                   "' does not match the URL's package '" + std::string(url_name) + "'");
  }
  const json* dist = member(manifest, "dist");
  if (dist != nullptr && !dist->is_object()) {
    return invalid("invalid publish body: dist of " + request.version + " is not an object");
  }

  if (const json* tags = member(body, "dist-tags"); tags != nullptr && !tags->is_null()) {
    if (!tags->is_object()) {
      return invalid("invalid publish body: \"dist-tags\" is not an object");
    }
    for (const auto& [tag, target] : tags->items()) {
      NPME_TRY(validate_dist_tag(tag));
      if (!target.is_string() || target.get_ref<const std::string&>() != request.version) {
        return invalid("invalid publish body: dist-tag '" + tag + "' must point at the published version " +
                       request.version);
      }
      request.dist_tags[tag] = request.version;
    }
  }
  if (request.dist_tags.empty()) {
    request.dist_tags["latest"] = request.version;
  }

  const json* attachments = member(body, "_attachments");
  if (attachments == nullptr || !attachments->is_object() || attachments->empty()) {
    return invalid("invalid publish body: no tarball in \"_attachments\"");
  }
  NPME_TRY_ASSIGN(const json* attachment, find_tarball_attachment(*attachments, url_name, request.version));
  if (!attachment->is_object()) {
    return invalid("invalid publish body: the tarball attachment is not an object");
  }
  // The splitter took the data of the attachment it found; this must be
  // that one, and its data must have been a string.
  const std::string full_key = attachment_key(url_name, request.version);
  const std::string short_key = tarball_file_name(url_name, request.version);
  auto data = string_member(*attachment, "data");
  if (!data || !data->empty() || put.attachment.empty() || (put.attachment != full_key && put.attachment != short_key)) {
    return invalid("invalid publish body: the tarball attachment has no base64 \"data\"");
  }
  request.size = put.tarball.size;
  const json* length = member(*attachment, "length");
  if (length == nullptr || !length->is_number_integer()) {
    return invalid("invalid publish body: the tarball attachment has no integer \"length\"");
  }
  if (length->is_number_unsigned() ? length->get<std::uint64_t>() != request.size
                                   : length->get<std::int64_t>() != static_cast<std::int64_t>(request.size)) {
    return invalid("tarball length mismatch: the attachment says " + length->dump() + " bytes, its data decodes to " +
                   std::to_string(request.size));
  }
  if (request.size == 0) {
    return invalid("invalid publish body: the tarball attachment is empty");
  }

  auto integrity = dist != nullptr ? string_member(*dist, "integrity") : std::nullopt;
  auto shasum = dist != nullptr ? string_member(*dist, "shasum") : std::nullopt;
  if (!integrity && !shasum) {
    return invalid("invalid publish body: the manifest of " + request.version +
                   " has neither dist.integrity nor dist.shasum");
  }
  if (integrity) {
    NPME_TRY_ASSIGN(request.integrity, check_integrity(*integrity, put.tarball.sha512));
  } else {
    request.integrity = "sha512-" + util::base64_encode(put.tarball.sha512);
  }
  request.shasum = util::hex(put.tarball.sha1);
  if (shasum && *shasum != request.shasum) {
    return invalid("tarball shasum mismatch: dist.shasum says " + shown(*shasum) + ", the attachment is " +
                   request.shasum);
  }

  if (auto readme = string_member(body, "readme")) {
    request.readme = *readme;
  } else if (auto manifest_readme = string_member(manifest, "readme")) {
    request.readme = *manifest_readme;
  }
  return request;
}

} // namespace npme::registry
