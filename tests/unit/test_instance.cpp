#include "core/admin/client.hpp"
#include "core/http/client.hpp"
#include "core/instance/instance.hpp"
#include "core/hostdirs/lock.hpp"
#include "core/instance/offline.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace npme;
using nlohmann::json;

namespace {

using test::TempDir;

bool is_hex(const std::string& text) {
  return !text.empty() && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// `npme serve` on a thread of its own, stopped with a SIGTERM sent to that
// thread (serve() blocks the stop signals in its thread and waits for them
// there; no other thread of the test sees the signal).
class ServeThread {
public:
  explicit ServeThread(const settings::Layout& layout) {
    instance::ServeOptions options{layout, "127.0.0.1:0", "127.0.0.1:0"};
    m_thread = std::thread([this, options] {
      auto result = instance::serve(options, [this](const std::string& line) { log(line); });
      {
        std::lock_guard lock(m_mutex);
        if (!m_listening_set) {
          m_listening_set = true;
          m_listening.set_value(false);
        }
      }
      m_result.set_value(std::move(result));
    });
  }

  // A test that failed half-way still stops its instance (no assertion here).
  ~ServeThread() {
    if (m_thread.joinable()) {
      ::pthread_kill(m_thread.native_handle(), SIGTERM);
      m_thread.join();
    }
  }

  // Waits until the instance listens (true) or serve() returned first (false).
  bool wait_listening() {
    auto future = m_listening.get_future();
    REQUIRE(future.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    return future.get();
  }

  // SIGTERM to the serving thread; returns what serve() returned.
  Expected<void> stop() {
    ::pthread_kill(m_thread.native_handle(), SIGTERM);
    return join();
  }

  // Waits for serve() to return (it must within 60 s).
  Expected<void> join() {
    auto future = m_result.get_future();
    REQUIRE(future.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    m_thread.join();
    return future.get();
  }

  std::vector<std::string> lines() {
    std::lock_guard lock(m_mutex);
    return m_lines;
  }

private:
  void log(const std::string& line) {
    std::lock_guard lock(m_mutex);
    m_lines.push_back(line);
    if (line.starts_with("registry listening on ") && !m_listening_set) {
      m_listening_set = true;
      m_listening.set_value(true);
    }
  }

  std::mutex m_mutex;
  std::vector<std::string> m_lines;
  bool m_listening_set = false;
  std::promise<bool> m_listening;
  std::promise<Expected<void>> m_result;
  std::thread m_thread;
};

} // namespace

TEST_CASE("instance::instance_id makes an id once and keeps it") {
  TempDir dir;
  auto first = instance::instance_id(dir.path);
  REQUIRE(first);
  CHECK(first->size() == 16);
  CHECK(is_hex(*first));
  CHECK(util::read_file(dir.path / "instance-id").value() == *first + "\n");
  auto again = instance::instance_id(dir.path);
  REQUIRE(again);
  CHECK(*again == *first);

  // An id written by hand (a restored replica keeps its own) is read back trimmed.
  REQUIRE(util::write_file_atomic(dir.path / "instance-id", "0123456789abcdef \n"));
  CHECK(instance::instance_id(dir.path).value() == "0123456789abcdef");
  // An empty file gets a new id.
  REQUIRE(util::write_file_atomic(dir.path / "instance-id", "\n"));
  auto fresh = instance::instance_id(dir.path);
  REQUIRE(fresh);
  CHECK(is_hex(*fresh));
  CHECK(*fresh != "0123456789abcdef");
}

TEST_CASE("hostdirs::Lock is exclusive, names its holder and is released on destruction") {
  TempDir dir;
  const fs::path data = dir.path / "data"; // created by acquire()
  CHECK_FALSE(hostdirs::is_locked(data));
  {
    auto held = hostdirs::Lock::acquire(data);
    REQUIRE(held);
    CHECK(hostdirs::is_locked(data));
    CHECK(util::read_file(data / "instance.lock").value() == std::to_string(::getpid()) + "\n");
    // A second holder, even in this process (a flock belongs to its open file).
    auto second = hostdirs::Lock::acquire(data);
    REQUIRE_FALSE(second);
    CHECK(second.error().code == Errc::precondition);
    CHECK(second.error().message ==
          "instance in '" + data.string() + "' is running (pid " + std::to_string(::getpid()) + "); stop it first");
  }
  CHECK_FALSE(hostdirs::is_locked(data));
  CHECK(hostdirs::Lock::acquire(data));
}

TEST_CASE("instance::read_runtime answers only while the instance holds its lock") {
  TempDir dir;
  const json runtime = {{"pid", 4242},
                        {"registry_url", "http://npm.example.com"},
                        {"listen_url", "http://127.0.0.1:8080"},
                        {"admin_url", "http://127.0.0.1:8800"}};
  REQUIRE(util::write_file_atomic(dir.path / "runtime.json", runtime.dump()));
  // Left by a killed instance: nobody holds the lock.
  CHECK_FALSE(instance::read_runtime(dir.path));

  auto lock = hostdirs::Lock::acquire(dir.path);
  REQUIRE(lock);
  auto read = instance::read_runtime(dir.path);
  REQUIRE(read);
  CHECK(read->pid == 4242);
  CHECK(read->registry_url == "http://npm.example.com");
  CHECK(read->listen_url == "http://127.0.0.1:8080");
  CHECK(read->admin_url == "http://127.0.0.1:8800");

  REQUIRE(util::write_file_atomic(dir.path / "runtime.json", "{not json"));
  CHECK_FALSE(instance::read_runtime(dir.path));
}

TEST_CASE("instance::set_settings_offline applies all or nothing, and never beside a running instance") {
  TempDir dir;
  const auto layout = settings::Layout::from_root(dir.path);
  const auto changed = instance::set_settings_offline(layout, {{"publication", "read-only"}});
  REQUIRE(changed);
  CHECK(*changed == std::vector<std::string>{"publication"});
  CHECK(settings::load(layout).value().get("publication") == "read-only");

  // One bad value: nothing of the call is written.
  const std::string before = util::read_file(layout.config_file).value();
  auto refused = instance::set_settings_offline(layout, {{"publication", "all"}, {"uplink.maxage", "-1"}});
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::invalid);
  CHECK(refused.error().message.find("uplink.maxage") != std::string::npos);
  CHECK(util::read_file(layout.config_file).value() == before);

  // Back to the default: out of the file.
  auto unset = instance::set_settings_offline(layout, {}, {"publication"});
  REQUIRE(unset);
  CHECK(*unset == std::vector<std::string>{"publication"});
  const auto loaded = settings::load(layout).value();
  CHECK_FALSE(loaded.is_set("publication"));
  CHECK(loaded.get("publication") == "all");

  auto running = hostdirs::Lock::acquire(loaded.data_dir());
  REQUIRE(running);
  auto locked_out = instance::set_settings_offline(layout, {{"publication", "read-only"}});
  REQUIRE_FALSE(locked_out);
  CHECK(locked_out.error().code == Errc::precondition);
  CHECK(settings::load(layout).value().get("publication") == "all");
}

TEST_CASE("instance::reset_follower_offline empties the sequence of a stopped replica only") {
  TempDir dir;
  const auto layout = settings::Layout::from_root(dir.path);
  REQUIRE(instance::set_settings_offline(layout, {}));
  const fs::path data = settings::load(layout).value().data_dir();
  REQUIRE(util::create_dirs(data));
  REQUIRE(replication::write_sequence(data, 42));

  auto primary = instance::reset_follower_offline(layout);
  REQUIRE_FALSE(primary);
  CHECK(primary.error().code == Errc::precondition);
  CHECK(replication::read_sequence(data).value() == 42);

  REQUIRE(instance::set_settings_offline(layout, {{"upstream.url", "http://127.0.0.1:9"}}));
  {
    auto running = hostdirs::Lock::acquire(data);
    REQUIRE(running);
    auto locked_out = instance::reset_follower_offline(layout);
    REQUIRE_FALSE(locked_out);
    CHECK(locked_out.error().code == Errc::precondition);
    CHECK(replication::read_sequence(data).value() == 42);
  }
  REQUIRE(instance::reset_follower_offline(layout));
  CHECK(util::read_file(data / "sequence").value().empty());
  CHECK(replication::read_sequence(data).value() == 0);
}

TEST_CASE("instance::serve holds the lock, answers on both ports and stops cleanly on SIGTERM") {
  TempDir dir;
  const auto layout = settings::Layout::from_root(dir.path);
  ServeThread serving(layout);
  REQUIRE(serving.wait_listening());

  // The first start created the settings file with its secrets and the directories.
  const auto config = settings::load(layout);
  REQUIRE(config);
  CHECK(config->get("admin.token").size() >= 32);
  CHECK(fs::is_directory(config->metadata_dir()));
  CHECK(fs::is_directory(config->packages_dir()));
  const fs::path data = config->data_dir();
  CHECK(hostdirs::is_locked(data));
  const auto runtime = instance::read_runtime(data);
  REQUIRE(runtime);
  CHECK(runtime->pid == ::getpid());
  CHECK(runtime->admin_url.starts_with("http://127.0.0.1:"));
  CHECK(runtime->listen_url.starts_with("http://127.0.0.1:"));
  CHECK(runtime->registry_url == runtime->listen_url); // registry.url unset: the bound address

  // A second instance on the same directories is refused by the lock.
  auto second = std::async(std::launch::async, [&layout] {
    return instance::serve(instance::ServeOptions{layout, "127.0.0.1:0", "127.0.0.1:0"}, [](const std::string&) {});
  });
  REQUIRE(second.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  auto refused = second.get();
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::precondition);

  // The admin API wires the store, the id and the follower.
  admin::Client admin(runtime->admin_url, config->get("admin.token"));
  auto status = admin.call("GET", "/status");
  REQUIRE(status);
  CHECK((*status)["instance"] == instance::instance_id(data).value());
  CHECK((*status)["role"] == "primary");
  CHECK((*status)["publication"] == "all");
  CHECK((*status)["update_seq"] == 0);
  CHECK((*status)["follower"]["state"] == "disabled");
  const json user = {{"name", "alice"}, {"password", "alice-password-1"}};
  REQUIRE(admin.call("POST", "/users", &user));
  auto after = admin.call("GET", "/status");
  REQUIRE(after);
  CHECK((*after)["update_seq"] == 1); // the user document is a change of the feed

  // The registry port: the npm protocol and the feed (with the instance's secret).
  http::Client client;
  auto ping = client.request("GET", runtime->listen_url + "/-/ping");
  REQUIRE(ping);
  CHECK(ping->status == 200);
  http::Headers with_secret;
  with_secret.add("Authorization", "Bearer " + config->get("secret"));
  auto root = client.request("GET", runtime->listen_url + "/", "", with_secret);
  REQUIRE(root);
  REQUIRE(root->status == 200);
  const auto feed_root = json::parse(root->body);
  CHECK(feed_root["instance"] == (*status)["instance"]);
  CHECK(feed_root["update_seq"] == 1);
  CHECK(feed_root["epoch"] == 1);

  REQUIRE(serving.stop());
  CHECK_FALSE(hostdirs::is_locked(data));
  CHECK_FALSE(fs::exists(data / "runtime.json"));
  const auto lines = serving.lines();
  REQUIRE(lines.size() >= 2);
  CHECK(lines[lines.size() - 2] == "stopping on SIGTERM");
  CHECK(lines.back() == "stopped");
  auto gone = admin.call("GET", "/status");
  REQUIRE_FALSE(gone);
  CHECK(gone.error().code == Errc::unreachable);
}

TEST_CASE("instance::serve refuses a bad listen address before taking the lock") {
  TempDir dir;
  const auto layout = settings::Layout::from_root(dir.path);
  auto refused = std::async(std::launch::async, [&layout] {
    return instance::serve(instance::ServeOptions{layout, "not-an-address", "127.0.0.1:0"}, [](const std::string&) {});
  });
  REQUIRE(refused.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  auto result = refused.get();
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid);
  CHECK(result.error().message.find("not-an-address") != std::string::npos);
  const fs::path data = settings::load(layout).value().data_dir();
  CHECK_FALSE(fs::exists(data / "instance.lock"));
}
