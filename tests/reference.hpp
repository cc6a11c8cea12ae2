#pragma once

// The multi-process workers' inputs and serial reference: element i of rank r's input is
// a small integer, so sums, products of few ranks, minima and maxima stay exact in every
// element type, and any rank can compute every other rank's input.

#include <collx/config.hpp>
#include <collx/core/dtype.hpp>
#include <collx/core/options.hpp>
#include <collx/core/reduce.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

namespace test {

// A 64-bit mix (splitmix64's finalizer): inputs hashed from (rank, index) cannot alias
// the way a short period can.
inline std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

// Rank r's element i: a small integer in [-8, 8] hashed from (r, i), so that a block sent
// to the wrong rank or offset cannot compare equal (a formula with a period, as this was
// once, makes input(r+1, i+6) == input(r, i)).
inline double input(int r, std::size_t i) {
  return static_cast<double>(static_cast<int>(mix((static_cast<std::uint64_t>(r) << 40) ^ (i + 1)) % 17) - 8);
}

// The serial reduction over p ranks of input_of(r), accumulated in Acc (exact for the
// inputs here: small integers); avg divides once, at the end.
template <class Acc, class Input>
double serial_reduce(collx::reduce_op op, int p, Input&& input_of) {
  Acc acc = input_of(0);
  for (int r = 1; r < p; ++r) {
    const Acc v = input_of(r);
    switch (op) {
      case collx::reduce_op::sum:
      case collx::reduce_op::avg: acc += v; break;
      case collx::reduce_op::prod: acc *= v; break;
      case collx::reduce_op::min: acc = std::min(acc, v); break;
      case collx::reduce_op::max: acc = std::max(acc, v); break;
    }
  }
  return op == collx::reduce_op::avg ? static_cast<double>(acc) / p : static_cast<double>(acc);
}

inline double ref_reduce(collx::reduce_op op, int p, std::size_t i) {
  return serial_reduce<double>(op, p, [i](int r) { return input(r, i); });
}

// Inputs for a reduction in any element type, unsigned ones included: rank r's element
// i for `op`. prod takes factors in {1, 2, -1} ({1, 2} unsigned), so a product over up to
// 6 ranks fits even i8 exactly; the others take [-8, 8] ([0, 16] unsigned), so that min
// and max of the unsigned types are not min and max of wrapped negatives.
inline long long typed_input(collx::reduce_op op, bool is_signed, int r, std::size_t i) {
  const std::uint64_t h = mix((static_cast<std::uint64_t>(r) << 40) ^ (i + 1) ^ 0x5bd1e995ULL);
  if (op == collx::reduce_op::prod) {
    constexpr long long factors[] = {1, 2, -1};
    return factors[h % (is_signed ? 3 : 2)];
  }
  return static_cast<long long>(h % 17) - (is_signed ? 8 : 0);
}

// The serial reduction of typed_input over p ranks, in exact integers (avg divides once).
inline double typed_reduce(collx::reduce_op op, bool is_signed, int p, std::size_t i) {
  return serial_reduce<long long>(op, p, [&](int r) { return typed_input(op, is_signed, r, i); });
}

// COLLX_TEST_MAX_COUNT=n cuts every larger count to n, keeping the matrix's shape. The
// ThreadSanitizer run of CI (tools/sanitize.sh thread) sets 1001: the million-element
// cases take minutes there, and their many-segment pipelines are also run by the
// small counts with tiny segments.
inline std::size_t max_count() {
  static const std::size_t cap = [] {
    const char* v = std::getenv("COLLX_TEST_MAX_COUNT");
    return v != nullptr && *v != '\0' ? static_cast<std::size_t>(std::strtoull(v, nullptr, 10))
                                      : std::numeric_limits<std::size_t>::max();
  }();
  return cap;
}

// COLLX_TEST_MAX_RANKS=p leaves out test_collectives' rank counts above p (the
// ThreadSanitizer run sets 8: 12 and 16 threads triple its time there; they run in the
// plain build).
inline int max_ranks() {
  static const int cap = [] {
    const char* v = std::getenv("COLLX_TEST_MAX_RANKS");
    return v != nullptr && *v != '\0' ? std::atoi(v) : std::numeric_limits<int>::max();
  }();
  return cap;
}

// A count whose buffer spans two default pipeline segments, the second of 3 elements:
// what the algorithms that cut by segment never meet at the small counts. 0 (a case
// the callers already run) when COLLX_TEST_MAX_COUNT is below it.
template <class T>
std::size_t past_segment() {
  const std::size_t n = collx::defaults::segment_bytes / sizeof(T) + 3;
  return n <= max_count() ? n : 0;
}

// Every element type, as a pack for tests that run one case per type.
template <class... T>
struct types {};
using all_types =
    types<std::int8_t, std::uint8_t, std::int32_t, std::int64_t, collx::half, collx::bfloat16, float, double>;

// Conversions that also serve the 16-bit storage types. An integer wraps to the type's
// width (through long long: C++20's conversion is modular), as collx's arithmetic does.
template <class T>
T from_d(double v) {
  if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(static_cast<long long>(v));
  } else {
    return T(static_cast<float>(v));
  }
}
template <class T>
double to_d(T v) {
  if constexpr (std::is_integral_v<T> || std::is_same_v<T, double>) {
    return static_cast<double>(v);
  } else {
    return static_cast<double>(static_cast<float>(v));
  }
}

// Integer results wrap (collx's integer sum and prod are modular, like the types'
// own arithmetic): the exact reference, far below 2^53, is compared modulo the width.
template <class T>
bool close_enough(T got, double want, collx::reduce_op op) {
  if constexpr (std::is_integral_v<T>) {
    return got == static_cast<T>(static_cast<long long>(want));  // C++20: modular
  }
  const double g = to_d(got);
  if (op == collx::reduce_op::avg) {
    // The division rounds to the type: within its precision (f16: 11 bits, bf16: 8).
    const double tol = std::is_same_v<T, collx::half>       ? 1e-3
                       : std::is_same_v<T, collx::bfloat16> ? 8e-3
                                                            : 1e-5;
    return std::fabs(g - want) <= tol * (1 + std::fabs(want));
  }
  return g == want;
}

// One rank's buffers for one call, filled with its inputs (the in-place forms too), and
// the check of its result against the serial reference.
template <class T>
struct case_buffers {
  collx::collective coll;
  int p, me;
  std::size_t n;
  bool in_place;
  std::vector<T> in, out;
  std::size_t first = 0;  // this rank's result block in out
  std::size_t len = 0;

  case_buffers(collx::collective c, int ranks, int rank, std::size_t count, bool inplace)
      : coll(c), p(ranks), me(rank), n(count), in_place(inplace) {
    const auto up = static_cast<std::size_t>(p);
    const std::size_t in_len = c == collx::collective::reduce_scatter ? n * up : n;
    const std::size_t out_len = c == collx::collective::all_gather ? n * up : n;
    len = out_len;
    if (in_place) {
      out.assign(std::max(in_len, out_len), from_d<T>(99));
      const std::size_t at = c == collx::collective::all_gather ? static_cast<std::size_t>(me) * n : 0;
      for (std::size_t i = 0; i < in_len; ++i) out[at + i] = from_d<T>(input(me, i));
      if (c == collx::collective::reduce_scatter) first = static_cast<std::size_t>(me) * n;
    } else {
      in.resize(in_len);
      for (std::size_t i = 0; i < in_len; ++i) in[i] = from_d<T>(input(me, i));
      out.assign(out_len, from_d<T>(99));
    }
  }

  const T* in_ptr() const {
    return in_place ? (coll == collx::collective::all_gather ? out.data() + static_cast<std::size_t>(me) * n
                                                             : out.data())
                    : in.data();
  }
  T* out_ptr() { return out.data(); }

  // The reduction of element j. Sum and prod wrap alike whether the inputs wrap first or
  // the result does; min and max of an unsigned type compare the wrapped inputs (u8: -1
  // is 255), so they are reduced as T holds them.
  static double reduced(collx::reduce_op op, int p, std::size_t j) {
    if (std::is_unsigned_v<T> && (op == collx::reduce_op::min || op == collx::reduce_op::max)) {
      return serial_reduce<double>(op, p, [j](int r) { return to_d(from_d<T>(input(r, j))); });
    }
    return ref_reduce(op, p, j);
  }

  double want(collx::reduce_op op, std::size_t i) const {
    switch (coll) {
      case collx::collective::all_reduce: return reduced(op, p, i);
      case collx::collective::reduce_scatter: return reduced(op, p, static_cast<std::size_t>(me) * n + i);
      case collx::collective::all_gather: return input(static_cast<int>(i / n), i % n);
      default: break;  // the rooted collectives and barrier: tests/test_rooted.cpp
    }
    return 0;
  }

  // Elements of the result that differ from the reference; in-place reduce-scatter must
  // also leave the other blocks as they were.
  long long wrong(collx::reduce_op op) const {
    long long bad = 0;
    for (std::size_t i = 0; i < len; ++i) {
      if (!close_enough(out[first + i], want(op, i), op)) ++bad;
    }
    if (coll == collx::collective::reduce_scatter && in_place) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        if (i >= first && i < first + n) continue;
        if (to_d(out[i]) != to_d(from_d<T>(input(me, i)))) ++bad;
      }
    }
    return bad;
  }
};

}  // namespace test
