#pragma once

// The peer program of one call shape: the front end builds the schedule (the algorithm
// is its choice) and hands the peer executor only the compiled program.

#include "collx/algorithms/select.hpp"
#include "collx/exec/peer.hpp"

namespace collx::peer {

inline program_image program_for(const program_key& k, int rank, int ranks) {
  algorithms::call_shape shape;
  shape.coll = k.coll;
  shape.rank = rank;
  shape.ranks = ranks;
  shape.count = k.count;
  shape.segment = k.segment;
  shape.in_place = k.in_place;
  return compile(algorithms::build(k.algo, shape));
}

}  // namespace collx::peer
