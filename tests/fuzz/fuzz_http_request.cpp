// A request as the servers read it from a connection (core/http/server.cpp):
// Beast's request parser with the registry's and the admin API's limits
// (parse_request), the query string, then the router's match of the path
// with its percent-decoded captures (core/http/router.cpp), on the route
// patterns the registry and the feed use. Input: the bytes a client sends.

#include "core/http/server.hpp"
#include "tests/fuzz/fuzz.hpp"

#include <memory>
#include <string>

using namespace npme;
using npme::fuzz::require;

namespace {

// The registry's and the feed's route patterns (core/registry/registry.cpp,
// core/replication/feed.cpp), each answering with its captures.
const http::Router& router() {
  static const http::Router instance = [] {
    http::Router routes;
    const auto echo = [](http::Request& request) {
      std::string body;
      for (const auto& [name, value] : request.params) {
        body += name + "=" + value + "\n";
      }
      return http::Response::json(200, body);
    };
    for (const char* pattern : {"/",
                                "/_changes",
                                "/_doc/{id}",
                                "/_bulk",
                                "/-/ping",
                                "/-/whoami",
                                "/-/v1/search",
                                "/-/user/{user}",
                                "/-/user/{user}/-rev/{rev}",
                                "/-/user/token/{token}",
                                "/-/package/{name}/dist-tags",
                                "/-/package/{scope}/{name}/dist-tags",
                                "/-/package/{name}/dist-tags/{tag}",
                                "/-/package/{scope}/{name}/dist-tags/{tag}",
                                "/{name}/-/{file}",
                                "/{scope}/{name}/-/{file}",
                                "/{name}",
                                "/{first}/{second}",
                                "/{scope}/{name}/{version}",
                                "/{name}/-rev/{rev}",
                                "/{scope}/{name}/-rev/{rev}",
                                "/{name}/-/{file}/-rev/{rev}",
                                "/{scope}/{name}/-/{file}/-rev/{rev}",
                                "/-/npm/v1/security/{rest*}"}) {
      for (const char* method : {"GET", "PUT", "DELETE"}) {
        routes.add(method, pattern, echo);
      }
    }
    return routes;
  }();
  return instance;
}

void check(std::string_view bytes, const http::ServerOptions& options) {
  auto request = http::parse_request(bytes, options);
  if (!request) {
    return;
  }
  require(request->body.size() <= options.max_body_bytes, "the body is within the limit");
  require(request->target.starts_with(request->path), "the path is the target's start");
  require(request->path.find('?') == std::string::npos, "the path holds no query");
  for (const auto& [name, value] : request->headers.fields()) {
    require(name.find_first_of("\r\n:") == std::string::npos && value.find_first_of("\r\n") == std::string::npos,
            "header fields hold no line breaks");
  }
  // Not dispatch(): it turns an exception into a 500, and the server too,
  // but here one is a finding.
  const auto found = router().match(*request);
  auto response = (*found.handler)(*request);
  require(response.status >= 200 && response.status < 600, "the router answers");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes = fuzz::text(data, size);
  // The registry's server (registry.max_body's default) and the admin API's
  // (core/instance/instance.cpp).
  http::ServerOptions registry;
  check(bytes, registry);
  http::ServerOptions admin;
  admin.max_body_bytes = 1u << 20;
  check(bytes, admin);
  // A small body limit, so that inputs reach the 413 path.
  http::ServerOptions small;
  small.max_body_bytes = 64;
  small.max_header_bytes = 512;
  check(bytes, small);
  return 0;
}
