#pragma once
// A listener's TLS identity: a certificate chain and its private key, read
// from PEM files into an OpenSSL context that allows TLS 1.2 and 1.3 only,
// with forward-secret AEAD ciphers (Mozilla's "intermediate" list).
//
// reload() reads the files again into a new context and swaps it in: new
// connections use it, connections already open keep the one they started
// with (each holds its context), so a certificate renewal drops nothing.
// A reload that fails keeps the current context.

#include "core/util/error.hpp"

#include <memory>
#include <mutex>
#include <string>

namespace boost::asio::ssl {
class context;
}

namespace npme::http {

// What a loaded certificate says, for logs and `npme status`.
struct TlsCertInfo {
  std::string subject;   // "CN=registry.example.com"
  std::string not_after; // ISO 8601 UTC
  std::string serial;    // hex
  std::string loaded_at; // when this context was made (ISO 8601)
  // The last reload() that failed since the last that worked: why, and when.
  std::string reload_error;
  std::string reload_error_time;
};

class TlsIdentity {
public:
  // Loads `cert_file` (PEM: the certificate, then any intermediates) and
  // `key_file` (PEM, unencrypted). Errc::invalid naming the file and
  // OpenSSL's reason when either cannot be used or they do not match.
  static Expected<std::shared_ptr<TlsIdentity>> load(std::string cert_file, std::string key_file);

  // Reads the files again; on success new connections use them. A failure
  // is kept in info() until a reload works.
  Expected<TlsCertInfo> reload();

  // The context for a new connection.
  std::shared_ptr<boost::asio::ssl::context> context() const;
  TlsCertInfo info() const;
  const std::string& cert_file() const { return m_cert_file; }
  const std::string& key_file() const { return m_key_file; }

  TlsIdentity(std::string cert_file, std::string key_file);

private:
  std::string m_cert_file;
  std::string m_key_file;
  mutable std::mutex m_mutex;
  std::shared_ptr<boost::asio::ssl::context> m_context;
  TlsCertInfo m_info;
};

// True when `path` holds at least one PEM certificate (a CA bundle or a
// certificate chain that a client may trust).
bool is_pem_certificate_file(const std::string& path);

// True when `listen` ("host:port") accepts connections only from this
// machine: 127.0.0.0/8, ::1, "localhost". "0.0.0.0", "::" and every other
// address are not.
bool is_loopback_listen(std::string_view listen);

} // namespace npme::http
