#pragma once
// The body of a PUT to a package's URL, read in pieces. A publish body
// carries its tarball as one long base64 string; holding it whole (the
// body, the parsed string and the decoded bytes at once) took 5.6 times the
// tarball's size. The splitter instead passes every byte of the body
// through a small JSON scanner: the tarball attachment's "data" string is
// decoded on the way and handed to a sink (the staging file) while it is
// hashed, and everything else — the manifest, the readme, the tags — is kept
// as the body's JSON with that string left empty. Memory: the JSON without
// the tarball, plus one chunk.
//
// The tarball attachment is the string at `_attachments.<key>.data` whose
// key ends in ".tgz"; parse_publish() then checks that key against the
// package and version. Provenance attachments ("*.sigstore") and every
// other string stay in the JSON.

#include "core/util/crypto.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace npme::registry {

// What was taken out of a publish body.
struct TarballDigest {
  std::uint64_t size = 0;
  std::string sha512; // raw digests of the decoded bytes
  std::string sha1;
};

// A PUT body once read: its JSON, and the tarball attachment's data when it
// had one ("data" is then "" in `json`).
struct PutBody {
  nlohmann::json json;
  std::string attachment; // the key in "_attachments" whose data was taken out; "" when none
  TarballDigest tarball;
};

class BodySplitter {
public:
  // Receives the decoded tarball in pieces. A failure (a full disk) stops
  // the split with that error.
  using Sink = std::function<Expected<void>(std::string_view bytes)>;

  explicit BodySplitter(Sink sink);
  ~BodySplitter();
  BodySplitter(const BodySplitter&) = delete;
  BodySplitter& operator=(const BodySplitter&) = delete;

  // Takes the next piece of the body. Errc::invalid when the tarball's data
  // is not base64 or a second tarball attachment starts; the sink's error
  // when it fails.
  Expected<void> feed(std::string_view bytes);
  // Ends the body: Errc::invalid when the JSON is not valid (or nested too
  // deep), or the tarball's data ended where base64 may not.
  Expected<PutBody> finish();

private:
  struct State;
  std::unique_ptr<State> m_state;
};

// Splits the whole body `bytes` (a body small enough to have been read
// into memory) with `sink`.
Expected<PutBody> split_body(std::string_view bytes, const BodySplitter::Sink& sink);

} // namespace npme::registry
