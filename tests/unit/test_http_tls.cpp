// TLS of the server (core/http/tls): loading and reloading a certificate and
// key, the errors that say which file is wrong, HTTPS answered by the server
// and checked by the client, and which listen addresses are loopback.
#include "core/http/client.hpp"
#include "core/http/server.hpp"
#include "core/http/tls.hpp"
#include "core/util/fs.hpp"
#include "temp_dir.hpp"

#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

using namespace npme;
using namespace npme::http;

namespace {

struct Pem {
  std::string cert;
  std::string key;
};

std::string to_pem(const std::function<int(BIO*)>& write) {
  BIO* bio = BIO_new(BIO_s_mem());
  REQUIRE(write(bio) == 1);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<std::size_t>(size));
  BIO_free(bio);
  return out;
}

// A self-signed P-256 certificate for localhost and 127.0.0.1.
Pem make_certificate(const char* common_name, long serial) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  REQUIRE(key != nullptr);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name), -1, -1,
                             0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &context, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
  REQUIRE(san != nullptr);
  X509_add_ext(cert, san, -1);
  X509_EXTENSION_free(san);
  REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
  Pem out{to_pem([&](BIO* bio) { return PEM_write_bio_X509(bio, cert); }),
          to_pem([&](BIO* bio) { return PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr); })};
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

std::string write(const test::TempDir& dir, const std::string& name, const std::string& content) {
  const auto path = (dir.path / name).string();
  REQUIRE(util::write_file_atomic(path, content));
  return path;
}

} // namespace

TEST_CASE("TLS identity: loads a certificate and its key, and says which file is wrong") {
  test::TempDir dir;
  const Pem one = make_certificate("registry.test", 0x1111);
  const Pem two = make_certificate("registry.test", 0x2222);
  const auto cert = write(dir, "cert.pem", one.cert);
  const auto key = write(dir, "key.pem", one.key);

  auto identity = TlsIdentity::load(cert, key);
  REQUIRE(identity);
  const auto info = (*identity)->info();
  CHECK(info.subject == "CN=registry.test");
  CHECK(info.serial == "1111");
  CHECK(info.not_after.size() == 24); // ISO 8601 with milliseconds
  CHECK(info.reload_error.empty());

  SUBCASE("a missing certificate") {
    auto missing = TlsIdentity::load((dir.path / "none.pem").string(), key);
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == Errc::invalid);
    CHECK(missing.error().message.find("none.pem' cannot be used") != std::string::npos);
  }
  SUBCASE("a key that is not a key") {
    auto garbage = TlsIdentity::load(cert, write(dir, "garbage.pem", "not a key\n"));
    REQUIRE_FALSE(garbage);
    CHECK(garbage.error().message.find("garbage.pem' cannot be used (an unencrypted PEM private key") !=
          std::string::npos);
  }
  SUBCASE("the key of another certificate") {
    auto other = TlsIdentity::load(cert, write(dir, "other.key", two.key));
    REQUIRE_FALSE(other);
    CHECK(other.error().message.find("does not belong to the certificate") != std::string::npos);
  }
  SUBCASE("an encrypted key fails instead of asking a terminal for its passphrase") {
    EVP_PKEY* pkey = nullptr;
    {
      BIO* bio = BIO_new_mem_buf(one.key.data(), static_cast<int>(one.key.size()));
      pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
      BIO_free(bio);
    }
    REQUIRE(pkey != nullptr);
    const std::string encrypted = to_pem([&](BIO* bio) {
      return PEM_write_bio_PKCS8PrivateKey(bio, pkey, EVP_aes_256_cbc(), "passphrase", 10, nullptr, nullptr);
    });
    EVP_PKEY_free(pkey);
    auto locked = TlsIdentity::load(cert, write(dir, "encrypted.key", encrypted));
    REQUIRE_FALSE(locked);
    CHECK(locked.error().message.find("cannot be used") != std::string::npos);
  }
  SUBCASE("reload: a new certificate for new connections; a broken one keeps the old and is remembered") {
    const auto before = (*identity)->context();
    write(dir, "cert.pem", two.cert);
    write(dir, "key.pem", two.key);
    auto reloaded = (*identity)->reload();
    REQUIRE(reloaded);
    CHECK(reloaded->serial == "2222");
    CHECK((*identity)->context() != before);

    const auto good = (*identity)->context();
    write(dir, "cert.pem", "broken\n");
    auto failed = (*identity)->reload();
    REQUIRE_FALSE(failed);
    CHECK((*identity)->context() == good);
    CHECK((*identity)->info().serial == "2222");
    CHECK((*identity)->info().reload_error.find("cert.pem' cannot be used") != std::string::npos);
    CHECK_FALSE((*identity)->info().reload_error_time.empty());

    write(dir, "cert.pem", two.cert);
    REQUIRE((*identity)->reload());
    CHECK((*identity)->info().reload_error.empty());
  }
}

TEST_CASE("TLS server: HTTPS answered, the client checks the certificate, plain HTTP gets nothing") {
  test::TempDir dir;
  const Pem pem = make_certificate("localhost", 0x42);
  const auto cert = write(dir, "cert.pem", pem.cert);
  const auto key = write(dir, "key.pem", pem.key);
  CHECK(is_pem_certificate_file(cert));
  CHECK_FALSE(is_pem_certificate_file(key));
  CHECK_FALSE(is_pem_certificate_file((dir.path / "none.pem").string()));

  auto router = std::make_shared<Router>();
  router->add("GET", "/ping", [](Request&) { return Response::json(200, R"({"pong":true})"); });
  router->add(
    "POST", "/echo", [](Request& request) { return Response::json(200, request.body); }, Blocking::yes);
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.io_threads = 1;
  options.worker_threads = 1;
  auto identity = TlsIdentity::load(cert, key);
  REQUIRE(identity);
  options.tls = *identity;
  Server server(options, router);
  REQUIRE(server.start());
  const std::string base = "https://127.0.0.1:" + std::to_string(server.port());

  ClientOptions trusted;
  trusted.ca_file = cert;
  Client client(trusted);
  for (int i = 0; i < 3; ++i) { // one kept-alive connection
    auto response = client.request("GET", base + "/ping");
    REQUIRE(response);
    CHECK(response->status == 200);
    CHECK(response->body == R"({"pong":true})");
  }
  const std::string body(200000, 'x');
  auto echoed = client.request("POST", base + "/echo", body);
  REQUIRE(echoed);
  CHECK(echoed->body == body);

  Client stranger;
  auto refused = stranger.request("GET", base + "/ping");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::unreachable);
  CHECK(refused.error().message.find("TLS certificate is not trusted") != std::string::npos);

  Client plain;
  auto cleartext = plain.request("GET", "http://127.0.0.1:" + std::to_string(server.port()) + "/ping");
  CHECK_FALSE(cleartext);
  // Still serving after a client that spoke no TLS.
  auto again = client.request("GET", base + "/ping");
  REQUIRE(again);
  CHECK(again->status == 200);
  server.stop();
}

TEST_CASE("loopback listen addresses") {
  CHECK(is_loopback_listen("127.0.0.1:8800"));
  CHECK(is_loopback_listen("127.1.2.3:0"));
  CHECK(is_loopback_listen("[::1]:8800"));
  CHECK(is_loopback_listen("localhost:8800"));
  CHECK_FALSE(is_loopback_listen("0.0.0.0:8800"));
  CHECK_FALSE(is_loopback_listen("[::]:8800"));
  CHECK_FALSE(is_loopback_listen(":8800"));
  CHECK_FALSE(is_loopback_listen("10.0.0.5:8800"));
  CHECK_FALSE(is_loopback_listen("registry.example.com:8800"));
}
