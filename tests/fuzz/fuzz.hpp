#pragma once
// Helpers shared by the fuzz targets: the input as text, and invariant
// checks that abort (a finding libFuzzer keeps) instead of throwing.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace npme::fuzz {

// The fuzzer's bytes as a string_view.
inline std::string_view text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Splits `input` at the first '\n': the part before, and the rest after it
// (empty when there is no '\n').
struct Split {
  std::string_view first;
  std::string_view rest;
};
inline Split split_line(std::string_view input) {
  const auto newline = input.find('\n');
  if (newline == std::string_view::npos) {
    return {input, {}};
  }
  return {input.substr(0, newline), input.substr(newline + 1)};
}

// Aborts with `what` when `condition` is false: a broken invariant is a
// finding, like a crash.
inline void require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

} // namespace npme::fuzz
