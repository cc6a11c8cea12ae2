#pragma once

// hierarchical all-reduce, N nodes of L ranks, n bytes: intra-node reduce-scatter,
// inter-node all-reduce of each rank's shard (n/L), intra-node all-gather; 2n(N-1)/N
// bytes cross each node's link, against 2n(P-1)/P for a flat ring whose edges cross nodes.
//
// A composition, not a schedule: each level is a communicator of its own, over its own
// transport (shared memory or CUDA IPC inside a node, tcp across nodes), and runs
// whatever algorithm suits it. This is the way NCCL and Horovod compose them:
//   1. intra-node reduce-scatter: local rank l ends with the node's reduction of shard l;
//   2. inter-node all-reduce of shard l among the N ranks with local index l, all L
//      shards at once, each group over its own connections;
//   3. intra-node all-gather of the shards.
// Each local rank sends 2(N-1)/N * n/L bytes across, L ranks at once. Elements past the
// last whole shard (n mod L) go the flat way: an intra all-reduce, then an inter one.
//
// Leader way, for small messages: intra all-reduce, inter all-reduce among the nodes'
// first ranks only, then the leader's result handed to its node (an intra all-gather of
// which each rank keeps block 0: collx has no broadcast yet). One inter-node group per
// node, not L: fewer messages when latency, not bandwidth, is the cost.
//
// All-gather: inter-node all-gather of each rank's block among its local index's group,
// intra-node all-gather of those, then the blocks put in global rank order.
// Reduce-scatter: the reverse (blocks ordered by local index, intra-node reduce-scatter,
// inter-node reduce-scatter).
//
// Written once for any memory: the levels are communicators with collx::communicator's
// untyped calls (in, out, count, dtype, [op,] options), and Memory copies within the
// buffers' memory and keeps scratch space between calls:
//   void copy(std::byte* dst, const std::byte* src, std::size_t bytes);
//   void copy2d(std::byte* dst, std::size_t dpitch, const std::byte* src, std::size_t spitch,
//               std::size_t width, std::size_t rows);   // rows of width bytes
//   std::byte* scratch(int i, std::size_t bytes);   // i = 0, 1: two separate areas
// Scratch is asked for before a level moves a byte, so a failed allocation leaves the
// user's buffers as they were and the peers not waiting.
// Host ranks: collx::hierarchical (hierarchical.hpp). GPU ranks: collx::cuda::hierarchical
// (cuda/hierarchical.cuh), CUDA IPC inside and pinned-memory tcp across.

#include <cstddef>
#include <string_view>

#include "collx/core/dtype.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"

namespace collx {

enum class hier_way { automatic, flat, hierarchical, leader };

constexpr std::string_view to_string(hier_way w) noexcept {
  switch (w) {
    case hier_way::automatic: return "auto";
    case hier_way::flat: return "flat";
    case hier_way::hierarchical: return "hierarchical";
    case hier_way::leader: return "leader";
  }
  return "?";
}

namespace algorithms {

// The caller's options for one level: its algorithm where it implements the level's
// collective, else the level's own choice.
inline options level_options(const options& o, collective c) {
  options lo = o;
  if (!implements(lo.algo, c)) lo.algo = algorithm::automatic;
  return lo;
}

// Layout: nodes, per_node, node, local and rank_of[node][local] (collx::node_layout).
// Every rank must call with the same way and count. Arguments are checked by the caller.
template <class Layout, class Node, class Across, class Memory>
struct hier_levels {
  const Layout& at;
  Node& node;
  Across& across;
  Memory& mem;

  // In place: `data` holds this rank's input and receives the result.
  void all_reduce(std::byte* data, std::size_t count, dtype t, reduce_op op, hier_way way,
                  const options& o) const {
    const std::size_t es = size_of(t);
    const auto L = static_cast<std::size_t>(at.per_node);
    const options on_node = level_options(o, collective::all_reduce);
    if (way == hier_way::leader) {
      std::byte* all = mem.scratch(0, count * es * L);
      node.all_reduce(data, data, count, t, op, on_node);
      if (at.local == 0) {
        options lo = on_node;
        if (lo.algo == algorithm::automatic) lo.algo = algorithm::ring;  // what the model prices
        across.all_reduce(data, data, count, t, op, lo);
      }
      node.all_gather(data, all, count, t, level_options(o, collective::all_gather));
      mem.copy(data, all, count * es);  // the leader's block
      return;
    }
    const std::size_t shard = count / L;
    if (shard > 0) {
      // In place: this rank's shard of the node's reduction lands at its own block.
      std::byte* mine = data + static_cast<std::size_t>(at.local) * shard * es;
      node.reduce_scatter(data, mine, shard, t, op, level_options(o, collective::reduce_scatter));
      across.all_reduce(mine, mine, shard, t, op, on_node);
      node.all_gather(mine, data, shard, t, level_options(o, collective::all_gather));
    }
    if (const std::size_t rest = count - shard * L; rest > 0) {
      std::byte* tail = data + shard * L * es;
      node.all_reduce(tail, tail, rest, t, op, on_node);
      across.all_reduce(tail, tail, rest, t, op, on_node);
    }
  }

  // out holds size() blocks of count: rank q's at q * count. In place when in is this
  // rank's block of out (it is read before out is written).
  void all_gather(const std::byte* in, std::byte* out, std::size_t count, dtype t, const options& o) const {
    const std::size_t block = count * size_of(t);
    const auto N = static_cast<std::size_t>(at.nodes);
    const auto L = static_cast<std::size_t>(at.per_node);
    const options lo = level_options(o, collective::all_gather);
    std::byte* group = mem.scratch(0, N * block);    // block of (k, my local) for every node k
    std::byte* all = mem.scratch(1, L * N * block);  // [l][k] blocks
    across.all_gather(in, group, count, t, lo);
    node.all_gather(group, all, N * count, t, lo);
    permute(all, out, block, true);
  }

  // in holds size() blocks of count; out receives the reduction of every rank's block
  // `rank`. In place when out is this rank's block of in.
  void reduce_scatter(const std::byte* in, std::byte* out, std::size_t count, dtype t, reduce_op op,
                      const options& o) const {
    const std::size_t block = count * size_of(t);
    const auto N = static_cast<std::size_t>(at.nodes);
    const auto L = static_cast<std::size_t>(at.per_node);
    const options lo = level_options(o, collective::reduce_scatter);
    std::byte* byl = mem.scratch(0, L * N * block);  // [l][k]: the block for rank (k, l)
    std::byte* group = mem.scratch(1, N * block);
    permute(byl, const_cast<std::byte*>(in), block, false);
    node.reduce_scatter(byl, group, N * count, t, op, lo);
    across.reduce_scatter(group, out, count, t, op, lo);
  }

 private:
  // Between blocks ordered [local][node] (byl) and in global rank order (ranks): to_ranks
  // copies byl's into ranks, else ranks' into byl. Where node k's ranks are k*L .. k*L+L-1
  // (every launcher's usual order), local index l's blocks are one strided copy.
  void permute(std::byte* byl, std::byte* ranks, std::size_t block, bool to_ranks) const {
    const auto N = static_cast<std::size_t>(at.nodes);
    const auto L = static_cast<std::size_t>(at.per_node);
    bool regular = true;
    for (std::size_t k = 0; k < N && regular; ++k) {
      for (std::size_t l = 0; l < L && regular; ++l)
        regular = static_cast<std::size_t>(at.rank_of[k][l]) == k * L + l;
    }
    for (std::size_t l = 0; l < L; ++l) {
      if (regular) {
        std::byte* grouped = byl + l * N * block;  // N blocks in a row
        std::byte* spread = ranks + l * block;     // N blocks, L blocks apart
        if (to_ranks) {
          mem.copy2d(spread, L * block, grouped, block, block, N);
        } else {
          mem.copy2d(grouped, block, spread, L * block, block, N);
        }
        continue;
      }
      for (std::size_t k = 0; k < N; ++k) {
        std::byte* b = byl + (l * N + k) * block;
        std::byte* r = ranks + static_cast<std::size_t>(at.rank_of[k][l]) * block;
        to_ranks ? mem.copy(r, b, block) : mem.copy(b, r, block);
      }
    }
  }
};

}  // namespace algorithms
}  // namespace collx
