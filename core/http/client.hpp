#pragma once
// The one HTTP client of npme, on libcurl: used by the CLI to talk to the
// admin API and by the follower to read an upstream.

#include "core/http/message.hpp"
#include "core/util/error.hpp"

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace npme::http {

struct ClientResponse {
  int status = 0;
  Headers headers;
  std::string body;
};

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds timeout{60000}; // whole request
  std::string bearer_token;                 // sent as Authorization: Bearer
  // Polled about once a second during a transfer; returning true aborts it
  // with Errc::interrupted (a follower stopping in the middle of a long poll).
  std::function<bool()> cancelled;
  std::string proxy{};                      // outbound proxy URL; empty: curl's default (http_proxy etc.)
  std::string ca_file{};                    // extra CA bundle (PEM), trusted beside the system's
  std::size_t max_bytes = 0;                // larger response bodies fail with Errc::too_large; 0: no limit
  long stall_seconds = 0;                   // no byte for this long: Errc::timeout (a server that hangs); 0: off
  std::string cert_file{};                  // client certificate (PEM) for mutual TLS; empty: none
  std::string key_file{};                   // its private key (PEM); empty: in cert_file or none
};

class Client {
public:
  explicit Client(ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends one request. Connection failures and timeouts are errors
  // (Errc::unreachable, Errc::timeout); any HTTP status is a response.
  // An Accept-Encoding in `headers` ("gzip") is sent and the body that
  // comes back is decoded: the response holds the bytes as they were
  // before the server compressed them.
  // The connection is reused between calls on the same Client.
  Expected<ClientResponse> request(const std::string& method, const std::string& url,
                                   const std::string& body = "",
                                   const Headers& headers = {});

  // Streams the response body into `sink` (for large tarballs); the
  // returned response has an empty body. `sink` returns false to abort.
  Expected<ClientResponse> download(const std::string& url,
                                    const std::function<bool(std::string_view)>& sink,
                                    const Headers& headers = {});

  // Like download(), for a request with `method` and `body` whose answer is a
  // stream read as it arrives (etcd's watch: a POST answered by one JSON
  // object per change, for as long as options().timeout allows).
  Expected<ClientResponse> stream(const std::string& method, const std::string& url, const std::string& body,
                                  const std::function<bool(std::string_view)>& sink, const Headers& headers = {});

  ClientOptions& options() { return m_options; }

  // Interrupts the transfer under way on another thread at once (by shutting
  // its socket down); it and every later request fail with Errc::interrupted.
  // Thread-safe.
  void abort();

  struct Impl; // opaque; named publicly only for curl's C callbacks

private:
  ClientOptions m_options;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::http
