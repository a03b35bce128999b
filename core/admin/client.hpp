#pragma once
// The CLI's way into a running instance: the admin API over the one HTTP
// client. Admin errors come back as npme errors with their original code.

#include "core/http/client.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace npme::admin {

class Client {
public:
  // `base_url` is the admin API's URL ("http://127.0.0.1:8800"), `token` its
  // admin.token; `ca_file` a CA bundle (PEM) trusted beside the system's
  // for an https URL (empty: the system's only).
  Client(std::string base_url, std::string token, std::string ca_file = {});

  // Sends `method` to `path` (under /api/v1, e.g. "/status") with an optional
  // JSON `body`; returns the JSON answer. Non-2xx answers become errors with
  // the code and message the instance gave (401 → Errc::unauthorized).
  Expected<nlohmann::json> call(const std::string& method, const std::string& path,
                                const nlohmann::json* body = nullptr);

  // Allows calls to take up to `timeout` (default 60 s): calls that wait
  // on purpose (a switchover) set it above their own deadline.
  void set_timeout(std::chrono::milliseconds timeout) { m_http->options().timeout = timeout; }

  const std::string& base_url() const { return m_base_url; }

private:
  std::string m_base_url;
  std::unique_ptr<http::Client> m_http; // a pointer keeps admin::Client movable
};

} // namespace npme::admin
