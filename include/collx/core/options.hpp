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

// The algorithms this build knows. automatic lets the library choose by the cost model.
// recursive_doubling ("rd") is recursive doubling for all-reduce and all-gather and its
// mirror, recursive halving, for reduce-scatter.
enum class algorithm : std::uint8_t { automatic, ring, recursive_doubling, rabenseifner, bruck, tree };

inline constexpr algorithm all_algorithms[] = {algorithm::ring, algorithm::recursive_doubling,
                                               algorithm::rabenseifner, algorithm::bruck, algorithm::tree};

constexpr std::string_view to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::automatic: return "auto";
    case algorithm::ring: return "ring";
    case algorithm::recursive_doubling: return "rd";
    case algorithm::rabenseifner: return "rabenseifner";
    case algorithm::bruck: return "bruck";
    case algorithm::tree: return "tree";
  }
  return "?";
}

// The names of COLLX_ALGO and of command lines.
constexpr std::optional<algorithm> parse_algorithm(std::string_view s) noexcept {
  if (s == "auto") return algorithm::automatic;
  for (auto a : all_algorithms) {
    if (s == to_string(a)) return a;
  }
  return std::nullopt;
}

// Which collectives each algorithm implements.
constexpr bool implements(algorithm a, collective c) noexcept {
  switch (a) {
    case algorithm::automatic:
    case algorithm::ring:
    case algorithm::recursive_doubling: return true;
    case algorithm::rabenseifner:
    case algorithm::tree: return c == collective::all_reduce;
    case algorithm::bruck: return c == collective::all_gather;
  }
  return false;
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
