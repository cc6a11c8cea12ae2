#pragma once

// Bruck et al. 1997, for any p. L = ceil(log2 p); all-gather: n = the gathered output;
// all-to-all: b = one block, c_k <= p/2 the blocks with bit k set:
//
//   Bruck all-gather    L alpha + n(p-1)/p beta + n gamma           (final rotation)
//   Bruck all-to-all    sum over k < L of (alpha + c_k b beta + c_k b gamma (packing))
//                       + (p - 2^(L-1)) b gamma                     (the last arrivals
//                       put in place); small blocks: L alpha against pairwise's p-1
//
// All-gather. Each rank keeps its blocks in a rotated order in scratch: its own block
// first, then those of rank+1, rank+2, ... At step k (distance d = 2^k) rank r sends the
// first min(d, p-d) blocks it has to rank r-d, and receives as many from rank r+d,
// appending them: after step k it holds 2d blocks. Unlike recursive doubling, p need not
// be a power of two: the last step just sends fewer blocks. One local rotation at the
// end puts the blocks in rank order.
//
// All-to-all. Block i is the rank's block for rank + i. In round k every block whose
// index has bit k set moves on by 2^k: packed into one message to rank + 2^k, while the
// blocks from rank - 2^k arrive. A block so travels its index and lands at its
// destination, where it is the block from rank - i; a rotation puts it in its place.
// About (p/2) L blocks move per rank instead of p - 1, in L messages instead of p - 1.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "collx/algorithms/recursive.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

inline schedule bruck(const recursive_params& prm) {
  schedule s = detail::start(collective::all_gather, algorithm::bruck, prm);
  schedule_builder b(s);
  const auto [n, seg, p, r] = detail::block_sizes(prm);
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

namespace detail {

// How many of Bruck's all-to-all blocks 0..p-1 have bit d set: those that move in the
// round of distance d.
inline std::size_t bruck_moving(int p, int d) noexcept {
  std::size_t c = 0;
  for (int i = 1; i < p; ++i) c += (i & d) != 0 ? 1 : 0;
  return c;
}

// One round: `out` to `to`, `in` from `from`, in segments (one empty message each way
// for count 0, so the signature still travels); the last send and receive wait for the
// round before's last receive (`heard`).
inline void bruck_round(schedule_builder& b, region out, region in, int to, int from, std::size_t seg,
                        std::uint32_t round, std::uint32_t& heard) {
  auto wait = [&](bool last) {
    if (last && round > 0) b.after(heard);
  };
  if (out.count == 0) {
    wait(true);
    b.send(to, {buffer::output, 0, 0}, round);
    wait(true);
    heard = b.recv(from, {buffer::output, 0, 0}, round);
    return;
  }
  for_segments(0, out.count, seg, [&](std::size_t o, std::size_t k) {
    wait(o + k == out.count);
    b.send(to, {out.buf, out.offset + o, k}, round);
  });
  for_segments(0, in.count, seg, [&](std::size_t o, std::size_t k) {
    wait(o + k == in.count);
    const std::uint32_t got = b.recv(from, {in.buf, in.offset + o, k}, round);
    if (o + k == in.count) heard = got;
  });
}

}  // namespace detail

// Bruck all-to-all. Block i is, at first, the rank's block for rank + i; it travels
// i's set bits (bit k in the round of distance 2^k) and so arrives at rank + i, where it
// is the block from rank - i. The blocks that move in a round are packed into one
// message (a copy each, unless only one moves) and land side by side in a fresh stretch
// of scratch; `loc` tracks where each block is now, so that none is copied back. A block
// is copied to its place in output once its last bit has moved, beside the next round's
// transfer. Each round's last send and receive wait for the round before's last
// receive, so every rank hears from every rank, as in the dissemination barrier.
inline schedule bruck_all_to_all(const recursive_params& prm) {
  schedule s = detail::start(collective::all_to_all, algorithm::bruck, prm);
  schedule_builder b(s);
  const detail::block_sizes z(prm);
  const auto [n, seg, p, r] = z;
  auto block = [&z](int q) { return z.block(q); };
  const buffer from = prm.in_place ? buffer::output : buffer::input;
  std::vector<region> loc;
  for (int i = 0; i < p; ++i) loc.push_back({from, block((r + i) % p), n});
  std::size_t pack = 0;  // scratch: the packed message first, then each round's arrivals
  for (int d = 1; d < p; d *= 2) {
    if (detail::bruck_moving(p, d) > 1) pack = std::max(pack, detail::bruck_moving(p, d));
  }
  std::size_t arrivals = pack * n;
  std::uint32_t round = 0;
  std::uint32_t heard = 0;  // the last receive of the round before
  // Blocks [lo, hi) to their place: block i came from rank r - i. In place, that place may
  // still hold block p - i, not yet moved: such a block waits for the end.
  std::vector<int> later;
  auto settle = [&](int lo, int hi) {
    for (int i = lo; i < std::min(hi, p) && n > 0; ++i) {
      if (loc[static_cast<std::size_t>(p - i)].buf == buffer::output) {
        later.push_back(i);
        continue;
      }
      b.copy(loc[static_cast<std::size_t>(i)], {buffer::output, block((r - i + p) % p), n}, round);
    }
  };
  for (int d = 1; d < p; d *= 2, ++round) {
    std::vector<std::size_t> moving;
    for (int i = 1; i < p; ++i) {
      if ((i & d) != 0) moving.push_back(static_cast<std::size_t>(i));
    }
    region out = loc[moving[0]];
    if (moving.size() > 1 && n > 0) {
      for (std::size_t j = 0; j < moving.size(); ++j)
        b.copy(loc[moving[j]], {buffer::scratch, j * n, n}, round);
      out = {buffer::scratch, 0, moving.size() * n};
    }
    if (d > 1) settle(d / 2, d);  // the blocks whose last bit moved the round before
    if (d == 1 && !prm.in_place && n > 0) b.copy({from, block(r), n}, {buffer::output, block(r), n}, round);
    const region in{buffer::scratch, arrivals, moving.size() * n};
    arrivals += in.count;
    for (std::size_t j = 0; j < moving.size(); ++j) loc[moving[j]] = {buffer::scratch, in.offset + j * n, n};
    detail::bruck_round(b, out, in, (r + d) % p, (r - d + p) % p, seg, round, heard);
  }
  if (p > 1 && n > 0) s.scratch_count = arrivals;
  if (round > 0) settle(1 << (round - 1), p);
  for (const int i : std::vector<int>(later)) settle(i, i + 1);  // every block has moved now
  if (p == 1 && !prm.in_place && n > 0) b.copy({from, 0, n}, {buffer::output, 0, n}, 0);
  return s;
}

}  // namespace collx::algorithms
