#include "core/replication/bulk.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <optional>
#include <set>

namespace npme::replication {

namespace {

using nlohmann::json;

http::Response error(int status, const std::string& message) {
  return http::Response::json(status, json{{"error", message}}.dump());
}

// True for a path of npm's tarball layout, "name/-/file.tgz" or
// "@scope/name/-/file.tgz", with no segment that could leave the packages
// directory or reach its staging area (no empty, "." or ".." segment, none
// starting with '.', no backslash or control character).
bool is_tarball_path(std::string_view path) {
  if (path.empty() || path.size() > 1024 || !path.ends_with(".tgz")) {
    return false;
  }
  std::vector<std::string_view> segments;
  std::size_t start = 0;
  while (true) {
    const auto end = path.find('/', start);
    segments.push_back(path.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) {
      break;
    }
    start = end + 1;
  }
  for (auto segment : segments) {
    if (segment.empty() || segment.front() == '.') {
      return false;
    }
    for (unsigned char c : segment) {
      if (c < 0x20 || c == 0x7f || c == '\\') {
        return false;
      }
    }
  }
  if (segments.size() == 3) {
    return segments[1] == "-" && segments[0].front() != '@';
  }
  return segments.size() == 4 && segments[2] == "-" && segments[0].front() == '@';
}

// A regular file opened for reading, with its size.
struct OpenFile {
  int fd = -1;
  std::size_t size = 0;
  OpenFile() = default;
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  ~OpenFile() { close(); }
  void close() {
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
  }
};

// Opens the regular file `path` into `file`; false when there is none
// (symbolic links are not followed). Errc::io on other failures.
Expected<bool> open_regular(const std::filesystem::path& path, OpenFile& file) {
  // Non-blocking: a FIFO put there would otherwise hold the worker.
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (file.fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR || err == ELOOP) {
      return false;
    }
    return make_error(Errc::io, "cannot open '" + path.string() + "': " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return false;
  }
  file.size = static_cast<std::size_t>(st.st_size);
  return true;
}

// Appends the `file.size` bytes of `file` to `out`; Errc::io when the file
// is shorter than that (never half a file in an answer).
Expected<void> append_contents(const OpenFile& file, const std::filesystem::path& path, std::string& out) {
  const std::size_t start = out.size();
  out.resize(start + file.size);
  std::size_t done = 0;
  while (done < file.size) {
    const ssize_t n = ::read(file.fd, out.data() + start + done, file.size - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const std::string reason = n < 0 ? std::strerror(errno) : "file shrank while read";
      out.resize(start);
      return make_error(Errc::io, "cannot read '" + path.string() + "': " + reason);
    }
    done += static_cast<std::size_t>(n);
  }
  return {};
}

void append_header(std::string& out, const json& header) {
  out += header.dump();
  out += '\n';
}

// Reads a string array member `name` of `body` into `out`; false when it
// is present but not an array of at most k_bulk_max_items strings.
bool string_list(const json& body, const char* name, std::vector<std::string>& out) {
  auto it = body.find(name);
  if (it == body.end()) {
    return true;
  }
  if (!it->is_array() || it->size() > k_bulk_max_items) {
    return false;
  }
  for (const auto& item : *it) {
    if (!item.is_string() || item.get_ref<const std::string&>().empty()) {
      return false;
    }
    out.push_back(item.get<std::string>());
  }
  return true;
}

http::Response answer_bulk(const FeedContext& context, const http::Request& request) {
  auto body = json::parse(request.body, nullptr, false);
  BulkRequest asked;
  if (body.is_discarded() || !body.is_object() || !string_list(body, "docs", asked.docs) ||
      !string_list(body, "files", asked.files)) {
    return error(400, "_bulk: expected {\"docs\":[id,...],\"files\":[path,...]} with at most " +
                        std::to_string(k_bulk_max_items) + " non-empty strings in each");
  }
  std::string out;
  std::size_t payload = 0;
  bool full = false; // the next item would pass the cap: the rest is left out
  for (const auto& id : asked.docs) {
    auto doc = context.store.get(id);
    if (!doc) {
      return error(500, doc.error().message);
    }
    if (!*doc) {
      append_header(out, {{"kind", "missing"}, {"id", id}});
      continue;
    }
    const std::string& text = (*doc)->body;
    if (text.size() > k_bulk_max_bytes) {
      append_header(out, {{"kind", "large"}, {"id", id}});
      continue;
    }
    if (payload + text.size() > k_bulk_max_bytes) {
      full = true;
      break;
    }
    append_header(out, {{"kind", "doc"}, {"id", id}, {"length", text.size()}});
    out += text;
    payload += text.size();
  }
  // Files are opened a group at a time and the answer is sized for the
  // group before it is read: appending megabytes to a growing string would
  // copy them again at every doubling.
  constexpr std::size_t k_open_at_once = 64;
  for (std::size_t group = 0; group < asked.files.size() && !full; group += k_open_at_once) {
    const std::size_t group_end = std::min(asked.files.size(), group + k_open_at_once);
    std::deque<OpenFile> files; // one per path of the group, fd -1 when not served
    std::size_t expected = 0;
    for (std::size_t i = group; i < group_end; ++i) {
      OpenFile& file = files.emplace_back();
      expected += asked.files[i].size() + 64; // its header line
      if (!is_tarball_path(asked.files[i])) {
        continue;
      }
      auto opened = open_regular(context.store.file_path(asked.files[i]), file);
      if (!opened) {
        return error(500, opened.error().message);
      }
      if (!*opened) {
        file.close();
      } else if (file.size <= k_bulk_max_bytes) {
        expected += file.size;
      }
    }
    out.reserve(out.size() + std::min(expected, k_bulk_max_bytes - payload + (group_end - group) * 1100));
    for (std::size_t i = group; i < group_end; ++i) {
      const auto& path = asked.files[i];
      const OpenFile& file = files[i - group];
      if (file.fd < 0) {
        append_header(out, {{"kind", "missing"}, {"path", path}});
        continue;
      }
      if (file.size > k_bulk_max_bytes) {
        append_header(out, {{"kind", "large"}, {"path", path}});
        continue;
      }
      if (payload + file.size > k_bulk_max_bytes) {
        full = true;
        break;
      }
      append_header(out, {{"kind", "file"}, {"path", path}, {"length", file.size}});
      if (auto read = append_contents(file, context.store.file_path(path), out); !read) {
        return error(500, read.error().message);
      }
      payload += file.size;
    }
  }
  append_header(out, {{"kind", "end"}});
  http::Response response;
  response.status = 200;
  response.headers.set("Content-Type", std::string(k_bulk_content_type));
  response.body = std::move(out);
  return response;
}

// Parses a non-negative decimal in a JSON header's "length".
std::optional<std::size_t> frame_length(const json& header) {
  auto it = header.find("length");
  if (it == header.end() || !it->is_number_unsigned()) {
    return std::nullopt;
  }
  return it->get<std::size_t>();
}

} // namespace

void add_bulk_route(http::Router& router, const FeedContext& context) {
  // A worker answers: it reads SQLite and up to k_bulk_max_bytes of files.
  router.add(
    "POST", std::string(k_bulk_path),
    [context](http::Request& request) {
      if (!presents_secret(request, context.settings()->get("secret"))) {
        return error(401, "replication needs the instance's secret");
      }
      return answer_bulk(context, request);
    },
    http::Blocking::yes);
}

Expected<std::vector<BulkFrame>> parse_bulk(std::string_view body) {
  std::vector<BulkFrame> frames;
  std::size_t at = 0;
  auto bad = [&](const std::string& reason) {
    return make_error(Errc::invalid, "malformed bulk answer at byte " + std::to_string(at) + ": " + reason);
  };
  while (true) {
    if (at >= body.size()) {
      return bad("truncated (no end frame)");
    }
    const auto newline = body.find('\n', at);
    const std::size_t line_end = newline == std::string_view::npos ? body.size() : newline;
    if (line_end - at > k_bulk_max_header) {
      return bad("header line longer than " + std::to_string(k_bulk_max_header) + " bytes");
    }
    if (newline == std::string_view::npos) {
      return bad("truncated (header line without its end)");
    }
    auto header = json::parse(body.substr(at, line_end - at), nullptr, false);
    if (header.is_discarded() || !header.is_object() || !header.contains("kind") || !header["kind"].is_string()) {
      return bad("header line is not a JSON object with a kind");
    }
    const auto& kind = header["kind"].get_ref<const std::string&>();
    const std::size_t header_start = at;
    at = newline + 1;
    if (kind == "end") {
      if (at != body.size()) {
        return bad(std::to_string(body.size() - at) + " bytes after the end frame");
      }
      return frames;
    }
    BulkFrame frame;
    const bool has_id = header.contains("id") && header["id"].is_string();
    const bool has_path = header.contains("path") && header["path"].is_string();
    if (has_id == has_path) {
      at = header_start;
      return bad("a frame names one id or one path");
    }
    frame.is_file = has_path;
    frame.name = header[has_path ? "path" : "id"].get<std::string>();
    if (kind == "missing" || kind == "large") {
      frame.kind = kind == "missing" ? BulkFrame::Kind::missing : BulkFrame::Kind::large;
      frames.push_back(std::move(frame));
      continue;
    }
    if ((kind != "doc" || frame.is_file) && (kind != "file" || !frame.is_file)) {
      at = header_start;
      return bad("unknown frame kind '" + kind.substr(0, 32) + "'");
    }
    frame.kind = frame.is_file ? BulkFrame::Kind::file : BulkFrame::Kind::doc;
    auto length = frame_length(header);
    if (!length) {
      at = header_start;
      return bad("frame without a length");
    }
    if (*length > body.size() - at) {
      return bad("truncated (" + std::to_string(*length) + " bytes announced, " + std::to_string(body.size() - at) +
                 " left)");
    }
    frame.bytes = body.substr(at, *length);
    at += *length;
    frames.push_back(std::move(frame));
  }
}

Expected<BulkAnswer> fetch_bulk(http::Client& client, const std::string& upstream, const BulkRequest& request,
                                const http::Headers& headers) {
  const std::string url = upstream + std::string(k_bulk_path);
  const json body = {{"docs", request.docs}, {"files", request.files}};
  http::Headers sent = headers;
  sent.set("Content-Type", "application/json");
  // A hostile or broken upstream cannot make this answer unbounded: the
  // payload cap plus a header line per item and the end frame.
  const std::size_t limit =
    k_bulk_max_bytes + (request.docs.size() + request.files.size() + 1) * (k_bulk_max_header + 1);
  struct Limit {
    http::Client& client;
    std::size_t saved;
    ~Limit() { client.options().max_bytes = saved; }
  } restore{client, client.options().max_bytes};
  client.options().max_bytes = limit;
  auto response = client.request("POST", url, body.dump(), sent);
  if (!response) {
    return util::Unexpected<Error>{response.error()};
  }
  if (response->status == 404 || response->status == 405 || response->status == 501) {
    return make_error(Errc::not_found, "upstream has no bulk route (" + url + " answered " +
                                         std::to_string(response->status) + ")");
  }
  if (response->status == 401 || response->status == 403) {
    return make_error(Errc::unauthorized, "upstream refused the secret (" + std::to_string(response->status) + ")");
  }
  if (response->status != 200) {
    return make_error(Errc::failed, url + ": upstream answered " + std::to_string(response->status));
  }
  BulkAnswer answer;
  answer.body = std::make_shared<const std::string>(std::move(response->body));
  NPME_TRY_ASSIGN(answer.frames, parse_bulk(*answer.body));
  // Every frame answers something that was asked for, once.
  std::set<std::string_view> docs(request.docs.begin(), request.docs.end());
  std::set<std::string_view> files(request.files.begin(), request.files.end());
  for (const auto& frame : answer.frames) {
    auto& asked = frame.is_file ? files : docs;
    auto it = asked.find(frame.name);
    if (it == asked.end()) {
      return make_error(Errc::invalid, "malformed bulk answer: " + std::string(frame.is_file ? "file '" : "document '") +
                                         frame.name.substr(0, 256) + "' was not asked for, or came twice");
    }
    asked.erase(it);
  }
  return answer;
}

} // namespace npme::replication
