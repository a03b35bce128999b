// ha::Etcd against a real etcd (tests/unit/etcd_server.hpp): most cases
// share one member and keep to their own keys; auth and TLS start their own.

#include "core/ha/etcd.hpp"

#include "tests/unit/etcd_server.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <vector>

using namespace npme;
using namespace npme::ha;
using namespace std::chrono_literals;

namespace {

test::EtcdServer& shared_etcd() {
  static test::EtcdServer server;
  return server;
}

EtcdOptions options_for(const std::string& url) {
  EtcdOptions options;
  options.endpoints = {url};
  options.timeout = 2000ms;
  return options;
}

std::string dead_endpoint() {
  return "http://127.0.0.1:" + std::to_string(test::free_port());
}

struct Event {
  KeyValue kv;
  bool deleted = false;
};

// The value of `key`, or "(absent)".
std::string value_of(Etcd& etcd, const std::string& key) {
  auto result = etcd.range(key);
  REQUIRE_MESSAGE(result, result.error().message);
  return result->kvs.empty() ? std::string("(absent)") : result->kvs.front().value;
}

std::int64_t revision_of(Etcd& etcd) {
  auto result = etcd.range("/none");
  REQUIRE_MESSAGE(result, result.error().message);
  return result->revision;
}

// Certificates for a TLS etcd, made with openssl: a CA, a server certificate
// for IP 127.0.0.1 (also for client use: etcd's gateway presents it to its
// own gRPC server) and a client certificate.
test::EtcdTls make_certificates(const std::filesystem::path& dir) {
  auto path = [&](const char* name) { return (dir / name).string(); };
  auto openssl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "/usr/bin/openssl");
    std::string output;
    int status = test::run(args, &output);
    REQUIRE_MESSAGE(status == 0, output);
  };
  const std::vector<std::string> ec_key = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"};
  auto request = [&](const char* key, const char* csr, const char* subject) {
    std::vector<std::string> args = {"req", "-new", "-keyout", path(key), "-out", path(csr), "-subj", subject};
    args.insert(args.end(), ec_key.begin(), ec_key.end());
    openssl(args);
  };
  auto sign = [&](const char* csr, const char* cert, const char* extensions) {
    std::ofstream(path("ext.cnf")) << extensions;
    openssl({"x509", "-req", "-in", path(csr), "-CA", path("ca.crt"), "-CAkey", path("ca.key"), "-CAcreateserial",
             "-out", path(cert), "-days", "1", "-extfile", path("ext.cnf")});
  };
  std::vector<std::string> ca = {"req",     "-x509",
                                 "-keyout", path("ca.key"),
                                 "-out",    path("ca.crt"),
                                 "-days",   "1",
                                 "-subj",   "/CN=npme test ca",
                                 "-addext", "basicConstraints=critical,CA:TRUE",
                                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"};
  ca.insert(ca.end(), ec_key.begin(), ec_key.end());
  openssl(ca);
  request("server.key", "server.csr", "/CN=127.0.0.1");
  sign("server.csr", "server.crt", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
  request("client.key", "client.csr", "/CN=npme");
  sign("client.csr", "client.crt", "extendedKeyUsage=clientAuth\n");
  return {path("ca.crt"), path("server.crt"), path("server.key"), path("client.crt"), path("client.key")};
}

} // namespace

TEST_CASE("ha::Etcd puts, ranges and removes keys") {
  Etcd etcd(options_for(shared_etcd().url()));

  auto first = etcd.put("/kv/a", "1");
  REQUIRE_MESSAGE(first, first.error().message);
  REQUIRE(etcd.put("/kv/b", "2"));
  REQUIRE(etcd.put("/kvx", "outside"));
  // Bytes that are not text, and a key ending in 0xff (the end of its
  // prefix range carries over).
  const std::string binary_key = "/kv/\xff";
  const std::string binary_value = std::string("\0\xff{\"}\n", 6);
  REQUIRE(etcd.put(binary_key, binary_value));
  REQUIRE(etcd.put(binary_key + "\x01", "under 0xff"));

  auto one = etcd.range("/kv/a");
  REQUIRE(one);
  REQUIRE(one->kvs.size() == 1);
  CHECK(one->kvs[0].key == "/kv/a");
  CHECK(one->kvs[0].value == "1");
  CHECK(one->kvs[0].create_revision == *first);
  CHECK(one->kvs[0].mod_revision == *first);
  CHECK(one->kvs[0].version == 1);
  CHECK(one->kvs[0].lease == 0);
  CHECK(one->revision > *first);

  auto second = etcd.put("/kv/a", "one");
  REQUIRE(second);
  CHECK(*second > *first);
  one = etcd.range("/kv/a");
  REQUIRE(one);
  CHECK(one->kvs[0].value == "one");
  CHECK(one->kvs[0].version == 2);
  CHECK(one->kvs[0].mod_revision == *second);
  CHECK(one->kvs[0].create_revision == *first);

  auto under = etcd.range("/kv/", true);
  REQUIRE(under);
  REQUIRE(under->kvs.size() == 4);
  CHECK(under->kvs[0].key == "/kv/a");
  CHECK(under->kvs[1].key == "/kv/b");
  CHECK(under->kvs[2].key == binary_key);
  CHECK(under->kvs[2].value == binary_value);
  auto under_ff = etcd.range(binary_key, true);
  REQUIRE(under_ff);
  CHECK(under_ff->kvs.size() == 2);

  auto missing = etcd.range("/kv/missing");
  REQUIRE(missing);
  CHECK(missing->kvs.empty());
  CHECK(missing->revision > 0);

  auto removed = etcd.remove("/kv/a");
  REQUIRE(removed);
  CHECK(*removed == 1);
  removed = etcd.remove("/kv/a");
  REQUIRE(removed);
  CHECK(*removed == 0);
  removed = etcd.remove("/kv/", true);
  REQUIRE(removed);
  CHECK(*removed == 3);
  under = etcd.range("/kv/", true);
  REQUIRE(under);
  CHECK(under->kvs.empty());
  CHECK(value_of(etcd, "/kvx") == "outside");
}

TEST_CASE("ha::Etcd creates a key only when it is absent") {
  Etcd etcd(options_for(shared_etcd().url()));
  const std::int64_t before = revision_of(etcd);

  auto created = etcd.create("/create/leader", "node-a", 0);
  REQUIRE_MESSAGE(created, created.error().message);
  CHECK(created->succeeded);
  CHECK(created->revision > before);

  auto again = etcd.create("/create/leader", "node-b", 0);
  REQUIRE(again);
  CHECK_FALSE(again->succeeded);
  CHECK(again->revision == created->revision); // nothing was written
  CHECK(value_of(etcd, "/create/leader") == "node-a");

  REQUIRE(etcd.remove("/create/leader"));
  auto after_remove = etcd.create("/create/leader", "node-b", 0);
  REQUIRE(after_remove);
  CHECK(after_remove->succeeded);
  CHECK(after_remove->revision > created->revision);
  CHECK(value_of(etcd, "/create/leader") == "node-b");
}

TEST_CASE("ha::Etcd put_if and remove_if hold only for the current mod_revision") {
  Etcd etcd(options_for(shared_etcd().url()));
  auto written = etcd.put("/cas/leader", "v1");
  REQUIRE(written);

  auto stale = etcd.put_if("/cas/leader", "v2", 0, *written - 1);
  REQUIRE_MESSAGE(stale, stale.error().message);
  CHECK_FALSE(stale->succeeded);
  CHECK(value_of(etcd, "/cas/leader") == "v1");

  auto current = etcd.put_if("/cas/leader", "v2", 0, *written);
  REQUIRE(current);
  CHECK(current->succeeded);
  CHECK(current->revision > *written);
  auto read = etcd.range("/cas/leader");
  REQUIRE(read);
  REQUIRE(read->kvs.size() == 1);
  CHECK(read->kvs[0].value == "v2");
  CHECK(read->kvs[0].mod_revision == current->revision);

  auto stale_remove = etcd.remove_if("/cas/leader", *written);
  REQUIRE(stale_remove);
  CHECK_FALSE(stale_remove->succeeded);
  CHECK(value_of(etcd, "/cas/leader") == "v2");

  auto current_remove = etcd.remove_if("/cas/leader", current->revision);
  REQUIRE(current_remove);
  CHECK(current_remove->succeeded);
  CHECK(value_of(etcd, "/cas/leader") == "(absent)");
}

TEST_CASE("ha::Etcd grants, renews, inspects and revokes a lease") {
  Etcd etcd(options_for(shared_etcd().url()));
  auto lease = etcd.grant(10);
  REQUIRE_MESSAGE(lease, lease.error().message);
  CHECK(*lease != 0);

  auto time = etcd.time_to_live(*lease);
  REQUIRE(time);
  CHECK(time->found);
  CHECK(time->granted == 10);
  CHECK(time->ttl > 0);
  CHECK(time->ttl <= 10);

  auto renewed = etcd.keepalive(*lease);
  REQUIRE_MESSAGE(renewed, renewed.error().message);
  CHECK(*renewed == 10);

  REQUIRE(etcd.revoke(*lease));
  time = etcd.time_to_live(*lease);
  REQUIRE(time);
  CHECK_FALSE(time->found);

  auto gone = etcd.keepalive(*lease);
  REQUIRE_FALSE(gone);
  CHECK(gone.error().code == Errc::not_found);
  CHECK(gone.error().message.find("etcd " + shared_etcd().url() + ": ") == 0);
  CHECK(gone.error().message.find("not found") != std::string::npos);

  CHECK(etcd.revoke(*lease)); // an unknown lease is no error
}

TEST_CASE("ha::Etcd drops a key with its lease, revoked or expired") {
  Etcd etcd(options_for(shared_etcd().url()));

  auto lease = etcd.grant(30);
  REQUIRE(lease);
  REQUIRE(etcd.put("/lease/revoked", "held", *lease));
  auto held = etcd.range("/lease/revoked");
  REQUIRE(held);
  REQUIRE(held->kvs.size() == 1);
  CHECK(held->kvs[0].lease == *lease);
  REQUIRE(etcd.revoke(*lease));
  CHECK(value_of(etcd, "/lease/revoked") == "(absent)");

  // Expiry: wait for the delete event rather than for a guessed time.
  auto short_lease = etcd.grant(1);
  REQUIRE(short_lease);
  auto put = etcd.put("/lease/expired", "held", *short_lease);
  REQUIRE(put);
  bool deleted = false;
  auto watched = etcd.watch("/lease/expired", false, *put + 1, 10s, [&](const KeyValue& kv, bool is_delete) {
    deleted = is_delete && kv.key == "/lease/expired";
    return !deleted;
  });
  REQUIRE_MESSAGE(watched, watched.error().message);
  CHECK(deleted);
  CHECK(value_of(etcd, "/lease/expired") == "(absent)");
  auto gone = etcd.keepalive(*short_lease);
  REQUIRE_FALSE(gone);
  CHECK(gone.error().code == Errc::not_found);
}

TEST_CASE("ha::Etcd watch sees puts and deletes, and returns at its timeout") {
  Etcd etcd(options_for(shared_etcd().url()));
  const std::int64_t start = revision_of(etcd) + 1;
  // A value far larger than one chunk of the stream: its event arrives in
  // pieces.
  std::string large(300000, 'x');
  for (std::size_t i = 0; i < large.size(); ++i) {
    large[i] = static_cast<char>("{}\"\\ab\n"[i % 7]);
  }
  REQUIRE(etcd.put("/watch/a", "1"));
  REQUIRE(etcd.put("/watch/big", large));
  REQUIRE(etcd.remove("/watch/a"));
  REQUIRE(etcd.put("/watchx", "outside the prefix"));

  std::vector<Event> events;
  auto watched = etcd.watch("/watch/", true, start, 10s, [&](const KeyValue& kv, bool deleted) {
    events.push_back({kv, deleted});
    return events.size() < 3;
  });
  REQUIRE_MESSAGE(watched, watched.error().message);
  REQUIRE(events.size() == 3);
  CHECK(events[0].kv.key == "/watch/a");
  CHECK(events[0].kv.value == "1");
  CHECK_FALSE(events[0].deleted);
  CHECK(events[0].kv.mod_revision == start);
  CHECK(events[1].kv.key == "/watch/big");
  CHECK(events[1].kv.value == large);
  CHECK(events[2].kv.key == "/watch/a");
  CHECK(events[2].deleted);
  CHECK(events[2].kv.mod_revision == start + 2);
}

TEST_CASE("ha::Etcd watch sees a change made while it waits") {
  Etcd etcd(options_for(shared_etcd().url()));
  // Watching from the next revision, the put cannot come too early.
  const std::int64_t next = revision_of(etcd) + 1;
  std::vector<Event> live;
  auto watcher = std::async(std::launch::async, [&] {
    return etcd.watch("/live/key", false, next, 10s, [&](const KeyValue& kv, bool deleted) {
      live.push_back({kv, deleted});
      return false;
    });
  });
  REQUIRE(etcd.put("/live/key", "now"));
  REQUIRE(watcher.wait_for(10s) == std::future_status::ready);
  auto result = watcher.get();
  REQUIRE_MESSAGE(result, result.error().message);
  REQUIRE(live.size() == 1);
  CHECK(live[0].kv.value == "now");
  CHECK(live[0].kv.mod_revision == next);
  CHECK_FALSE(live[0].deleted);
}

TEST_CASE("ha::Etcd watch returns normally at its timeout") {
  Etcd etcd(options_for(shared_etcd().url()));
  std::size_t calls = 0;
  const auto began = std::chrono::steady_clock::now();
  auto quiet = etcd.watch("/quiet/key", false, 0, 300ms, [&](const KeyValue&, bool) {
    ++calls;
    return true;
  });
  const auto took = std::chrono::steady_clock::now() - began;
  REQUIRE_MESSAGE(quiet, quiet.error().message);
  CHECK(calls == 0);
  CHECK(took >= 250ms);
  CHECK(took < 5s);
}

TEST_CASE("ha::Etcd watch from a compacted revision fails with Errc::conflict") {
  Etcd etcd(options_for(shared_etcd().url()));
  auto first = etcd.put("/compacted/key", "1");
  REQUIRE(first);
  auto second = etcd.put("/compacted/key", "2");
  REQUIRE(second);
  std::string output;
  REQUIRE_MESSAGE(shared_etcd().ctl({"compact", std::to_string(*second)}, &output) == 0, output);

  std::size_t calls = 0;
  auto watched = etcd.watch("/compacted/key", false, *first, 10s, [&](const KeyValue&, bool) {
    ++calls;
    return false;
  });
  REQUIRE_FALSE(watched);
  CHECK(watched.error().code == Errc::conflict);
  CHECK(watched.error().message.find("compacted") != std::string::npos);
  CHECK(calls == 0);
}

TEST_CASE("ha::Etcd::abort interrupts a watch on another thread, and later calls work") {
  Etcd etcd(options_for(shared_etcd().url()));
  auto put = etcd.put("/abort/key", "v");
  REQUIRE(put);

  // The watch reports the put (it is running), then waits for more.
  std::promise<void> running;
  auto watcher = std::async(std::launch::async, [&] {
    bool first = true;
    return etcd.watch("/abort/key", false, *put, 30s, [&](const KeyValue&, bool) {
      if (first) {
        first = false;
        running.set_value();
      }
      return true;
    });
  });
  REQUIRE(running.get_future().wait_for(10s) == std::future_status::ready);
  etcd.abort();
  REQUIRE(watcher.wait_for(10s) == std::future_status::ready);
  auto result = watcher.get();
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::interrupted);

  CHECK(value_of(etcd, "/abort/key") == "v");
  std::size_t seen = 0;
  auto again = etcd.watch("/abort/key", false, *put, 10s, [&](const KeyValue&, bool) {
    ++seen;
    return false;
  });
  REQUIRE_MESSAGE(again, again.error().message);
  CHECK(seen == 1);
}

TEST_CASE("ha::Etcd tries the next endpoint when one is unreachable") {
  EtcdOptions options = options_for(shared_etcd().url());
  options.endpoints.insert(options.endpoints.begin(), dead_endpoint());
  Etcd etcd(options);
  CHECK(etcd.endpoint() == options.endpoints.front());

  auto put = etcd.put("/failover/key", "v");
  REQUIRE_MESSAGE(put, put.error().message);
  CHECK(etcd.endpoint() == shared_etcd().url());
  CHECK(value_of(etcd, "/failover/key") == "v");
  CHECK(etcd.endpoint() == shared_etcd().url());

  std::size_t seen = 0;
  Etcd watcher(options);
  auto watched = watcher.watch("/failover/key", false, *put, 10s, [&](const KeyValue&, bool) {
    ++seen;
    return false;
  });
  REQUIRE_MESSAGE(watched, watched.error().message);
  CHECK(seen == 1);
}

TEST_CASE("ha::Etcd fails with Errc::unreachable when no endpoint answers") {
  EtcdOptions options;
  options.endpoints = {dead_endpoint(), dead_endpoint()};
  options.timeout = 1000ms;
  Etcd etcd(options);

  const auto began = std::chrono::steady_clock::now();
  auto result = etcd.range("/key");
  CHECK(std::chrono::steady_clock::now() - began < 3s);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::unreachable);
  CHECK(result.error().message.find("etcd " + options.endpoints[0] + ": ") == 0);
  CHECK(result.error().message.find("etcd " + options.endpoints[1] + ": ") != std::string::npos);

  auto watched = etcd.watch("/key", false, 0, 10s, [](const KeyValue&, bool) { return true; });
  REQUIRE_FALSE(watched);
  CHECK(watched.error().code == Errc::unreachable);
}

TEST_CASE("ha::Etcd keeps the code and message of an error etcd answers") {
  Etcd etcd(options_for(shared_etcd().url()));
  auto put = etcd.put("/error/key", "v", 0x1234);
  REQUIRE_FALSE(put);
  CHECK(put.error().code == Errc::not_found);
  CHECK(put.error().message ==
        "etcd " + shared_etcd().url() + ": put '/error/key': etcdserver: requested lease not found");
}

TEST_CASE("ha::Etcd authenticates as an etcd user and renews a refused token") {
  test::EtcdServer server;
  std::string output;
  REQUIRE_MESSAGE(server.ctl({"user", "add", "root:pw"}, &output) == 0, output);
  REQUIRE_MESSAGE(server.ctl({"auth", "enable"}, &output) == 0, output);

  EtcdOptions options = options_for(server.url());
  Etcd anonymous(options);
  auto refused = anonymous.range("/auth/key");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::unauthorized);

  options.user = "root";
  options.password = "wrong";
  Etcd wrong(options);
  refused = wrong.range("/auth/key");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::unauthorized);
  CHECK(refused.error().message.find("authentication failed") != std::string::npos);

  options.password = "pw";
  Etcd etcd(options);
  auto put = etcd.put("/auth/key", "v");
  REQUIRE_MESSAGE(put, put.error().message);
  CHECK(value_of(etcd, "/auth/key") == "v");

  // etcd forgets its tokens when auth is turned off; turned on again, it
  // refuses the client's ("invalid auth token"), which authenticates again:
  // once for a request, once for a watch (which etcd cancels instead).
  auto forget_tokens = [&] {
    REQUIRE_MESSAGE(server.ctl({"--user=root:pw", "auth", "disable"}, &output) == 0, output);
    REQUIRE_MESSAGE(server.ctl({"auth", "enable"}, &output) == 0, output);
  };
  forget_tokens();
  CHECK(value_of(etcd, "/auth/key") == "v");
  forget_tokens();
  std::size_t seen = 0;
  auto watched = etcd.watch("/auth/key", false, *put, 10s, [&](const KeyValue& kv, bool) {
    seen += kv.value == "v" ? 1 : 0;
    return false;
  });
  REQUIRE_MESSAGE(watched, watched.error().message);
  CHECK(seen == 1);
}

TEST_CASE("ha::Etcd speaks TLS with a client certificate") {
  test::TempDir dir;
  const test::EtcdTls tls = make_certificates(dir.path);
  test::EtcdServer server(tls);
  REQUIRE(server.url().starts_with("https://"));

  EtcdOptions options = options_for(server.url());
  options.ca_file = tls.ca_file;
  options.cert_file = tls.client_cert;
  options.key_file = tls.client_key;
  Etcd etcd(options);
  auto put = etcd.put("/tls/key", "v");
  REQUIRE_MESSAGE(put, put.error().message);
  CHECK(value_of(etcd, "/tls/key") == "v");
  std::size_t seen = 0;
  auto watched = etcd.watch("/tls/key", false, *put, 10s, [&](const KeyValue&, bool) {
    ++seen;
    return false;
  });
  REQUIRE_MESSAGE(watched, watched.error().message);
  CHECK(seen == 1);

  // Without the client certificate etcd refuses the handshake; without the
  // CA we refuse etcd's certificate.
  EtcdOptions no_certificate = options;
  no_certificate.cert_file.clear();
  no_certificate.key_file.clear();
  Etcd anonymous(no_certificate);
  auto refused = anonymous.range("/tls/key");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::unreachable);

  EtcdOptions no_ca = options;
  no_ca.ca_file.clear();
  Etcd untrusting(no_ca);
  refused = untrusting.range("/tls/key");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::unreachable);
}
