#pragma once

// Dissemination barrier (Hensgen, Finkel and Manber 1988): ceil(log2 p) rounds of one
// empty message per rank, ceil(log2 p) alpha in all, for any p.
//
// In round k rank r sends to r + 2^k and receives from r - 2^k (mod p), and its send of
// round k waits for its receive of round k-1. After round k a rank has heard, through
// that chain, from the 2^(k+1) - 1 ranks before it; after ceil(log2 p) rounds from all,
// so no rank leaves before every rank has entered. The messages carry no data but the
// call's envelope, so a rank that entered a different call is told so.

#include <cstdint>
#include <span>

#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

// The rounds, appended to any schedule; the first round's send waits for the steps
// `first_after` (none: the rounds wait for none of the schedule's other steps).
inline void disseminate(schedule_builder& b, int rank, int ranks,
                        std::span<const std::uint32_t> first_after = {}) {
  std::uint32_t round = 0;
  std::uint32_t heard = 0;  // the receive of the round before
  for (int d = 1; d < ranks; d *= 2, ++round) {
    if (round > 0) b.after(heard);
    if (round == 0) {
      for (auto step : first_after) b.after(step);
    }
    b.send((rank + d) % ranks, {buffer::output, 0, 0}, round);
    if (round > 0) b.after(heard);
    heard = b.recv((rank - d + ranks) % ranks, {buffer::output, 0, 0}, round);
  }
}

inline schedule dissemination(int rank, int ranks) {
  schedule s = empty_schedule(collective::barrier, algorithm::dissemination, rank, ranks, 0, false);
  schedule_builder b(s);
  disseminate(b, rank, ranks);
  return s;
}

}  // namespace collx::algorithms
