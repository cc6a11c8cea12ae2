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
// Its one user is collx::cuda::hierarchical (cuda/hierarchical.cuh), CUDA IPC inside and
// pinned-memory tcp across, until that path has run on a GPU; host ranks run the
// schedules below.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string_view>
#include <vector>

#include "collx/algorithms/barrier.hpp"
#include "collx/algorithms/compose.hpp"
#include "collx/algorithms/recursive.hpp"
#include "collx/algorithms/ring.hpp"
#include "collx/algorithms/rooted.hpp"
#include "collx/core/dtype.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"
#include "collx/schedule/schedule.hpp"

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

// ---- Hierarchical algorithms as schedules --------------------------------------------
//
// The same composition as hier_levels, written as one schedule per rank (algorithm
// `hierarchical`), so the verifier proves it, the model prices it and one executor runs
// it over one transport (routed_transport: shared memory inside a node, tcp or MPI
// across). Each level is a flat schedule of a group of ranks, its peers mapped to the
// job's ranks and its regions to the part of the buffer it works on; the schedule
// builder orders the levels by the regions they touch, and by each level's own order.

// The job's ranks by node, from each rank's node index.
struct node_groups {
  int nodes = 1;
  int per_node = 0;                       // ranks on every node; 0 when nodes hold different numbers
  int node = 0;                           // this rank's node
  int local = 0;                          // this rank's index on its node
  std::vector<std::vector<int>> rank_of;  // rank_of[node][local], nodes by first rank

  // node_of[r]: rank r's node (any integers; empty: every rank on one node).
  static node_groups of(std::span<const int> node_of, int rank, int ranks) {
    node_groups g;
    std::map<int, int> index;  // node_of value -> node number, by first appearance
    for (int q = 0; q < ranks; ++q) {
      const int id = node_of.empty() ? 0 : node_of[static_cast<std::size_t>(q)];
      const auto [it, fresh] = index.emplace(id, static_cast<int>(g.rank_of.size()));
      if (fresh) g.rank_of.emplace_back();
      auto& members = g.rank_of[static_cast<std::size_t>(it->second)];
      if (q == rank) {
        g.node = it->second;
        g.local = static_cast<int>(members.size());
      }
      members.push_back(q);
    }
    g.nodes = static_cast<int>(g.rank_of.size());
    g.per_node = static_cast<int>(g.rank_of[0].size());
    for (const auto& m : g.rank_of) {
      if (m.size() != g.rank_of[0].size()) g.per_node = 0;
    }
    return g;
  }

  // The ranks with this rank's local index, one per node, by node.
  std::vector<int> across() const {
    std::vector<int> r;
    for (const auto& m : rank_of) r.push_back(m[static_cast<std::size_t>(local)]);
    return r;
  }
  // Every rank, node after node: the flat ring's node-aware order.
  std::vector<int> in_node_order() const {
    std::vector<int> r;
    for (const auto& m : rank_of) r.insert(r.end(), m.begin(), m.end());
    return r;
  }
  // Whether node order is rank order (every node's ranks consecutive, nodes by rank).
  bool in_rank_order() const {
    int q = 0;
    for (const auto& m : rank_of) {
      for (int r : m) {
        if (r != q++) return false;
      }
    }
    return true;
  }
  // The ranks of this rank's node, in local order.
  const std::vector<int>& members() const { return rank_of[static_cast<std::size_t>(node)]; }
  // Each rank's node index.
  std::vector<int> node_of() const {
    std::vector<int> v;
    for (int k = 0; k < nodes; ++k) {
      for (int q : rank_of[static_cast<std::size_t>(k)]) {
        if (static_cast<std::size_t>(q) >= v.size()) v.resize(static_cast<std::size_t>(q) + 1);
        v[static_cast<std::size_t>(q)] = k;
      }
    }
    return v;
  }
};

namespace detail {

// The job's blocks that a group's blocks are: block q of a part whose rank q is the
// job's rank group[q] is the job's block group[q].
inline std::vector<std::size_t> blocks_of(std::span<const int> group) { return {group.begin(), group.end()}; }

// This rank's place in a group.
inline int index_in(std::span<const int> group, int rank) {
  return static_cast<int>(std::find(group.begin(), group.end(), rank) - group.begin());
}

// The columns of a node layout: column l is the blocks of the ranks with local index l,
// node after node; the columns one after another.
inline std::vector<std::size_t> columns(const node_groups& g) {
  std::vector<std::size_t> v;
  for (int l = 0; l < g.per_node; ++l) {
    for (const auto& m : g.rank_of) v.push_back(static_cast<std::size_t>(m[static_cast<std::size_t>(l)]));
  }
  return v;
}

}  // namespace detail

// Across nodes the shards are all-reduced by a ring among a few nodes (it pipelines
// best), by Rabenseifner's halving and doubling among more (2 log N messages, not 2(N-1)).
constexpr bool hierarchical_ring_across(int nodes) noexcept { return nodes <= 16; }

// A flat ring over every rank in node order (each node's ranks consecutive, so that one
// edge per node crosses), its blocks mapped to the job's: algorithm::ring on nodes whose
// ranks are not numbered node by node, and the hierarchical algorithms' form where a
// hierarchy does not apply (nodes of unequal sizes, one node, nodes of one rank).
inline schedule ring_in_node_order(collective c, const ring_params& p, const node_groups& g, algorithm algo) {
  schedule s = empty_schedule(c, algo, p.rank, p.ranks, p.count, p.in_place);
  schedule_builder b(s);
  const std::vector<int> order = g.in_node_order();
  ring_params flat = p;
  flat.rank = detail::index_in(order, p.rank);
  detail::part_map m;
  m.unit = c == collective::all_reduce ? 0 : p.count;
  if (c == collective::all_gather) m.out.units = detail::blocks_of(order);
  if (c == collective::reduce_scatter) {
    // Out of place over the job's blocks (in place, they lie in the output): the ring's
    // partial sums stay in scratch, so the caller's other blocks are never written.
    flat.in_place = false;
    m.in = {p.in_place ? buffer::output : buffer::input, 0, detail::blocks_of(order)};
    m.out.at = p.in_place ? static_cast<std::size_t>(p.rank) * p.count : 0;
  }
  std::vector<detail::placed> where;
  detail::append_part(s, b, ring(c, flat), order, m, where);
  return s;
}

// Hierarchical all-reduce of p.count elements on N nodes of L ranks: the node's ring
// all-reduce cut in its two halves, and between them the all-reduce across nodes of the
// chunk each rank holds complete after the first half (its reduce-scatter):
//   1. intra-node reduce-scatter: local rank l ends with its node's sum of chunk l (the
//      ring's chunks: n/L elements, the first n mod L one more);
//   2. all-reduce of chunk l among the N ranks of local index l, all L groups at once;
//   3. intra-node all-gather of the chunks.
// On one node it is the flat ring. Nodes of unequal sizes: one flat ring in node order,
// so that only one edge per node crosses. Out of place, the node's reduce-scatter half
// reads the input (its first hop sends from it, every sum lands in the output), so the
// input is never copied; with one rank per node it is copied to the output, where the
// level across works in place (the flat ring in node order reads it directly).
inline schedule hierarchical_all_reduce(const ring_params& p, std::span<const int> node_of) {
  schedule s =
      empty_schedule(collective::all_reduce, algorithm::hierarchical, p.rank, p.ranks, p.count, p.in_place);
  const node_groups g = node_groups::of(node_of, p.rank, p.ranks);
  if (g.per_node == 0) return ring_in_node_order(collective::all_reduce, p, g, algorithm::hierarchical);
  schedule_builder b(s);
  const std::size_t n = p.count;
  const int L = g.per_node;
  if (!p.in_place && n > 0 && L == 1) b.copy({buffer::input, 0, n}, {buffer::output, 0, n}, 0);
  std::vector<detail::placed> where;
  const auto& node = g.members();
  const schedule inside = ring(collective::all_reduce, {g.local, L, n, p.segment, p.in_place});
  const auto last = static_cast<std::uint32_t>(L - 2);  // the reduce-scatter half's last phase
  if (L > 1) detail::append_part(s, b, inside, node, {}, where, 0, last);
  const detail::chunking ch{n, static_cast<std::size_t>(L)};
  const auto l = static_cast<std::size_t>(g.local);
  if (g.nodes > 1 && ch.size(l) > 0) {
    const recursive_params rp{g.node, g.nodes, ch.size(l), p.segment, true};
    detail::part_map across;
    across.out.at = ch.offset(l);
    std::vector<detail::placed> across_where;
    detail::append_part(s, b,
                        hierarchical_ring_across(g.nodes)
                            ? ring(collective::all_reduce, {g.node, g.nodes, ch.size(l), p.segment, true})
                            : rabenseifner(rp),
                        g.across(), across, across_where);
  }
  if (L > 1) detail::append_part(s, b, inside, node, {}, where, last + 1);
  return s;
}

// Hierarchical all-gather of blocks of p.count elements on N nodes of L ranks:
//   1. all-gather across nodes among the N ranks of local index l, each block landing at
//      its rank's place in the output: rank (k, l) then holds column l, the blocks of
//      every rank with local index l;
//   2. intra-node all-gather of the columns: every rank holds every block.
// N-1 blocks per rank cross nodes, L(N-1) per node, against P-1 on a flat ring's edge
// out of a node. Each level is a ring whose blocks are mapped to the job's: where a
// column's blocks are not next to each other in the output (nodes of consecutive ranks),
// its messages are cut at block boundaries. Unequal nodes, one node, or nodes of one
// rank: one flat ring in node order.
inline schedule hierarchical_all_gather(const ring_params& p, std::span<const int> node_of) {
  schedule s =
      empty_schedule(collective::all_gather, algorithm::hierarchical, p.rank, p.ranks, p.count, p.in_place);
  const node_groups g = node_groups::of(node_of, p.rank, p.ranks);
  if (g.per_node <= 1 || g.nodes == 1) return ring_in_node_order(collective::all_gather, p, g, s.algo);
  schedule_builder b(s);
  std::vector<detail::placed> where;
  detail::part_map m;
  m.unit = p.count;
  const std::vector<int> across = g.across();
  m.out.units = detail::blocks_of(across);
  detail::append_part(s, b, ring(collective::all_gather, {g.node, g.nodes, p.count, p.segment, p.in_place}),
                      across, m, where);
  const std::size_t column = p.count * static_cast<std::size_t>(g.nodes);
  detail::part_map cols;
  cols.unit = p.count;
  cols.out.units = detail::columns(g);
  std::vector<detail::placed> cols_where;
  detail::append_part(s, b, ring(collective::all_gather, {g.local, g.per_node, column, p.segment, true}),
                      g.members(), cols, cols_where);
  return s;
}

// Hierarchical reduce-scatter, the all-gather reversed:
//   1. intra-node reduce-scatter of the columns: rank (k, l) ends with its node's sum of
//      column l (the blocks of the ranks with local index l), in scratch;
//   2. reduce-scatter of that column across nodes among the N ranks of local index l:
//      rank (k, l) ends with the sum of its own block.
// In place the caller's other blocks stay as they were: the columns' sums go to scratch.
// Unequal nodes, one node, or nodes of one rank: one flat ring in node order.
inline schedule hierarchical_reduce_scatter(const ring_params& p, std::span<const int> node_of) {
  schedule s = empty_schedule(collective::reduce_scatter, algorithm::hierarchical, p.rank, p.ranks, p.count,
                              p.in_place);
  const node_groups g = node_groups::of(node_of, p.rank, p.ranks);
  if (g.per_node <= 1 || g.nodes == 1) return ring_in_node_order(collective::reduce_scatter, p, g, s.algo);
  schedule_builder b(s);
  std::vector<detail::placed> where;
  const buffer data = p.in_place ? buffer::output : buffer::input;
  const std::size_t result = p.in_place ? static_cast<std::size_t>(p.rank) * p.count : 0;
  detail::part_map m;
  m.unit = p.count;
  m.out = {buffer::output, result};
  const std::size_t column = p.count * static_cast<std::size_t>(g.nodes);
  const std::size_t sums = 2 * column;  // scratch: the ring's two slots, then the column's sum
  detail::part_map cols = m;
  cols.in = {data, 0, detail::columns(g)};
  cols.out = {buffer::scratch, sums};
  detail::append_part(s, b, ring(collective::reduce_scatter, {g.local, g.per_node, column, p.segment, false}),
                      g.members(), cols, where);
  m.in = {buffer::scratch, sums};
  m.tmp.at = sums + column;
  std::vector<detail::placed> across_where;
  detail::append_part(s, b, ring(collective::reduce_scatter, {g.node, g.nodes, p.count, p.segment, false}),
                      g.across(), m, across_where);
  return s;
}

namespace detail {

// Each node's leader in a rooted collective: the root on its node; on the others the rank
// of the root's local index, or the node's last where the node is smaller.
inline std::vector<int> leaders(const node_groups& g, int root) {
  int root_local = 0;
  for (const auto& m : g.rank_of) {
    if (const auto it = std::find(m.begin(), m.end(), root); it != m.end())
      root_local = static_cast<int>(it - m.begin());
  }
  std::vector<int> v;
  for (const auto& m : g.rank_of)
    v.push_back(m[std::min(static_cast<std::size_t>(root_local), m.size() - 1)]);
  return v;
}

// The steps of s from `first` on: what a later part waits for.
inline std::vector<std::uint32_t> steps_since(const schedule& s, std::size_t first) {
  std::vector<std::uint32_t> v;
  for (std::size_t k = first; k < s.steps.size(); ++k) v.push_back(static_cast<std::uint32_t>(k));
  return v;
}

}  // namespace detail

// Hierarchical broadcast and reduce, on nodes of any sizes, through one leader per node
// (the root on its node; elsewhere the rank of the root's local index, or the node's
// last where the node is smaller):
//   broadcast: the leaders' broadcast from the root across nodes, then each leader's
//              broadcast inside its node;
//   reduce:    each node's reduce to its leader, then the leaders' reduce to the root.
// Each level is a binomial tree where the buffer fits in one segment, else a chain, and
// the levels pipeline: a leader passes each segment on as soon as it has it, as the
// regions order them. The data crosses each node's link once (a chain) and the latency
// is log N rounds across plus log L inside (a tree), on any numbering of the ranks.
// Every rank must hear from every rank (rooted.hpp), and the levels' own rounds join the
// nodes only through their leaders: so a dissemination inside each node comes first,
// the level across waits for it (a node's ranks reach its leader, and through the
// leaders every other leader), and another comes last, waiting for the leader's steps
// across (every leader reaches its node's ranks). 2 log L more rounds inside a node.
// A reduce's leaders other than the root sum their node's data in scratch.
inline schedule hierarchical_rooted(collective c, const rooted_params& p, std::span<const int> node_of) {
  schedule s = empty_schedule(c, algorithm::hierarchical, p.rank, p.ranks, p.count, p.in_place, p.root);
  const node_groups g = node_groups::of(node_of, p.rank, p.ranks);
  const algorithm inner = p.segment == 0 || p.count <= p.segment ? algorithm::binomial : algorithm::chain;
  if (g.nodes == 1) {  // one level: the flat tree or chain
    s = rooted(c, inner, p);
    s.algo = algorithm::hierarchical;
    return s;
  }
  const std::vector<int> lead = detail::leaders(g, p.root);
  const auto& node = g.members();
  const int L = static_cast<int>(node.size());
  const bool bcast = c == collective::broadcast;
  const bool root = p.rank == p.root;
  const bool leads = p.rank == lead[static_cast<std::size_t>(g.node)];
  const buffer own = p.in_place ? buffer::output : buffer::input;
  const std::size_t n = p.count;
  schedule_builder b(s);
  std::vector<detail::placed> where;
  if (L > 1) detail::append_part(s, b, dissemination(g.local, L), node, {}, where);
  const std::vector<std::uint32_t> barrier = detail::steps_since(s, 0);

  // Inside the node, to or from its leader. A reduce sums at the root in its output, at
  // another leader in scratch [0, n); a broadcast's leader sends from its output, where
  // the level across (or, out of place, the root's own copy) put the data.
  rooted_params ip{{g.local, L, n, p.segment, true},
                   detail::index_in(node, lead[static_cast<std::size_t>(g.node)])};
  detail::part_map inside;
  if (!bcast && !root) {
    ip.in_place = false;
    inside.in = {own, 0};
    inside.out = {buffer::scratch, 0};
  } else if (!bcast) {
    ip.in_place = p.in_place;
  }
  const schedule in_part = rooted(c, inner, ip);
  inside.tmp = {buffer::scratch, n};
  if (!bcast && L > 1) detail::append_part(s, b, in_part, node, inside, where);

  // Across nodes, among the leaders.
  const std::size_t before_across = s.steps.size();
  if (leads && g.nodes > 1) {
    const bool summed = !bcast && L > 1;  // the node's sum is this leader's data
    rooted_params ap{{g.node, g.nodes, n, p.segment, p.in_place},
                     g.node_of()[static_cast<std::size_t>(p.root)]};
    detail::part_map across;
    if (!bcast && root) {
      ap.in_place = summed || p.in_place;
    } else if (!bcast) {
      ap.in_place = false;
      across.in = {summed ? buffer::scratch : own, 0};
      across.out = {buffer::scratch, 0};  // a reduce writes only the root's output
    }
    across.tmp = {buffer::scratch, n + in_part.scratch_count};
    std::vector<detail::placed> across_where;
    detail::append_part(s, b, rooted(c, inner, ap), lead, across, across_where, 0, ~0u, barrier);
  }
  const std::vector<std::uint32_t> across_steps = detail::steps_since(s, before_across);
  if (bcast && L > 1) detail::append_part(s, b, in_part, node, inside, where);
  std::vector<detail::placed> last_where;
  if (L > 1) detail::append_part(s, b, dissemination(g.local, L), node, {}, last_where, 0, ~0u, across_steps);
  return s;
}

// The leader way (algorithm::leader), the small all-reduce's, on nodes of any sizes:
//   1. each node's binomial reduce to its first rank, the node's leader;
//   2. the leaders' all-reduce across nodes by recursive doubling;
//   3. each leader's binomial broadcast of the result inside its node.
// log L + log N + log L rounds, only log N of them across and one rank per node on the
// link, against the hierarchical composition's 2(L-1) inside and 2(N-1) (or 2 log N)
// across; but the whole buffer crosses log N times and is reduced log L times, so it
// suits small buffers. Every rank hears from every rank: the broadcast a rank receives
// carries its leader's result, which waited for every leader's, which waited for every
// rank of its node: so the trees' own signals (rooted.hpp) are left out, and a rank sends
// log L + log N messages at most. On one node it is a reduce and a broadcast. Out of
// place the input is only read; the reduce's partial sums are in scratch (rooted.hpp).
inline schedule leader_all_reduce(const ring_params& p, std::span<const int> node_of) {
  schedule s =
      empty_schedule(collective::all_reduce, algorithm::leader, p.rank, p.ranks, p.count, p.in_place);
  const node_groups g = node_groups::of(node_of, p.rank, p.ranks);
  const std::vector<int> lead = detail::leaders(g, 0);  // every node's first rank
  const auto& node = g.members();
  const int L = static_cast<int>(node.size());
  schedule_builder b(s);
  if (p.ranks == 1 && !p.in_place && p.count > 0)
    b.copy({buffer::input, 0, p.count}, {buffer::output, 0, p.count}, 0);
  std::vector<detail::placed> where;
  detail::part_map inside;
  inside.signals = false;
  if (L > 1) {
    const rooted_params rp{{g.local, L, p.count, p.segment, p.in_place}, 0};
    detail::append_part(s, b, rooted(collective::reduce, algorithm::binomial, rp), node, inside, where);
  }
  if (p.rank == lead[static_cast<std::size_t>(g.node)] && g.nodes > 1) {
    detail::part_map across;
    across.tmp.at = s.scratch_count;
    std::vector<detail::placed> across_where;
    const recursive_params rp{g.node, g.nodes, p.count, p.segment, L > 1 || p.in_place};
    detail::append_part(s, b, recursive_doubling(collective::all_reduce, rp), lead, across, across_where);
  }
  if (L > 1) {
    inside.tmp.at = s.scratch_count;
    const rooted_params rp{{g.local, L, p.count, p.segment, true}, 0};
    std::vector<detail::placed> bcast_where;
    detail::append_part(s, b, rooted(collective::broadcast, algorithm::binomial, rp), node, inside,
                        bcast_where);
  }
  return s;
}

// The hierarchical form of a collective.
inline schedule hierarchical_schedule(collective c, const rooted_params& p, std::span<const int> node_of) {
  const ring_params rp{p.rank, p.ranks, p.count, p.segment, p.in_place};
  switch (c) {
    case collective::all_gather: return hierarchical_all_gather(rp, node_of);
    case collective::reduce_scatter: return hierarchical_reduce_scatter(rp, node_of);
    case collective::broadcast:
    case collective::reduce: return hierarchical_rooted(c, p, node_of);
    default: return hierarchical_all_reduce(rp, node_of);
  }
}

}  // namespace algorithms
}  // namespace collx
