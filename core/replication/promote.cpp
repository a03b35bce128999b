#include "core/replication/promote.hpp"

#include "core/http/client.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <thread>

namespace npme::replication {

namespace {

using nlohmann::json;

std::int64_t meta_int(const store::Store& store, std::string_view key, std::int64_t fallback) {
  if (auto stored = store.get_meta(key); stored && *stored) {
    try {
      return std::stoll(**stored);
    } catch (const std::exception&) {
      return fallback;
    }
  }
  return fallback;
}

// The old primary's feed root, or nullopt when it does not answer.
std::optional<json> probe_upstream(const std::string& url, const std::string& secret, const std::string& ca_file) {
  http::ClientOptions options{std::chrono::milliseconds(2000), std::chrono::milliseconds(3000), secret, {}};
  options.ca_file = ca_file;
  http::Client client(std::move(options));
  auto response = client.request("GET", url + "/");
  if (!response || response->status != 200) {
    return std::nullopt;
  }
  auto doc = json::parse(response->body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return std::nullopt;
  }
  return doc;
}

} // namespace

std::int64_t read_epoch(const store::Store& store) {
  return std::max<std::int64_t>(1, meta_int(store, "epoch", 1));
}

Expected<PromoteResult> promote(store::Store& store, settings::LiveSettings& settings, Follower& follower,
                                const PromoteOptions& options) {
  auto current = settings.get();
  PromoteResult result;
  result.old_upstream = current->get("upstream.url");
  if (result.old_upstream.empty()) {
    return make_error(Errc::precondition, "this instance is not a replica (upstream.url is empty): nothing to promote");
  }
  const std::string secret = current->get("upstream.secret");
  const std::string ca_file = settings::ca_file(*current, "upstream.ca_file");
  {
    const auto before = follower.status();
    result.was_synchronous = before.synchronous;
    result.last_known_upstream_seq = before.upstream_seq;
    result.last_known_confirmed_seq = before.upstream_confirmed_seq;
  }

  if (auto root = probe_upstream(result.old_upstream, secret, ca_file)) {
    result.upstream_reachable = true;
    if (root->value("publication", "all") != "read-only" && !options.force) {
      return make_error(Errc::precondition,
                        "the old primary " + result.old_upstream +
                          " still answers and accepts publishes: fence it first (--fence ADMIN_URL sets it "
                          "read-only), or pass --force if it is really gone");
    }
    // Wait for everything the old primary acknowledged to arrive here.
    const auto deadline = std::chrono::steady_clock::now() + options.wait_timeout;
    while (true) {
      result.upstream_seq = root->value("update_seq", std::int64_t{0});
      result.sequence = follower.status().sequence;
      if (result.sequence >= result.upstream_seq || options.force) {
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return make_error(Errc::precondition,
                          "this replica lags the old primary (applied " + std::to_string(result.sequence) + " of " +
                            std::to_string(result.upstream_seq) + " changes after " +
                            std::to_string(options.wait_timeout.count()) +
                            " s): wait for it (npme status), or pass --force to promote with what it has");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (auto again = probe_upstream(result.old_upstream, secret, ca_file)) {
        root = std::move(again);
      } else {
        break; // it died meanwhile: promote with what is here
      }
    }
  }

  follower.stop();
  result.sequence = follower.status().sequence;
  // The new epoch is above every epoch seen in this chain, so that followers
  // can tell the new primary from a stale old one.
  result.epoch = std::max({read_epoch(store), meta_int(store, "upstream_epoch", 0), follower.status().upstream_epoch}) + 1;
  NPME_TRY(store.set_meta("epoch", std::to_string(result.epoch)));
  NPME_TRY(settings.update({{"upstream.url", ""}, {"upstream.secret", ""}, {"publication", "all"}}));
  return result;
}

} // namespace npme::replication
