#include "cmd/common.hpp"

#include <cstdlib>
#include <iostream>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace npme::cmd {

namespace {

// The first browser launcher this machine has: $BROWSER, xdg-open,
// sensible-browser, x-www-browser; "" when none.
std::string find_browser() {
  std::vector<std::string> candidates;
  if (const char* browser = std::getenv("BROWSER"); browser != nullptr && *browser != '\0') {
    candidates.emplace_back(browser);
  }
  for (const char* name : {"xdg-open", "sensible-browser", "x-www-browser"}) {
    candidates.emplace_back(name);
  }
  const char* path = std::getenv("PATH");
  for (const auto& candidate : candidates) {
    if (candidate.find('/') != std::string::npos) {
      if (::access(candidate.c_str(), X_OK) == 0) {
        return candidate;
      }
      continue;
    }
    std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
      const auto end = dirs.find(':', start);
      const std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
      const std::string full = (dir.empty() ? "." : dir) + "/" + candidate;
      if (::access(full.c_str(), X_OK) == 0) {
        return full;
      }
      if (end == std::string::npos) {
        break;
      }
      start = end + 1;
    }
  }
  return "";
}

} // namespace

void add_console(CLI::App& app, Globals& globals, Action& action) {
  auto* sub = app.add_subcommand("console", "Print the admin console's URL (the admin port); --open starts a browser");
  auto open = std::make_shared<bool>(false);
  sub->add_flag("--open", *open, "Open the console in a browser, where one exists");
  sub->callback([&globals, &action, open] {
    action = [&globals, open]() -> Expected<void> {
      const std::string url = admin_url(globals) + "/";
      if (globals.json) {
        print_json({{"url", url}});
      } else {
        std::cout << url << "\n";
      }
      if (!*open) {
        if (!globals.quiet && !globals.json) {
          std::cerr << "npme: sign in with the admin token (npme settings get admin.token --reveal)\n";
        }
        return {};
      }
      const std::string browser = find_browser();
      if (browser.empty()) {
        return make_error(Errc::failed, "no browser found ($BROWSER, xdg-open, sensible-browser, x-www-browser): "
                                        "open " + url + " yourself");
      }
      // The browser runs on by itself; its own output stays out of ours.
      const pid_t pid = ::fork();
      if (pid < 0) {
        return make_error(Errc::failed, "cannot start " + browser);
      }
      if (pid == 0) {
        ::setsid();
        const int null_fd = ::open("/dev/null", O_WRONLY);
        if (null_fd >= 0) {
          ::dup2(null_fd, STDOUT_FILENO);
          ::dup2(null_fd, STDERR_FILENO);
        }
        ::execl(browser.c_str(), browser.c_str(), url.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
      }
      if (!globals.quiet && !globals.json) {
        std::cerr << "npme: opened " << url << " with " << browser << "\n";
      }
      return {};
    };
  });
}

} // namespace npme::cmd
