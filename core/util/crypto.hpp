#pragma once
// Hashing, encoding and randomness on OpenSSL's libcrypto, and a fast
// non-cryptographic checksum (xxHash's XXH3).

#include "core/util/error.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace npme::util {

// Returns the raw SHA-1 / SHA-256 / SHA-512 digest of `data`.
std::string sha1(std::string_view data);
std::string sha256(std::string_view data);
std::string sha512(std::string_view data);

// Returns the 64-bit XXH3 of `data`: some 20 GB/s, for telling accidental
// changes of bytes apart (not for anything an adversary may choose).
std::uint64_t xxh3(std::string_view data);

// XXH3 fed in pieces of any size: the same value as xxh3() of the whole.
class Checksum {
public:
  Checksum();
  ~Checksum();
  Checksum(const Checksum&) = delete;
  Checksum& operator=(const Checksum&) = delete;
  void update(std::string_view data);
  std::uint64_t value() const;

private:
  struct State;
  std::unique_ptr<State> m_state;
};

// Returns `bytes` as lowercase hex.
std::string hex(std::string_view bytes);

// The value of hex digit `c` (either case), or -1.
int hex_value(char c);

// Returns `bytes` in standard base64 with padding.
std::string base64_encode(std::string_view bytes);

// Decodes standard base64 (padding optional, no whitespace); fails with
// Errc::invalid on any other character.
Expected<std::string> base64_decode(std::string_view text);

// base64_decode() fed in pieces, for data too large to hold twice (a
// publish's tarball): the same alphabet, padding rules and errors, with
// offsets counted from the first piece.
class Base64Decoder {
public:
  // Appends the bytes `text` completes to `out`.
  Expected<void> update(std::string_view text, std::string& out);
  // Checks that the input ended where base64 may end.
  Expected<void> finish() const;

private:
  std::uint64_t m_offset = 0;   // characters seen
  std::uint64_t m_data = 0;     // of which alphabet characters
  unsigned m_padding = 0;       // '=' seen (only at the end)
  std::uint32_t m_acc = 0;
  int m_bits = 0;
};

// Returns the Subresource Integrity string "sha512-<base64>" of `data`.
std::string sri_sha512(std::string_view data);

// Incremental hashing of one algorithm, for data that arrives in pieces.
class Hasher {
public:
  enum class Algorithm { sha1, sha256, sha512 };
  explicit Hasher(Algorithm algorithm);
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(std::string_view data);
  // Returns the raw digest; the hasher cannot be updated afterwards.
  std::string finish();

private:
  void* m_ctx;
};

// Returns `count` bytes from the OS's cryptographic random source.
std::string random_bytes(std::size_t count);

// Returns a random token of `length` characters from [A-Za-z0-9].
std::string random_token(std::size_t length);

// Compares `a` and `b` in time that depends only on their lengths.
bool constant_time_equal(std::string_view a, std::string_view b);

// Returns a self-describing slow salted hash of `password`
// ("scrypt$N$r$p$<salt b64>$<hash b64>").
std::string hash_password(std::string_view password);

// Checks `password` against a hash made by hash_password(), in constant time.
bool verify_password(std::string_view password, std::string_view stored);

} // namespace npme::util
