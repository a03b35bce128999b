#include "core/http/client.hpp"
#include "core/util/text.hpp"

#include <curl/curl.h>
#include <strings.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <mutex>

#include <sys/socket.h>
#include <unistd.h>

namespace npme::http {

namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct EasyDeleter {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};

struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};

using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

// What one transfer collects; curl's callbacks get a pointer to it.
struct Transfer {
  ClientResponse response;
  const std::function<bool(std::string_view)>* sink = nullptr;
  const std::function<bool()>* cancelled = nullptr;
  std::size_t max_bytes = 0;
  std::size_t received = 0;
  bool too_large = false;
  bool aborted = false;   // the sink asked to stop, or threw
  bool interrupted = false; // `cancelled` said so
};

// Sizes the body for the announced Content-Length before its first bytes
// arrive: a large answer (a follower's bulk answer) is then received without
// a copy at every doubling of the string. Bounded by the size limit, and by
// k_max_reserve without one, so a lying header costs no more than that.
void reserve_body(Transfer& transfer) {
  constexpr std::size_t k_max_reserve = 64u << 20;
  auto field = transfer.response.headers.get("Content-Length");
  if (!field) {
    return;
  }
  std::size_t length = 0;
  const auto text = util::trim(*field);
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), length);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return;
  }
  const std::size_t cap = transfer.max_bytes != 0 ? std::min(transfer.max_bytes, k_max_reserve) : k_max_reserve;
  transfer.response.body.reserve(std::min(length, cap));
}

extern "C" int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* transfer = static_cast<Transfer*>(user);
  try {
    if (transfer->cancelled != nullptr && *transfer->cancelled && (*transfer->cancelled)()) {
      transfer->interrupted = true;
      return 1;
    }
  } catch (...) {
    transfer->interrupted = true;
    return 1;
  }
  return 0;
}

extern "C" std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  std::size_t bytes = size * count;
  transfer->received += bytes;
  if (transfer->max_bytes != 0 && transfer->received > transfer->max_bytes) {
    transfer->too_large = true;
    return 0;
  }
  try {
    if (transfer->sink != nullptr) {
      if (!(*transfer->sink)(std::string_view(data, bytes))) {
        transfer->aborted = true;
        return 0;
      }
    } else {
      if (transfer->received == bytes) {
        reserve_body(*transfer);
      }
      transfer->response.body.append(data, bytes);
    }
  } catch (...) {
    // Exceptions must not cross curl's C frames.
    transfer->aborted = true;
    return 0;
  }
  return bytes;
}

extern "C" std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  std::size_t bytes = size * count;
  std::string_view line(data, bytes);
  try {
    if (line.starts_with("HTTP/")) {
      // A new status line (after "100 Continue" or a redirect): only the
      // final response's fields are kept.
      transfer->response.headers = Headers();
    } else if (auto colon = line.find(':'); colon != std::string_view::npos) {
      transfer->response.headers.add(std::string(util::trim(line.substr(0, colon))),
                                     std::string(util::trim(line.substr(colon + 1))));
    }
  } catch (...) {
    return 0;
  }
  return bytes;
}

bool is_unreachable(CURLcode code) {
  switch (code) {
  case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_CONNECT:
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    return true;
  default:
    return false;
  }
}

} // namespace

struct Client::Impl {
  std::unique_ptr<CURL, EasyDeleter> handle;
  char error_buffer[CURL_ERROR_SIZE] = {};
  // The connection's socket, known through curl's socket callbacks, so that
  // abort() can shut it down from another thread; -1 when closed.
  std::mutex socket_mutex;
  curl_socket_t socket = CURL_SOCKET_BAD;
  std::atomic<bool> aborted{false};

  Expected<ClientResponse> perform(const ClientOptions& options, const std::string& method, const std::string& url,
                                   const std::string* body, const Headers& headers,
                                   const std::function<bool(std::string_view)>* sink);
};

namespace {

extern "C" int on_sockopt(void* user, curl_socket_t fd, curlsocktype) {
  auto* impl = static_cast<Client::Impl*>(user);
  std::lock_guard lock(impl->socket_mutex);
  impl->socket = fd;
  return CURL_SOCKOPT_OK;
}

extern "C" int on_close_socket(void* user, curl_socket_t fd) {
  auto* impl = static_cast<Client::Impl*>(user);
  {
    std::lock_guard lock(impl->socket_mutex);
    if (impl->socket == fd) {
      impl->socket = CURL_SOCKET_BAD;
    }
  }
  return ::close(fd);
}

} // namespace

void Client::abort() {
  m_impl->aborted = true;
  std::lock_guard lock(m_impl->socket_mutex);
  if (m_impl->socket != CURL_SOCKET_BAD) {
    ::shutdown(m_impl->socket, SHUT_RDWR);
  }
}

Client::Client(ClientOptions options) : m_options(std::move(options)), m_impl(std::make_unique<Impl>()) {
  global_init();
  m_impl->handle.reset(curl_easy_init());
}

Client::~Client() = default;

Expected<ClientResponse> Client::request(const std::string& method, const std::string& url, const std::string& body,
                                         const Headers& headers) {
  return m_impl->perform(m_options, method, url, &body, headers, nullptr);
}

Expected<ClientResponse> Client::download(const std::string& url, const std::function<bool(std::string_view)>& sink,
                                          const Headers& headers) {
  return m_impl->perform(m_options, "GET", url, nullptr, headers, &sink);
}

Expected<ClientResponse> Client::stream(const std::string& method, const std::string& url, const std::string& body,
                                        const std::function<bool(std::string_view)>& sink, const Headers& headers) {
  return m_impl->perform(m_options, method, url, &body, headers, &sink);
}

Expected<ClientResponse> Client::Impl::perform(const ClientOptions& options, const std::string& method,
                                               const std::string& url, const std::string* body,
                                               const Headers& headers,
                                               const std::function<bool(std::string_view)>* sink) {
  CURL* curl = handle.get();
  if (curl == nullptr) {
    return make_error(Errc::failed, "cannot request '" + url + "': curl_easy_init failed");
  }
  // Reset forgets the previous request's options but keeps the connection
  // cache, so consecutive requests to one host reuse the connection.
  curl_easy_reset(curl);
  error_buffer[0] = '\0';

  SlistPtr header_list;
  auto append_header = [&](const std::string& line) -> bool {
    curl_slist* grown = curl_slist_append(header_list.get(), line.c_str());
    if (grown == nullptr) {
      return false;
    }
    // curl_slist_append returned the same list, grown: hand it over.
    static_cast<void>(header_list.release());
    header_list.reset(grown);
    return true;
  };
  bool headers_ok = true;
  if (!options.bearer_token.empty() && !headers.get("Authorization")) {
    headers_ok = headers_ok && append_header("Authorization: Bearer " + options.bearer_token);
  }
  std::string accept_encoding;
  for (const auto& [name, value] : headers.fields()) {
    // A request that names the encodings it accepts gets its body decoded:
    // curl sends the header and decodes what comes back.
    if (name.size() == 15 && strncasecmp(name.c_str(), "accept-encoding", 15) == 0) {
      accept_encoding = value;
      continue;
    }
    // curl drops "Name:" (it means "remove this header"); "Name;" sends it empty.
    headers_ok = headers_ok && append_header(value.empty() ? name + ";" : name + ": " + value);
  }
  if (!headers_ok) {
    return make_error(Errc::failed, "cannot request '" + url + "': out of memory");
  }

  Transfer transfer;
  transfer.sink = sink;
  transfer.cancelled = &options.cancelled;
  transfer.max_bytes = options.max_bytes;

  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  if (!accept_encoding.empty()) {
    curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, accept_encoding.c_str());
  }
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options.connect_timeout.count()));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(options.timeout.count()));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, header_list.get());
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "npme/" NPME_VERSION);
  curl_easy_setopt(curl, CURLOPT_SOCKOPTFUNCTION, &on_sockopt);
  curl_easy_setopt(curl, CURLOPT_SOCKOPTDATA, this);
  curl_easy_setopt(curl, CURLOPT_CLOSESOCKETFUNCTION, &on_close_socket);
  curl_easy_setopt(curl, CURLOPT_CLOSESOCKETDATA, this);
  if (!options.proxy.empty()) {
    curl_easy_setopt(curl, CURLOPT_PROXY, options.proxy.c_str());
  }
  if (!options.ca_file.empty()) {
    // With OpenSSL, curl trusts both: the extra bundle and the system's directory.
    curl_easy_setopt(curl, CURLOPT_CAINFO, options.ca_file.c_str());
    curl_easy_setopt(curl, CURLOPT_CAPATH, "/etc/ssl/certs");
  }
  if (!options.cert_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_SSLCERT, options.cert_file.c_str());
  }
  if (!options.key_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_SSLKEY, options.key_file.c_str());
  }
  if (options.stall_seconds > 0) {
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, options.stall_seconds);
  }
  if (options.max_bytes != 0) {
    curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options.max_bytes));
  }
  if (aborted) {
    return make_error(Errc::interrupted, "request to '" + url + "' cancelled");
  }
  if (options.cancelled) {
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &transfer);
  }

  bool has_body = body != nullptr && !body->empty();
  if (method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (method == "GET" && !has_body) {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
    if (has_body || method == "POST" || method == "PUT" || method == "PATCH") {
      // An explicit size: bodies may hold NUL bytes, and an empty PUT still
      // needs "Content-Length: 0".
      const char* data = body != nullptr ? body->data() : "";
      curl_off_t size = body != nullptr ? static_cast<curl_off_t>(body->size()) : 0;
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, size);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, data);
    }
  }

  CURLcode code = curl_easy_perform(curl);
  // The header list must outlive the transfer only; don't let the handle
  // keep a dangling pointer to it for the next reset.
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);
  std::string detail = error_buffer[0] != '\0' ? std::string(error_buffer) : std::string(curl_easy_strerror(code));

  if (code != CURLE_OK) {
    if (transfer.interrupted || aborted) {
      return make_error(Errc::interrupted, "request to '" + url + "' cancelled");
    }
    if (transfer.too_large || code == CURLE_FILESIZE_EXCEEDED) {
      return make_error(Errc::too_large, "response of '" + url + "' is larger than " +
                                           std::to_string(options.max_bytes) + " bytes");
    }
    if (transfer.aborted) {
      return make_error(Errc::failed, "download of '" + url + "' aborted");
    }
    if (code == CURLE_OPERATION_TIMEDOUT) {
      // A connect timeout means the instance is unreachable; a timeout
      // after the request went out means it is there but too slow. (The
      // connect time says nothing on a reused connection: it is 0 there.)
      long request_size = 0;
      curl_easy_getinfo(curl, CURLINFO_REQUEST_SIZE, &request_size);
      if (request_size == 0) {
        return make_error(Errc::unreachable, "cannot reach '" + url + "': " + detail);
      }
      return make_error(Errc::timeout, "request to '" + url + "' timed out: " + detail);
    }
    if (code == CURLE_SSL_CACERT_BADFILE) {
      return make_error(Errc::invalid, "the CA bundle '" + options.ca_file + "' cannot be used for '" + url +
                                         "': " + detail);
    }
    if (code == CURLE_PEER_FAILED_VERIFICATION) {
      // curl's detail names the reason ("unable to get local issuer certificate").
      return make_error(Errc::unreachable, "cannot reach '" + url + "': its TLS certificate is not trusted: " + detail);
    }
    if (is_unreachable(code)) {
      return make_error(Errc::unreachable, "cannot reach '" + url + "': " + curl_easy_strerror(code));
    }
    if (code == CURLE_URL_MALFORMAT || code == CURLE_UNSUPPORTED_PROTOCOL) {
      return make_error(Errc::invalid, "cannot request '" + url + "': " + detail);
    }
    return make_error(Errc::failed, "cannot request '" + url + "': " + detail);
  }
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  transfer.response.status = static_cast<int>(status);
  return std::move(transfer.response);
}

} // namespace npme::http
