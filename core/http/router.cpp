#include "core/http/server.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string_view>

namespace npme::http {

namespace {

enum class SegmentKind { literal, capture, rest };

struct Segment {
  SegmentKind kind = SegmentKind::literal;
  std::string text; // the decoded literal, or the capture's name
};

// Splits `path` (which starts with '/') into its segments; "/" is one empty
// segment and "/a/" is "a" and "". Matching works on these raw, still
// encoded segments so that an encoded '/' ("%2f") never splits a segment.
std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> segments;
  path.remove_prefix(1);
  for (;;) {
    auto slash = path.find('/');
    segments.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) {
      break;
    }
    path.remove_prefix(slash + 1);
  }
  return segments;
}

const Handler& not_found_handler() {
  static const Handler handler = [](Request&) { return Response::json(404, R"({"error":"not found"})"); };
  return handler;
}

const Handler& method_not_allowed_handler() {
  static const Handler handler = [](Request&) {
    return Response::json(405, R"({"error":"method not allowed"})");
  };
  return handler;
}

} // namespace

struct Router::Route {
  std::string method;
  std::vector<Segment> segments;
  Handler handler;
  Blocking blocking = Blocking::no;
  Body body = Body::memory;

  // Matches the raw segments of a path, decoding them lazily into
  // `decoded` (shared between routes so each segment is decoded once).
  // On a match fills `params` and returns true.
  bool matches(std::string_view path, const std::vector<std::string_view>& raw,
               std::vector<std::optional<std::optional<std::string>>>& decoded,
               std::map<std::string, std::string>& params) const {
    auto decode = [&](std::size_t i) -> const std::optional<std::string>& {
      if (!decoded[i]) {
        decoded[i].emplace(percent_decode(raw[i]));
      }
      return *decoded[i];
    };
    const bool ends_in_rest = !segments.empty() && segments.back().kind == SegmentKind::rest;
    // Most routes differ from the path in their number of segments: no
    // decoding and no allocation for those.
    if (ends_in_rest ? raw.size() < segments.size() : raw.size() != segments.size()) {
      return false;
    }
    // Literals first, captures once the whole pattern matched.
    for (std::size_t i = 0; i < segments.size(); ++i) {
      const Segment& segment = segments[i];
      if (segment.kind == SegmentKind::literal) {
        const auto& value = decode(i);
        if (!value || *value != segment.text) {
          return false;
        }
      }
    }
    std::map<std::string, std::string> found;
    for (std::size_t i = 0; i < segments.size(); ++i) {
      const Segment& segment = segments[i];
      // A rest capture takes everything from here on, slashes included; it
      // only has that meaning as the last segment of a pattern.
      if (segment.kind == SegmentKind::rest && i + 1 == segments.size()) {
        auto offset = static_cast<std::size_t>(raw[i].data() - path.data());
        auto value = percent_decode(path.substr(offset));
        if (!value || value->empty()) {
          return false;
        }
        found[segment.text] = std::move(*value);
        break;
      }
      if (segment.kind != SegmentKind::literal) {
        const auto& value = decode(i);
        if (!value || value->empty()) {
          return false;
        }
        found[segment.text] = *value;
      }
    }
    params = std::move(found);
    return true;
  }
};

void Router::add(std::string method, std::string pattern, Handler handler, Blocking blocking, Body body) {
  auto route = std::make_shared<Route>();
  route->method = std::move(method);
  route->handler = std::move(handler);
  route->blocking = blocking;
  route->body = body;
  std::string_view rest = pattern;
  if (rest.empty() || rest.front() != '/') {
    pattern.insert(pattern.begin(), '/');
    rest = pattern;
  }
  for (std::string_view raw : split_path(rest)) {
    Segment segment;
    if (raw.size() >= 2 && raw.front() == '{' && raw.back() == '}') {
      raw = raw.substr(1, raw.size() - 2);
      if (!raw.empty() && raw.back() == '*') {
        segment.kind = SegmentKind::rest;
        raw.remove_suffix(1);
      } else {
        segment.kind = SegmentKind::capture;
      }
      segment.text = std::string(raw);
    } else {
      // Paths are compared after decoding, so the pattern's literal is too.
      segment.text = percent_decode(raw).value_or(std::string(raw));
    }
    route->segments.push_back(std::move(segment));
  }
  m_routes.push_back(std::move(route));
}

void Router::set_fallback(Handler handler) {
  m_fallback = std::move(handler);
}

void Router::set_method_not_allowed(Handler handler) {
  m_method_not_allowed = std::move(handler);
}

void Router::set_observer(std::function<void(const Request&, const Response&)> observer) {
  m_observer = std::move(observer);
}

Router::Match Router::match(Request& request) const {
  const Handler& fallback = m_fallback ? m_fallback : not_found_handler();
  std::string_view path = request.path;
  if (path.empty() || path.front() != '/') {
    return {&fallback, Blocking::no, Body::memory, {}};
  }
  auto raw = split_path(path);
  std::vector<std::optional<std::optional<std::string>>> decoded(raw.size());
  std::map<std::string, std::string> params;
  bool is_head = request.method == "HEAD";
  std::vector<std::string_view> allowed; // the path's methods, for a 405's Allow
  const Route* head_as_get = nullptr;
  std::map<std::string, std::string> head_as_get_params;
  for (const auto& route : m_routes) {
    if (!route->matches(path, raw, decoded, params)) {
      continue;
    }
    if (route->method == request.method) {
      request.params = std::move(params);
      return {&route->handler, route->blocking, route->body, {}};
    }
    // HEAD is answered by the GET route when no HEAD route exists; the
    // server then sends the headers without the body.
    if (is_head && route->method == "GET") {
      if (head_as_get == nullptr) {
        head_as_get = route.get();
        head_as_get_params = params;
      }
    }
    allowed.push_back(route->method);
    if (route->method == "GET") {
      allowed.push_back("HEAD");
    }
  }
  if (head_as_get != nullptr) {
    request.params = std::move(head_as_get_params);
    return {&head_as_get->handler, head_as_get->blocking, Body::memory, {}};
  }
  if (!allowed.empty()) {
    std::sort(allowed.begin(), allowed.end());
    allowed.erase(std::unique(allowed.begin(), allowed.end()), allowed.end());
    std::string allow;
    for (std::string_view method : allowed) {
      allow += allow.empty() ? "" : ", ";
      allow += method;
    }
    return {m_method_not_allowed ? &m_method_not_allowed : &method_not_allowed_handler(), Blocking::no, Body::memory,
            std::move(allow)};
  }
  return {&fallback, Blocking::no, Body::memory, {}};
}

namespace {

// Router::dispatch's end of a deferred answer: the calling thread waits for it.
struct WaitingSink : Responder::Sink {
  std::mutex mutex;
  std::condition_variable ready;
  std::optional<Response> response;
  void deliver(Response answer) override {
    std::lock_guard lock(mutex);
    response = std::move(answer);
    ready.notify_all();
  }
};

} // namespace

Response Router::dispatch(Request& request) const {
  Response response;
  auto sink = std::make_shared<WaitingSink>();
  Responder issued;
  request.defer_hook = [&sink, &issued] {
    issued = Responder(sink);
    return issued;
  };
  try {
    Match found = match(request);
    request.on_worker = found.blocking == Blocking::yes;
    response = (*found.handler)(request);
    if (!found.allow.empty()) {
      response.headers.set("Allow", found.allow);
    }
    if (response.run_on_worker && !request.on_worker) {
      request.on_worker = true; // the caller's thread stands in for the worker
      response = (*found.handler)(request);
    }
    if (response.run_on_worker) {
      response = Response::json(500, R"({"error":"internal server error"})");
    }
  } catch (...) {
    response = Response::json(500, R"({"error":"internal server error"})");
  }
  request.defer_hook = nullptr;
  if (response.deferred && issued) {
    issued = Responder(); // the handler's copies decide when it is answered
    std::unique_lock lock(sink->mutex);
    sink->ready.wait(lock, [&] { return sink->response.has_value(); });
    response = std::move(*sink->response);
  } else {
    issued.cancel();
    if (response.deferred) {
      response = Response::json(500, R"({"error":"internal server error"})");
    }
  }
  if (m_observer) {
    try {
      m_observer(request, response);
    } catch (...) {
      // A failing metrics hook must not turn a served request into an error.
    }
  }
  return response;
}

} // namespace npme::http
