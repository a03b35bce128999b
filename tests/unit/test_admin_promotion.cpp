#include "core/admin/api.hpp"
#include "core/admin/promotion.hpp"
#include "core/http/server.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

using namespace npme;
using nlohmann::json;

namespace {

// An admin API on 127.0.0.1 that answers the calls of a promotion the way
// an instance does, and records them. `refuse` makes every call answer 401
// in the admin error shape (a wrong token).
struct AdminPeer {
  std::shared_ptr<http::Router> router = std::make_shared<http::Router>();
  std::unique_ptr<http::Server> server;
  std::mutex mutex;
  std::vector<std::string> calls;
  std::vector<json> patches;
  bool refuse = false;
  json promoted = {{"epoch", 3},
                   {"sequence", 40},
                   {"old_primary_seq", 42},
                   {"registry_url", "http://lb.example:4873"},
                   {"listen_url", "http://127.0.0.1:4999"}};

  AdminPeer() {
    auto handle = [this](const std::string& what, auto answer) {
      return [this, what, answer](http::Request& request) {
        std::lock_guard lock(mutex);
        calls.push_back(what);
        if (refuse) {
          return http::Response::json(401, admin::error_body(Error{Errc::unauthorized, "wrong admin token"}));
        }
        return answer(request);
      };
    };
    router->add("PATCH", "/api/v1/settings", handle("PATCH /settings", [this](http::Request& request) {
                  patches.push_back(json::parse(request.body));
                  return http::Response::json(200, R"({"changed":[]})");
                }));
    router->add("POST", "/api/v1/promote", handle("POST /promote", [this](http::Request&) {
                  return http::Response::json(200, promoted.dump());
                }));
    router->add("GET", "/api/v1/settings/secret", handle("GET /settings/secret", [](http::Request&) {
                  return http::Response::json(200, R"({"value":"s3cret-of-the-new-primary"})");
                }));
    router->add("POST", "/api/v1/follower/reset", handle("POST /follower/reset", [](http::Request&) {
                  return http::Response::json(200, R"({"reset":true})");
                }));
    http::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 1;
    options.worker_threads = 1;
    server = std::make_unique<http::Server>(options, router);
    REQUIRE(server->start());
  }

  std::string url() const { return "http://" + server->address(); }

  std::vector<std::string> seen() {
    std::lock_guard lock(mutex);
    return calls;
  }
};

// Nothing listens on port 1 of the loopback: connection refused.
const std::string k_unreachable = "http://127.0.0.1:1";

struct Lines {
  std::vector<std::string> info;
  std::vector<std::string> errors;
  admin::PromotionProgress sink() {
    return [this](admin::ProgressKind kind, const std::string& line) {
      (kind == admin::ProgressKind::error ? errors : info).push_back(line);
    };
  }
};

} // namespace

TEST_CASE("admin::run_promotion fences, promotes, then repoints at the new primary's listening address") {
  AdminPeer local;
  AdminPeer old_primary;
  AdminPeer other;
  admin::Client client(local.url(), "token");
  admin::PromotionPlan plan;
  plan.fence_url = old_primary.url();
  plan.repoint_urls = {other.url()};
  plan.wait_timeout_seconds = 7;
  Lines lines;
  auto report = admin::run_promotion(client, plan, lines.sink());
  REQUIRE(report);
  CHECK((*report)["fenced"] == old_primary.url());
  CHECK(old_primary.patches.at(0) == json{{"publication", "read-only"}});
  CHECK(local.seen() == std::vector<std::string>{"POST /promote", "GET /settings/secret"});
  CHECK((*report)["promoted"]["epoch"] == 3);
  CHECK((*report)["upstream_url"] == "http://127.0.0.1:4999");
  CHECK(other.seen() == std::vector<std::string>{"PATCH /settings", "POST /follower/reset"});
  CHECK(other.patches.at(0) ==
        json{{"upstream.url", "http://127.0.0.1:4999"}, {"upstream.secret", "s3cret-of-the-new-primary"}});
  CHECK((*report)["repointed"] == json::array({{{"admin_url", other.url()}, {"ok", true}}}));
  CHECK(lines.errors.empty());
  REQUIRE(lines.info.size() == 4);
  CHECK(lines.info[0].find("fenced the old primary") == 0);
  CHECK(lines.info[1] == "promoted; epoch 3, publishes go to http://lb.example:4873");
  CHECK(lines.info[2].find("not synchronous") != std::string::npos);
  CHECK(lines.info[3].find("repointed " + other.url()) == 0);
}

TEST_CASE("admin::run_promotion goes on past an unreachable old primary but stops at one that refuses") {
  SUBCASE("unreachable: reported, not fenced, promoted") {
    AdminPeer local;
    admin::Client client(local.url(), "token");
    admin::PromotionPlan plan;
    plan.fence_url = k_unreachable;
    Lines lines;
    auto report = admin::run_promotion(client, plan, lines.sink());
    REQUIRE(report);
    CHECK((*report)["fenced"].is_null());
    CHECK(lines.info.at(0).find("is unreachable; not fenced") != std::string::npos);
    CHECK(local.seen() == std::vector<std::string>{"POST /promote"});
  }
  SUBCASE("refused: nothing promoted") {
    AdminPeer local;
    AdminPeer old_primary;
    old_primary.refuse = true;
    admin::Client client(local.url(), "token");
    admin::PromotionPlan plan;
    plan.fence_url = old_primary.url();
    Lines lines;
    auto report = admin::run_promotion(client, plan, lines.sink());
    REQUIRE_FALSE(report);
    CHECK(report.error().code == Errc::unauthorized);
    CHECK(report.error().message.find("cannot fence the old primary: ") == 0);
    CHECK(local.seen().empty());
  }
}

TEST_CASE("admin::run_promotion names every replica it could not repoint, after promoting") {
  AdminPeer local;
  local.promoted["listen_url"] = "http://0.0.0.0:4999"; // a wildcard can't be dialled: registry.url instead
  AdminPeer good;
  AdminPeer refusing;
  refusing.refuse = true;
  admin::Client client(local.url(), "token");
  admin::PromotionPlan plan;
  plan.repoint_urls = {refusing.url(), good.url(), k_unreachable};
  Lines lines;
  auto report = admin::run_promotion(client, plan, lines.sink());
  REQUIRE_FALSE(report);
  CHECK(report.error().code == Errc::failed);
  const std::string& message = report.error().message;
  CHECK(message.find("promoted (epoch 3), but these replicas were not repointed: ") == 0);
  CHECK(message.find(refusing.url() + ": ") != std::string::npos);
  CHECK(message.find(k_unreachable + ": ") != std::string::npos);
  CHECK(message.find(good.url() + ":") == std::string::npos);
  CHECK(good.patches.at(0)["upstream.url"] == "http://lb.example:4873");
  CHECK(good.seen() == std::vector<std::string>{"PATCH /settings", "POST /follower/reset"});
  // A refused PATCH stops that replica there: no reset of a follower left on the old primary.
  CHECK(refusing.seen() == std::vector<std::string>{"PATCH /settings"});
  CHECK(lines.errors.size() == 2);
}

TEST_CASE("admin::check_promotable refuses a primary and an instance under automatic failover") {
  CHECK(admin::check_promotable(json{{"role", "replica"}}));
  auto primary = admin::check_promotable(json{{"role", "primary"}});
  REQUIRE_FALSE(primary);
  CHECK(primary.error().code == Errc::precondition);
  auto managed = admin::check_promotable(json{{"role", "replica"}, {"ha", {{"enabled", true}}}});
  REQUIRE_FALSE(managed);
  CHECK(managed.error().message.find("npme ha switchover") != std::string::npos);
  CHECK(admin::check_promotable(json{{"role", "replica"}, {"ha", {{"enabled", true}, {"paused", true}}}}));
}

TEST_CASE("admin::promotion_position says whether confirmed writes are all there") {
  const json holds = {{"sequence", 50}, {"old_primary_seq", 52}, {"was_synchronous", true}, {"last_known_confirmed_seq", 50}};
  CHECK(admin::promotion_position(holds) ==
        "this replica was synchronous; applied 50 of 52 changes last known from the old primary (2 behind); it holds "
        "every write the old primary had confirmed (up to seq 50) when it last answered");
  const json lacks = {{"sequence", 48}, {"last_known_primary_seq", 52}, {"was_synchronous", true}, {"last_known_confirmed_seq", 50}};
  CHECK(admin::promotion_position(lacks).find("it lacks confirmed writes 49..50") != std::string::npos);
  const json unknown = {{"sequence", 9}};
  CHECK(admin::promotion_position(unknown) ==
        "this replica was not synchronous: writes the old primary acknowledged after it was last caught up may be "
        "missing; applied 9 of an unknown number of changes of the old primary");
}
