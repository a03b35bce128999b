// Where repairs fetch tarballs from: the upstream of a replica (any
// version, with the upstream's secret, the way the follower does), or the
// uplink for copies of public packages (only from the uplink's origin, the
// way the uplink service does). Both go through the one HTTP client and
// http::fetch_tarball(), which checks the bytes against dist.integrity.

#include "core/doctor/doctor.hpp"

#include "core/http/fetcher.hpp"
#include "core/uplink/packument.hpp"

namespace npme::doctor {

namespace {

constexpr std::chrono::milliseconds k_connect_timeout{5000};
constexpr std::chrono::milliseconds k_timeout{120000};

http::ClientOptions client_options(const settings::Settings& config, std::string token, std::string_view ca_key) {
  http::ClientOptions options{k_connect_timeout, k_timeout, std::move(token), {}};
  options.proxy = config.get("network.http_proxy");
  options.ca_file = settings::ca_file(config, ca_key);
  options.stall_seconds = 30;
  return options;
}

std::string without_trailing_slash(std::string url) {
  while (!url.empty() && url.back() == '/') {
    url.pop_back();
  }
  return url;
}

class UpstreamSource : public TarballSource {
public:
  explicit UpstreamSource(const settings::Settings& config)
    : m_url(without_trailing_slash(config.get("upstream.url"))),
      m_client(client_options(config, config.get("upstream.secret"), "upstream.ca_file")) {}

  std::string describe() const override { return "the upstream " + m_url; }

  Expected<std::string> fetch(const Wanted& wanted) override {
    // Without "?held=1": the upstream fetches a copy of a public package
    // from its own uplink when it lacks the file.
    return http::fetch_tarball(
      m_client, m_url + "/" + wanted.rel_path,
      http::TarballCheck{wanted.package + "@" + wanted.version, wanted.integrity, wanted.shasum});
  }

private:
  std::string m_url;
  http::Client m_client;
};

class UplinkSource : public TarballSource {
public:
  explicit UplinkSource(const settings::Settings& config)
    : m_url(without_trailing_slash(config.get("uplink.url"))),
      m_client(client_options(config, config.get("uplink.token"), "uplink.ca_file")) {}

  std::string describe() const override { return "the uplink " + m_url; }

  Expected<std::string> fetch(const Wanted& wanted) override {
    if (!wanted.uplink_copy) {
      return make_error(Errc::not_found, "published on this instance, so the uplink has no copy");
    }
    NPME_TRY_ASSIGN(const std::string url, uplink::tarball_source(m_url, wanted.uplink_url, wanted.rel_path));
    return http::fetch_tarball(
      m_client, url, http::TarballCheck{wanted.package + "@" + wanted.version, wanted.integrity, wanted.shasum});
  }

private:
  std::string m_url;
  http::Client m_client;
};

} // namespace

std::unique_ptr<TarballSource> make_source(const settings::Settings& config) {
  if (!config.get("upstream.url").empty()) {
    return std::make_unique<UpstreamSource>(config);
  }
  if (!config.get("uplink.url").empty()) {
    return std::make_unique<UplinkSource>(config);
  }
  return nullptr;
}

} // namespace npme::doctor
