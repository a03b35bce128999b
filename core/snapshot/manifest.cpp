// The manifest (snapshot.json), compression names and durations.

#include "core/snapshot/format.hpp"

#include "core/util/time.hpp"

#include <charconv>
#include <chrono>
#include <limits>

namespace npme::snapshot {

namespace {

using Json = nlohmann::json;

} // namespace

std::string_view compression_name(Compression compression) {
  switch (compression) {
  case Compression::zstd:
    return "zstd";
  case Compression::gzip:
    return "gzip";
  case Compression::none:
    return "none";
  }
  return "zstd";
}

Expected<Compression> parse_compression(std::string_view name) {
  for (auto c : {Compression::zstd, Compression::gzip, Compression::none}) {
    if (name == compression_name(c)) {
      return c;
    }
  }
  return make_error(Errc::usage, "invalid compression '" + std::string(name) + "': allowed are zstd, gzip, none");
}

std::string_view compression_suffix(Compression compression) {
  switch (compression) {
  case Compression::zstd:
    return ".tar.zst";
  case Compression::gzip:
    return ".tar.gz";
  case Compression::none:
    return ".tar";
  }
  return ".tar.zst";
}

nlohmann::json Manifest::to_json() const {
  Json doc = {
    {"format", "npme-snapshot"},
    {"format_version", format_version},
    {"npme_version", npme_version},
    {"created", created},
    {"instance_id", instance_id},
    {"role", role},
    {"update_seq", update_seq},
    {"sequence", sequence ? Json(*sequence) : Json(nullptr)},
    {"counts",
     {{"packages", packages}, {"versions", versions}, {"tarballs", tarballs}, {"tarball_bytes", tarball_bytes}}},
    {"compression", compression},
    {"instance_running", instance_running},
    {"reported_state", reported ? reported->to_json() : Json(nullptr)},
  };
  return doc;
}

Expected<Manifest> Manifest::from_json(std::string_view text) {
  const auto bad = [](const std::string& reason) {
    return make_error(Errc::verify, "invalid snapshot.json: " + reason);
  };
  Json doc;
  try {
    doc = Json::parse(text);
  } catch (const std::exception& e) {
    return bad(e.what());
  }
  // Not value(): it throws on a "format" of another type.
  const auto format = doc.is_object() ? doc.find("format") : doc.end();
  if (!doc.is_object() || format == doc.end() || !format->is_string() || *format != "npme-snapshot") {
    return bad("not an npme snapshot manifest");
  }
  // Numbers must be integers: get<>() casts a float, and a cast out of
  // range (1e300 to int) is undefined behaviour, not an exception.
  const auto integer = [](const Json& value) {
    if (!value.is_number_integer()) {
      throw std::invalid_argument("expected an integer, got " + std::string(value.type_name()));
    }
    return value.get<std::int64_t>();
  };
  try {
    Manifest m;
    const std::int64_t format_version = integer(doc.at("format_version"));
    if (format_version > k_format_version) {
      return make_error(Errc::verify, "snapshot format version " + std::to_string(format_version) +
                                        " is newer than this npme supports (" + std::to_string(k_format_version) +
                                        "); restore it with a newer npme");
    }
    if (format_version < 1) {
      return bad("format version " + std::to_string(format_version));
    }
    m.format_version = static_cast<int>(format_version);
    m.npme_version = doc.at("npme_version").get<std::string>();
    m.created = doc.at("created").get<std::string>();
    m.instance_id = doc.at("instance_id").get<std::string>();
    m.role = doc.at("role").get<std::string>();
    m.update_seq = integer(doc.at("update_seq"));
    if (!doc.at("sequence").is_null()) {
      m.sequence = integer(doc.at("sequence"));
    }
    const auto& counts = doc.at("counts");
    m.packages = integer(counts.at("packages"));
    m.versions = integer(counts.at("versions"));
    m.tarballs = integer(counts.at("tarballs"));
    m.tarball_bytes = integer(counts.at("tarball_bytes"));
    m.compression = doc.value("compression", "");
    m.instance_running = doc.value("instance_running", false);
    // Older snapshots lack it; it is informational, so a malformed one is dropped.
    if (auto it = doc.find("reported_state"); it != doc.end() && it->is_object()) {
      const auto& r = *it;
      ReportedState state;
      state.admin_url = r.value("admin_url", "");
      state.role = r.value("role", "");
      state.instance_id = r.value("instance_id", "");
      const auto integer_or_zero = [&r](const char* key) {
        auto member = r.find(key);
        return member != r.end() && member->is_number_integer() ? member->get<std::int64_t>() : std::int64_t{0};
      };
      state.update_seq = integer_or_zero("update_seq");
      if (auto seq = r.find("follower_sequence"); seq != r.end() && seq->is_number_integer()) {
        state.follower_sequence = seq->get<std::int64_t>();
      }
      state.follower_state = r.value("follower_state", "");
      state.epoch = integer_or_zero("epoch");
      m.reported = std::move(state);
    }
    return m;
  } catch (const std::exception& e) {
    return bad(e.what());
  }
}

std::string default_file_name(std::string_view instance_id, Compression compression,
                              std::chrono::system_clock::time_point now) {
  std::string id;
  for (char c : instance_id) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
      id += c;
    }
  }
  if (id.empty()) {
    id = "unknown";
  }
  return "npme-snapshot-" + detail::compact_utc(now) + "-" + id + std::string(compression_suffix(compression));
}

Expected<std::chrono::seconds> parse_duration(std::string_view text) {
  const auto bad = [&] {
    return make_error(Errc::usage, "invalid duration '" + std::string(text) +
                                     "': expected a number with s, m, h, d or w (\"36h\", \"7d\")");
  };
  if (text.empty()) {
    return bad();
  }
  std::int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || value < 0) {
    return bad();
  }
  const std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
  std::int64_t factor = 0;
  if (unit.empty() || unit == "s") {
    factor = 1;
  } else if (unit == "m") {
    factor = 60;
  } else if (unit == "h") {
    factor = 3600;
  } else if (unit == "d") {
    factor = 86400;
  } else if (unit == "w") {
    factor = 7 * 86400;
  } else {
    return bad();
  }
  if (value > std::numeric_limits<std::int64_t>::max() / factor) {
    return bad();
  }
  return std::chrono::seconds(value * factor);
}

} // namespace npme::snapshot
