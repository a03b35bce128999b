// Boost 1.74's Asio needs <utility> before its own headers under GCC 12.
#include <utility>

#include "core/http/tls.hpp"

#include "core/util/time.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl/context.hpp>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <ctime>


namespace npme::http {

namespace {

namespace ssl = boost::asio::ssl;

// Mozilla's "intermediate" TLS 1.2 ciphers: ECDHE key exchange (forward
// secrecy) with AES-GCM or ChaCha20-Poly1305. TLS 1.3 keeps OpenSSL's
// defaults, which are all AEAD.
constexpr const char* k_tls12_ciphers =
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// OpenSSL's reasons for the last failure, oldest first; clears its queue.
std::string openssl_errors() {
  std::string out;
  while (const unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof buffer);
    const char* reason = ERR_reason_error_string(code);
    if (!out.empty()) {
      out += "; ";
    }
    out += reason != nullptr ? reason : buffer;
  }
  return out.empty() ? "unknown error" : out;
}

// Never asks a terminal for a passphrase (OpenSSL's default would): an
// encrypted key fails to load instead.
int no_passphrase(char*, int, int, void*) {
  return 0;
}

std::string subject_of(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr) {
    return "";
  }
  X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string out(data != nullptr ? data : "", size > 0 ? static_cast<std::size_t>(size) : 0);
  BIO_free(bio);
  return out;
}

std::string not_after_of(X509* cert) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) {
    return "";
  }
  return util::iso8601(std::chrono::system_clock::from_time_t(timegm(&tm)));
}

std::string serial_of(X509* cert) {
  BIGNUM* number = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  if (number == nullptr) {
    return "";
  }
  char* hex = BN_bn2hex(number);
  std::string out = hex != nullptr ? hex : "";
  OPENSSL_free(hex);
  BN_free(number);
  return out;
}

struct Loaded {
  std::shared_ptr<ssl::context> context;
  TlsCertInfo info;
};

Expected<Loaded> load_context(const std::string& cert_file, const std::string& key_file) {
  ERR_clear_error();
  auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* ctx = context->native_handle();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_set_cipher_list(ctx, k_tls12_ciphers) != 1) {
    return make_error(Errc::failed, "TLS: this OpenSSL has none of the ciphers npme allows: " + openssl_errors());
  }
  SSL_CTX_set_default_passwd_cb(ctx, &no_passphrase);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return make_error(Errc::invalid, "TLS certificate '" + cert_file +
                                       "' cannot be used (a PEM certificate chain is expected): " + openssl_errors());
  }
  EVP_PKEY* key = nullptr;
  if (BIO* bio = BIO_new_file(key_file.c_str(), "r")) {
    key = PEM_read_bio_PrivateKey(bio, nullptr, &no_passphrase, nullptr);
    BIO_free(bio);
  }
  if (key == nullptr) {
    return make_error(Errc::invalid, "TLS key '" + key_file +
                                       "' cannot be used (an unencrypted PEM private key is expected): " +
                                       openssl_errors());
  }
  const int used = SSL_CTX_use_PrivateKey(ctx, key);
  EVP_PKEY_free(key);
  if (used != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return make_error(Errc::invalid, "TLS key '" + key_file + "' does not belong to the certificate '" + cert_file +
                                       "': " + openssl_errors());
  }
  X509* cert = SSL_CTX_get0_certificate(ctx);
  Loaded out{std::move(context), {}};
  if (cert != nullptr) {
    out.info = TlsCertInfo{subject_of(cert), not_after_of(cert), serial_of(cert), util::iso8601(), "", ""};
  }
  return out;
}

} // namespace

TlsIdentity::TlsIdentity(std::string cert_file, std::string key_file)
  : m_cert_file(std::move(cert_file)), m_key_file(std::move(key_file)) {}

Expected<std::shared_ptr<TlsIdentity>> TlsIdentity::load(std::string cert_file, std::string key_file) {
  auto identity = std::make_shared<TlsIdentity>(std::move(cert_file), std::move(key_file));
  NPME_TRY(identity->reload());
  return identity;
}

Expected<TlsCertInfo> TlsIdentity::reload() {
  auto result = load_context(m_cert_file, m_key_file);
  if (!result) {
    std::lock_guard lock(m_mutex);
    m_info.reload_error = result.error().message;
    m_info.reload_error_time = util::iso8601();
    return util::Unexpected<Error>{result.error()};
  }
  auto& loaded = *result;
  std::lock_guard lock(m_mutex);
  m_context = std::move(loaded.context);
  m_info = loaded.info;
  return loaded.info;
}

std::shared_ptr<boost::asio::ssl::context> TlsIdentity::context() const {
  std::lock_guard lock(m_mutex);
  return m_context;
}

TlsCertInfo TlsIdentity::info() const {
  std::lock_guard lock(m_mutex);
  return m_info;
}

bool is_pem_certificate_file(const std::string& path) {
  BIO* bio = BIO_new_file(path.c_str(), "r");
  if (bio == nullptr) {
    ERR_clear_error();
    return false;
  }
  X509* cert = PEM_read_bio_X509(bio, nullptr, &no_passphrase, nullptr);
  BIO_free(bio);
  ERR_clear_error();
  if (cert == nullptr) {
    return false;
  }
  X509_free(cert);
  return true;
}

bool is_loopback_listen(std::string_view listen) {
  const auto colon = listen.rfind(':');
  std::string host(listen.substr(0, colon == std::string_view::npos ? listen.size() : colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") {
    return true;
  }
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

} // namespace npme::http
