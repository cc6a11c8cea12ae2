#pragma once

// Small command-line helpers shared by the collx tools: sizes with K/M/G suffixes,
// durations with ns/us/ms/s, bandwidths in GB/s or MB/s, collective names.

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include <collx/collx.hpp>

namespace collx::cli {

// "256M" -> 268435456; K, M, G are powers of 1024, as in nccl-tests.
inline std::optional<double> parse_bytes(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::string str(s);
  char* end = nullptr;
  const double v = std::strtod(str.c_str(), &end);
  const std::string_view unit(end);
  double m = 1;
  if (unit == "K" || unit == "k" || unit == "KB" || unit == "KiB")
    m = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MiB")
    m = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GiB")
    m = 1024.0 * 1024 * 1024;
  else if (!unit.empty() && unit != "B")
    return std::nullopt;
  if (end == str.c_str() || !(v >= 0)) return std::nullopt;
  return v * m;
}

// "2us" -> 2e-6 seconds.
inline std::optional<double> parse_seconds(std::string_view s) {
  std::string str(s);
  char* end = nullptr;
  const double v = std::strtod(str.c_str(), &end);
  const std::string_view unit(end);
  double m = 0;
  if (unit == "ns")
    m = 1e-9;
  else if (unit == "us")
    m = 1e-6;
  else if (unit == "ms")
    m = 1e-3;
  else if (unit == "s")
    m = 1;
  if (m == 0 || end == str.c_str() || !(v >= 0)) return std::nullopt;
  return v * m;
}

// "25GB/s" -> seconds per byte (1 / 25e9). Decimal units, as link speeds are quoted.
inline std::optional<double> parse_seconds_per_byte(std::string_view s) {
  std::string str(s);
  char* end = nullptr;
  const double v = std::strtod(str.c_str(), &end);
  const std::string_view unit(end);
  double m = 0;
  if (unit == "GB/s")
    m = 1e9;
  else if (unit == "MB/s")
    m = 1e6;
  else if (unit == "Gbit/s" || unit == "Gb/s")
    m = 1e9 / 8;
  if (m == 0 || end == str.c_str() || !(v > 0)) return std::nullopt;
  return 1.0 / (v * m);
}

inline std::optional<collective> parse_collective(std::string_view s) {
  if (s == "allreduce" || s == "all_reduce") return collective::all_reduce;
  if (s == "allgather" || s == "all_gather") return collective::all_gather;
  if (s == "reducescatter" || s == "reduce_scatter") return collective::reduce_scatter;
  if (s == "alltoall") return collective::all_to_all;
  if (s == "sendrecv" || s == "send_recv") return collective::send_recv;
  for (auto c : {collective::broadcast, collective::reduce, collective::barrier, collective::all_to_all,
                 collective::gather, collective::scatter}) {
    if (s == to_string(c)) return c;
  }
  return std::nullopt;
}

// nccl-tests' bus bandwidth factor: busbw = algbw * factor (broadcast, reduce and
// sendrecv: 1).
inline double busbw_factor(collective c, int p) {
  const double n = p;
  if (c == collective::broadcast || c == collective::reduce || c == collective::send_recv) return 1.0;
  return c == collective::all_reduce ? 2 * (n - 1) / n : (n - 1) / n;
}

}  // namespace collx::cli
