// Request bodies of Body::spooled routes written to a file as they arrive.

#include "core/http/client.hpp"
#include "core/http/server.hpp"
#include "core/util/crypto.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <memory>
#include <string>

#include <unistd.h>

using namespace npme;
using namespace npme::http;
namespace fs = std::filesystem;

namespace {

// The body a handler saw, read back from its file when it had one.
std::string body_of(const Request& request) {
  if (!request.body_file) {
    return request.body;
  }
  std::string out(request.body_file->size, '\0');
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(request.body_file->fd.get(), out.data() + done, out.size() - done,
                              static_cast<off_t>(done));
    if (n <= 0) {
      return "(short read)";
    }
    done += static_cast<std::size_t>(n);
  }
  return out;
}

struct SpoolFixture {
  fs::path dir;
  std::shared_ptr<Router> router = std::make_shared<Router>();
  std::unique_ptr<Server> server;

  explicit SpoolFixture(std::string spool_dir = "") {
    dir = fs::temp_directory_path() / ("npme-spool-" + util::random_token(8));
    fs::create_directories(dir);
    // Answers where the body was (file or memory), its size and its SHA-256.
    auto describe = [](Request& request) {
      const std::string body = body_of(request);
      Response response;
      response.headers.add("X-Body-In", request.body_file ? "file" : "memory");
      response.body = std::to_string(body.size()) + " " + util::hex(util::sha256(body));
      return response;
    };
    router->add("PUT", "/spooled", describe, Blocking::yes, Body::spooled);
    router->add("PUT", "/memory", describe, Blocking::yes);
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.max_body_bytes = 8u << 20;
    options.spool_dir = spool_dir.empty() ? dir.string() : spool_dir;
    options.spool_min_bytes = 64u << 10;
    options.io_threads = 1;
    options.worker_threads = 2;
    server = std::make_unique<Server>(options, router);
    REQUIRE(server->start());
  }
  ~SpoolFixture() {
    server->stop();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string url(std::string_view path) const { return "http://" + server->address() + std::string(path); }
};

std::string expected(const std::string& body) {
  return std::to_string(body.size()) + " " + util::hex(util::sha256(body));
}

} // namespace

TEST_CASE("Server writes a large body of a Body::spooled route to a file, and only that") {
  SpoolFixture fixture;
  Client client;
  std::string large(3u << 20, '\0');
  for (std::size_t i = 0; i < large.size(); ++i) {
    large[i] = static_cast<char>((i * 7919) >> 3);
  }
  const std::string small(1000, 's');

  auto spooled = client.request("PUT", fixture.url("/spooled"), large);
  REQUIRE(spooled);
  CHECK(spooled->status == 200);
  CHECK(spooled->headers.get("x-body-in") == std::optional<std::string_view>("file"));
  CHECK(spooled->body == expected(large));

  // Under spool_min_bytes, or on a route that keeps bodies in memory: memory.
  auto small_body = client.request("PUT", fixture.url("/spooled"), small);
  REQUIRE(small_body);
  CHECK(small_body->headers.get("x-body-in") == std::optional<std::string_view>("memory"));
  CHECK(small_body->body == expected(small));
  auto memory = client.request("PUT", fixture.url("/memory"), large);
  REQUIRE(memory);
  CHECK(memory->headers.get("x-body-in") == std::optional<std::string_view>("memory"));
  CHECK(memory->body == expected(large));

  // The file was unlinked at once: nothing is left behind.
  CHECK(fs::is_empty(fixture.dir));
}

TEST_CASE("Server answers a body it cannot spool with the file error, and keeps serving") {
  SpoolFixture fixture("/nonexistent/npme-spool-dir");
  Client client;
  auto refused = client.request("PUT", fixture.url("/spooled"), std::string(200u << 10, 'x'));
  REQUIRE(refused);
  CHECK(refused->status == 500);
  CHECK(refused->body == R"({"error":"the request body could not be stored"})");
  auto served = client.request("PUT", fixture.url("/spooled"), std::string(10, 'x'));
  REQUIRE(served);
  CHECK(served->status == 200);
}
