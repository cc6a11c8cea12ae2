#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace collx {

enum class collective : std::uint8_t { all_reduce, all_gather, reduce_scatter };

constexpr std::string_view to_string(collective c) noexcept {
  switch (c) {
    case collective::all_reduce: return "all_reduce";
    case collective::all_gather: return "all_gather";
    case collective::reduce_scatter: return "reduce_scatter";
  }
  return "?";
}

// The algorithms this build knows. automatic lets the library choose.
enum class algorithm : std::uint8_t { automatic, ring };

constexpr std::string_view to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::automatic: return "auto";
    case algorithm::ring: return "ring";
  }
  return "?";
}

constexpr std::optional<algorithm> parse_algorithm(std::string_view s) noexcept {
  if (s == "auto") return algorithm::automatic;
  if (s == "ring") return algorithm::ring;
  return std::nullopt;
}

// Per-call options. Zero means "the communicator's default" for every field but tag.
struct options {
  algorithm algo = algorithm::automatic;
  std::chrono::milliseconds timeout{0};
  // Must be equal on every rank for the same call; lets a caller label operations so
  // that a mix-up between two call sites is reported as a mismatch.
  std::uint32_t tag = 0;
  std::size_t segment_bytes = 0;
};

}  // namespace collx
