#include "core/util/integrity.hpp"

namespace npme::util {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int rank(Hasher::Algorithm algorithm) {
  switch (algorithm) {
  case Hasher::Algorithm::sha1:
    return 1;
  case Hasher::Algorithm::sha256:
    return 2;
  case Hasher::Algorithm::sha512:
    return 3;
  }
  return 0;
}

std::optional<Hasher::Algorithm> algorithm_of(std::string_view name) {
  if (name == "sha512") {
    return Hasher::Algorithm::sha512;
  }
  if (name == "sha256") {
    return Hasher::Algorithm::sha256;
  }
  if (name == "sha1") {
    return Hasher::Algorithm::sha1;
  }
  return std::nullopt;
}

std::optional<std::string> hex_decode(std::string_view text) {
  if (text.size() % 2 != 0) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(text.size() / 2);
  for (std::size_t i = 0; i < text.size(); i += 2) {
    int high = hex_value(text[i]);
    int low = hex_value(text[i + 1]);
    if (high < 0 || low < 0) {
      return std::nullopt;
    }
    out.push_back(static_cast<char>(high * 16 + low));
  }
  return out;
}

std::string shown(std::string_view text) {
  constexpr std::size_t k_limit = 200;
  return text.size() <= k_limit ? std::string(text) : std::string(text.substr(0, k_limit)) + "...";
}

std::string digest_of(Hasher::Algorithm algorithm, std::string_view bytes) {
  switch (algorithm) {
  case Hasher::Algorithm::sha1:
    return sha1(bytes);
  case Hasher::Algorithm::sha256:
    return sha256(bytes);
  case Hasher::Algorithm::sha512:
    return sha512(bytes);
  }
  return {};
}

} // namespace

std::size_t digest_size(Hasher::Algorithm algorithm) {
  switch (algorithm) {
  case Hasher::Algorithm::sha1:
    return 20;
  case Hasher::Algorithm::sha256:
    return 32;
  case Hasher::Algorithm::sha512:
    return 64;
  }
  return 0;
}

std::string_view algorithm_name(Hasher::Algorithm algorithm) {
  switch (algorithm) {
  case Hasher::Algorithm::sha1:
    return "sha1";
  case Hasher::Algorithm::sha256:
    return "sha256";
  case Hasher::Algorithm::sha512:
    return "sha512";
  }
  return "";
}

std::optional<ExpectedDigest> expected_digest(std::string_view integrity, std::string_view shasum) {
  std::optional<ExpectedDigest> best;
  std::size_t pos = 0;
  while (pos < integrity.size()) {
    while (pos < integrity.size() && is_space(integrity[pos])) {
      ++pos;
    }
    const std::size_t start = pos;
    while (pos < integrity.size() && !is_space(integrity[pos])) {
      ++pos;
    }
    std::string_view entry = integrity.substr(start, pos - start);
    const auto dash = entry.find('-');
    if (entry.empty() || dash == std::string_view::npos) {
      continue;
    }
    auto algorithm = algorithm_of(entry.substr(0, dash));
    if (!algorithm) {
      continue;
    }
    std::string_view encoded = entry.substr(dash + 1);
    encoded = encoded.substr(0, encoded.find('?'));
    auto digest = base64_decode(encoded);
    if (!digest || digest->size() != digest_size(*algorithm)) {
      continue;
    }
    if (best && rank(*algorithm) < rank(best->algorithm)) {
      continue;
    }
    if (!best || rank(*algorithm) > rank(best->algorithm)) {
      best = ExpectedDigest{*algorithm, {}, std::string(integrity)};
    }
    best->digests.push_back(std::move(*digest));
  }
  if (best) {
    return best;
  }
  if (auto digest = hex_decode(shasum); digest && digest->size() == 20) {
    return ExpectedDigest{Hasher::Algorithm::sha1, {std::move(*digest)}, std::string(shasum), "dist.shasum"};
  }
  return std::nullopt;
}

bool digest_matches(const ExpectedDigest& expected, std::string_view digest) {
  bool found = false;
  for (const auto& candidate : expected.digests) {
    found = constant_time_equal(candidate, digest) || found;
  }
  return found;
}

Expected<void> check_tarball(std::string_view label, std::string_view integrity, std::string_view shasum,
                             std::string_view bytes) {
  auto expected = expected_digest(integrity, shasum);
  if (!expected) {
    return make_error(Errc::verify, "tarball of " + std::string(label) +
                                      " has neither a usable dist.integrity nor dist.shasum to verify it against");
  }
  const std::string actual = digest_of(expected->algorithm, bytes);
  if (digest_matches(*expected, actual)) {
    return {};
  }
  return make_error(Errc::verify, "tarball of " + std::string(label) + " does not match " + std::string(expected->field) +
                                    ": expected " + shown(expected->text) + ", got " +
                                    (expected->field == "dist.shasum"
                                       ? hex(actual)
                                       : std::string(algorithm_name(expected->algorithm)) + "-" + base64_encode(actual)));
}

} // namespace npme::util
