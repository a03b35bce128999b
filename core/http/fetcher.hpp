#pragma once
// The one fetcher of packuments and tarballs from other registries: a small
// pool of HTTP connections, each run by its own thread, so that at most
// `connections` requests are under way at once and nobody else's thread
// waits on the network. The follower (its upstream's documents and
// tarballs) and the uplink (public packages) both use it, and both verify
// tarballs through fetch_tarball() below.

#include "core/http/client.hpp"
#include "core/util/error.hpp"

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace npme::http {

class Fetcher {
public:
  // Opens `connections` clients with `options` (timeouts, bearer token,
  // proxy, CA file, size limit) and starts one thread per client.
  Fetcher(std::size_t connections, const ClientOptions& options);
  // Stops: queued jobs run with an aborted client (their requests fail at
  // once with Errc::interrupted), then the threads are joined.
  ~Fetcher();
  Fetcher(const Fetcher&) = delete;
  Fetcher& operator=(const Fetcher&) = delete;

  using Job = std::function<void(Client& client)>;

  // Queues `job` to run on the next free connection; returns at once.
  void post(Job job);

  // Runs every job of `jobs` on the pool and returns when all are done.
  void run_all(std::vector<Job> jobs);

  // Jobs queued together by start_all(). wait() returns once every one of
  // them has run; so does the destructor, so that the jobs never outlive
  // what they point to.
  class Group {
  public:
    ~Group();
    void wait();
    struct State;
    explicit Group(std::shared_ptr<State> state) : m_state(std::move(state)) {}
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

  private:
    std::shared_ptr<State> m_state;
  };

  // Queues every job of `jobs` and returns at once: the caller does other
  // work (a follower commits one window while the next is fetched), then
  // waits on the group.
  std::unique_ptr<Group> start_all(std::vector<Job> jobs);

  // Interrupts every transfer under way and every later one (Errc::interrupted):
  // the owner is stopping. Thread-safe.
  void abort();

  // Jobs queued or running.
  std::size_t pending() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

// What fetch_tarball() checks the bytes against: the version's dist.
struct TarballCheck {
  std::string label;     // "left-pad@1.3.0", for messages
  std::string integrity; // dist.integrity (SRI), may be empty
  std::string shasum;    // dist.shasum (sha1 hex), may be empty
};

// Downloads the tarball at `url` with `client` and checks it against
// `check` (util::check_tarball). Errc::unreachable when the server can't be
// reached, Errc::timeout, Errc::unauthorized on 401/403, Errc::not_found on
// 404, Errc::failed on other statuses, Errc::too_large past the client's
// size limit, Errc::verify on a checksum mismatch. Nothing is kept of bytes
// that fail the check.
Expected<std::string> fetch_tarball(Client& client, const std::string& url, const TarballCheck& check,
                                    const Headers& headers = {});

} // namespace npme::http
