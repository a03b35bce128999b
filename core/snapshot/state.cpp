// The admin API's view of a running instance, recorded in snapshot.json.

#include "core/snapshot/snapshot.hpp"

#include "core/http/client.hpp"

#include <utility>

namespace npme::snapshot {

nlohmann::json ReportedState::to_json() const {
  return {
    {"source", "admin-api"},
    {"admin_url", admin_url},
    {"role", role},
    {"instance_id", instance_id},
    {"update_seq", update_seq},
    {"follower_sequence", follower_sequence ? nlohmann::json(*follower_sequence) : nlohmann::json(nullptr)},
    {"follower_state", follower_state},
    {"epoch", epoch},
  };
}

Expected<ReportedState> query_state(const std::string& admin_url, const std::string& token,
                                    const std::string& ca_file, std::chrono::milliseconds timeout) {
  std::string base = admin_url;
  while (!base.empty() && base.back() == '/') {
    base.pop_back();
  }
  http::ClientOptions client_options;
  client_options.connect_timeout = timeout;
  client_options.timeout = timeout;
  client_options.bearer_token = token;
  client_options.ca_file = ca_file;
  http::Client client(std::move(client_options));
  http::Headers headers;
  headers.add("Accept", "application/json");
  NPME_TRY_ASSIGN(const auto response, client.request("GET", base + "/api/v1/status", "", headers));
  if (response.status != 200) {
    return make_error(Errc::failed, "admin API at " + base + ": GET /status answered " + std::to_string(response.status));
  }
  const auto doc = nlohmann::json::parse(response.body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return make_error(Errc::failed, "admin API at " + base + ": the status is not a JSON object");
  }
  return state_from_status(doc, base);
}

Expected<ReportedState> state_from_status(const nlohmann::json& doc, const std::string& admin_url) {
  if (!doc.is_object()) {
    return make_error(Errc::failed, "admin API at " + admin_url + ": the status is not a JSON object");
  }
  try {
    ReportedState state;
    state.admin_url = admin_url;
    state.role = doc.value("role", "");
    state.instance_id = doc.value("instance", "");
    state.update_seq = doc.value("update_seq", std::int64_t{0});
    state.epoch = doc.value("epoch", std::int64_t{0});
    if (auto follower = doc.find("follower"); follower != doc.end() && follower->is_object()) {
      if (auto seq = follower->find("sequence"); seq != follower->end() && seq->is_number_integer()) {
        state.follower_sequence = seq->get<std::int64_t>();
      }
      if (auto st = follower->find("state"); st != follower->end() && st->is_string()) {
        state.follower_state = st->get<std::string>();
      }
    }
    return state;
  } catch (const std::exception& e) {
    // value() throws when a field has another type than the one asked for.
    return make_error(Errc::failed, "admin API at " + admin_url + ": unexpected status: " + e.what());
  }
}

} // namespace npme::snapshot
