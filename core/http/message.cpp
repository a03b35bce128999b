#include "core/http/message.hpp"

#include "core/util/crypto.hpp"
#include "core/util/gzip.hpp"

#include <algorithm>
#include <cctype>

namespace npme::http {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

bool is_unreserved(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

const std::string k_empty;

} // namespace

void Headers::add(std::string name, std::string value) {
  m_fields.emplace_back(std::move(name), std::move(value));
}

void Headers::set(std::string name, std::string value) {
  std::erase_if(m_fields, [&](const auto& field) { return iequals(field.first, name); });
  m_fields.emplace_back(std::move(name), std::move(value));
}

std::optional<std::string_view> Headers::get(std::string_view name) const {
  for (const auto& [field_name, value] : m_fields) {
    if (iequals(field_name, name)) {
      return std::string_view(value);
    }
  }
  return std::nullopt;
}

std::string Headers::get_all(std::string_view name) const {
  std::string joined;
  for (const auto& [field_name, value] : m_fields) {
    if (iequals(field_name, name)) {
      joined += (joined.empty() ? "" : ", ") + value;
    }
  }
  return joined;
}

const std::string& Request::param(const std::string& name) const {
  auto it = params.find(name);
  return it == params.end() ? k_empty : it->second;
}

Response Response::json(int status, std::string body) {
  Response response;
  response.status = status;
  response.headers.add("Content-Type", "application/json");
  response.body = std::move(body);
  return response;
}

Response Response::json(int status, std::shared_ptr<const std::string> body) {
  Response response;
  response.status = status;
  response.headers.add("Content-Type", "application/json");
  response.shared_body = std::move(body);
  return response;
}

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '%') {
      out.push_back(c);
      continue;
    }
    if (text.size() - i < 3) {
      return std::nullopt;
    }
    int high = util::hex_value(text[i + 1]);
    int low = util::hex_value(text[i + 2]);
    if (high < 0 || low < 0) {
      return std::nullopt;
    }
    out.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return out;
}

std::string percent_encode(std::string_view text, std::string_view keep) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (is_unreserved(c) || keep.find(c) != std::string_view::npos) {
      out.push_back(c);
    } else {
      auto byte = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(k_hex[byte >> 4]);
      out.push_back(k_hex[byte & 0x0f]);
    }
  }
  return out;
}

Request Request::without_body() const {
  Request copy;
  copy.method = method;
  copy.target = target;
  copy.path = path;
  copy.query = query;
  copy.headers = headers;
  copy.remote_address = remote_address;
  copy.params = params;
  copy.on_worker = on_worker;
  return copy;
}

struct Responder::State {
  explicit State(std::shared_ptr<Sink> target) : sink(std::move(target)) {}
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  ~State() {
    if (!done.exchange(true) && sink) {
      try {
        sink->deliver(Response::json(500, R"({"error":"internal server error: the request was never answered"})"));
      } catch (...) {
        // Destructors don't throw; the connection is closed instead.
      }
    }
  }
  std::shared_ptr<Sink> sink;
  std::atomic<bool> done{false};
};

Responder::Responder(std::shared_ptr<Sink> sink) : m_state(std::make_shared<State>(std::move(sink))) {}

void Responder::send(Response response) const {
  if (!m_state || m_state->done.exchange(true)) {
    return;
  }
  response.deferred = false;
  m_state->sink->deliver(std::move(response));
}

void Responder::cancel() const {
  if (m_state) {
    m_state->done.store(true);
  }
}

bool Responder::sent() const {
  return m_state && m_state->done.load();
}

std::string gzip_etag(std::string_view etag) {
  if (etag.size() >= 2 && etag.back() == '"') {
    return std::string(etag.substr(0, etag.size() - 1)) + "-gzip\"";
  }
  return std::string(etag) + "-gzip";
}

void compress_if_accepted(const Request& request, Response& response) {
  if (response.deferred || response.file_body || response.status < 200 || response.status >= 300 || response.status == 204 ||
      response.body_view().size() < k_compress_min_bytes || response.headers.get("Content-Encoding")) {
    return;
  }
  // The type first: a tarball (most answers) is never compressed again.
  const auto type = response.headers.get("Content-Type");
  if (!type || type->find("json") == std::string::npos ||
      !util::accepts_gzip(request.headers.get("Accept-Encoding").value_or(""))) {
    return;
  }
  response.body = util::gzip(response.body_view());
  response.shared_body.reset();
  response.headers.set("Content-Encoding", "gzip");
  response.headers.add("Vary", "Accept-Encoding");
  if (auto etag = response.headers.get("ETag")) {
    response.headers.set("ETag", gzip_etag(*etag));
  }
}

} // namespace npme::http
