#pragma once

// What collx-bench and its contenders beyond collx's host transports share: a case, its
// result, the harness's fill and check callbacks, and the barrier and reductions a
// contender times and counts with. No library beside collx's core headers, so that the
// baselines (baselines.hpp, MPI and Gloo) and the GPU contenders (cuda_contenders.hpp,
// compiled by nvcc) see the same definitions whatever each translation unit was built with.

#include <collx/core/dtype.hpp>
#include <collx/core/options.hpp>
#include <collx/core/reduce.hpp>

#include <cstddef>
#include <functional>
#include <string>

namespace bench {

struct baseline_case {
  collx::collective coll = collx::collective::all_reduce;
  collx::dtype type = collx::dtype::f32;
  collx::reduce_op op = collx::reduce_op::sum;
  // Elements per rank as collx-bench counts them: the all-reduce, broadcast and reduce
  // buffer, the block each rank contributes to an all-gather or gather, the block each
  // rank receives from a reduce-scatter or scatter, one block of an all-to-all.
  std::size_t count = 0;
  bool in_place = false;
  int iters = 20;
  int warmup = 5;
  bool check = true;  // false: nothing is checked and wrong is -1, as collx-bench's -c 0
  // What collx is asked to run (--algo): the GPU runners of collx pass it on; the
  // baselines choose their own algorithms and ignore it.
  collx::algorithm algo = collx::algorithm::automatic;
  int root = 0;  // broadcast's source, reduce's destination (-r)
};

struct baseline_result {
  double time_us = 0;     // mean per iteration after warm-up, the maximum over ranks
  long long wrong = 0;    // elements differing from the reference, summed over ranks; -1 unchecked
  std::string algorithm;  // what the library ran, e.g. "MPI_Allreduce", "ring"
};

// Elements of one rank's input and of its result (a reduce's result is the root's only).
inline std::size_t input_elements(const baseline_case& c, int ranks) {
  const bool blocks = c.coll == collx::collective::reduce_scatter || c.coll == collx::collective::scatter ||
                      c.coll == collx::collective::all_to_all;
  return blocks ? c.count * static_cast<std::size_t>(ranks) : c.count;
}
inline std::size_t output_elements(const baseline_case& c, int ranks) {
  const bool blocks = c.coll == collx::collective::all_gather || c.coll == collx::collective::gather ||
                      c.coll == collx::collective::all_to_all;
  return blocks ? c.count * static_cast<std::size_t>(ranks) : c.count;
}

// fill writes `rank`'s input, input_elements() of them; check counts the elements of
// `rank`'s result, output_elements() of them, that differ from the reference. A harness
// that runs ranks as threads of one process gets calls from each rank's thread at once.
struct baseline_data {
  std::function<void(void* buf, int rank, std::size_t n)> fill;
  std::function<long long(const void* result, int rank, std::size_t n)> check;
};

namespace detail {

// What a baseline needs from its own library beside the collective: a barrier, and the
// reductions that give every rank the slowest rank's time and the total of wrong elements.
struct group_ops {
  std::function<void()> barrier;
  std::function<double(double)> max;
  std::function<long long(long long)> sum;
};

}  // namespace detail

}  // namespace bench
