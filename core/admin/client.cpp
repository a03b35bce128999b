#include "core/admin/client.hpp"

namespace npme::admin {

Client::Client(std::string base_url, std::string token, std::string ca_file)
  : m_base_url(std::move(base_url)),
    m_http(std::make_unique<http::Client>(
      http::ClientOptions{std::chrono::milliseconds(3000), std::chrono::milliseconds(120000), std::move(token), {}})) {
  m_http->options().ca_file = std::move(ca_file);
  while (!m_base_url.empty() && m_base_url.back() == '/') {
    m_base_url.pop_back();
  }
}

Expected<nlohmann::json> Client::call(const std::string& method, const std::string& path,
                                      const nlohmann::json* body) {
  http::Headers headers;
  headers.add("Accept", "application/json");
  std::string payload;
  if (body) {
    headers.add("Content-Type", "application/json");
    payload = body->dump();
  }
  const std::string url = m_base_url + "/api/v1" + path;
  auto response = m_http->request(method, url, payload, headers);
  if (!response) {
    if (response.error().code == Errc::unreachable &&
        response.error().message.find("TLS certificate is not trusted") != std::string::npos) {
      return make_error(Errc::unreachable, "cannot reach the admin API at " + m_base_url + ": " +
                                             response.error().message +
                                             " (pass --cacert FILE, or NPME_CACERT, with the CA that signed it)");
    }
    if (response.error().code == Errc::unreachable) {
      return make_error(Errc::unreachable, "cannot reach the admin API at " + m_base_url + ": " +
                                             response.error().message + " (is 'npme serve' running?)");
    }
    return util::Unexpected<Error>{response.error()};
  }
  auto doc = nlohmann::json::parse(response->body, nullptr, false);
  if (response->status >= 200 && response->status < 300) {
    if (doc.is_discarded()) {
      return make_error(Errc::failed, "admin API " + method + " " + path + ": answer is not JSON");
    }
    return doc;
  }
  Errc code = Errc::failed;
  std::string message = "admin API " + method + " " + path + " answered " + std::to_string(response->status);
  if (!doc.is_discarded() && doc.contains("error") && doc["error"].is_object()) {
    code = errc_from_name(doc["error"].value("code", "failed"));
    message = doc["error"].value("message", message);
  }
  if (response->status == 401) {
    code = Errc::unauthorized;
  } else if (response->status == 404 && code == Errc::failed) {
    code = Errc::not_found;
  }
  return make_error(code, message);
}

} // namespace npme::admin
