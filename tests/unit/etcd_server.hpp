#pragma once
// A real etcd (/usr/bin/etcd, Debian's etcd-server) for the unit tests of
// core/ha: one member on free ports of 127.0.0.1 with a scratch data
// directory, ready once its /health answers, stopped by the destructor
// (SIGTERM, SIGKILL after 5 s). It also dies with the test process
// (PR_SET_PDEATHSIG), so a crashed test leaves no etcd behind.

#include "core/http/client.hpp"
#include "tests/unit/temp_dir.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace npme::test {

// A TCP port of 127.0.0.1 that was free a moment ago: bound as port 0, read
// back, closed.
inline std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    throw std::runtime_error("cannot open a socket");
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t size = sizeof(address);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0;
  ::close(fd);
  if (!ok) {
    throw std::runtime_error("cannot bind a free port on 127.0.0.1");
  }
  return ntohs(address.sin_port);
}

// Starts `argv` (argv[0] a path) with stdin from /dev/null and stdout and
// stderr appended to `log`; its pid. With `die_with_parent`, the child gets
// SIGKILL when this thread ends.
inline pid_t spawn(const std::vector<std::string>& argv, const std::filesystem::path& log, bool die_with_parent) {
  // Everything the child touches is made before fork: between fork and exec
  // only async-signal-safe calls are allowed.
  std::vector<char*> args;
  for (const auto& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  const std::string log_path = log.string();
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    throw std::runtime_error("cannot fork for " + argv.front());
  }
  if (pid == 0) {
    if (die_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent)) {
      ::_exit(126);
    }
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in < 0 || out < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(out, 2) < 0) {
      ::_exit(126);
    }
    // The test's own sockets and files are none of the child's business.
    ::close_range(3, ~0U, 0);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

// Runs `argv` to its end; its exit status (-1: killed by a signal), its
// output in `output` when given.
inline int run(const std::vector<std::string>& argv, std::string* output = nullptr) {
  TempDir dir;
  const auto log = dir.path / "output";
  pid_t pid = spawn(argv, log, true);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (output != nullptr) {
    std::ifstream in(log);
    output->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// TLS of a test etcd: its certificate for 127.0.0.1, and the CA whose
// client certificates it requires (--client-cert-auth); the client
// certificate is what the readiness probe presents.
struct EtcdTls {
  std::string ca_file;
  std::string server_cert;
  std::string server_key;
  std::string client_cert;
  std::string client_key;
};

class EtcdServer {
public:
  explicit EtcdServer(std::optional<EtcdTls> tls = std::nullopt) : m_tls(std::move(tls)) {
    const std::string scheme = m_tls ? "https" : "http";
    m_url = scheme + "://127.0.0.1:" + std::to_string(free_port());
    const std::string peer = "http://127.0.0.1:" + std::to_string(free_port());
    std::vector<std::string> argv = {"/usr/bin/etcd", "--name", "default", "--data-dir", (m_dir.path / "data").string(),
                                     "--listen-client-urls", m_url, "--advertise-client-urls", m_url,
                                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                     "--initial-cluster", "default=" + peer,
                                     // A single member elects itself after one election timeout: keep it
                                     // short so the tests do not wait a second for each etcd. Leases have
                                     // a minimum of 1.5 election timeouts, so ttl 1 stays 1 s.
                                     "--heartbeat-interval", "10", "--election-timeout", "100"};
    if (m_tls) {
      argv.insert(argv.end(), {"--cert-file", m_tls->server_cert, "--key-file", m_tls->server_key, "--client-cert-auth",
                               "--trusted-ca-file", m_tls->ca_file});
    }
    m_pid = spawn(argv, log_path(), true);
    try {
      wait_ready();
    } catch (...) {
      stop();
      throw;
    }
  }

  ~EtcdServer() { stop(); }
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;

  // The client URL: "http://127.0.0.1:<port>" ("https" with TLS).
  const std::string& url() const { return m_url; }

  // Runs etcdctl against this etcd (with the client certificate under TLS)
  // with `args`; its exit status, its output in `output`.
  int ctl(const std::vector<std::string>& args, std::string* output = nullptr) const {
    std::vector<std::string> argv = {"/usr/bin/etcdctl", "--endpoints=" + m_url, "--dial-timeout=5s"};
    if (m_tls) {
      argv.insert(argv.end(),
                  {"--cacert=" + m_tls->ca_file, "--cert=" + m_tls->client_cert, "--key=" + m_tls->client_key});
    }
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, output);
  }

  // What etcd printed, for a failure's message.
  std::string log() const {
    std::ifstream in(log_path());
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

private:
  std::filesystem::path log_path() const { return m_dir.path / "etcd.log"; }

  void wait_ready() {
    http::ClientOptions options;
    options.timeout = std::chrono::milliseconds(1000);
    if (m_tls) {
      options.ca_file = m_tls->ca_file;
      options.cert_file = m_tls->client_cert;
      options.key_file = m_tls->client_key;
    }
    http::Client client(options);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
        m_pid = -1;
        throw std::runtime_error("etcd exited at start:\n" + log());
      }
      // /health says "true" once the member has a leader and serves.
      auto response = client.request("GET", m_url + "/health");
      if (response && response->status == 200 && response->body.find("\"true\"") != std::string::npos) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("etcd at " + m_url + " not ready within 20 s:\n" + log());
  }

  void stop() {
    if (m_pid <= 0) {
      return;
    }
    ::kill(m_pid, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    int status = 0;
    while (::waitpid(m_pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    m_pid = -1;
  }

  TempDir m_dir;
  std::optional<EtcdTls> m_tls;
  std::string m_url;
  pid_t m_pid = -1;
};

} // namespace npme::test
