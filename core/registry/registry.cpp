#include "core/registry/registry.hpp"

#include "core/registry/cache.hpp"
#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"
#include "core/registry/packument.hpp"
#include "core/registry/publish.hpp"
#include "core/registry/search.hpp"
#include "core/registry/source.hpp"
#include "core/auth/throttle.hpp"
#include "core/util/bounded_pool.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "core/util/gzip.hpp"
#include "core/util/time.hpp"

#include <nlohmann/json.hpp>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npme::registry {

namespace {

using http::Request;
using http::Response;
using nlohmann::json;

// Memory for rendered packuments and tarballs; tarballs above the entry
// limit are read from disk on every request.
constexpr std::size_t k_cache_bytes = 256u << 20;
constexpr std::size_t k_cache_entry_bytes = 8u << 20;
// How long a cached tarball's file counts as unchanged before the next
// request looks at it again (one stat): a file repaired on disk is served
// from memory for at most this long.
constexpr auto k_file_recheck = std::chrono::seconds(1);
// A JSON answer larger than this keeps only its compressed form in the
// cache: every npm, pnpm and yarn accepts gzip, and the plain form of a
// packument of thousands of versions is ten times its gzip (a client
// without gzip gets it inflated, on a worker). Below it both forms are
// kept: the abbreviated packument of a package with a few hundred versions
// (express: 290 versions, 560 KiB) is sent plain without inflating it on
// every request.
constexpr std::size_t k_cache_plain_bytes = 1u << 20;

constexpr std::string_view k_user_doc_prefix = "org.couchdb.user:";
constexpr const char* k_abbreviated_type = "application/vnd.npm.install-v1+json";

enum class Variant { full, abbreviated };
// Whether a token nobody knows makes the request fail (401) or is ignored;
// login and logout must work with a stale token in the client's .npmrc.
enum class UnknownToken { reject, ignore };

struct Caller {
  std::optional<auth::Identity> identity;
  bool replication = false; // presented the service secret: replication reads only
};

Response json_response(int status, const json& body) {
  return Response::json(status, body.dump(-1, ' ', false, json::error_handler_t::replace));
}

Response error_response(int status, std::string_view message) {
  return json_response(status, json{{"error", message}});
}

Response error_response(const Error& error) {
  if (error.code == Errc::no_space) {
    // Never the server's paths in an answer to a client (the error names
    // the file that could not be written).
    return error_response(http_status(error.code), "the registry is out of disk space; nothing was stored");
  }
  return error_response(http_status(error.code), error.message);
}

Response not_found() {
  return error_response(404, "not found");
}

// Runs a handler, turning exceptions from third-party code into JSON errors
// so that a malformed request can never produce a dropped connection.
template <class F>
Response guarded(F&& handler) {
  try {
    return handler();
  } catch (const json::exception& e) {
    return error_response(400, std::string("invalid request: ") + e.what());
  } catch (const std::bad_alloc&) {
    return error_response(500, "out of memory");
  } catch (const std::exception& e) {
    return error_response(500, std::string("internal error: ") + e.what());
  }
}

// Refuses a name from a URL: reserved API paths ("/-/...", "/_...") are
// simply not found; anything else is a bad request saying why.
Response bad_name(const Error& error, std::string_view raw) {
  if (raw.starts_with("-") || raw.starts_with("_")) {
    return not_found();
  }
  return error_response(error);
}

std::string_view header(const Request& request, std::string_view name) {
  return request.headers.get(name).value_or(std::string_view{});
}

bool iequals_prefix(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) {
    return false;
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view bearer_token(const Request& request) {
  std::string_view value = header(request, "Authorization");
  if (!iequals_prefix(value, "bearer ")) {
    return {};
  }
  value.remove_prefix(7);
  while (!value.empty() && value.front() == ' ') {
    value.remove_prefix(1);
  }
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
    value.remove_suffix(1);
  }
  return value;
}

std::size_t query_number(const Request& request, const std::string& key, std::size_t fallback) {
  auto it = request.query.find(key);
  if (it == request.query.end()) {
    return fallback;
  }
  std::size_t value = 0;
  const char* begin = it->second.data();
  const char* end = begin + it->second.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr != end) {
    return fallback;
  }
  return value;
}

const settings::Settings& default_settings() {
  static const settings::Settings settings;
  return settings;
}

} // namespace

namespace {

// Splits the body of a PUT to a package's URL with `sink`: from memory, or
// from the file the server wrote a large body to.
Expected<PutBody> read_put_body(const Request& request, const BodySplitter::Sink& sink) {
  if (!request.body_file) {
    return split_body(request.body, sink);
  }
  BodySplitter splitter(sink);
  std::string chunk(256u << 10, '\0');
  const int fd = request.body_file->fd.get();
  const std::uint64_t size = request.body_file->size;
  std::uint64_t offset = 0;
  while (offset < size) {
    const ssize_t n = ::pread(fd, chunk.data(), std::min<std::uint64_t>(chunk.size(), size - offset),
                              static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return make_error(Errc::io, "cannot read the request body back from its file: " +
                                    std::string(n < 0 ? std::strerror(errno) : "it ended early"));
    }
    NPME_TRY(splitter.feed(std::string_view(chunk.data(), static_cast<std::size_t>(n))));
    offset += static_cast<std::uint64_t>(n);
  }
  return splitter.finish();
}

} // namespace

struct Registry::Impl {
  Impl(store::Store& store_ref, auth::Auth& auth_ref, SettingsSource settings_source)
    : store(store_ref), auth(auth_ref), settings(std::move(settings_source)),
      cache(std::make_shared<ResponseCache>(k_cache_bytes, k_cache_entry_bytes)) {}

  store::Store& store;
  auth::Auth& auth;
  SettingsSource settings;
  std::shared_ptr<ResponseCache> cache;
  std::shared_ptr<const http::Router> router;
  std::shared_ptr<PackageSource> source; // set before serving; may be null
  Registry::WriteGate write_gate;        // set before serving; may be empty
  auth::LoginThrottle login_throttle;
  audit::Log* audit_log = nullptr; // set before serving; may be null

  void record(const Request& request, std::string actor, std::string action, std::string target, std::string result,
              json detail = nullptr) {
    if (audit_log != nullptr) {
      audit_log->record(audit::Event{"", std::move(actor), client_address(request, *current_settings()),
                                     std::move(action), std::move(target), std::move(result), std::move(detail)});
    }
  }
  // Password hashes of logins (tens of milliseconds of CPU and 16 MiB
  // each): one thread per two cores and 8 waiting at most, so that a flood
  // of logins takes at most that share of the machine and never the
  // workers that package reads need.
  util::BoundedPool password_pool{std::max(1u, std::thread::hardware_concurrency() / 2), 8};

  // Renders in progress, by cache key and base URL: concurrent misses of one
  // packument (every client after a publish of a popular package) wait for
  // one render instead of each parsing the whole document. A render is
  // joined only while the cache's generation is the one it started from, so
  // nobody is handed a document older than a write they saw answered.
  struct Render {
    std::uint64_t generation = 0;
    std::shared_future<Expected<CachedBody>> result;
  };
  std::mutex renders_mutex;
  std::map<std::string, Render> renders;

  std::shared_ptr<const settings::Settings> current_settings() const {
    std::shared_ptr<const settings::Settings> value = settings ? settings() : nullptr;
    if (!value) {
      // Not expected from a running instance; keeps a handler from
      // dereferencing null while settings are being replaced.
      return std::shared_ptr<const settings::Settings>(std::shared_ptr<void>(), &default_settings());
    }
    return value;
  }

  // ---- authentication and authorization ----

  Expected<Caller> identify(const Request& request, const settings::Settings& config, UnknownToken unknown) const {
    Caller caller;
    std::string_view token = bearer_token(request);
    std::string secret = config.get("secret");
    if (token.empty()) {
      if (auto it = request.query.find("sharedFetchSecret");
          it != request.query.end() && !secret.empty() && util::constant_time_equal(it->second, secret)) {
        caller.replication = true;
      }
      return caller;
    }
    if (!secret.empty() && util::constant_time_equal(token, secret)) {
      caller.replication = true;
      return caller;
    }
    caller.identity = auth.authenticate(token);
    if (!caller.identity && unknown == UnknownToken::reject) {
      return make_error(Errc::unauthorized, "invalid or revoked token; run npm login again");
    }
    if (caller.identity) {
      // Only a token limited to address ranges needs the client's address.
      auto usable = caller.identity->usable_from(caller.identity->ranges.empty() ? std::string()
                                                                                 : client_address(request, config));
      if (!usable) {
        if (unknown == UnknownToken::reject) {
          return util::Unexpected<Error>{usable.error()};
        }
        caller.identity.reset(); // login and logout go on as for an unknown token
      }
    }
    return caller;
  }

  // The client's address: the peer's, or behind a load balancer listed in
  // registry.trusted_proxies the one its X-Forwarded-For names.
  static std::string client_address(const Request& request, const settings::Settings& config) {
    const std::string trusted = config.get("registry.trusted_proxies");
    if (trusted.empty()) {
      return request.remote_address;
    }
    auto proxies = util::parse_cidrs(trusted);
    // Every X-Forwarded-For field: HAProxy's `option forwardfor` adds its own
    // after any the client sent.
    return auth::client_address(request.remote_address, request.headers.get_all("X-Forwarded-For"),
                                proxies ? *proxies : std::vector<util::Cidr>{});
  }

  static Expected<void> check_read(const Caller& caller, const settings::Settings& config, std::string_view name) {
    if (caller.identity || caller.replication) {
      return {};
    }
    std::string mode = config.get("auth.installs");
    if (mode == "none" || (mode == "scoped" && !is_scoped(name))) {
      return {};
    }
    return make_error(Errc::unauthorized, "authentication required");
  }

  // Checks that the instance takes writes at all.
  static Expected<void> check_writable(const settings::Settings& config) {
    if (config.get("publication") == "read-only") {
      std::string message = "this instance is read-only";
      if (std::string upstream = config.get("upstream.url"); !upstream.empty()) {
        if (!config.get("ha.etcd").empty()) {
          // A replica under automatic failover: the leader changes, so the
          // answer is "not here, now" (503, nothing written), which a load
          // balancer passes on to the next instance (deploy/nginx-etcd.conf).
          return make_error(Errc::unavailable, "this instance is a replica (automatic failover on etcd); "
                                               "writes go to the leader (" +
                                                 upstream + ")");
        }
        message += "; publish to the primary (" + upstream + ")";
      }
      return make_error(Errc::forbidden, message);
    }
    return {};
  }

  static Expected<auth::Identity> check_write(const Caller& caller, const settings::Settings& config,
                                              std::string_view name) {
    NPME_TRY(check_writable(config));
    if (!caller.identity) {
      return make_error(Errc::unauthorized, "authentication required");
    }
    if (caller.identity->access != auth::Access::read_write) {
      return make_error(Errc::forbidden, "this token is read-only; writes need a read-write token");
    }
    if (config.get("publication") == "scoped" && !is_scoped(name)) {
      return make_error(Errc::forbidden, "this instance only accepts scoped packages (@scope/name); '" +
                                           std::string(name) + "' is unscoped");
    }
    return *caller.identity;
  }

  // Identifies the caller of a read of package `name`.
  Expected<Caller> authorize_read(const Request& request, const settings::Settings& config,
                                  std::string_view name) const {
    NPME_TRY_ASSIGN(Caller caller, identify(request, config, UnknownToken::reject));
    NPME_TRY(check_read(caller, config, name));
    return caller;
  }

  Expected<auth::Identity> authorize_write(const Request& request, const settings::Settings& config,
                                           std::string_view name) const {
    NPME_TRY(check_writable(config));
    NPME_TRY_ASSIGN(Caller caller, identify(request, config, UnknownToken::reject));
    NPME_TRY_ASSIGN(auto identity, check_write(caller, config, name));
    if (source) {
      // A name is local or from the uplink, never both: no write may merge
      // local versions into a copy of a public package.
      NPME_TRY_ASSIGN(auto held, store.get_head(std::string(name)));
      NPME_TRY(source->check_write(std::string(name), held));
    }
    return identity;
  }

  // ---- packages from the source (uplink or upstream) ----

  static Response outcome_response(const SourceOutcome& outcome) {
    switch (outcome.kind) {
    case SourceOutcome::Kind::not_found:
      return error_response(404, outcome.message.empty() ? "not found" : outcome.message);
    case SourceOutcome::Kind::failed:
      return error_response(outcome.status >= 400 ? outcome.status : 502, outcome.message);
    case SourceOutcome::Kind::ready:
    case SourceOutcome::Kind::stale:
      break;
    }
    return error_response(500, "internal error: no answer for a source outcome");
  }

  static void add_warning(Response& response, std::string_view warning) {
    if (warning.empty()) {
      return;
    }
    std::string text;
    for (char c : warning) {
      text.push_back(c == '"' || c == '\\' || c == '\r' || c == '\n' ? '\'' : c);
    }
    // RFC 7234's "110 Response is Stale", with why.
    response.headers.add("Warning", "110 npme \"" + text + "\"");
  }

  using Serve = std::function<Response(const Request& request, const std::string& warning)>;

  // Serves a read of `name` needing `need`, asking the source first when
  // there is one: from what is held now, or after a fetch (answered later).
  Response through_source(Request& request, const std::string& name, const Need& need, const Serve& serve) {
    if (!source || !source->enabled()) {
      return serve(request, "");
    }
    auto held = store.get_head(name);
    if (!held) {
      return error_response(held.error());
    }
    // npm reads the packument before a publish (and other writes): a name
    // about to be published here must not be fetched from the uplink by
    // that very read, or its first publish would be refused.
    const std::string_view command = header(request, "npm-command");
    if (!*held && (command == "publish" || command == "unpublish" || command == "deprecate" || command == "dist-tag")) {
      return serve(request, "");
    }
    auto decision = source->decide(name, *held, need);
    if (decision.answer) {
      return outcome_response(*decision.answer);
    }
    if (!decision.fetch) {
      return serve(request, decision.warning);
    }
    http::Responder responder = request.defer();
    if (!responder) {
      return error_response(500, "internal error: cannot wait for the uplink here");
    }
    // The answer is made on the fetch's thread, not an I/O thread.
    Request copy = request.without_body();
    copy.on_worker = true;
    source->fetch(name, need, [responder, copy = std::move(copy), serve](const SourceOutcome& outcome) {
      Response response;
      try {
        if (outcome.kind == SourceOutcome::Kind::ready || outcome.kind == SourceOutcome::Kind::stale) {
          response = serve(copy, outcome.kind == SourceOutcome::Kind::stale ? outcome.message : "");
        } else {
          response = outcome_response(outcome);
        }
      } catch (const std::exception& e) {
        response = error_response(500, std::string("internal error: ") + e.what());
      }
      responder.send(std::move(response));
    });
    return Response::later();
  }

  // Reads need a token unless anonymous installs are allowed for `name`;
  // such responses must not be kept by shared caches.
  static bool private_read(const settings::Settings& config, std::string_view name) {
    std::string mode = config.get("auth.installs");
    return mode == "all" || (mode == "scoped" && is_scoped(name));
  }

  Publisher publisher_of(const auth::Identity& identity) const {
    Publisher publisher{identity.user, ""};
    if (auto users = auth.list_users()) {
      for (const auto& user : *users) {
        if (user.name == identity.user) {
          publisher.email = user.email;
        }
      }
    }
    return publisher;
  }

  // ---- reads ----

  Expected<std::optional<json>> load(const std::string& name) const {
    NPME_TRY_ASSIGN(auto document, store.get(name));
    if (!document) {
      return std::optional<json>();
    }
    auto parsed = parse_json(document->body);
    if (!parsed || !parsed->is_object()) {
      return make_error(Errc::io, "package document '" + name + "' in the store is not valid JSON");
    }
    return std::optional<json>(std::move(*parsed));
  }

  static Variant packument_variant(const Request& request) {
    const bool write = request.query.contains("write");
    return !write && wants_abbreviated(header(request, "Accept")) ? Variant::abbreviated : Variant::full;
  }

  static std::string_view variant_key(Variant variant) { return variant == Variant::full ? "full" : "abbrev"; }

  Expected<CachedBody> packument_body(const std::string& name, Variant variant, const std::string& base_url) {
    std::string key = ResponseCache::key(name, variant_key(variant));
    if (auto cached = cache->get(key); cached && cached->variant == base_url) {
      return *cached;
    }
    const std::uint64_t generation = cache->generation();
    const std::string render_key = key + '\n' + base_url;
    std::promise<Expected<CachedBody>> promise;
    std::optional<std::shared_future<Expected<CachedBody>>> joined;
    {
      std::lock_guard lock(renders_mutex);
      auto it = renders.find(render_key);
      if (it != renders.end() && it->second.generation == generation) {
        joined = it->second.result;
      } else {
        renders[render_key] = Render{generation, promise.get_future().share()};
      }
    }
    if (joined) {
      return joined->get();
    }
    Expected<CachedBody> body = make_error(Errc::failed, "internal error: the packument was not rendered");
    try {
      body = render_packument(name, variant, base_url, key, generation);
    } catch (const std::exception& e) {
      body = make_error(Errc::failed, std::string("internal error: ") + e.what());
    }
    {
      std::lock_guard lock(renders_mutex);
      if (auto it = renders.find(render_key); it != renders.end() && it->second.generation == generation) {
        renders.erase(it);
      }
    }
    promise.set_value(body);
    return body;
  }

  Expected<CachedBody> render_packument(const std::string& name, Variant variant, const std::string& base_url,
                                        const std::string& key, std::uint64_t generation) {
    NPME_TRY_ASSIGN(auto doc, load(name));
    if (!doc) {
      return make_error(Errc::not_found, "not found");
    }
    std::string rendered = variant == Variant::full ? render_full(*doc, base_url) : render_abbreviated(*doc, base_url);
    CachedBody body;
    body.etag = make_etag(rendered);
    // Compressed once per version of the document: a hit costs no compression.
    if (rendered.size() >= http::k_compress_min_bytes) {
      body.gzip = std::make_shared<const std::string>(util::gzip(rendered));
    }
    body.body = std::make_shared<const std::string>(std::move(rendered));
    body.variant = base_url;
    CachedBody kept = body;
    if (kept.gzip && kept.body->size() > k_cache_plain_bytes) {
      kept.body.reset();
    }
    cache->put(key, std::move(kept), generation);
    return body;
  }

  // `stamp` is the file's, taken by the caller before the bytes are read: a
  // file replaced meanwhile is kept with the older stamp and read again by
  // the next request. A file gone from disk is still served from memory.
  Expected<CachedBody> tarball_body(const std::string& name, const std::string& file, const std::string& rel_path,
                                    const std::optional<FileStamp>& stamp) {
    std::string key = ResponseCache::key(name, "tgz:" + file);
    if (auto cached = stamp ? cache->get_file(key, *stamp) : cache->get(key)) {
      return *cached;
    }
    std::uint64_t generation = cache->generation();
    auto bytes = util::read_file(store.file_path(rel_path));
    if (!bytes) {
      if (bytes.error().code == Errc::not_found) {
        return make_error(Errc::not_found, "not found");
      }
      return make_error(bytes.error().code, bytes.error().message);
    }
    CachedBody body;
    body.etag = make_etag(*bytes);
    body.body = std::make_shared<const std::string>(std::move(*bytes));
    cache->put(key, body, generation, stamp);
    return body;
  }

  // The cached body, gzip-compressed when it has a compressed form and the
  // client accepts gzip. Each form has its own ETag; a client holding
  // either form of this version gets 304.
  static Response cached_response(const Request& request, const CachedBody& body, const char* content_type,
                                  const std::string& cache_control) {
    Response response;
    const bool compressed = body.gzip && util::accepts_gzip(header(request, "Accept-Encoding"));
    std::shared_ptr<const std::string> plain = body.body;
    const std::string gzip_etag = body.gzip ? http::gzip_etag(body.etag) : "";
    response.headers.add("ETag", compressed ? gzip_etag : body.etag);
    response.headers.add("Cache-Control", cache_control);
    if (body.gzip) {
      response.headers.add("Vary", "Accept-Encoding");
    }
    if (auto if_none_match = request.headers.get("If-None-Match");
        if_none_match &&
        (etag_matches(*if_none_match, body.etag) || (body.gzip && etag_matches(*if_none_match, gzip_etag)))) {
      response.status = 304;
      return response;
    }
    response.status = 200;
    response.headers.add("Content-Type", content_type);
    if (compressed) {
      response.headers.add("Content-Encoding", "gzip");
      response.shared_body = body.gzip;
      return response;
    }
    if (!plain) {
      // Only the compressed form is kept (k_cache_plain_bytes).
      auto inflated = util::gunzip(*body.gzip, std::numeric_limits<std::size_t>::max());
      if (!inflated) {
        return error_response(500, "internal error: a cached answer does not inflate: " + inflated.error().message);
      }
      plain = std::make_shared<const std::string>(std::move(*inflated));
    }
    response.shared_body = std::move(plain);
    return response;
  }

  Response serve_packument(Request& request, const std::string& name) {
    auto config = current_settings();
    // A hit is answered on the I/O thread; a miss (parse, render, compress:
    // tens of milliseconds for a package of thousands of versions) on a worker.
    if (!request.on_worker) {
      const Variant variant = packument_variant(request);
      auto cached = cache->get(ResponseCache::key(name, variant_key(variant)));
      if (!cached || cached->variant != config->get("registry.url") ||
          (!cached->body && !util::accepts_gzip(header(request, "Accept-Encoding")))) {
        return Response::on_worker();
      }
    }
    if (auto caller = authorize_read(request, *config, name); !caller) {
      return error_response(caller.error());
    }
    return through_source(
      request, name, Need{Need::Kind::packument, ""},
      [this, name](const Request& r, const std::string& warning) { return respond_packument(r, name, warning); });
  }

  Response respond_packument(const Request& request, const std::string& name, const std::string& warning) {
    auto config = current_settings();
    const Variant variant = packument_variant(request);
    auto body = packument_body(name, variant, config->get("registry.url"));
    if (!body) {
      return error_response(body.error());
    }
    std::string cache_control =
      private_read(*config, name) ? "private, max-age=0, must-revalidate" : "public, max-age=0, must-revalidate";
    Response response = cached_response(
      request, *body, variant == Variant::full ? "application/json" : k_abbreviated_type, cache_control);
    response.headers.add("Vary", "Accept, Authorization"); // and Accept-Encoding, added with a compressed form
    add_warning(response, warning);
    return response;
  }

  Response serve_version(Request& request, const std::string& name, const std::string& version_or_tag) {
    auto config = current_settings();
    if (auto caller = authorize_read(request, *config, name); !caller) {
      return error_response(caller.error());
    }
    return through_source(request, name, Need{Need::Kind::version, version_or_tag},
                          [this, name, version_or_tag](const Request&, const std::string& warning) {
                            Response response = respond_version(name, version_or_tag);
                            add_warning(response, warning);
                            return response;
                          });
  }

  Response respond_version(const std::string& name, const std::string& version_or_tag) {
    auto config = current_settings();
    auto doc = load(name);
    if (!doc) {
      return error_response(doc.error());
    }
    if (!*doc) {
      return not_found();
    }
    auto manifest = render_version(**doc, version_or_tag, config->get("registry.url"));
    if (!manifest) {
      return error_response(manifest.error());
    }
    return Response::json(200, std::move(*manifest));
  }

  // A version's tarball never changes: its number cannot be reused.
  static std::string tarball_cache_control(const settings::Settings& config, std::string_view name) {
    return private_read(config, name) ? "private, max-age=31536000, immutable" : "public, max-age=31536000, immutable";
  }

  Response serve_tarball(Request& request, const std::string& name, const std::string& file) {
    auto config = current_settings();
    auto caller = authorize_read(request, *config, name);
    if (!caller) {
      return error_response(caller.error());
    }
    auto rel_path = tarball_rel_path_for_file(name, file);
    if (!rel_path) {
      return not_found();
    }
    // The hot path of an install: bytes whose file was found unchanged
    // within the last second, answered with no system call.
    const std::string key = ResponseCache::key(name, "tgz:" + file);
    if (auto recent = cache->get_confirmed(key, k_file_recheck)) {
      return cached_response(request, *recent, "application/octet-stream", tarball_cache_control(*config, name));
    }
    // Another hit is answered on the I/O thread; reading or opening the file on a worker.
    if (!request.on_worker && !cache->get(key)) {
      return Response::on_worker();
    }
    // The one look at the file on this path.
    const auto stamp = file_stamp(store.file_path_native(*rel_path));
    // A follower asks with "?held=1" for what this instance holds: it must
    // not make the primary fetch every version of a public package.
    const bool held_only = caller->replication && request.query.contains("held");
    if (stamp || held_only || cache->get(key)) {
      return respond_tarball(request, name, file, *rel_path, stamp);
    }
    return through_source(request, name, Need{Need::Kind::tarball, *rel_path},
                          [this, name, file, rel_path = *rel_path](const Request& r, const std::string& warning) {
                            Response response =
                                respond_tarball(r, name, file, rel_path, file_stamp(store.file_path_native(rel_path)));
                            add_warning(response, warning);
                            return response;
                          });
  }

  // `stamp`: the file's as the caller found it (none: not on disk).
  Response respond_tarball(const Request& request, const std::string& name, const std::string& file,
                           const std::string& rel_path_value, const std::optional<FileStamp>& stamp) {
    auto config = current_settings();
    const std::string cache_control = tarball_cache_control(*config, name);
    // Too large for the cache: streamed from the file, never read whole
    // (20 clients of a 200 MB tarball would otherwise hold 4 GB).
    if (stamp && static_cast<std::uint64_t>(stamp->size) > k_cache_entry_bytes) {
      return stream_file(request, store.file_path(rel_path_value), cache_control);
    }
    auto body = tarball_body(name, file, rel_path_value, stamp);
    if (!body) {
      return error_response(body.error());
    }
    return cached_response(request, *body, "application/octet-stream", cache_control);
  }

  // The file at `path` as the body, read as the connection drains. Its ETag
  // comes from its size, modification time and inode (hashing it on every
  // request would cost what streaming saves), as nginx's does.
  Response stream_file(const Request& request, const std::filesystem::path& path, const std::string& cache_control) {
    util::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (!fd || ::fstat(fd.get(), &st) != 0) {
      const int error = errno;
      if (error == ENOENT) {
        return not_found();
      }
      return error_response(Error{Errc::io, "cannot read tarball '" + path.filename().string() + "': " +
                                              std::generic_category().message(error)});
    }
    Response response;
    char etag[96];
    std::snprintf(etag, sizeof etag, "\"%llx-%llx%09lx-%llx\"", static_cast<unsigned long long>(st.st_size),
                  static_cast<unsigned long long>(st.st_mtim.tv_sec), static_cast<unsigned long>(st.st_mtim.tv_nsec),
                  static_cast<unsigned long long>(st.st_ino));
    response.headers.add("ETag", etag);
    response.headers.add("Cache-Control", cache_control);
    if (auto if_none_match = request.headers.get("If-None-Match"); if_none_match && etag_matches(*if_none_match, etag)) {
      response.status = 304;
      return response;
    }
    response.headers.add("Content-Type", "application/octet-stream");
    auto body = std::make_shared<http::FileBody>();
    body->fd = std::move(fd);
    body->size = static_cast<std::uint64_t>(st.st_size);
    response.file_body = std::move(body);
    return response;
  }

  Response serve_dist_tags(const Request& request, const std::string& name) {
    auto config = current_settings();
    if (auto caller = authorize_read(request, *config, name); !caller) {
      return error_response(caller.error());
    }
    auto doc = load(name);
    if (!doc) {
      return error_response(doc.error());
    }
    if (!*doc) {
      return not_found();
    }
    const json* tags = member(**doc, "dist-tags");
    return json_response(200, tags != nullptr && tags->is_object() ? *tags : json::object());
  }

  // ---- writes ----

  // Commits a change of package `name` and drops its cached responses once
  // more after apply() returns: files removed after the commit may have
  // been cached again between the commit and their removal.
  Expected<store::Document> commit(const std::string& name, const store::Mutation& mutation) {
    auto result = store.apply(name, mutation);
    cache->invalidate(name);
    return result;
  }
  Expected<store::Document> commit(const std::string& name, const store::HeadMutation& mutation) {
    auto result = store.apply_head(name, mutation);
    cache->invalidate(name);
    return result;
  }

  // Remembers the versions of a wholly unpublished package so that they
  // can never be published again under the same name.
  Expected<void> retire(const std::string& name, const json& doc) {
    std::string now = util::iso8601();
    auto written = store.apply(unpublished_record_id(name),
                               [&](const std::optional<store::Document>& previous) -> Expected<store::Write> {
                                 std::optional<json> previous_record;
                                 if (previous) {
                                   previous_record = parse_json(previous->body);
                                 }
                                 store::Write write;
                                 write.kind = store::Write::Kind::put;
                                 write.body = make_unpublished_record(doc, previous_record, now).dump();
                                 return write;
                               });
    if (!written) {
      return make_error(written.error().code, written.error().message);
    }
    return {};
  }

  Expected<std::set<std::string>> retired_versions_of(const std::string& name) const {
    NPME_TRY_ASSIGN(auto record, store.get(unpublished_record_id(name)));
    if (!record) {
      return std::set<std::string>();
    }
    auto parsed = parse_json(record->body);
    return parsed ? retired_versions(*parsed) : std::set<std::string>();
  }

  Response publish(const std::string& name, const PutBody& body, std::optional<store::FileStage>& tarball,
                   const auth::Identity& identity) {
    auto request = parse_publish(name, body);
    if (!request) {
      return error_response(request.error());
    }
    auto retired = retired_versions_of(name);
    if (!retired) {
      return error_response(retired.error());
    }
    if (retired->contains(request->version)) {
      return error_response(403, "cannot publish over the previously published version " + request->version);
    }
    // Refuse a reused version before writing its tarball; the mutation below
    // checks again under the write lock. Only the head is read: a publish
    // never needs the other versions' manifests.
    auto existing = store.get_head(name);
    if (!existing) {
      return error_response(existing.error());
    }
    if (*existing) {
      auto head = parse_json((*existing)->body);
      if (!head) {
        return error_response(Error{Errc::io, "package document '" + name + "' in the store is not valid JSON"});
      }
      if (auto merged = merge_publish_head(*head, (*existing)->versions, *request, Publisher{identity.user, ""}, "",
                                           *retired);
          !merged) {
        return error_response(merged.error());
      }
    }
    Publisher publisher = publisher_of(identity);
    if (!tarball) { // parse_publish() found a tarball of at least one byte
      return error_response(500, "internal error: the publish's tarball was not staged");
    }
    // The fsync of the tarball happens before the write lock.
    auto staged = tarball->finish(tarball_rel_path(name, request->version));
    if (!staged) {
      return error_response(staged.error());
    }
    std::string now = util::iso8601();
    auto written = commit(name, store::HeadMutation([&](const std::optional<store::Head>& current) -> Expected<store::Write> {
      std::optional<json> head;
      if (current) {
        head = parse_json(current->body);
        if (!head) {
          return make_error(Errc::io, "package document '" + name + "' in the store is not valid JSON");
        }
      }
      static const std::vector<std::string> no_versions;
      NPME_TRY_ASSIGN(PublishMerge merged, merge_publish_head(head, current ? current->versions : no_versions,
                                                              *request, publisher, now, *retired));
      store::Write write;
      write.kind = store::Write::Kind::put;
      write.body = merged.head.dump();
      write.put_versions.emplace_back(request->version, merged.manifest.dump());
      write.add_files.push_back(std::move(*staged));
      return write;
    }));
    if (!written) {
      return error_response(written.error());
    }
    return json_response(201, json{{"ok", true}, {"id", name}, {"rev", written->rev}});
  }

  Response update_metadata(const std::string& name, const json& body, std::string rev) {
    if (rev.empty()) {
      rev = string_member(body, "_rev").value_or("");
    }
    std::string now = util::iso8601();
    json removed_doc;
    bool removes_package = false;
    auto written = commit(name, [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
      if (!current) {
        return make_error(Errc::not_found, "not found");
      }
      if (rev != current->rev) {
        return make_error(Errc::conflict, rev.empty() ? "document update conflict: the update carries no _rev"
                                                      : "document update conflict: the package is at revision " +
                                                          current->rev + ", the update was made against " + rev);
      }
      auto current_doc = parse_json(current->body);
      if (!current_doc) {
        return make_error(Errc::io, "package document '" + name + "' in the store is not valid JSON");
      }
      NPME_TRY_ASSIGN(MetadataUpdate update, apply_metadata_update(*current_doc, body, now));
      store::Write write;
      if (update.removes_package) {
        removes_package = true;
        removed_doc = *current_doc;
        write.kind = store::Write::Kind::remove;
        write.remove_files = tarball_paths(*current_doc);
      } else {
        write.kind = store::Write::Kind::put;
        write.body = update.doc.dump();
        write.remove_files = std::move(update.removed_files);
      }
      return write;
    });
    if (!written) {
      return error_response(written.error());
    }
    if (removes_package) {
      if (auto retired = retire(name, removed_doc); !retired) {
        return error_response(retired.error());
      }
    }
    return json_response(200, json{{"ok", true}, {"id", name}, {"rev", written->rev}});
  }

  Response put_package(Request& request, const Expected<std::string>& name) {
    if (!name) {
      return error_response(name.error());
    }
    auto config = current_settings();
    auto identity = authorize_write(request, *config, *name);
    if (!identity) {
      return error_response(identity.error());
    }
    // A publish's tarball is decoded, hashed and written to a staging file
    // while the body is read (a body over spool_min_bytes arrives in a file).
    std::optional<store::FileStage> tarball;
    auto sink = [&](std::string_view bytes) -> Expected<void> {
      if (!tarball) {
        NPME_TRY_ASSIGN(auto stage, store.begin_stage());
        tarball.emplace(std::move(stage));
      }
      return tarball->write(bytes);
    };
    auto body = read_put_body(request, sink);
    if (!body) {
      return error_response(body.error());
    }
    if (!body->json.is_object()) {
      return error_response(400, "invalid request body: expected a JSON object");
    }
    if (has_attachments(body->json)) {
      return publish(*name, *body, tarball, *identity);
    }
    return update_metadata(*name, body->json, request.param("rev"));
  }

  Response unpublish_package(Request& request, const Expected<std::string>& name) {
    if (!name) {
      return error_response(name.error());
    }
    auto config = current_settings();
    if (auto identity = authorize_write(request, *config, *name); !identity) {
      return error_response(identity.error());
    }
    const std::string& rev = request.param("rev");
    json removed_doc;
    auto written = commit(*name, [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
      if (!current) {
        return make_error(Errc::not_found, "not found");
      }
      if (rev != current->rev) {
        return make_error(Errc::conflict, "document update conflict: the package is at revision " + current->rev +
                                            ", the unpublish was made against " + rev);
      }
      auto current_doc = parse_json(current->body);
      if (!current_doc) {
        return make_error(Errc::io, "package document '" + *name + "' in the store is not valid JSON");
      }
      removed_doc = *current_doc;
      store::Write write;
      write.kind = store::Write::Kind::remove;
      write.remove_files = tarball_paths(*current_doc);
      return write;
    });
    if (!written) {
      return error_response(written.error());
    }
    if (auto retired = retire(*name, removed_doc); !retired) {
      return error_response(retired.error());
    }
    return json_response(200, json{{"ok", true}, {"id", *name}});
  }

  // npm deletes the tarball after the PUT that removed its version. The PUT
  // already deleted the file; this only cleans up a file nothing refers to.
  Response delete_tarball(Request& request, const Expected<std::string>& name) {
    if (!name) {
      return error_response(name.error());
    }
    auto config = current_settings();
    if (auto identity = authorize_write(request, *config, *name); !identity) {
      return error_response(identity.error());
    }
    const std::string& file = request.param("file");
    auto rel_path = tarball_rel_path_for_file(*name, file);
    if (!rel_path) {
      return not_found();
    }
    auto document = store.get(*name);
    if (!document) {
      return error_response(document.error());
    }
    if (*document) {
      const std::string& rev = request.param("rev");
      if (rev != (*document)->rev) {
        return error_response(409, "document update conflict: the package is at revision " + (*document)->rev +
                                     ", the delete was made against " + rev);
      }
      auto doc = parse_json((*document)->body);
      if (doc) {
        for (const std::string& live : tarball_paths(*doc)) {
          if (live == *rel_path) {
            return error_response(409, "tarball " + file + " belongs to a published version of " + *name +
                                         "; unpublish the version first");
          }
        }
      }
    }
    std::error_code error;
    std::filesystem::remove(store.file_path(*rel_path), error);
    cache->invalidate(*name);
    if (error) {
      return error_response(500, "cannot remove tarball " + file + ": " + error.message());
    }
    return json_response(200, json{{"ok", true}});
  }

  Response change_dist_tag(Request& request, const Expected<std::string>& name, bool remove) {
    if (!name) {
      return error_response(name.error());
    }
    auto config = current_settings();
    if (auto identity = authorize_write(request, *config, *name); !identity) {
      return error_response(identity.error());
    }
    const std::string& tag = request.param("tag");
    std::string version;
    if (!remove) {
      auto body = parse_json(request.body);
      if (body && body->is_string()) {
        version = body->get<std::string>();
      } else if (!body && validate_version(request.body)) {
        version = request.body; // a bare version without JSON quotes
      } else {
        return error_response(400, "invalid request body: expected the version as a JSON string");
      }
      if (auto valid = validate_version(version); !valid) {
        return error_response(valid.error());
      }
    }
    std::string now = util::iso8601();
    json tags;
    auto written = commit(*name, [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
      if (!current) {
        return make_error(Errc::not_found, "not found");
      }
      auto doc = parse_json(current->body);
      if (!doc) {
        return make_error(Errc::io, "package document '" + *name + "' in the store is not valid JSON");
      }
      NPME_TRY_ASSIGN(json changed, remove ? remove_dist_tag(std::move(*doc), tag, now)
                                           : set_dist_tag(std::move(*doc), tag, version, now));
      tags = changed["dist-tags"];
      store::Write write;
      write.kind = store::Write::Kind::put;
      write.body = changed.dump();
      return write;
    });
    if (!written) {
      return error_response(written.error());
    }
    return json_response(remove ? 200 : 201, json{{"ok", true}, {"id", *name}, {"dist-tags", tags}});
  }

  // ---- users ----

  // The user a couch-style login names ("org.couchdb.user:NAME"); nullopt
  // for any other user document.
  static std::optional<std::string> login_user(const Request& request) {
    const std::string& user_param = request.param("user");
    if (!user_param.starts_with(k_user_doc_prefix)) {
      return std::nullopt;
    }
    return user_param.substr(k_user_doc_prefix.size());
  }

  // First half of a login, on the I/O thread: refused at once (429) while
  // its user or client address is throttled, so that a flood of bad logins
  // costs no hashing and no worker; otherwise an attempt is reserved and
  // the login goes on on a worker (login()).
  Response login_gate(Request& request) {
    auto user = login_user(request);
    if (!user) {
      return not_found();
    }
    auto verdict = login_throttle.begin(*user, client_address(request, *current_settings()));
    if (!verdict.allowed) {
      record(request, *user, "login", *user, "throttled", json{{"retry_after", verdict.retry_after.count()}});
      Response refused = error_response(429, verdict.reason);
      refused.headers.set("Retry-After", std::to_string(verdict.retry_after.count()));
      return refused;
    }
    return Response::on_worker();
  }

  // The attempt login_gate() reserved: cancelled unless its outcome is told.
  class LoginAttempt {
  public:
    LoginAttempt(auth::LoginThrottle& throttle, std::string user, std::string address)
      : m_throttle(throttle), m_user(std::move(user)), m_address(std::move(address)) {}
    ~LoginAttempt() {
      if (!m_done) {
        m_throttle.cancel(m_user, m_address);
      }
    }
    LoginAttempt(const LoginAttempt&) = delete;
    LoginAttempt& operator=(const LoginAttempt&) = delete;
    void outcome(bool success) {
      m_throttle.finish(m_user, m_address, success);
      m_done = true;
    }

  private:
    auth::LoginThrottle& m_throttle;
    std::string m_user;
    std::string m_address;
    bool m_done = false;
  };

  // Second half of a login, on a worker, for the attempt login_gate() reserved.
  Response login(Request& request, const std::string& user, LoginAttempt& attempt) {
    auto config = current_settings();
    if (auto writable = check_writable(*config); !writable) {
      return error_response(writable.error());
    }
    auto body = parse_json(request.body);
    if (!body || !body->is_object()) {
      return error_response(400, "invalid request body: expected a JSON object with name and password");
    }
    auto password = string_member(*body, "password");
    if (!password) {
      return error_response(400, "invalid request body: password is missing");
    }
    if (auto name = string_member(*body, "name"); name && *name != user) {
      return error_response(400,
                            "invalid request body: name '" + *name + "' does not match the URL's user '" + user + "'");
    }
    // There is no self-registration: an unknown user is refused like a
    // wrong password, users are made by operators with `npme user add`.
    auto hashed = password_pool.run([&] { return auth.check_password(user, *password); });
    if (!hashed) {
      Response busy = error_response(503, "too many logins are being checked at once; retry in a second");
      busy.headers.set("Retry-After", "1");
      return busy;
    }
    auto& checked = *hashed;
    if (!checked) {
      if (checked.error().code == Errc::unauthorized) {
        attempt.outcome(false);
      }
      record(request, user, "login", user, "failed");
      return error_response(401, checked.error().code == Errc::unauthorized ? checked.error().message
                                                                            : "incorrect user name or password");
    }
    attempt.outcome(true);
    auto token = auth.create_token(user, auth::Access::read_write);
    if (!token) {
      record(request, user, "login", user, "failed", json{{"error", token.error().message}});
      return error_response(token.error());
    }
    record(request, user, "login", user, "ok", json{{"token_id", token->info.id}});
    return json_response(201, json{{"ok", true},
                                   {"id", std::string(k_user_doc_prefix) + user},
                                   {"rev", "1-" + util::hex(util::sha1(token->info.id)).substr(0, 32)},
                                   {"token", token->token}});
  }

  Response get_user(Request& request) {
    auto config = current_settings();
    auto caller = identify(request, *config, UnknownToken::reject);
    if (!caller) {
      return error_response(caller.error());
    }
    if (!caller->identity) {
      return error_response(401, "authentication required");
    }
    const std::string& user_param = request.param("user");
    if (!user_param.starts_with(k_user_doc_prefix)) {
      return not_found();
    }
    std::string user = user_param.substr(k_user_doc_prefix.size());
    if (user != caller->identity->user) {
      return error_response(403, "you can only read your own user document");
    }
    json doc = {{"_id", user_param}, {"name", user}, {"type", "user"}, {"roles", json::array()}};
    if (auto users = auth.list_users()) {
      for (const auto& info : *users) {
        if (info.name == user) {
          doc["email"] = info.email;
          doc["date"] = info.created;
        }
      }
    }
    return json_response(200, doc);
  }

  Response logout(Request& request) {
    auto config = current_settings();
    if (auto writable = check_writable(*config); !writable) {
      return error_response(writable.error());
    }
    // The token in the path is itself the credential: whoever holds it may
    // revoke it. Logging out twice is not an error.
    const auto identity = auth.authenticate(request.param("token"));
    auto revoked = auth.revoke_token_value(request.param("token"));
    if (!revoked && revoked.error().code != Errc::not_found) {
      return error_response(revoked.error());
    }
    if (identity) {
      record(request, identity->user, "token.revoke", identity->token_id, "ok", json{{"by", "logout"}});
    }
    return json_response(200, json{{"ok", true}});
  }

  Response whoami(Request& request) {
    auto config = current_settings();
    auto caller = identify(request, *config, UnknownToken::reject);
    if (!caller) {
      return error_response(caller.error());
    }
    if (!caller->identity) {
      return error_response(401, "authentication required");
    }
    return json_response(200, json{{"username", caller->identity->user}});
  }

  Response search(Request& request) {
    auto config = current_settings();
    auto caller = identify(request, *config, UnknownToken::reject);
    if (!caller) {
      return error_response(caller.error());
    }
    std::string mode = config->get("auth.installs");
    bool authenticated = caller->identity || caller->replication;
    if (mode == "all" && !authenticated) {
      return error_response(401, "authentication required");
    }
    bool hide_scoped = mode == "scoped" && !authenticated;
    auto documents = store.list_packages();
    if (!documents) {
      return error_response(documents.error());
    }
    std::vector<json> docs;
    docs.reserve(documents->size());
    for (const auto& document : *documents) {
      if (hide_scoped && is_scoped(document.id)) {
        continue;
      }
      if (auto parsed = parse_json(document.body); parsed && parsed->is_object()) {
        docs.push_back(std::move(*parsed));
      }
    }
    SearchQuery query;
    if (auto it = request.query.find("text"); it != request.query.end()) {
      query.text = it->second;
    }
    query.size = query_number(request, "size", 20);
    query.from = query_number(request, "from", 0);
    return json_response(200, search_packages(docs, query, util::iso8601()));
  }

  void add_routes(http::Router& routes);
};

void Registry::Impl::add_routes(http::Router& routes) {
  auto route = [&](const char* method, const char* pattern, auto handler,
                   http::Blocking blocking = http::Blocking::no, http::Body body = http::Body::memory) {
    const bool write = std::string_view(method) != "GET" && std::string_view(method) != "HEAD";
    routes.add(
      method, pattern,
      [this, handler, write](Request& request) {
        auto commit = [&] { return guarded([&] { return handler(request); }); };
        if (write && write_gate) {
          return write_gate(request, commit, [](const Error& refusal) { return error_response(refusal); });
        }
        return commit();
      },
      blocking, body);
  };
  // The package name of a route: "{name}" (possibly "@scope%2fname") or
  // "{scope}/{name}".
  auto single = [](const Request& request) { return name_from_param(request.param("name")); };
  auto scoped = [](const Request& request) { return name_from_params(request.param("scope"), request.param("name")); };

  route("GET", "/-/ping", [](Request&) { return Response::json(200, "{}"); });
  route("GET", "/-/whoami", [this](Request& request) { return whoami(request); });
  // npm tries web login first and falls back to the couch-style PUT below
  // on any 4xx (npm-profile's WebLoginNotSupported).
  route("POST", "/-/v1/login", [](Request&) {
    return error_response(404, "web login is not supported by this registry; npm falls back to user name and password");
  });
  route(
    "GET", "/-/v1/search", [this](Request& request) { return search(request); }, http::Blocking::yes);
  // Couch-style login: throttled on the I/O thread (login_gate), then the
  // write itself on a worker, through the write gate like every write.
  for (const char* pattern : {"/-/user/{user}", "/-/user/{user}/-rev/{rev}"}) {
    routes.add("PUT", pattern, [this](Request& request) -> Response {
      if (!request.on_worker) {
        return guarded([&] { return login_gate(request); });
      }
      // login_gate() passed: its reservation is released whatever happens now.
      const auto user = login_user(request);
      if (!user) {
        return not_found();
      }
      LoginAttempt attempt(login_throttle, *user, client_address(request, *current_settings()));
      auto commit = [&] { return guarded([&] { return login(request, *user, attempt); }); };
      if (write_gate) {
        return write_gate(request, commit, [](const Error& refusal) { return error_response(refusal); });
      }
      return commit();
    });
  }
  route("GET", "/-/user/{user}", [this](Request& request) { return get_user(request); });
  route(
    "DELETE", "/-/user/token/{token}", [this](Request& request) { return logout(request); }, http::Blocking::yes);

  for (const char* prefix : {"/-/package/{name}", "/-/package/{scope}/{name}"}) {
    bool is_scoped_route = std::string_view(prefix).find("{scope}") != std::string_view::npos;
    auto name_of = [=](const Request& request) { return is_scoped_route ? scoped(request) : single(request); };
    route(
      "GET", (std::string(prefix) + "/dist-tags").c_str(),
      [this, name_of](Request& request) {
        auto name = name_of(request);
        return name ? serve_dist_tags(request, *name) : bad_name(name.error(), request.param("name"));
      },
      http::Blocking::yes); // parses the whole document
    for (const char* method : {"PUT", "POST"}) {
      route(
        method, (std::string(prefix) + "/dist-tags/{tag}").c_str(),
        [this, name_of](Request& request) { return change_dist_tag(request, name_of(request), false); },
        http::Blocking::yes);
    }
    route(
      "DELETE", (std::string(prefix) + "/dist-tags/{tag}").c_str(),
      [this, name_of](Request& request) { return change_dist_tag(request, name_of(request), true); },
      http::Blocking::yes);
  }

  // Tarballs before "/{scope}/{name}/{version}": "-" is a literal segment.
  route("GET", "/{name}/-/{file}", [this, single](Request& request) {
    auto name = single(request);
    return name ? serve_tarball(request, *name, request.param("file")) : bad_name(name.error(), request.param("name"));
  });
  route("GET", "/{scope}/{name}/-/{file}", [this, scoped](Request& request) {
    auto name = scoped(request);
    return name ? serve_tarball(request, *name, request.param("file")) : bad_name(name.error(), request.param("scope"));
  });
  route("GET", "/{name}", [this, single](Request& request) {
    auto name = single(request);
    return name ? serve_packument(request, *name) : bad_name(name.error(), request.param("name"));
  });
  // Two segments are "@scope/name" or "name/version" ("@scope%2fname/version").
  route("GET", "/{first}/{second}", [this](Request& request) {
    const std::string& first = request.param("first");
    const std::string& second = request.param("second");
    if (first.starts_with("@") && first.find('/') == std::string::npos) {
      auto name = name_from_params(first, second);
      return name ? serve_packument(request, *name) : bad_name(name.error(), first);
    }
    auto name = name_from_param(first);
    return name ? serve_version(request, *name, second) : bad_name(name.error(), first);
  });
  route(
    "GET", "/{scope}/{name}/{version}",
    [this, scoped](Request& request) {
      auto name = scoped(request);
      return name ? serve_version(request, *name, request.param("version"))
                  : bad_name(name.error(), request.param("scope"));
    },
    http::Blocking::yes); // parses the whole document

  for (const char* pattern : {"/{name}", "/{name}/-rev/{rev}"}) {
    route(
      "PUT", pattern, [this, single](Request& request) { return put_package(request, single(request)); },
      http::Blocking::yes, http::Body::spooled);
  }
  for (const char* pattern : {"/{scope}/{name}", "/{scope}/{name}/-rev/{rev}"}) {
    route(
      "PUT", pattern, [this, scoped](Request& request) { return put_package(request, scoped(request)); },
      http::Blocking::yes, http::Body::spooled);
  }
  route(
    "DELETE", "/{name}/-rev/{rev}",
    [this, single](Request& request) { return unpublish_package(request, single(request)); }, http::Blocking::yes);
  route(
    "DELETE", "/{scope}/{name}/-rev/{rev}",
    [this, scoped](Request& request) { return unpublish_package(request, scoped(request)); }, http::Blocking::yes);
  route(
    "DELETE", "/{name}/-/{file}/-rev/{rev}",
    [this, single](Request& request) { return delete_tarball(request, single(request)); }, http::Blocking::yes);
  route(
    "DELETE", "/{scope}/{name}/-/{file}/-rev/{rev}",
    [this, scoped](Request& request) { return delete_tarball(request, scoped(request)); }, http::Blocking::yes);
}

Registry::Registry(store::Store& store, auth::Auth& auth, SettingsSource settings)
  : m_impl(std::make_unique<Impl>(store, auth, std::move(settings))) {
  // The listener may outlive this object (the store keeps it), so it holds
  // the cache, not the registry.
  std::weak_ptr<ResponseCache> cache = m_impl->cache;
  store.on_change([cache](const store::Change& change) {
    if (auto alive = cache.lock()) {
      alive->invalidate(change.id);
    }
  });
  auto routes = std::make_shared<http::Router>();
  m_impl->add_routes(*routes);
  m_impl->router = std::move(routes);
}

Registry::~Registry() = default;

std::shared_ptr<const http::Router> Registry::router() const {
  return m_impl->router;
}

void Registry::add_routes(http::Router& router) const {
  m_impl->add_routes(router);
}

void Registry::invalidate(std::string_view name) {
  m_impl->cache->invalidate(name);
}

std::string Registry::metrics() const {
  const auto& cache = *m_impl->cache;
  return "# HELP npme_cache_bytes Bytes the response cache holds (packuments plain and gzip, tarballs)\n"
         "# TYPE npme_cache_bytes gauge\n"
         "npme_cache_bytes " +
         std::to_string(cache.size_bytes()) +
         "\n"
         "# HELP npme_cache_entries Responses the response cache holds\n"
         "# TYPE npme_cache_entries gauge\n"
         "npme_cache_entries " +
         std::to_string(cache.entry_count()) +
         "\n"
         "# HELP npme_logins_throttled_total Logins refused with 429 (too many failures for the user or address)\n"
         "# TYPE npme_logins_throttled_total counter\n"
         "npme_logins_throttled_total " +
         std::to_string(m_impl->login_throttle.refused()) + "\n";
}

void Registry::set_write_gate(WriteGate gate) {
  m_impl->write_gate = std::move(gate);
}

void Registry::set_audit(audit::Log* log) {
  m_impl->audit_log = log;
}

void Registry::set_source(std::shared_ptr<PackageSource> source) {
  m_impl->source = std::move(source);
}

} // namespace npme::registry
