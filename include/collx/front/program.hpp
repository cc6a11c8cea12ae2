#pragma once

// The peer program of one call shape: the front end builds the schedule (the algorithm
// is its choice) and hands the peer executor only the compiled program.

#include "collx/algorithms/select.hpp"
#include "collx/exec/peer_program.hpp"

namespace collx::peer_memory {

inline program_image program_for(const program_key& k, int rank, int ranks) {
  return compile(algorithms::build(k.algo, {k.coll, rank, ranks, k.count, k.segment, k.in_place}));
}

}  // namespace collx::peer_memory
