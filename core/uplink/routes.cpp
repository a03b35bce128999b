#include "core/uplink/routes.hpp"

#include "core/registry/names.hpp"
#include "core/replication/feed.hpp"

#include <nlohmann/json.hpp>

namespace npme::uplink {

namespace {

using nlohmann::json;

http::Response error(int status, const std::string& message) {
  return http::Response::json(status, json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace));
}

} // namespace

void add_routes(http::Router& router, Service& service, store::Store& store,
                std::function<std::shared_ptr<const settings::Settings>()> settings) {
  for (const char* path : {"/-/npm/v1/security/advisories/bulk", "/-/npm/v1/security/audits/quick"}) {
    router.add(
      "POST", path,
      [&service, path = std::string(path)](http::Request& request) {
        http::Responder responder = request.defer();
        if (!responder) {
          return error(500, "internal error: cannot wait for the uplink here");
        }
        std::string encoding(request.headers.get("Content-Encoding").value_or(""));
        service.forward_audit(path, request.body, encoding, [responder](int status, std::string body) {
          http::Response response = http::Response::json(status, std::move(body));
          responder.send(std::move(response));
        });
        return http::Response::later();
      },
      http::Blocking::yes);
  }

  router.add("GET", "/_fetch/{name}", [&service, &store, settings](http::Request& request) {
    if (!replication::presents_secret(request, settings()->get("secret"))) {
      return error(401, "replication needs the instance's secret");
    }
    const std::string name = request.param("name");
    if (auto valid = registry::validate_package_name(name); !valid) {
      return error(400, valid.error().message);
    }
    auto held = store.get_head(name);
    if (!held) {
      return error(500, held.error().message);
    }
    auto decision = service.decide(name, *held, registry::Need{registry::Need::Kind::packument, ""});
    if (decision.answer) {
      return error(decision.answer->status > 0 ? decision.answer->status : 404, decision.answer->message);
    }
    if (!decision.fetch) {
      return replication::document_response(store, name);
    }
    http::Responder responder = request.defer();
    if (!responder) {
      return error(500, "internal error: cannot wait for the uplink here");
    }
    service.fetch(name, registry::Need{registry::Need::Kind::packument, ""},
                  [responder, &store, name](const registry::SourceOutcome& outcome) {
                    using Kind = registry::SourceOutcome::Kind;
                    if (outcome.kind == Kind::ready || outcome.kind == Kind::stale) {
                      responder.send(replication::document_response(store, name));
                    } else if (outcome.kind == Kind::not_found) {
                      responder.send(error(404, outcome.message));
                    } else {
                      responder.send(error(outcome.status >= 400 ? outcome.status : 502, outcome.message));
                    }
                  });
    return http::Response::later();
  });
}

} // namespace npme::uplink
