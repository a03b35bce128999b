// What a run found, as one line per defect, a summary and JSON.

#include "core/doctor/doctor.hpp"

#include <algorithm>

namespace npme::doctor {

namespace {

using nlohmann::json;

// "1 package", "2 packages".
std::string count(std::int64_t n, std::string_view noun) {
  return std::to_string(n) + " " + std::string(noun) + (n == 1 ? "" : "s");
}

json text_or_null(const std::string& text) {
  return text.empty() ? json(nullptr) : json(text);
}

} // namespace

std::int64_t Report::remaining() const {
  return static_cast<std::int64_t>(
    std::count_if(defects.begin(), defects.end(), [](const Defect& defect) { return !defect.repaired; }));
}

std::int64_t Report::repaired() const {
  return static_cast<std::int64_t>(defects.size()) - remaining();
}

std::int64_t Report::lost() const {
  return static_cast<std::int64_t>(
    std::count_if(defects.begin(), defects.end(), [](const Defect& defect) { return defect.lost; }));
}

std::string Report::summary() const {
  std::string out = "checked " + count(counts.packages, "package") + ", " + count(counts.versions, "version") +
                    " and " + count(counts.tarballs, "tarball") + " (" + std::to_string(counts.hashed) +
                    " hashed in full)";
  if (counts.unrecorded > 0) {
    out += ", " + std::to_string(counts.unrecorded) + " without a record";
    if (repair) {
      out += " (" + std::to_string(counts.records_written) + " written)";
    }
  }
  if (defects.empty()) {
    out += "; no defects";
  } else {
    out += "; " + count(static_cast<std::int64_t>(defects.size()), "defect") + ": " + std::to_string(repaired()) +
           " repaired, " + std::to_string(remaining()) + " remaining";
    if (lost() > 0) {
      out += " (" + std::to_string(lost()) + " lost)";
    }
  }
  for (const auto& skip : skipped) {
    out += "; skipped " + skip;
  }
  return out;
}

json Report::to_json() const {
  json list = json::array();
  for (const auto& defect : defects) {
    list.push_back({{"kind", defect.kind},
                    {"id", text_or_null(defect.id)},
                    {"path", text_or_null(defect.path)},
                    {"detail", defect.detail},
                    {"repaired", defect.repaired},
                    {"lost", defect.lost},
                    {"action", text_or_null(defect.action)}});
  }
  return {{"ok", remaining() == 0},
          {"offline", offline},
          {"full", full},
          {"repair", repair},
          {"defects", list},
          {"counts",
           {{"packages", counts.packages},
            {"versions", counts.versions},
            {"tarballs", counts.tarballs},
            {"tarball_bytes", counts.tarball_bytes},
            {"hashed", counts.hashed},
            {"unrecorded", counts.unrecorded},
            {"records_written", counts.records_written},
            {"absent_lazy", counts.absent_lazy},
            {"files", counts.files},
            {"defects", static_cast<std::int64_t>(defects.size())},
            {"repaired", repaired()},
            {"remaining", remaining()},
            {"lost", lost()}}},
          {"quarantine", text_or_null(quarantine)},
          {"skipped", skipped},
          {"started", started},
          {"finished", finished},
          {"seconds", seconds},
          {"summary", summary()}};
}

std::string defect_line(const json& defect) {
  const auto text = [&](const char* key) {
    const auto it = defect.find(key);
    return it != defect.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string subject = text("id");
  if (const std::string path = text("path"); !path.empty()) {
    subject += (subject.empty() ? "" : " ") + path;
  }
  std::string line = text("kind") + " " + (subject.empty() ? "-" : subject) + ": " + text("detail");
  if (const std::string action = text("action"); !action.empty()) {
    line += defect.value("repaired", false) ? "; repaired: " + action : "; " + action;
  }
  return line;
}

} // namespace npme::doctor
