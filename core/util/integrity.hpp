#pragma once
// The one parser of npm's tarball checksums: `dist.integrity` (Subresource
// Integrity, "sha512-<base64>" entries separated by whitespace) and the
// older `dist.shasum` (sha1 hex). Publish, the follower, the uplink and
// snapshots all decide "do these bytes belong to this version" here, so that
// a document one of them accepts is never refused by another.

#include "core/util/crypto.hpp"
#include "core/util/error.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace npme::util {

// What a version's dist says its tarball hashes to: the digests of the
// strongest algorithm found. As in SRI, weaker algorithms are ignored when
// a stronger one is present, and bytes match when any digest of that
// algorithm matches.
struct ExpectedDigest {
  Hasher::Algorithm algorithm = Hasher::Algorithm::sha512;
  std::vector<std::string> digests; // raw bytes, each of the algorithm's size
  std::string text;                 // as written in the document, for messages
  std::string_view field = "dist.integrity"; // or "dist.shasum": where the digests came from
};

// Returns the digests that `integrity` (SRI text; may be empty) and
// `shasum` (sha1 hex; may be empty) demand: the strongest of sha512, sha256
// and sha1 in `integrity`, else the sha1 of `shasum`. Entries with other
// algorithms, bad base64 or a wrong digest size are skipped; options after
// '?' are ignored. nullopt when nothing usable is left: such bytes cannot be
// verified.
std::optional<ExpectedDigest> expected_digest(std::string_view integrity, std::string_view shasum = {});

// The size of a raw digest of `algorithm` (20, 32, 64).
std::size_t digest_size(Hasher::Algorithm algorithm);

// The SRI name of `algorithm` ("sha512").
std::string_view algorithm_name(Hasher::Algorithm algorithm);

// True when raw `digest` is one of `expected`'s digests (constant time per digest).
bool digest_matches(const ExpectedDigest& expected, std::string_view digest);

// Checks `bytes` against `integrity` and `shasum` as expected_digest()
// reads them. Errc::verify naming `label` ("left-pad@1.3.0") and both values
// on a mismatch, or when there is nothing to check against.
Expected<void> check_tarball(std::string_view label, std::string_view integrity, std::string_view shasum,
                             std::string_view bytes);

} // namespace npme::util
