#pragma once

// A call's shape and what is built from it: the front end builds the schedule (the
// algorithm is its choice) and hands each executor only what it runs, the host plan or
// the peer program. Every entry caches what it built under the call's shape.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "collx/algorithms/compose.hpp"
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
  // Elements from one block's start to the next in the caller's buffers, where a lane
  // runs a block collective over its slice of each block (lane_shape below); 0: count,
  // the blocks back to back.
  std::size_t stride = 0;
  friend bool operator==(const call_shape&, const call_shape&) = default;
};

// This rank's schedule of a call shape; node_of: each rank's node, for the algorithms
// that know nodes (empty: one node).
inline schedule schedule_for(const call_shape& k, int rank, int ranks, std::span<const int> node_of = {}) {
  const schedule s = algorithms::build(k.algo, {k.coll, rank, ranks, k.count, k.segment, k.in_place, k.root,
                                                k.send_counts, k.recv_counts, k.dst, k.src, node_of});
  return k.stride == 0 ? s : algorithms::slice_of_blocks(s, k.stride);
}

// Lane j's part of a call split over `lanes` (exec/peer.hpp): the shape it runs, and
// where its slice starts, in elements from the start of the caller's buffers (an
// all-reduce's) or of each of their blocks (an all-gather's, a reduce-scatter's).
struct lane_part {
  call_shape shape;
  std::size_t first = 0;
};
inline lane_part lane_shape(const call_shape& whole, std::size_t element_size, int lanes, int j) {
  if (lanes <= 1) return {whole, 0};
  std::uint64_t lo = 0, n = 0;
  peer_memory::lane_slice(whole.count, element_size, lanes, j, lo, n);
  lane_part p{whole, static_cast<std::size_t>(lo)};
  p.shape.count = static_cast<std::size_t>(n);
  if (whole.coll != collective::all_reduce) p.shape.stride = whole.count;
  return p;
}

}  // namespace detail

namespace peer_memory {

inline program_image program_for(const detail::call_shape& k, int rank, int ranks) {
  return compile(detail::schedule_for(k, rank, ranks));
}

}  // namespace peer_memory
}  // namespace collx
