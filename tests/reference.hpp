#pragma once

// The multi-process workers' inputs and serial reference: element i of rank r's input is
// a small integer, so sums, products of few ranks, minima and maxima stay exact in every
// element type, and any rank can compute every other rank's input.

#include <collx/core/reduce.hpp>

#include <algorithm>
#include <cstddef>

namespace test {

inline double input(int r, std::size_t i) {
  return static_cast<double>(static_cast<int>((static_cast<std::size_t>(r) * 7 + i * 13) % 17) - 8);
}

inline double ref_reduce(collx::reduce_op op, int p, std::size_t i) {
  double acc = input(0, i);
  for (int r = 1; r < p; ++r) {
    const double v = input(r, i);
    switch (op) {
      case collx::reduce_op::sum:
      case collx::reduce_op::avg: acc += v; break;
      case collx::reduce_op::prod: acc *= v; break;
      case collx::reduce_op::min: acc = std::min(acc, v); break;
      case collx::reduce_op::max: acc = std::max(acc, v); break;
    }
  }
  return op == collx::reduce_op::avg ? acc / p : acc;
}

}  // namespace test
