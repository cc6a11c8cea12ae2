#pragma once

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <string>

namespace collx {

// Defaults live here as constexpr data, each with the reason for its value.
namespace defaults {
// Five minutes: long enough for a slow first call (connection set-up, page faults on
// large buffers), short enough that a hung job is reported within a coffee break.
inline constexpr std::chrono::milliseconds timeout{5 * 60 * 1000};
// 512 KiB segments: large enough that per-message overhead (envelope, wake-up) is a
// few percent of a segment's transfer time on host transports, small enough that a
// ring keeps several segments in flight for the tens-of-MiB buffers of gradient buckets.
inline constexpr std::size_t segment_bytes = 512 * 1024;
// Staging slots per executor: receives posted ahead of the reduction that consumes them.
// Two would give plain double buffering; four absorbs jitter between neighbours.
inline constexpr std::size_t staging_slots = 4;
// How long an idle executor sleeps between checks of its deadline and its peers.
inline constexpr std::chrono::milliseconds poll_slice{50};
// How long rank 0's store outlives its owner while other ranks are still connected: long
// enough for a rank that rank 0 has just let out of a barrier to send its last request
// and read the answer (a descheduled process on a loaded 2-core machine, under
// sanitizers), short enough that a failing job's error reaches rank 0's caller soon after
// its timeout. It was the whole timeout, which doubled the time to an error (issue 21).
inline constexpr std::chrono::milliseconds store_linger{2000};
}  // namespace defaults

namespace detail {

// COLLX_TIMEOUT, in seconds (fractions allowed), overrides the default timeout.
// A malformed value is ignored rather than silently turned into zero.
inline std::chrono::milliseconds timeout_from_env(std::chrono::milliseconds fallback) {
  const char* v = std::getenv("COLLX_TIMEOUT");
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const double seconds = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(seconds > 0.0) || seconds > 1e9) return fallback;
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000.0 + 0.5));
}

// COLLX_SEGMENT_BYTES (as NCCL_BUFFSIZE) overrides the default pipeline segment; a
// malformed or tiny value is ignored.
inline std::size_t segment_from_env(std::size_t fallback) {
  const char* v = std::getenv("COLLX_SEGMENT_BYTES");
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long b = std::strtoull(v, &end, 10);
  if (end == v || *end != '\0' || b < 4096 || b > (1ull << 34)) return fallback;
  return static_cast<std::size_t>(b);
}

// A whole number from the environment (COLLX_GPU_LANES, COLLX_GPU_THREADS), or the
// fallback where it is unset, malformed or outside [lo, hi].
inline long count_from_env(const char* name, long fallback, long lo, long hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || n < lo || n > hi) return fallback;
  return n;
}

// A variable's value, or empty where it is unset.
inline std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

}  // namespace detail
}  // namespace collx
