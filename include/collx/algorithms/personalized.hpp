#pragma once

// Personalized collectives: each rank sends a different block to each rank (all-to-all)
// or to and from one root (gather, scatter). n is one block, count elements:
//
//   pairwise all-to-all   (p-1)(alpha + n beta)                  every rank sends p-1 blocks
//   linear gather         (p-1)(alpha + n beta) + L alpha        the root's link carries p-1 blocks
//   linear scatter        (p-1)(alpha + n beta) + L alpha
//
// Pairwise exchange (Thakur, Rabenseifner and Gropp 2005): in round k = 1..p-1 rank r
// sends its block for r+k to r+k and receives r-k's block for it. Every rank hears from
// every rank directly, so a rank that finishes knows all made its call. In place, the
// input is copied to scratch first: a block received in round k would otherwise land on
// one still to be sent.
//
// Linear gather and scatter: the root receives (sends) one block from (to) each rank in
// turn, r+1 first. A dissemination barrier's empty messages (barrier.hpp) run beside it
// so that every rank hears from every rank (algorithms/rooted.hpp says why): L alpha,
// L = ceil(log2 p). A gather writes only the root's output, a scatter reads only the
// root's input: the other ranks' may be empty.

#include <cstddef>
#include <cstdint>

#include "collx/algorithms/barrier.hpp"
#include "collx/algorithms/rooted.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

inline schedule pairwise(const rooted_params& prm) {
  schedule s = empty_schedule(collective::all_to_all, algorithm::pairwise, prm.rank, prm.ranks, prm.count,
                              prm.in_place, 0);
  schedule_builder b(s);
  const std::size_t n = prm.count;
  const std::size_t seg = std::max<std::size_t>(prm.segment, 1);
  const int p = prm.ranks;
  const int r = prm.rank;
  auto block = [&](int q) { return static_cast<std::size_t>(q) * n; };
  buffer from = buffer::input;
  if (prm.in_place && p > 1) {
    s.scratch_count = block(p);
    b.copy({buffer::output, 0, block(p)}, {buffer::scratch, 0, block(p)}, 0);
    from = buffer::scratch;
  } else if (!prm.in_place) {
    b.copy({buffer::input, block(r), n}, {buffer::output, block(r), n}, 0);
  }
  for (int k = 1; k < p; ++k) {
    const int to = (r + k) % p;
    const int src = (r - k + p) % p;
    const auto round = static_cast<std::uint32_t>(k - 1);
    if (n == 0) {  // the signature still travels
      b.send(to, {buffer::output, 0, 0}, round);
      b.recv(src, {buffer::output, 0, 0}, round);
      continue;
    }
    detail::for_segments(0, n, seg, [&](std::size_t lo, std::size_t len) {
      b.send(to, {from, block(to) + lo, len}, round);
      b.recv(src, {buffer::output, block(src) + lo, len}, round);
    });
  }
  return s;
}

// Linear gather (to the root) or scatter (from it), with the signals beside it. In
// place (as all-gather and reduce-scatter are), every rank's buffer is the p blocks and
// its own block stays at rank * count.
inline schedule linear(collective c, const rooted_params& prm) {
  schedule s = empty_schedule(c, algorithm::linear, prm.rank, prm.ranks, prm.count, prm.in_place, prm.root);
  schedule_builder b(s);
  disseminate(b, prm.rank, prm.ranks);
  const std::size_t n = prm.count;
  const std::size_t seg = std::max<std::size_t>(prm.segment, 1);
  const int p = prm.ranks;
  const int r = prm.rank;
  auto block = [&](int q) { return static_cast<std::size_t>(q) * n; };
  const bool gather = c == collective::gather;
  const bool ip = prm.in_place;
  // Where this rank's own block is (a gather's input, a scatter's result), and the
  // root's blocks of a scatter.
  const region own =
      ip ? region{buffer::output, block(r), n} : region{gather ? buffer::input : buffer::output, 0, n};
  const buffer blocks = gather || ip ? buffer::output : buffer::input;
  if (r != prm.root) {
    detail::for_segments(0, n, seg, [&](std::size_t lo, std::size_t len) {
      const region piece{own.buf, own.offset + lo, len};
      gather ? void(b.send(prm.root, piece, 0)) : void(b.recv(prm.root, piece, 0));
    });
    return s;
  }
  if (!ip) {
    gather ? void(b.copy(own, {buffer::output, block(r), n}, 0))
           : void(b.copy({buffer::input, block(r), n}, own, 0));
  }
  for (int k = 1; k < p; ++k) {
    const int q = (r + k) % p;
    const auto step = static_cast<std::uint32_t>(k - 1);
    detail::for_segments(0, n, seg, [&](std::size_t lo, std::size_t len) {
      const region piece{blocks, block(q) + lo, len};
      gather ? void(b.recv(q, piece, step)) : void(b.send(q, piece, step));
    });
  }
  return s;
}

}  // namespace collx::algorithms
