// npm audit requests, forwarded to the uplink (without names that must
// not leave: published here or private) or, on a replica, to the upstream.

#include "core/uplink/service_impl.hpp"

#include "core/util/gzip.hpp"

namespace npme::uplink {


void Service::forward_audit(const std::string& path, const std::string& body, const std::string& content_encoding,
                            std::function<void(int, std::string)> done) {
  Impl& impl = *m_impl;
  const Config c = impl.config();
  if (impl.stopping.load()) {
    done(503, json{{"error", "the registry is stopping"}}.dump());
    return;
  }
  if (c.mode == Mode::off || (c.mode == Mode::uplink && c.audit == "off")) {
    done(404, json{{"error", "npm audit is not available from this registry (no uplink, or uplink.audit=off)"}}.dump());
    return;
  }
  std::string sent = body;
  std::string encoding = content_encoding;
  if (c.mode == Mode::uplink && c.audit == "public-only") {
    // Names published here (and private scopes) never leave the building.
    auto text = encoding == "gzip" ? util::gunzip(body, 64u << 20) : Expected<std::string>(body);
    auto doc = text ? json::parse(*text, nullptr, false) : json();
    if (!text || !doc.is_object()) {
      done(400, json{{"error", "audit: the request body is not a (gzipped) JSON object"}}.dump());
      return;
    }
    std::function<void(json&)> strip = [&](json& node) {
      for (const char* key : {"requires", "dependencies"}) {
        if (auto it = node.find(key); it != node.end() && it->is_object()) {
          for (auto dep = it->begin(); dep != it->end();) {
            if (is_private(dep.key())) {
              dep = it->erase(dep);
            } else {
              if (dep->is_object()) {
                strip(*dep);
              }
              ++dep;
            }
          }
        }
      }
    };
    if (path.ends_with("/bulk")) {
      for (auto it = doc.begin(); it != doc.end();) {
        it = is_private(it.key()) ? doc.erase(it) : std::next(it);
      }
    } else {
      strip(doc);
    }
    sent = doc.dump();
    encoding.clear();
  }
  impl.fetcher->post([&impl, c, path, body = std::move(sent), content_encoding = std::move(encoding),
                      done](http::Client& client) {
    impl.configure(client, c, milliseconds(30000));
    client.options().max_bytes = 0;
    http::Headers headers;
    headers.add("Content-Type", "application/json");
    if (!content_encoding.empty()) {
      headers.add("Content-Encoding", content_encoding);
    }
    auto response = client.request("POST", c.url + path, body, headers);
    if (!response) {
      done(response.error().code == Errc::timeout ? 504 : 502,
           json{{"error", "audit: " + response.error().message}}.dump());
      return;
    }
    done(response->status, response->body);
  });
}

} // namespace npme::uplink
