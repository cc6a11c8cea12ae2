#pragma once

// Bruck all-gather: ceil(log2 p) steps, n(p-1)/p bytes sent per rank (n = the gathered
// output), for any p (Bruck et al. 1997).
//
// Each rank keeps its blocks in a rotated order in scratch: its own block first, then
// those of rank+1, rank+2, ... At step k (distance d = 2^k) rank r sends the first
// min(d, p-d) blocks it has to rank r-d, and receives as many from rank r+d, appending
// them: after step k it holds 2d blocks. Unlike recursive doubling, p need not be a
// power of two: the last step just sends fewer blocks. One local rotation at the end
// puts the blocks in rank order.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "collx/algorithms/recursive.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

inline schedule bruck(const recursive_params& prm) {
  schedule s = detail::start(collective::all_gather, algorithm::bruck, prm);
  schedule_builder b(s);
  const std::size_t n = prm.count;
  const std::size_t seg = std::max<std::size_t>(prm.segment, 1);
  const int p = prm.ranks;
  const int r = prm.rank;
  const auto up = static_cast<std::size_t>(p);
  const auto ur = static_cast<std::size_t>(r);
  if (n == 0) return s;
  const region mine = prm.in_place ? region{buffer::output, ur * n, n} : region{buffer::input, 0, n};
  if (!prm.in_place) b.copy(mine, {buffer::output, ur * n, n}, 0);
  if (p == 1) return s;
  s.scratch_count = up * n;
  b.copy(mine, {buffer::scratch, 0, n}, 0);
  std::uint32_t phase = 0;
  for (int d = 1; d < p; d *= 2, ++phase) {
    const std::size_t blocks = static_cast<std::size_t>(std::min(d, p - d));
    const int to = (r - d + p) % p;
    const int from = (r + d) % p;
    const std::size_t have = static_cast<std::size_t>(d) * n;
    detail::for_segments(0, blocks * n, seg, [&](std::size_t o, std::size_t k) {
      b.send(to, {buffer::scratch, o, k}, phase);
    });
    detail::for_segments(0, blocks * n, seg, [&](std::size_t o, std::size_t k) {
      b.recv(from, {buffer::scratch, have + o, k}, phase);
    });
  }
  // scratch block j is rank (r+j) mod p's: blocks 1..p-r-1 go after the rank's own,
  // blocks p-r..p-1 wrap around to the front.
  const std::size_t tail = up - ur;  // blocks from the rank's own to the end of output
  if (tail > 1)
    b.copy({buffer::scratch, n, (tail - 1) * n}, {buffer::output, (ur + 1) * n, (tail - 1) * n}, phase);
  if (ur > 0) b.copy({buffer::scratch, tail * n, ur * n}, {buffer::output, 0, ur * n}, phase);
  return s;
}

}  // namespace collx::algorithms
