#include "core/registry/search.hpp"

#include "core/registry/json_util.hpp"
#include "core/registry/names.hpp"

#include <algorithm>
#include <cctype>
#include <optional>

namespace npme::registry {

namespace {

using nlohmann::json;

constexpr std::size_t k_max_size = 250;

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

struct ParsedQuery {
  std::vector<std::string> words;
  std::vector<std::string> keywords;
  std::optional<std::string> scope;
  std::optional<std::string> person; // author: or maintainer:
};

std::vector<std::string> split_on(std::string_view text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto pos = text.find(separator, start);
    std::string part(text.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (!part.empty()) {
      parts.push_back(std::move(part));
    }
    if (pos == std::string_view::npos) {
      break;
    }
    start = pos + 1;
  }
  return parts;
}

ParsedQuery parse_query(std::string_view text) {
  ParsedQuery query;
  std::string normalized = lowercase(text);
  for (char& c : normalized) {
    if (c == '\t' || c == '\n' || c == '+') {
      c = ' ';
    }
  }
  for (const std::string& word : split_on(normalized, ' ')) {
    if (word.starts_with("keywords:")) {
      for (std::string& keyword : split_on(std::string_view(word).substr(9), ',')) {
        query.keywords.push_back(std::move(keyword));
      }
    } else if (word.starts_with("scope:")) {
      std::string scope = word.substr(6);
      if (!scope.empty() && scope.front() == '@') {
        scope.erase(0, 1);
      }
      query.scope = scope;
    } else if (word.starts_with("author:")) {
      query.person = word.substr(7);
    } else if (word.starts_with("maintainer:")) {
      query.person = word.substr(11);
    } else {
      query.words.push_back(word);
    }
  }
  return query;
}

std::vector<std::string> keywords_of(const json& doc) {
  std::vector<std::string> keywords;
  const json* value = member(doc, "keywords");
  if (value != nullptr && value->is_array()) {
    for (const json& keyword : *value) {
      if (keyword.is_string()) {
        keywords.push_back(keyword.get<std::string>());
      }
    }
  } else if (value != nullptr && value->is_string()) {
    keywords = split_on(value->get<std::string>(), ' ');
  }
  return keywords;
}

std::vector<std::string> people_of(const json& doc) {
  std::vector<std::string> people;
  if (const json* maintainers = member(doc, "maintainers"); maintainers != nullptr && maintainers->is_array()) {
    for (const json& maintainer : *maintainers) {
      if (auto name = string_member(maintainer, "name")) {
        people.push_back(lowercase(*name));
      }
    }
  }
  if (const json* author = member(doc, "author"); author != nullptr) {
    if (author->is_string()) {
      people.push_back(lowercase(author->get<std::string>()));
    } else if (auto name = string_member(*author, "name")) {
      people.push_back(lowercase(*name));
    }
  }
  return people;
}

// Scores `doc` against `query`; nullopt when it does not match.
std::optional<double> score(const json& doc, const ParsedQuery& query) {
  std::string name = lowercase(string_member(doc, "name").value_or(""));
  if (name.empty()) {
    return std::nullopt;
  }
  std::string bare(unscoped_name(name));
  std::string description = lowercase(string_member(doc, "description").value_or(""));
  std::vector<std::string> keywords;
  for (const std::string& keyword : keywords_of(doc)) {
    keywords.push_back(lowercase(keyword));
  }

  if (query.scope) {
    if (!is_scoped(name) || name.substr(1, name.find('/') - 1) != *query.scope) {
      return std::nullopt;
    }
  }
  for (const std::string& wanted : query.keywords) {
    if (std::find(keywords.begin(), keywords.end(), wanted) == keywords.end()) {
      return std::nullopt;
    }
  }
  if (query.person) {
    auto people = people_of(doc);
    if (std::find(people.begin(), people.end(), *query.person) == people.end()) {
      return std::nullopt;
    }
  }

  double total = query.keywords.empty() && !query.scope && !query.person ? 0.0 : 10.0;
  for (const std::string& word : query.words) {
    // A name match outweighs keywords, which outweigh the description; the
    // parts add up so that a package matching in several places ranks first.
    double name_score = 0.0;
    if (name == word || bare == word) {
      name_score = 100.0;
    } else if (name.starts_with(word) || bare.starts_with(word)) {
      name_score = 40.0;
    } else if (auto pos = name.find(word); pos != std::string::npos) {
      // "pad" in "left-pad" is a word of the name, in "ipad" only letters.
      char before = name[pos - 1];
      name_score = (before == '-' || before == '_' || before == '.' || before == '/') ? 30.0 : 20.0;
    }
    double keyword_score = 0.0;
    for (const std::string& keyword : keywords) {
      if (keyword == word) {
        keyword_score = std::max(keyword_score, 15.0);
      } else if (keyword.find(word) != std::string::npos) {
        keyword_score = std::max(keyword_score, 8.0);
      }
    }
    double description_score = description.find(word) != std::string::npos ? 5.0 : 0.0;
    double word_score = name_score + keyword_score + description_score;
    if (word_score == 0.0) {
      return std::nullopt;
    }
    total += word_score;
  }
  return total;
}

json person_entry(const json& entry) {
  json out = json::object();
  if (auto name = string_member(entry, "name")) {
    out["username"] = *name;
  }
  if (auto email = string_member(entry, "email")) {
    out["email"] = *email;
  }
  return out;
}

std::optional<std::string> url_of(const json& doc, std::string_view key) {
  const json* value = member(doc, key);
  if (value == nullptr) {
    return std::nullopt;
  }
  if (value->is_string()) {
    return value->get<std::string>();
  }
  return string_member(*value, "url");
}

json package_entry(const json& doc) {
  std::string name = string_member(doc, "name").value_or("");
  json out = json::object();
  out["name"] = name;
  out["scope"] = is_scoped(name) ? name.substr(1, name.find('/') - 1) : "unscoped";
  std::string version;
  if (const json* tags = member(doc, "dist-tags"); tags != nullptr) {
    version = string_member(*tags, "latest").value_or("");
  }
  out["version"] = version;
  out["description"] = string_member(doc, "description").value_or("");
  out["keywords"] = keywords_of(doc);
  if (const json* time = member(doc, "time"); time != nullptr) {
    auto date = string_member(*time, version);
    if (!date) {
      date = string_member(*time, "modified");
    }
    if (date) {
      out["date"] = *date;
    }
  }
  json links = json::object();
  for (const char* key : {"homepage", "repository", "bugs"}) {
    if (auto url = url_of(doc, key)) {
      links[key] = *url;
    }
  }
  out["links"] = std::move(links);
  if (const json* author = member(doc, "author"); author != nullptr) {
    out["author"] = author->is_string() ? json{{"name", *author}} : *author;
  }
  const json* manifest = nullptr;
  if (const json* versions = member(doc, "versions"); versions != nullptr) {
    manifest = member(*versions, version);
  }
  if (manifest != nullptr) {
    if (const json* publisher = member(*manifest, "_npmUser"); publisher != nullptr) {
      out["publisher"] = person_entry(*publisher);
    }
  }
  json maintainers = json::array();
  if (const json* list = member(doc, "maintainers"); list != nullptr && list->is_array()) {
    for (const json& maintainer : *list) {
      maintainers.push_back(person_entry(maintainer));
    }
  }
  out["maintainers"] = std::move(maintainers);
  return out;
}

} // namespace

json search_packages(const std::vector<json>& docs, const SearchQuery& query, const std::string& now) {
  ParsedQuery parsed = parse_query(query.text);
  std::vector<std::pair<double, const json*>> matches;
  for (const json& doc : docs) {
    if (auto value = score(doc, parsed)) {
      matches.emplace_back(*value, &doc);
    }
  }
  std::sort(matches.begin(), matches.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) {
      return a.first > b.first;
    }
    return string_member(*a.second, "name").value_or("") < string_member(*b.second, "name").value_or("");
  });
  double best = matches.empty() ? 1.0 : std::max(matches.front().first, 1.0);
  std::size_t size = std::min(query.size, k_max_size);
  json objects = json::array();
  for (std::size_t i = query.from; i < matches.size() && objects.size() < size; ++i) {
    double final_score = matches[i].first / best;
    json object = json::object();
    object["package"] = package_entry(*matches[i].second);
    object["score"] = {{"final", final_score},
                       {"detail", {{"quality", final_score}, {"popularity", final_score}, {"maintenance", final_score}}}};
    object["searchScore"] = matches[i].first;
    objects.push_back(std::move(object));
  }
  return {{"objects", std::move(objects)}, {"total", matches.size()}, {"time", now}};
}

} // namespace npme::registry
