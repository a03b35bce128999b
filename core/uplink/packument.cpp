#include "core/uplink/packument.hpp"

#include "core/http/message.hpp"
#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/util/crypto.hpp"
#include "core/util/text.hpp"

#include <cctype>

namespace npme::uplink {

namespace {

using nlohmann::json;

// '*' matches any run of characters; everything else itself.
bool glob_match(std::string_view pattern, std::string_view text) {
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = std::string_view::npos;
  std::size_t mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

} // namespace

std::string package_path(std::string_view name) {
  std::string out(name);
  if (auto slash = out.find('/'); slash != std::string::npos && !out.empty() && out.front() == '@') {
    out.replace(slash, 1, "%2f");
  }
  return out;
}

std::string origin_of(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) {
    return "";
  }
  auto rest = url.substr(scheme_end + 3);
  auto host_end = rest.find_first_of("/?#");
  std::string origin = lowercase(url.substr(0, scheme_end + 3 + (host_end == std::string_view::npos ? rest.size() : host_end)));
  // Default ports are the same origin as none.
  if (origin.starts_with("http://") && origin.ends_with(":80")) {
    origin.resize(origin.size() - 3);
  } else if (origin.starts_with("https://") && origin.ends_with(":443")) {
    origin.resize(origin.size() - 4);
  }
  return origin;
}

Expected<std::string> tarball_source(std::string_view uplink_url, std::string_view recorded, std::string_view rel_path) {
  std::string base(uplink_url);
  while (!base.empty() && base.back() == '/') {
    base.pop_back();
  }
  const std::string canonical = base + "/" + std::string(rel_path);
  if (recorded.empty()) {
    return canonical;
  }
  const std::string origin = origin_of(recorded);
  std::string_view path = recorded.substr(std::min(recorded.size(), recorded.find("://") == std::string_view::npos
                                                                        ? std::size_t{0}
                                                                        : recorded.find("://") + 3));
  path = path.substr(std::min(path.size(), path.find('/')));
  path = path.substr(0, path.find_first_of("?#"));
  // Decoded twice: "%252e%252e" must not slip through a server that decodes again.
  std::string decoded = http::percent_decode(path).value_or(std::string(path));
  decoded = http::percent_decode(decoded).value_or(decoded);
  std::size_t start = 0;
  while (start <= decoded.size()) {
    auto end = decoded.find('/', start);
    auto segment = std::string_view(decoded).substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (segment == ".." || segment == ".") {
      return make_error(Errc::forbidden, "refused tarball URL '" + std::string(recorded) + "': it has a '" +
                                           std::string(segment) + "' path segment");
    }
    if (end == std::string::npos) {
      break;
    }
    start = end + 1;
  }
  if (!origin.empty() && origin == origin_of(uplink_url) && recorded.find('\\') == std::string_view::npos) {
    return std::string(recorded);
  }
  return canonical;
}

Expected<json> normalize_packument(const json& fetched, const std::string& name, const std::string& uplink_url,
                                   const Validators& validators, std::string_view now) {
  using registry::member;
  using registry::string_member;
  if (!fetched.is_object()) {
    return make_error(Errc::invalid, "uplink sent a malformed packument for '" + name + "': not a JSON object");
  }
  auto fetched_name = string_member(fetched, "name");
  if (!fetched_name || *fetched_name != name) {
    return make_error(Errc::invalid, "uplink sent the packument of '" + fetched_name.value_or("") +
                                       "' when asked for '" + name + "'");
  }
  if (auto id = string_member(fetched, "_id"); id && *id != name) {
    return make_error(Errc::invalid, "uplink sent a packument whose _id '" + *id + "' is not '" + name + "'");
  }
  const json* versions = member(fetched, "versions");
  if (versions == nullptr || !versions->is_object()) {
    if (const json* time = member(fetched, "time"); time != nullptr && time->is_object() && time->contains("unpublished")) {
      return make_error(Errc::not_found, "'" + name + "' was unpublished from the uplink");
    }
    return make_error(Errc::invalid, "uplink sent a malformed packument for '" + name + "': no versions object");
  }
  json doc = fetched;
  doc.erase("_rev");
  doc.erase("_attachments");
  doc.erase(std::string(k_origin_member));
  doc["_id"] = name;
  json kept = json::object();
  json tarballs = json::object();
  for (const auto& [version, manifest] : versions->items()) {
    if (!registry::validate_version(version) || !manifest.is_object()) {
      continue;
    }
    if (auto manifest_name = string_member(manifest, "name"); manifest_name && *manifest_name != name) {
      continue;
    }
    json copy = manifest;
    json& dist = copy["dist"];
    if (!dist.is_object()) {
      continue;
    }
    if (auto tarball = string_member(dist, "tarball")) {
      tarballs[version] = *tarball;
    }
    dist["tarball"] = registry::tarball_rel_path(name, version);
    kept[version] = std::move(copy);
  }
  doc["versions"] = std::move(kept);
  json tags = json::object();
  if (const json* fetched_tags = member(fetched, "dist-tags"); fetched_tags != nullptr && fetched_tags->is_object()) {
    for (const auto& [tag, target] : fetched_tags->items()) {
      if (target.is_string() && doc["versions"].contains(target.get<std::string>())) {
        tags[tag] = target;
      }
    }
  }
  doc["dist-tags"] = std::move(tags);
  const std::string digest = util::hex(util::sha256(doc.dump()));
  doc[std::string(k_origin_member)] = {{"url", uplink_url},
                                       {"etag", validators.etag},
                                       {"last_modified", validators.last_modified},
                                       {"fetched", std::string(now)},
                                       {"digest", digest},
                                       {"tarballs", std::move(tarballs)}};
  return doc;
}

PrivateNames::PrivateNames(std::string_view setting) {
  for (std::string& item : util::split_list(setting)) {
    if (item.front() == '@' && (item.find('/') == std::string::npos || item.ends_with("/*"))) {
      auto scope = item.substr(0, item.find('/'));
      m_scopes.push_back(scope + "/");
    } else {
      m_globs.push_back(item);
    }
  }
}

bool PrivateNames::matches(std::string_view name) const {
  for (const auto& scope : m_scopes) {
    if (name.starts_with(scope)) {
      return true;
    }
  }
  for (const auto& glob : m_globs) {
    if (glob_match(glob, name)) {
      return true;
    }
  }
  return false;
}

} // namespace npme::uplink
