#include "core/ha/etcd.hpp"

#include "core/util/crypto.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <string_view>
#include <utility>

namespace npme::ha {

namespace {

using nlohmann::json;

// Idle clients (and their connections) kept for the next requests; two
// threads of the HA loop need two, a third is spare.
constexpr std::size_t k_max_idle_clients = 3;

// The largest streamed object a watch accepts; etcd's own request limit is
// 1.5 MiB, a base64 event of it stays well below.
constexpr std::size_t k_max_stream_object = 64u << 20;

// gRPC status codes, which the gateway puts in its error bodies.
enum class Grpc {
  invalid_argument = 3,
  deadline_exceeded = 4,
  not_found = 5,
  already_exists = 6,
  permission_denied = 7,
  resource_exhausted = 8,
  failed_precondition = 9,
  aborted = 10,
  out_of_range = 11,
  unavailable = 14,
  unauthenticated = 16,
};

// An int64 of a gateway answer: proto3's JSON mapping sends it as a string,
// and leaves it out when it is 0.
std::int64_t int_field(const json& object, const char* name) {
  if (!object.is_object()) {
    return 0;
  }
  auto it = object.find(name);
  if (it == object.end()) {
    return 0;
  }
  if (it->is_number_integer()) {
    return it->get<std::int64_t>();
  }
  if (it->is_string()) {
    const auto& text = it->get_ref<const std::string&>();
    std::int64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    return ec == std::errc() && end == text.data() + text.size() ? value : 0;
  }
  return 0;
}

bool bool_field(const json& object, const char* name) {
  if (!object.is_object()) {
    return false;
  }
  auto it = object.find(name);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

std::string string_field(const json& object, const char* name) {
  if (!object.is_object()) {
    return {};
  }
  auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// The end of the range of every key that starts with `key`: `key` with its
// last byte that is not 0xff increased, the bytes after it dropped. "\0"
// (every key from `key` on) when there is none.
std::string prefix_end(std::string key) {
  while (!key.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(key.back());
    if (last < 0xff) {
      ++last;
      return key;
    }
    key.pop_back();
  }
  return std::string(1, '\0');
}

std::string lease_name(std::int64_t lease) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%llx", static_cast<unsigned long long>(lease));
  return "lease " + std::string(buffer);
}

std::string quote(const std::string& key) {
  return "'" + key + "'";
}

// A key-value of an answer or an event: key and value in base64.
std::optional<KeyValue> parse_kv(const json& object) {
  if (!object.is_object()) {
    return std::nullopt;
  }
  KeyValue kv;
  auto key = util::base64_decode(string_field(object, "key"));
  auto value = util::base64_decode(string_field(object, "value"));
  if (!key || !value) {
    return std::nullopt;
  }
  kv.key = std::move(*key);
  kv.value = std::move(*value);
  kv.create_revision = int_field(object, "create_revision");
  kv.mod_revision = int_field(object, "mod_revision");
  kv.version = int_field(object, "version");
  kv.lease = int_field(object, "lease");
  return kv;
}

// An error etcd answered, in either of the gateway's two shapes: a unary
// call's {"error": "...", "message": "...", "code": 5} or a stream's
// {"error": {"grpc_code": 5, "message": "..."}}.
struct Failure {
  int code = 0;
  std::string message;
};

std::optional<Failure> failure_of(const json& answer) {
  if (!answer.is_object()) {
    return std::nullopt;
  }
  auto it = answer.find("error");
  if (it == answer.end()) {
    return std::nullopt;
  }
  Failure failure;
  if (it->is_object()) {
    failure.code = static_cast<int>(int_field(*it, "grpc_code"));
    failure.message = string_field(*it, "message");
  } else {
    failure.code = static_cast<int>(int_field(answer, "code"));
    failure.message = string_field(answer, "message");
    if (failure.message.empty()) {
      failure.message = string_field(answer, "error");
    }
  }
  if (failure.message.empty()) {
    failure.message = "unknown error";
  }
  return failure;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// The token was not accepted, though the password may still be good: simple
// tokens expire after five idle minutes (--auth-token-ttl) and die with the
// member's restart and with `auth disable`; a JWT token older than the last
// change of users and roles is "old"; and "user name is empty" follows
// `auth enable` after we found auth disabled.
bool stale_token(const Failure& failure) {
  return contains(failure.message, "invalid auth token") || contains(failure.message, "auth store is old") ||
         contains(failure.message, "user name is empty");
}

Errc errc_of(const Failure& failure, int status) {
  if (contains(failure.message, "authentication failed") || stale_token(failure)) {
    return Errc::unauthorized;
  }
  switch (static_cast<Grpc>(failure.code)) {
  case Grpc::unauthenticated:
    return Errc::unauthorized;
  case Grpc::permission_denied:
    return Errc::forbidden;
  case Grpc::not_found:
    return Errc::not_found;
  case Grpc::invalid_argument:
  case Grpc::out_of_range:
    return Errc::invalid;
  case Grpc::failed_precondition:
    return Errc::precondition;
  case Grpc::already_exists:
  case Grpc::aborted:
    return Errc::conflict;
  case Grpc::deadline_exceeded:
    return Errc::timeout;
  case Grpc::unavailable:
  case Grpc::resource_exhausted:
    return Errc::unavailable;
  }
  switch (status) {
  case 400:
    return Errc::invalid;
  case 401:
    return Errc::unauthorized;
  case 403:
    return Errc::forbidden;
  case 404:
    return Errc::not_found;
  case 503:
    return Errc::unavailable;
  case 504:
    return Errc::timeout;
  default:
    return Errc::failed;
  }
}

bool unanswered(const Error& error) {
  return error.code == Errc::unreachable || error.code == Errc::timeout;
}

// Splits the gateway's streamed answer (JSON objects, one a line) into its
// objects however the bytes are cut into chunks: a large event arrives in
// several, several small ones in one. Tracks strings so that braces inside
// keys and values do not count.
class ObjectStream {
public:
  // Appends `chunk` and calls `on_object` with each object it completes;
  // returns false as soon as `on_object` does, or when an object grows past
  // k_max_stream_object (then too_large()).
  bool feed(std::string_view chunk, const std::function<bool(std::string_view)>& on_object) {
    m_buffer.append(chunk);
    std::size_t consumed = 0;
    bool go_on = true;
    for (; go_on && m_scan < m_buffer.size(); ++m_scan) {
      char c = m_buffer[m_scan];
      if (m_in_string) {
        if (m_escaped) {
          m_escaped = false;
        } else if (c == '\\') {
          m_escaped = true;
        } else if (c == '"') {
          m_in_string = false;
        }
      } else if (m_depth == 0) {
        // Between objects: newlines, or anything else the gateway might add.
        if (c == '{') {
          m_start = m_scan;
          m_depth = 1;
        } else {
          consumed = m_scan + 1;
        }
      } else if (c == '"') {
        m_in_string = true;
      } else if (c == '{' || c == '[') {
        ++m_depth;
      } else if ((c == '}' || c == ']') && --m_depth == 0) {
        go_on = on_object(std::string_view(m_buffer).substr(m_start, m_scan + 1 - m_start));
        consumed = m_scan + 1;
      }
    }
    if (!go_on) {
      return false;
    }
    m_buffer.erase(0, consumed);
    m_scan -= consumed;
    m_start = m_start >= consumed ? m_start - consumed : 0;
    if (m_buffer.size() > k_max_stream_object) {
      m_too_large = true;
      return false;
    }
    return true;
  }

  bool too_large() const { return m_too_large; }

private:
  std::string m_buffer;
  std::size_t m_scan = 0;  // next byte to look at
  std::size_t m_start = 0; // where the open object starts
  int m_depth = 0;
  bool m_in_string = false;
  bool m_escaped = false;
  bool m_too_large = false;
};

std::string normalize(std::string endpoint) {
  while (!endpoint.empty() && endpoint.back() == '/') {
    endpoint.pop_back();
  }
  if (!endpoint.empty() && endpoint.find("://") == std::string::npos) {
    endpoint = "http://" + endpoint;
  }
  return endpoint;
}

using OnEvent = std::function<bool(const KeyValue& kv, bool deleted)>;

// Reads one watch stream as it arrives: splits it into objects, hands each
// event to `on_event`, and keeps what ended it. `context` ("etcd <url>:
// watch 'k': ") starts its error messages.
class WatchReader {
public:
  WatchReader(std::string context, const OnEvent& on_event) : m_context(std::move(context)), m_on_event(on_event) {}

  // The sink of the stream; false ends it.
  bool feed(std::string_view chunk) {
    received = true;
    try {
      return m_objects.feed(chunk, [this](std::string_view object) { return on_object(object); });
    } catch (const std::exception& e) {
      // Only json's own exceptions reach here (on_event's are kept apart):
      // an answer that makes it throw is not etcd's.
      fail(Errc::failed, std::string("not an answer of etcd: ") + e.what());
      return false;
    }
  }

  bool too_large() const { return m_objects.too_large(); }

  bool received = false; // some byte arrived: the watch is not tried elsewhere
  bool stopped = false;  // on_event returned false
  bool token_refused = false;
  std::optional<Error> error;
  std::exception_ptr exception; // thrown by on_event, for the caller

private:
  void fail(Errc code, const std::string& reason) { error = Error{code, m_context + reason}; }

  bool on_object(std::string_view text) {
    json object = json::parse(text, nullptr, false);
    if (object.is_discarded()) {
      fail(Errc::failed, "not an answer of etcd: " + std::string(text.substr(0, 200)));
      return false;
    }
    if (auto failure = failure_of(object)) {
      token_refused = stale_token(*failure);
      fail(errc_of(*failure, 0), failure->message);
      return false;
    }
    const json& result = object.value("result", json::object());
    if (bool_field(result, "canceled")) {
      on_canceled(result);
      return false;
    }
    auto events = result.find("events");
    if (events == result.end() || !events->is_array()) {
      return true; // "created", or a progress notice
    }
    for (const auto& event : *events) {
      auto kv = event.is_object() ? parse_kv(event.value("kv", json::object())) : std::nullopt;
      if (!kv) {
        fail(Errc::failed, "an event without a valid kv");
        return false;
      }
      bool go_on = false;
      try {
        go_on = m_on_event(*kv, string_field(event, "type") == "DELETE");
      } catch (...) {
        exception = std::current_exception();
        return false;
      }
      if (!go_on) {
        stopped = true;
        return false;
      }
    }
    return true;
  }

  // etcd ends a watch it refuses (a compacted start revision, a token or
  // permission it does not accept) with a "canceled" answer, not an error.
  void on_canceled(const json& result) {
    Failure failure{0, string_field(result, "cancel_reason")};
    if (contains(failure.message, "permission denied")) {
      failure.code = static_cast<int>(Grpc::permission_denied);
    }
    Errc code = errc_of(failure, 0);
    if (std::int64_t compacted = int_field(result, "compact_revision"); compacted != 0) {
      // The start revision is gone: the caller must read again.
      code = Errc::conflict;
      failure.message = "revisions before " + std::to_string(compacted) + " are compacted";
    }
    if (failure.message.empty()) {
      failure.message = "canceled by etcd";
    }
    token_refused = stale_token(failure);
    fail(code, failure.message);
  }

  std::string m_context;
  const OnEvent& m_on_event;
  ObjectStream m_objects;
};

enum class Reuse { yes, no };

// The HTTP clients of one Etcd: idle ones kept for the next calls (and so
// their connections), and the ones running, which abort() interrupts. Each
// call has a client of its own: calls of several threads run at once.
class ClientPool {
public:
  // A client lent to one call, returned when it goes out of scope.
  class Lent {
  public:
    Lent(ClientPool& pool, std::unique_ptr<http::Client> client, std::uint64_t generation, Reuse reuse)
      : m_pool(pool), m_client(std::move(client)), m_generation(generation), m_reuse(reuse) {}
    ~Lent() { m_pool.give_back(std::move(m_client), m_generation, m_reuse); }
    Lent(const Lent&) = delete;
    Lent& operator=(const Lent&) = delete;

    http::Client* operator->() { return m_client.get(); }

  private:
    ClientPool& m_pool;
    std::unique_ptr<http::Client> m_client;
    std::uint64_t m_generation;
    Reuse m_reuse;
  };

  explicit ClientPool(http::ClientOptions options) : m_options(std::move(options)) {}

  // A client with `timeout` for the whole request and `connect_timeout`;
  // with Reuse::no a new one, never pooled (a watch's, whose connection is
  // of no use after it).
  Lent lend(std::chrono::milliseconds connect_timeout, std::chrono::milliseconds timeout, Reuse reuse) {
    std::lock_guard lock(m_mutex);
    std::unique_ptr<http::Client> client;
    if (reuse == Reuse::yes && !m_idle.empty()) {
      client = std::move(m_idle.back());
      m_idle.pop_back();
    } else {
      client = std::make_unique<http::Client>(m_options);
    }
    client->options().connect_timeout = connect_timeout;
    client->options().timeout = timeout;
    m_running.push_back(client.get());
    return Lent(*this, std::move(client), m_generation, reuse);
  }

  void abort() {
    std::lock_guard lock(m_mutex);
    ++m_generation;
    for (http::Client* client : m_running) {
      client->abort();
    }
  }

private:
  void give_back(std::unique_ptr<http::Client> client, std::uint64_t generation, Reuse reuse) {
    std::lock_guard lock(m_mutex);
    std::erase(m_running, client.get());
    // A client that abort() reached is spoiled for good (http::Client::abort
    // is final): only one lent since the last abort() goes back.
    if (reuse == Reuse::yes && generation == m_generation && m_idle.size() < k_max_idle_clients) {
      m_idle.push_back(std::move(client));
    }
  }

  http::ClientOptions m_options;
  std::mutex m_mutex; // guards the members below
  std::vector<std::unique_ptr<http::Client>> m_idle;
  std::vector<http::Client*> m_running;
  std::uint64_t m_generation = 0; // bumped by abort()
};

http::ClientOptions client_options(const EtcdOptions& options) {
  http::ClientOptions client;
  client.ca_file = options.ca_file;
  client.cert_file = options.cert_file;
  client.key_file = options.key_file;
  return client;
}

} // namespace

struct Etcd::Impl {
  explicit Impl(EtcdOptions etcd_options) : options(std::move(etcd_options)), clients(client_options(options)) {}

  const EtcdOptions options;
  ClientPool clients;

  // Guards the members below: two threads of the HA loop may call at once.
  mutable std::mutex mutex;
  std::size_t preferred = 0;  // the endpoint that answered last
  std::string token;          // etcd's auth token; empty: none yet
  bool auth_disabled = false; // authenticate said auth is not enabled

  struct Reply {
    std::string endpoint;
    int status = 0;
    json body;
  };

  // The endpoints in the order to try them: the one that answered last first.
  std::vector<std::size_t> order() const {
    std::lock_guard lock(mutex);
    std::vector<std::size_t> indexes;
    for (std::size_t i = 0; i < options.endpoints.size(); ++i) {
      indexes.push_back((preferred + i) % options.endpoints.size());
    }
    return indexes;
  }

  void answered(std::size_t index) {
    std::lock_guard lock(mutex);
    preferred = index;
  }

  static http::Headers headers(const std::string& auth_token) {
    http::Headers fields;
    fields.add("Content-Type", "application/json");
    if (!auth_token.empty()) {
      // etcd reads the bare token, without "Bearer".
      fields.add("Authorization", auth_token);
    }
    return fields;
  }

  // An error of no endpoint answering: every endpoint's reason, and
  // Errc::timeout only when every one of them timed out (an etcd is there
  // but slow), else Errc::unreachable.
  static Error no_answer(const std::vector<Error>& errors) {
    Error error{Errc::timeout, {}};
    for (const auto& each : errors) {
      if (each.code != Errc::timeout) {
        error.code = Errc::unreachable;
      }
      error.message += (error.message.empty() ? "" : "; ") + each.message;
    }
    return error;
  }

  // POSTs `payload` to `path` on the first endpoint that answers and
  // returns its answer, whatever its status; only the failure to get one
  // is an error.
  Expected<Reply> send(const std::string& path, const std::string& payload, const std::string& auth_token,
                       const std::string& what) {
    if (options.endpoints.empty()) {
      return make_error(Errc::invalid, "etcd: no endpoint given");
    }
    std::vector<Error> errors;
    for (std::size_t index : order()) {
      const std::string& endpoint = options.endpoints[index];
      Expected<http::ClientResponse> response = [&] {
        auto client = clients.lend(options.timeout, options.timeout, Reuse::yes);
        return client->request("POST", endpoint + path, payload, headers(auth_token));
      }();
      if (!response) {
        Error error{response.error().code, "etcd " + endpoint + ": " + response.error().message};
        if (!unanswered(error)) {
          return util::Unexpected<Error>{std::move(error)};
        }
        errors.push_back(std::move(error));
        continue;
      }
      answered(index);
      Reply reply{endpoint, response->status, json::parse(response->body, nullptr, false)};
      if (reply.body.is_discarded()) {
        // A keepalive's answer is a stream of one object and a newline;
        // anything that is not an object is not etcd's.
        ObjectStream objects;
        objects.feed(response->body, [&](std::string_view object) {
          reply.body = json::parse(object, nullptr, false);
          return false;
        });
      }
      if (reply.body.is_discarded() || !reply.body.is_object()) {
        std::string excerpt = response->body.substr(0, 200);
        return make_error(Errc::failed, "etcd " + endpoint + ": " + what + ": not an answer of etcd (HTTP " +
                                          std::to_string(response->status) + "): " + excerpt);
      }
      return reply;
    }
    return util::Unexpected<Error>{no_answer(errors)};
  }

  // The token to send: none without a user; else the one held, or a new
  // one from /v3/auth/authenticate.
  Expected<std::string> current_token() {
    if (options.user.empty()) {
      return std::string();
    }
    {
      std::lock_guard lock(mutex);
      if (!token.empty() || auth_disabled) {
        return token;
      }
    }
    json request = {{"name", options.user}, {"password", options.password}};
    std::string what = "authenticate as " + quote(options.user);
    NPME_TRY_ASSIGN(Reply reply, send("/v3/auth/authenticate", request.dump(), "", what));
    if (auto failure = failure_of(reply.body); failure || reply.status != 200) {
      Failure known = failure.value_or(Failure{0, "HTTP " + std::to_string(reply.status)});
      if (contains(known.message, "authentication is not enabled")) {
        // Like Patroni: credentials for an etcd without auth are no error.
        std::lock_guard lock(mutex);
        auth_disabled = true;
        return std::string();
      }
      return make_error(errc_of(known, reply.status), "etcd " + reply.endpoint + ": " + what + ": " + known.message);
    }
    std::string fresh = string_field(reply.body, "token");
    if (fresh.empty()) {
      return make_error(Errc::failed, "etcd " + reply.endpoint + ": " + what + ": no token in the answer");
    }
    std::lock_guard lock(mutex);
    token = fresh;
    return fresh;
  }

  // Drops `stale` so that the next call authenticates again (unless another
  // thread already did).
  void forget_token(const std::string& stale) {
    std::lock_guard lock(mutex);
    if (token == stale) {
      token.clear();
    }
    auth_disabled = false;
  }

  // One call of the gateway: its answer, or etcd's error as ours. A token
  // etcd no longer accepts is renewed once.
  Expected<Reply> call(const std::string& path, const json& request, const std::string& what) {
    const std::string payload = request.dump();
    for (int attempt = 0;; ++attempt) {
      NPME_TRY_ASSIGN(std::string auth_token, current_token());
      NPME_TRY_ASSIGN(Reply reply, send(path, payload, auth_token, what));
      auto failure = failure_of(reply.body);
      if (!failure && reply.status == 200) {
        return reply;
      }
      Failure known = failure.value_or(Failure{0, "HTTP " + std::to_string(reply.status)});
      if (attempt == 0 && !options.user.empty() && stale_token(known)) {
        forget_token(auth_token);
        continue;
      }
      return make_error(errc_of(known, reply.status), "etcd " + reply.endpoint + ": " + what + ": " + known.message);
    }
  }

  static Error bad_answer(const Reply& reply, const std::string& what, const std::string& reason) {
    return Error{Errc::failed, "etcd " + reply.endpoint + ": " + what + ": " + reason};
  }

  static Expected<TxnResult> txn_result(const Reply& reply) {
    TxnResult result;
    result.revision = int_field(reply.body.value("header", json::object()), "revision");
    result.succeeded = bool_field(reply.body, "succeeded");
    return result;
  }

  // One watch on the first endpoint that answers; `stale` tells whether
  // etcd refused the token.
  Expected<void> watch_once(const std::string& payload, const std::string& auth_token,
                            std::chrono::milliseconds timeout, const std::string& what, const OnEvent& on_event,
                            bool& stale) {
    if (options.endpoints.empty()) {
      return make_error(Errc::invalid, "etcd: no endpoint given");
    }
    std::vector<Error> errors;
    for (std::size_t index : order()) {
      const std::string& endpoint = options.endpoints[index];
      const std::string context = "etcd " + endpoint + ": " + what + ": ";
      WatchReader reader(context, on_event);
      const std::function<bool(std::string_view)> sink = [&](std::string_view chunk) { return reader.feed(chunk); };
      Expected<http::ClientResponse> response = [&] {
        auto client = clients.lend(options.timeout, timeout, Reuse::no);
        return client->stream("POST", endpoint + "/v3/watch", payload, sink, headers(auth_token));
      }();
      stale = reader.token_refused;
      if (reader.exception) {
        std::rethrow_exception(reader.exception);
      }
      if (reader.received) {
        answered(index);
      }
      if (reader.stopped) {
        return {}; // on_event ended it (the client calls that an abort)
      }
      if (reader.too_large()) {
        return make_error(Errc::too_large,
                          context + "an event larger than " + std::to_string(k_max_stream_object) + " bytes");
      }
      if (!response && response.error().code == Errc::interrupted) {
        return make_error(Errc::interrupted, context + response.error().message);
      }
      if (reader.error) {
        return util::Unexpected<Error>{*reader.error};
      }
      if (response) {
        if (response->status != 200) {
          return make_error(errc_of(Failure{}, response->status), context + "HTTP " + std::to_string(response->status));
        }
        return {}; // etcd ended the stream (it is stopping): the watch is over
      }
      Error error{response.error().code, context + response.error().message};
      if (error.code == Errc::timeout) {
        // The request went out (a connect timeout is Errc::unreachable): the
        // watch ran for its whole time.
        return {};
      }
      if (!unanswered(error) || reader.received) {
        return util::Unexpected<Error>{std::move(error)};
      }
      errors.push_back(std::move(error));
    }
    return util::Unexpected<Error>{no_answer(errors)};
  }
};

Etcd::Etcd(EtcdOptions options) {
  for (auto& endpoint : options.endpoints) {
    endpoint = normalize(std::move(endpoint));
  }
  std::erase(options.endpoints, std::string());
  m_impl = std::make_unique<Impl>(std::move(options));
}

Etcd::~Etcd() = default;

Expected<RangeResult> Etcd::range(const std::string& key, bool prefix) {
  json request = {{"key", util::base64_encode(key)}};
  if (prefix) {
    request["range_end"] = util::base64_encode(prefix_end(key));
  }
  const std::string what = prefix ? "range under " + quote(key) : "range " + quote(key);
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/kv/range", request, what));
  RangeResult result;
  result.revision = int_field(reply.body.value("header", json::object()), "revision");
  if (auto kvs = reply.body.find("kvs"); kvs != reply.body.end() && kvs->is_array()) {
    for (const auto& each : *kvs) {
      auto kv = parse_kv(each);
      if (!kv) {
        return util::Unexpected<Error>{Impl::bad_answer(reply, what, "a key or value that is not base64")};
      }
      result.kvs.push_back(std::move(*kv));
    }
  }
  return result;
}

Expected<std::int64_t> Etcd::put(const std::string& key, const std::string& value, std::int64_t lease) {
  json request = {{"key", util::base64_encode(key)}, {"value", util::base64_encode(value)}};
  if (lease != 0) {
    request["lease"] = std::to_string(lease);
  }
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/kv/put", request, "put " + quote(key)));
  return int_field(reply.body.value("header", json::object()), "revision");
}

Expected<std::int64_t> Etcd::remove(const std::string& key, bool prefix) {
  json request = {{"key", util::base64_encode(key)}};
  if (prefix) {
    request["range_end"] = util::base64_encode(prefix_end(key));
  }
  const std::string what = prefix ? "delete under " + quote(key) : "delete " + quote(key);
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/kv/deleterange", request, what));
  return int_field(reply.body, "deleted");
}

namespace {

json put_request(const std::string& key, const std::string& value, std::int64_t lease) {
  json put = {{"key", util::base64_encode(key)}, {"value", util::base64_encode(value)}};
  if (lease != 0) {
    put["lease"] = std::to_string(lease);
  }
  return {{"request_put", std::move(put)}};
}

json mod_revision_is(const std::string& key, std::int64_t mod_revision) {
  return {{"key", util::base64_encode(key)},
          {"target", "MOD"},
          {"result", "EQUAL"},
          {"mod_revision", std::to_string(mod_revision)}};
}

} // namespace

Expected<TxnResult> Etcd::create(const std::string& key, const std::string& value, std::int64_t lease) {
  json compare = {
    {"key", util::base64_encode(key)}, {"target", "CREATE"}, {"result", "EQUAL"}, {"create_revision", "0"}};
  json request = {{"compare", json::array({compare})}, {"success", json::array({put_request(key, value, lease)})}};
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/kv/txn", request, "create " + quote(key)));
  return Impl::txn_result(reply);
}

Expected<TxnResult> Etcd::put_if(const std::string& key, const std::string& value, std::int64_t lease,
                                 std::int64_t mod_revision) {
  json request = {{"compare", json::array({mod_revision_is(key, mod_revision)})},
                  {"success", json::array({put_request(key, value, lease)})}};
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/kv/txn", request, "update " + quote(key)));
  return Impl::txn_result(reply);
}

Expected<TxnResult> Etcd::remove_if(const std::string& key, std::int64_t mod_revision) {
  json remove = {{"request_delete_range", {{"key", util::base64_encode(key)}}}};
  json request = {{"compare", json::array({mod_revision_is(key, mod_revision)})}, {"success", json::array({remove})}};
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/kv/txn", request, "delete " + quote(key)));
  return Impl::txn_result(reply);
}

Expected<std::int64_t> Etcd::grant(std::int64_t ttl) {
  const std::string what = "grant a lease of " + std::to_string(ttl) + " s";
  NPME_TRY_ASSIGN(Impl::Reply reply,
                  m_impl->call("/v3/lease/grant", {{"TTL", std::to_string(ttl)}, {"ID", "0"}}, what));
  std::int64_t id = int_field(reply.body, "ID");
  if (id == 0) {
    return util::Unexpected<Error>{Impl::bad_answer(reply, what, "no lease id in the answer")};
  }
  return id;
}

Expected<std::int64_t> Etcd::keepalive(std::int64_t lease) {
  const std::string what = "keep " + lease_name(lease) + " alive";
  NPME_TRY_ASSIGN(Impl::Reply reply, m_impl->call("/v3/lease/keepalive", {{"ID", std::to_string(lease)}}, what));
  // A stream's answer: {"result": {...}}, or {"error": {...}} in a 200 when
  // etcd fails mid-stream (shutting down, no quorum): that says nothing
  // about the lease, so it is an error like an unreachable etcd, not "gone".
  // etcd answers an unknown lease with TTL 0, which proto3 leaves out.
  const auto result = reply.body.find("result");
  if (result == reply.body.end() || !result->is_object()) {
    std::string message = "no result";
    if (auto error = reply.body.find("error"); error != reply.body.end() && error->is_object()) {
      message = error->value("message", "an error");
    }
    return make_error(Errc::unavailable, "etcd " + reply.endpoint + ": " + what + ": " + message);
  }
  std::int64_t ttl = int_field(*result, "TTL");
  if (ttl <= 0) {
    return make_error(Errc::not_found, "etcd " + reply.endpoint + ": " + what + ": " + lease_name(lease) +
                                         " not found (expired or revoked)");
  }
  return ttl;
}

Expected<void> Etcd::revoke(std::int64_t lease) {
  auto reply = m_impl->call("/v3/lease/revoke", {{"ID", std::to_string(lease)}}, "revoke " + lease_name(lease));
  if (!reply && reply.error().code != Errc::not_found) {
    return util::Unexpected<Error>{std::move(reply).error()};
  }
  return {};
}

Expected<LeaseTime> Etcd::time_to_live(std::int64_t lease) {
  const std::string what = "time to live of " + lease_name(lease);
  auto reply = m_impl->call("/v3/lease/timetolive", {{"ID", std::to_string(lease)}}, what);
  if (!reply) {
    if (reply.error().code == Errc::not_found) {
      return LeaseTime{};
    }
    return util::Unexpected<Error>{std::move(reply).error()};
  }
  // An unknown lease: TTL -1.
  LeaseTime time;
  time.ttl = int_field(reply->body, "TTL");
  time.granted = int_field(reply->body, "grantedTTL");
  time.found = time.ttl >= 0;
  if (!time.found) {
    time = LeaseTime{};
  }
  return time;
}

Expected<void> Etcd::watch(const std::string& key, bool prefix, std::int64_t start_revision,
                           std::chrono::milliseconds timeout, const OnEvent& on_event) {
  json create = {{"key", util::base64_encode(key)}};
  if (prefix) {
    create["range_end"] = util::base64_encode(prefix_end(key));
  }
  if (start_revision > 0) {
    create["start_revision"] = std::to_string(start_revision);
  }
  const std::string payload = json{{"create_request", std::move(create)}}.dump();
  const std::string what = prefix ? "watch under " + quote(key) : "watch " + quote(key);
  for (int attempt = 0;; ++attempt) {
    NPME_TRY_ASSIGN(std::string auth_token, m_impl->current_token());
    bool stale = false;
    auto result = m_impl->watch_once(payload, auth_token, timeout, what, on_event, stale);
    // etcd cancels a watch whose token it refuses instead of failing the
    // request, and one with an old JWT token only as "permission denied":
    // renew the token once, as for the other calls.
    if (!result && (stale || result.error().code == Errc::forbidden) && attempt == 0 && !m_impl->options.user.empty()) {
      m_impl->forget_token(auth_token);
      continue;
    }
    return result;
  }
}

void Etcd::abort() {
  m_impl->clients.abort();
}

std::string Etcd::endpoint() const {
  std::lock_guard lock(m_impl->mutex);
  if (m_impl->options.endpoints.empty()) {
    return {};
  }
  return m_impl->options.endpoints[m_impl->preferred];
}

} // namespace npme::ha
