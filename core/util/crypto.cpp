#include "core/util/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
// xxHash's functions are compiled in here (no library to link).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>
#include <vector>

namespace npme::util {

namespace {

// scrypt parameters of new password hashes: N=2^14, r=8, p=1 costs 16 MiB and
// tens of milliseconds, OWASP's recommended minimum for interactive logins.
constexpr std::uint64_t k_scrypt_n = 16384;
constexpr std::uint64_t k_scrypt_r = 8;
constexpr std::uint64_t k_scrypt_p = 1;
constexpr std::size_t k_salt_size = 16;
constexpr std::size_t k_key_size = 32;
// Bounds on parameters read back from a stored hash, so that a tampered hash
// cannot make verification allocate gigabytes or spin for minutes.
constexpr std::uint64_t k_max_scrypt_n = std::uint64_t{1} << 20;
constexpr std::uint64_t k_max_scrypt_r = 32;
constexpr std::uint64_t k_max_scrypt_p = 16;
constexpr std::size_t k_max_key_size = 128;

// The functions below return plain values, so a failure of libcrypto itself
// (out of memory, no entropy source) cannot be reported; continuing with a
// wrong digest or predictable randomness would be worse than stopping.
[[noreturn]] void crypto_failure(const char* what) {
  std::fprintf(stderr, "npme: fatal: libcrypto: %s failed\n", what);
  std::abort();
}

// OpenSSL 3 looks an EVP_sha256()-style digest up in its providers on
// every use (a lock and a property query), which cost a tenth of a tarball
// hit's CPU when its token was hashed. The digests are fetched once and
// kept for the life of the process.
const EVP_MD* fetch_digest(const char* name) {
  EVP_MD* md = EVP_MD_fetch(nullptr, name, nullptr);
  if (md == nullptr) {
    crypto_failure("EVP_MD_fetch");
  }
  return md;
}

const EVP_MD* digest_of(Hasher::Algorithm algorithm) {
  static const EVP_MD* const sha1 = fetch_digest("SHA1");
  static const EVP_MD* const sha256 = fetch_digest("SHA256");
  static const EVP_MD* const sha512 = fetch_digest("SHA512");
  switch (algorithm) {
  case Hasher::Algorithm::sha1:
    return sha1;
  case Hasher::Algorithm::sha256:
    return sha256;
  case Hasher::Algorithm::sha512:
    return sha512;
  }
  return sha256;
}

// One context per thread, kept: initialising a context for the digest it
// already holds reuses its provider state, where EVP_Digest makes and frees
// one per call (half the cost of hashing a token).
std::string digest(const EVP_MD* md, std::string_view data) {
  struct Context {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    Context() = default;
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    ~Context() { EVP_MD_CTX_free(ctx); }
  };
  thread_local Context context;
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int size = 0;
  if (context.ctx == nullptr || EVP_DigestInit_ex2(context.ctx, md, nullptr) != 1 ||
      EVP_DigestUpdate(context.ctx, data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(context.ctx, out.data(), &size) != 1) {
    crypto_failure("EVP_Digest");
  }
  return std::string(reinterpret_cast<const char*>(out.data()), size);
}

// base64 character → its 6-bit value, or -1.
constexpr std::array<std::int8_t, 256> k_base64_values = [] {
  std::array<std::int8_t, 256> table{};
  table.fill(-1);
  constexpr std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (std::size_t i = 0; i < alphabet.size(); ++i) {
    table[static_cast<unsigned char>(alphabet[i])] = static_cast<std::int8_t>(i);
  }
  return table;
}();

int base64_value(char c) {
  return k_base64_values[static_cast<unsigned char>(c)];
}

// Returns the scrypt key of `password`, or nullopt when libcrypto refuses.
std::optional<std::string> scrypt(std::string_view password, std::string_view salt,
                                  std::uint64_t n, std::uint64_t r, std::uint64_t p,
                                  std::size_t key_size) {
  std::string key(key_size, '\0');
  // maxmem must cover 128*N*r*p plus scratch; 0 would mean OpenSSL's 32 MiB
  // default, too small for the bounds accepted above.
  const std::uint64_t max_mem = 128 * n * r * (p + 2) + (std::uint64_t{1} << 20);
  if (EVP_PBE_scrypt(password.data(), password.size(),
                     reinterpret_cast<const unsigned char*>(salt.data()), salt.size(), n, r, p,
                     max_mem, reinterpret_cast<unsigned char*>(key.data()), key.size()) != 1) {
    return std::nullopt;
  }
  return key;
}

bool parse_u64(std::string_view text, std::uint64_t& out) {
  if (text.empty()) {
    return false;
  }
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const auto pos = text.find(separator, start);
    if (pos == std::string_view::npos) {
      parts.push_back(text.substr(start));
      return parts;
    }
    parts.push_back(text.substr(start, pos - start));
    start = pos + 1;
  }
}

} // namespace

std::string sha1(std::string_view data) {
  return digest(digest_of(Hasher::Algorithm::sha1), data);
}

std::string sha256(std::string_view data) {
  return digest(digest_of(Hasher::Algorithm::sha256), data);
}

std::string sha512(std::string_view data) {
  return digest(digest_of(Hasher::Algorithm::sha512), data);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

std::string hex(std::string_view bytes) {
  static constexpr char k_digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    out.push_back(k_digits[byte >> 4]);
    out.push_back(k_digits[byte & 0x0f]);
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  if (bytes.empty()) {
    return out;
  }
  // EVP_EncodeBlock takes an int length; encode in chunks (a multiple of 3
  // bytes) so that inputs over 2 GiB stay correct.
  constexpr std::size_t k_chunk = std::size_t{3} << 20;
  std::size_t in_pos = 0;
  std::size_t out_pos = 0;
  while (in_pos < bytes.size()) {
    const std::size_t n = std::min(k_chunk, bytes.size() - in_pos);
    const int written = EVP_EncodeBlock(
      reinterpret_cast<unsigned char*>(out.data() + out_pos),
      reinterpret_cast<const unsigned char*>(bytes.data() + in_pos), static_cast<int>(n));
    in_pos += n;
    out_pos += static_cast<std::size_t>(written);
  }
  return out;
}

Expected<std::string> base64_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size() / 4 * 3 + 2);
  Base64Decoder decoder;
  NPME_TRY(decoder.update(text, out));
  NPME_TRY(decoder.finish());
  return out;
}

Expected<void> Base64Decoder::update(std::string_view text, std::string& out) {
  out.reserve(out.size() + text.size() / 4 * 3 + 2);
  for (const char c : text) {
    const int value = base64_value(c);
    if (value >= 0 && m_padding == 0) {
      m_acc = (m_acc << 6) | static_cast<std::uint32_t>(value);
      m_bits += 6;
      if (m_bits >= 8) {
        m_bits -= 8;
        out.push_back(static_cast<char>((m_acc >> m_bits) & 0xff));
      }
      ++m_data;
    } else if (value >= 0) {
      return make_error(Errc::invalid, "base64: padding inside the data");
    } else if (c == '=') {
      if (++m_padding > 2) {
        return make_error(Errc::invalid, "base64: too much padding");
      }
    } else {
      return make_error(Errc::invalid, "base64: invalid character at offset " + std::to_string(m_offset));
    }
    ++m_offset;
  }
  return {};
}

Expected<void> Base64Decoder::finish() const {
  if (m_data % 4 == 1) {
    return make_error(Errc::invalid, "base64: truncated input");
  }
  if (m_padding > 0 && (m_data % 4) + m_padding != 4) {
    return make_error(Errc::invalid, "base64: wrong padding");
  }
  return {};
}

std::string sri_sha512(std::string_view data) {
  return "sha512-" + base64_encode(sha512(data));
}

Hasher::Hasher(Algorithm algorithm) : m_ctx(EVP_MD_CTX_new()) {
  if (m_ctx == nullptr) {
    crypto_failure("EVP_MD_CTX_new");
  }
  if (EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(m_ctx), digest_of(algorithm), nullptr) != 1) {
    crypto_failure("EVP_DigestInit_ex");
  }
}

Hasher::~Hasher() {
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(m_ctx));
}

void Hasher::update(std::string_view data) {
  if (m_ctx == nullptr || data.empty()) {
    return;
  }
  if (EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(m_ctx), data.data(), data.size()) != 1) {
    crypto_failure("EVP_DigestUpdate");
  }
}

std::string Hasher::finish() {
  if (m_ctx == nullptr) {
    return {};
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(m_ctx), out.data(), &size) != 1) {
    crypto_failure("EVP_DigestFinal_ex");
  }
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(m_ctx));
  m_ctx = nullptr;
  return std::string(reinterpret_cast<const char*>(out.data()), size);
}

std::string random_bytes(std::size_t count) {
  std::string out(count, '\0');
  std::size_t done = 0;
  while (done < count) {
    const std::size_t n = std::min<std::size_t>(count - done, 1 << 20);
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data() + done), static_cast<int>(n)) != 1) {
      crypto_failure("RAND_bytes");
    }
    done += n;
  }
  return out;
}

std::string random_token(std::size_t length) {
  static constexpr char k_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  constexpr unsigned k_size = sizeof(k_alphabet) - 1; // 62
  // Bytes at or above 248 (= 4 * 62) are dropped so every character is
  // equally likely.
  constexpr unsigned k_limit = 256 - 256 % k_size;
  std::string out;
  out.reserve(length);
  while (out.size() < length) {
    const std::string pool = random_bytes(length - out.size() + 8);
    for (const char c : pool) {
      const auto byte = static_cast<unsigned char>(c);
      if (byte < k_limit && out.size() < length) {
        out.push_back(k_alphabet[byte % k_size]);
      }
    }
  }
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  if (a.empty()) {
    return true;
  }
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string hash_password(std::string_view password) {
  const std::string salt = random_bytes(k_salt_size);
  const auto key = scrypt(password, salt, k_scrypt_n, k_scrypt_r, k_scrypt_p, k_key_size);
  if (!key) {
    crypto_failure("EVP_PBE_scrypt");
  }
  return "scrypt$" + std::to_string(k_scrypt_n) + "$" + std::to_string(k_scrypt_r) + "$" +
         std::to_string(k_scrypt_p) + "$" + base64_encode(salt) + "$" + base64_encode(*key);
}

bool verify_password(std::string_view password, std::string_view stored) {
  const auto parts = split(stored, '$');
  if (parts.size() != 6 || parts[0] != "scrypt") {
    return false;
  }
  std::uint64_t n = 0;
  std::uint64_t r = 0;
  std::uint64_t p = 0;
  if (!parse_u64(parts[1], n) || !parse_u64(parts[2], r) || !parse_u64(parts[3], p)) {
    return false;
  }
  if (n < 2 || (n & (n - 1)) != 0 || n > k_max_scrypt_n || r == 0 || r > k_max_scrypt_r || p == 0 ||
      p > k_max_scrypt_p) {
    return false;
  }
  const auto salt = base64_decode(parts[4]);
  const auto expected = base64_decode(parts[5]);
  if (!salt || !expected || salt->empty() || expected->empty() ||
      expected->size() > k_max_key_size) {
    return false;
  }
  const auto key = scrypt(password, *salt, n, r, p, expected->size());
  return key && constant_time_equal(*key, *expected);
}

std::uint64_t xxh3(std::string_view data) {
  return XXH3_64bits(data.data(), data.size());
}

struct Checksum::State {
  XXH3_state_t* state = XXH3_createState();
  ~State() { XXH3_freeState(state); }
};

Checksum::Checksum() : m_state(std::make_unique<State>()) {
  if (m_state->state == nullptr) {
    throw std::bad_alloc();
  }
  XXH3_64bits_reset(m_state->state);
}

Checksum::~Checksum() = default;

void Checksum::update(std::string_view data) {
  XXH3_64bits_update(m_state->state, data.data(), data.size());
}

std::uint64_t Checksum::value() const {
  return XXH3_64bits_digest(m_state->state);
}

} // namespace npme::util
