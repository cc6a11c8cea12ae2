#pragma once

// A call's shape and what is built from it: the front end builds the schedule (the
// algorithm is its choice) and hands each executor only what it runs, the host plan or
// the peer program. Every entry caches what it built under the call's shape.

#include <cstddef>
#include <vector>

#include "collx/algorithms/select.hpp"
#include "collx/exec/peer_program.hpp"

namespace collx {
namespace detail {

// What a plan or program is cached under: the call shape that built it.
struct call_shape {
  collective coll = collective::all_reduce;
  algorithm algo = algorithm::ring;
  std::size_t count = 0, segment = 1;
  bool in_place = false;
  int root = 0;
  // The exchanges sized per peer (per_peer(coll)): this rank's counts per rank, and
  // send_recv's peers.
  std::vector<std::size_t> send_counts{}, recv_counts{};
  int dst = -1, src = -1;
  friend bool operator==(const call_shape&, const call_shape&) = default;
};

// This rank's schedule of a call shape; node_of: each rank's node, for the algorithms
// that know nodes (empty: one node).
inline schedule schedule_for(const call_shape& k, int rank, int ranks, std::span<const int> node_of = {}) {
  return algorithms::build(k.algo, {k.coll, rank, ranks, k.count, k.segment, k.in_place, k.root,
                                    k.send_counts, k.recv_counts, k.dst, k.src, node_of});
}

}  // namespace detail

namespace peer_memory {

inline program_image program_for(const detail::call_shape& k, int rank, int ranks) {
  return compile(detail::schedule_for(k, rank, ranks));
}

}  // namespace peer_memory
}  // namespace collx
