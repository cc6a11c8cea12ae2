#pragma once

// double binary tree all-reduce: about 2*ceil(log2 p) steps per segment, pipelined;
// each rank sends at most n bytes up (as a leaf of one tree and an inner node of the
// other) and n down: latency logarithmic in p with pipelining for large n
// (Sanders, Speck and Träff 2009; the scheme NCCL uses between nodes).
//
// Two binary trees span the ranks, and each carries half of the buffer: reduce up the
// tree (a node adds its children's partial sums to its own and passes the sum to its
// parent), then broadcast down (the root's result travels back to every node). The
// trees are built so that a rank is an inner node in at most one of them: in the first
// the leaves are the even ranks, in the second (the first mirrored, or shifted by one
// when p is odd) the odd ones. So every rank does the work of an inner node for one
// half only, and both halves proceed at once. Segments pipeline each tree: segment
// k+1 climbs while segment k is reduced one level up.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "collx/algorithms/recursive.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

namespace detail {

// An in-order binary tree over positions 1..N: the leaves are the odd positions; a
// position with lowest set bit b hangs below (pos ^ b) | 2b, or pos ^ b where that
// position does not exist; the root is the highest power of two not above N.
struct btree {
  int parent = -1;  // rank, or -1 at the root
  std::array<int, 2> children{-1, -1};
};

inline std::vector<btree> in_order_tree(int n) {
  std::vector<btree> t(static_cast<std::size_t>(n));
  for (int pos = 1; pos <= n; ++pos) {
    const int b = pos & -pos;
    int up = (pos ^ b) | (b << 1);
    if (up > n) up = pos ^ b;
    if (up == 0) continue;  // the root
    t[static_cast<std::size_t>(pos - 1)].parent = up - 1;
    auto& kids = t[static_cast<std::size_t>(up - 1)].children;
    (kids[0] < 0 ? kids[0] : kids[1]) = pos - 1;
  }
  return t;
}

// The two trees, in ranks: the second maps rank r to position p-1-r (p even) or
// (r+1) mod p (p odd) of the same shape.
inline std::array<btree, 2> double_tree_node(int rank, int p) {
  const auto t = in_order_tree(p);
  auto to_pos = [&](int r) { return p % 2 == 0 ? p - 1 - r : (r + 1) % p; };
  auto to_rank = [&](int pos) { return pos < 0 ? -1 : (p % 2 == 0 ? p - 1 - pos : (pos - 1 + p) % p); };
  std::array<btree, 2> out;
  out[0] = t[static_cast<std::size_t>(rank)];
  const btree& m = t[static_cast<std::size_t>(to_pos(rank))];
  out[1].parent = to_rank(m.parent);
  out[1].children = {to_rank(m.children[0]), to_rank(m.children[1])};
  return out;
}

}  // namespace detail

inline schedule double_binary_tree(const recursive_params& prm) {
  schedule s = detail::start(collective::all_reduce, algorithm::tree, prm);
  schedule_builder b(s);
  const std::size_t n = prm.count;
  const std::size_t seg = std::max<std::size_t>(prm.segment, 1);
  if (n == 0) return s;
  const buffer in = prm.in_place ? buffer::output : buffer::input;
  if (prm.ranks == 1) {
    if (!prm.in_place) b.copy({buffer::input, 0, n}, {buffer::output, 0, n}, 0);
    return s;
  }
  const auto node = detail::double_tree_node(prm.rank, prm.ranks);
  // Tree t carries half t of the buffer: [half_lo[t], half_lo[t+1]).
  const std::size_t half_lo[3] = {0, n / 2, n};
  const std::size_t segs = (n - n / 2 + seg - 1) / seg;  // the larger half's segments
  auto piece = [&](int t, std::size_t k, buffer buf) -> region {
    const std::size_t lo = half_lo[t] + k * seg;
    const std::size_t hi = std::min(half_lo[t + 1], lo + seg);
    return lo < hi ? region{buf, lo, hi - lo} : region{buf, lo, 0};
  };
  // Reduce up: children's partial sums are added in, then the sum goes to the parent.
  for (std::size_t k = 0; k < segs; ++k) {
    for (int t = 0; t < 2; ++t) {
      if (piece(t, k, buffer::output).count == 0) continue;
      bool fresh = true;  // out of place, the rank's data is in the input until reduced
      for (int c : node[static_cast<std::size_t>(t)].children) {
        if (c < 0) continue;
        b.recv_reduce(c, piece(t, k, fresh ? in : buffer::output), piece(t, k, buffer::output), 0);
        fresh = false;
      }
      if (node[static_cast<std::size_t>(t)].parent >= 0) {
        b.send(node[static_cast<std::size_t>(t)].parent, piece(t, k, fresh ? in : buffer::output), 0);
      } else if (fresh && !prm.in_place) {
        b.copy(piece(t, k, buffer::input), piece(t, k, buffer::output), 0);  // a root without children
      }
    }
  }
  // Broadcast down: the root's result replaces every partial sum on the way.
  for (std::size_t k = 0; k < segs; ++k) {
    for (int t = 0; t < 2; ++t) {
      if (piece(t, k, buffer::output).count == 0) continue;
      const auto& nd = node[static_cast<std::size_t>(t)];
      if (nd.parent >= 0) b.recv(nd.parent, piece(t, k, buffer::output), 1);
      for (int c : nd.children) {
        if (c >= 0) b.send(c, piece(t, k, buffer::output), 1);
      }
    }
  }
  return s;
}

}  // namespace collx::algorithms
