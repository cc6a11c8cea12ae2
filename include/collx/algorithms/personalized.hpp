#pragma once

// Personalized collectives: each rank sends a different block to each rank (all-to-all)
// or to and from one root (gather, scatter). n is one block, count elements:
//
//   pairwise all-to-all   (p-1)(alpha + n beta)                  every rank sends p-1 blocks
//   linear gather         (p-1)(alpha + n beta) + L alpha        the root's link carries p-1 blocks
//   linear scatter        (p-1)(alpha + n beta) + L alpha
//   binomial gather       L alpha + (p-1) n beta                 the root's link carries p-1
//   binomial scatter      L alpha + (p-1) n beta                 blocks in L messages
//
// (Bruck's all-to-all, L alpha for small blocks, is in bruck.hpp.)
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
//
// Binomial gather and scatter (Thakur, Rabenseifner and Gropp 2005): a subtree's blocks
// travel together, up to the root (gather) or down from it (scatter), L = ceil(log2 p)
// rounds, each rank sending in every round as the binomial broadcast does, so that every
// rank hears from every rank without signals beside. Blocks pass through the ranks
// between: about (p/2) L blocks cross the network, against p-1 for linear, which the
// model (one link per rank, no contention) does not price.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "collx/algorithms/barrier.hpp"
#include "collx/algorithms/rooted.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

inline schedule pairwise(const rooted_params& prm) {
  schedule s = empty_schedule(collective::all_to_all, algorithm::pairwise, prm.rank, prm.ranks, prm.count,
                              prm.in_place, 0);
  schedule_builder b(s);
  const detail::block_sizes z(prm);
  const auto [n, seg, p, r] = z;
  auto block = [&z](int q) { return z.block(q); };
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

namespace detail {

// A binomial gather's or scatter's tree over virtual ranks w = (r - root) mod p: v's
// subtree is [v, v + lowest set bit of v) (all of them for the root), and a message
// carries a range of virtual ranks' blocks. Both ends cut a message alike: into
// segments, and where the real ranks wrap past p - 1, so that on the root each piece is
// one run of its rank-ordered buffer.
struct personalized_tree {
  int p, v, root;
  std::size_t n, seg;

  int real(int w) const noexcept { return static_cast<int>(mod(w + root, p)); }
  int subtree() const noexcept { return v == 0 ? p : std::min(v & -v, p - v); }

  // The pieces of the blocks of virtual ranks [lo, hi), placed by place(first element, count),
  // the element counted from virtual rank 0's block.
  template <class Place>
  std::vector<region> message(int lo, int hi, Place&& place) const {
    std::vector<region> out;
    const int wrap = p - root;  // real rank 0
    auto run = [&](int a, int z) {
      if (a >= z) return;
      const auto ua = static_cast<std::size_t>(a);
      const auto uz = static_cast<std::size_t>(z);
      for_segments(ua * n, uz * n, seg, [&](std::size_t o, std::size_t k) { out.push_back(place(o, k)); });
    };
    if (lo < wrap && wrap < hi) {
      run(lo, wrap);
      run(wrap, hi);
    } else {
      run(lo, hi);
    }
    return out;
  }
};

}  // namespace detail

// Binomial gather (to the root) or scatter (from it). A gather runs the rounds
// d = 1, 2, 4, ...: v with lowest set bit d sends its subtree's blocks to v - d, having
// received its children's (v + d' for d' < d) beside its own. A scatter runs them
// backwards, d = 2^(L-1) down to 1: v sends v + d the blocks of v + d's subtree. Every
// rank sends and receives in every round, an empty message where the tree has no edge,
// as the binomial broadcast does (algorithms/rooted.hpp): every rank hears from every
// rank. The root works in its rank-ordered buffer; the other ranks keep their subtree's
// blocks in scratch (own block first), or, a leaf, in place of its own block.
inline schedule binomial_personalized(collective c, const rooted_params& prm) {
  schedule s = empty_schedule(c, algorithm::binomial, prm.rank, prm.ranks, prm.count, prm.in_place, prm.root);
  schedule_builder b(s);
  const detail::personalized_tree t{prm.ranks, static_cast<int>(detail::mod(prm.rank - prm.root, prm.ranks)),
                                    prm.root, prm.count, std::max<std::size_t>(prm.segment, 1)};
  const std::size_t n = prm.count;
  const bool gather = c == collective::gather;
  const bool ip = prm.in_place;
  auto block = [&](int q) { return static_cast<std::size_t>(q) * n; };
  // This rank's block: a gather's contribution, a scatter's result.
  const region own =
      ip ? region{buffer::output, block(prm.rank), n} : region{gather ? buffer::input : buffer::output, 0, n};
  const int size = t.subtree();
  region home = own;  // where this rank's subtree's blocks are, from its own
  const buffer blocks = gather || ip ? buffer::output : buffer::input;  // the root's
  if (t.v == 0 && !ip) {
    gather ? void(b.copy(own, {buffer::output, block(prm.rank), n}, 0))
           : void(b.copy({buffer::input, block(prm.rank), n}, own, 0));
  } else if (t.v != 0 && size > 1 && n > 0) {
    s.scratch_count = block(size);
    home = {buffer::scratch, 0, block(size)};
    if (gather) b.copy(own, {buffer::scratch, 0, n}, 0);
  }
  auto place = [&](std::size_t o, std::size_t k) {
    if (t.v != 0) return region{home.buf, home.offset + o - block(t.v), k};
    const auto w = static_cast<int>(o / n);
    return region{blocks, block(t.real(w)) + o - block(w), k};
  };
  std::uint32_t heard = 0;
  std::uint32_t round = 0;
  const int top = prm.ranks > 1 ? 1 << (detail::ceil_log2(prm.ranks) - 1) : 0;
  for (int d = gather ? 1 : top; d >= 1 && d < prm.ranks; d = gather ? d * 2 : d / 2, ++round) {
    const bool up = t.v % (2 * d) == d;                     // the edge to v - d
    const bool down = t.v % (2 * d) == 0 && t.v + d < t.p;  // the edge to v + d
    const auto parent = up ? t.message(t.v, t.v + size, place) : std::vector<region>{};
    const auto child = down ? t.message(t.v + d, std::min(t.v + 2 * d, t.p), place) : std::vector<region>{};
    gather ? detail::tree_round(b, t.real(t.v - d), t.real(t.v + d), parent, child, round, round == 0, heard)
           : detail::tree_round(b, t.real(t.v + d), t.real(t.v - d), child, parent, round, round == 0, heard);
  }
  if (!gather && home.buf == buffer::scratch) b.copy({buffer::scratch, 0, n}, own, round);
  return s;
}

}  // namespace collx::algorithms
