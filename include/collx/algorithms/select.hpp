#pragma once

// Which algorithm runs a call: the user's choice (per call, per communicator, or
// COLLX_ALGO), else the one the alpha-beta-gamma model predicts fastest for this
// collective, size and rank count. The model is priced here in closed form, from each
// algorithm's structure, so a choice costs nanoseconds whatever p is. The formulas are
// the textbook ones (Thakur, Rabenseifner and Gropp 2005); they leave out what the
// step-by-step replay of the schedules (schedule/cost.hpp) also sees: local copies
// overlapping transfers, the uneven halves of a folded non-power-of-two group, link
// contention. Tests bound the difference and check that the choice they make is close
// to the best the replay finds.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <optional>
#include <span>
#include <string>

#include "collx/algorithms/barrier.hpp"
#include "collx/algorithms/bruck.hpp"
#include "collx/algorithms/exchange.hpp"
#include "collx/algorithms/hierarchical.hpp"
#include "collx/algorithms/personalized.hpp"
#include "collx/algorithms/recursive.hpp"
#include "collx/algorithms/ring.hpp"
#include "collx/algorithms/rooted.hpp"
#include "collx/algorithms/tree.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/schedule/cost.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

struct call_shape {
  collective coll = collective::all_reduce;
  int rank = 0;
  int ranks = 1;
  std::size_t count = 0;
  std::size_t segment = 1;  // elements
  bool in_place = false;
  int root = 0;
  // The collectives sized per peer (per_peer(coll)): this rank's counts per rank, and
  // send_recv's peers (-1: none).
  std::span<const std::size_t> send_counts{}, recv_counts{};
  int dst = -1, src = -1;
  // Each rank's node (algorithm::hierarchical); empty: every rank on one node.
  std::span<const int> node_of{};
};

namespace detail {

// Rabenseifner reduce: the fold of a non-power-of-two p (one full message, reduced),
// then recursive halving and a binomial gather over p2, each (p2-1)/p2 n bytes in
// log2 p2 steps.
inline double predicted_rabenseifner_reduce(int p, double n, const cost_params& m) {
  const fold f(p);
  const double P2 = f.p2;
  const double part = (P2 - 1) / P2 * n;
  const double fold_cost = f.extra > 0 ? m.alpha + n * m.beta + n * m.gamma : 0.0;
  return fold_cost + 2.0 * f.log2p2() * m.alpha + 2 * part * m.beta + part * m.gamma;
}

// Binomial gather and scatter: the root's link carries p-1 blocks in L messages. The
// root's last child h = 2^(L-1) keeps its subtree's blocks in scratch, its own copied
// in (a gather, before it sends) or out (a scatter, after it received): where a copy is
// slower than the messages it runs beside, it shows.
inline double predicted_binomial_personalized(collective c, int p, double n, const cost_params& m) {
  const double L = ceil_log2(p);
  const double h = std::ldexp(1.0, static_cast<int>(L) - 1);
  const double below = std::min(h, p - h);  // the blocks of h's subtree
  const double copy = below > 1 ? n * m.gamma : 0.0;
  const double link = L * m.alpha + (p - 1) * n * m.beta;
  const double rest = (L - 1) * m.alpha + (below - 1) * n * m.beta;  // h's own subtree's rounds
  if (c == collective::gather) {
    const double before = (L - 1) * m.alpha + (h - 1) * n * m.beta;  // the root's other children
    return std::max(
        {link, std::max(before, std::max(rest, copy)) + m.alpha + below * n * m.beta, n * m.gamma});
  }
  return std::max({link, m.alpha + below * n * m.beta + std::max(rest, copy), n * m.gamma});
}

// The rooted collectives, the barrier, all-to-all and the exchanges sized per peer
// (algorithms/rooted.hpp, barrier.hpp, personalized.hpp, bruck.hpp, exchange.hpp; for
// all-to-all, gather, scatter and all-to-all-v, n is one block). The
// chain is priced pipelined, in segments of segment_bytes (0: one segment), as it runs,
// with its L signal rounds; the others unsegmented (van de Geijn's broadcast and
// Rabenseifner's reduce are chosen for buffers of a few segments, where the pipeline
// gains little). Out of place, a broadcast's root also copies its buffer, beside the sends.
inline double predicted_rooted(algorithm a, collective c, int p, double n, double segment_bytes,
                               const cost_params& m) {
  // On one node the hierarchical broadcast and reduce are a tree or a chain.
  if (a == algorithm::hierarchical)
    a = segment_bytes <= 0 || n <= segment_bytes ? algorithm::binomial : algorithm::chain;
  const double L = ceil_log2(p);
  if (c == collective::barrier) return L * m.alpha;
  // Out of place, the own block's local copy runs beside the messages.
  if (a == algorithm::direct) return 2 * m.alpha + n * m.beta;  // the data, then its receipt
  // all_to_all_v's n is an average block; its signal rounds follow the blocks.
  const double signals = c == collective::all_to_all_v ? L * m.alpha : 0.0;
  if (a == algorithm::pairwise) return std::max((p - 1) * (m.alpha + n * m.beta), n * m.gamma) + signals;
  if (a == algorithm::linear) return std::max((p - 1) * (m.alpha + n * m.beta) + L * m.alpha, n * m.gamma);
  if (a == algorithm::bruck) {
    // All-to-all: each round packs its blocks, then sends them while the blocks that
    // arrived the round before (the own block, in the first) are put in place; the last
    // round's arrivals are put in place at the end.
    double t = 0;
    int d = 1;
    for (; d < p; d *= 2) {
      const auto moving = static_cast<double>(bruck_moving(p, d));
      const double settled = d == 1 ? 1.0 : std::min(d, p) - d / 2;
      t += (moving > 1 ? moving * n * m.gamma : 0.0) +
           std::max(m.alpha + moving * n * m.beta, settled * n * m.gamma);
    }
    return t + (p - d / 2) * n * m.gamma;
  }
  if (a == algorithm::binomial && (c == collective::gather || c == collective::scatter))
    return predicted_binomial_personalized(c, p, n, m);
  if (a == algorithm::scatter_allgather)
    return std::max((L + p - 1) * m.alpha + 2.0 * (p - 1) / p * n * m.beta, n * m.gamma);
  if (a == algorithm::rabenseifner) return predicted_rabenseifner_reduce(p, n, m);
  const double ga = c == collective::reduce ? m.gamma : 0.0;
  const double root_copy = c == collective::broadcast ? n * m.gamma : 0.0;
  if (a == algorithm::binomial) return std::max(L * (m.alpha + n * m.beta + n * ga), root_copy);
  const double s = segment_bytes > 0 ? std::min(segment_bytes, n) : n;
  const double S = std::ceil(n / s);
  const double fill = (p - 1) * (m.alpha + s * m.beta + s * ga);
  const double stream = (S - 1) * std::max(m.alpha + s * m.beta, s * ga);
  return std::max(fill + stream + L * m.alpha, root_copy);
}

}  // namespace detail

// Predicted seconds for one call, unsegmented but for the chain. bytes is count * element
// size (per rank, as in the API); the whole buffer is bytes for all-reduce, broadcast
// and reduce, and p*bytes for all-gather and reduce-scatter.
inline double predicted_seconds(algorithm a, collective c, int p, double bytes, const cost_params& m,
                                double segment_bytes = 0) {
  if (!implements(a, c) || a == algorithm::automatic) return std::numeric_limits<double>::infinity();
  if (p <= 1 || (bytes <= 0 && c != collective::barrier)) return 0.0;
  if (rooted(c) || c == collective::barrier || c == collective::all_to_all || per_peer(c))
    return detail::predicted_rooted(a, c, p, bytes, segment_bytes, m);
  const double P = p;
  const double al = m.alpha;
  const double be = m.beta;
  const double ga = m.gamma;
  const detail::fold f(p);
  const double P2 = f.p2;
  const double L = f.log2p2();
  const bool folded = f.extra > 0;
  if (c == collective::all_reduce) {
    const double n = bytes;
    const double fold_cost = folded ? 2 * (al + n * be) + n * ga : 0.0;
    switch (a) {
      case algorithm::ring:
      case algorithm::hierarchical:  // on one node, a ring (topology-aware prices: predicted_on_nodes)
        return 2 * (P - 1) * (al + n / P * be) + (P - 1) * n / P * ga;
      case algorithm::recursive_doubling: return L * (al + n * be + n * ga) + fold_cost;
      case algorithm::leader:  // on one node, a binomial reduce and broadcast
        return detail::predicted_rooted(algorithm::binomial, collective::reduce, p, n, segment_bytes, m) +
               detail::predicted_rooted(algorithm::binomial, collective::broadcast, p, n, segment_bytes, m);
      case algorithm::rabenseifner:
        return 2 * L * al + 2 * (P2 - 1) / P2 * n * be + (P2 - 1) / P2 * n * ga + fold_cost;
      case algorithm::tree:
        // Unsegmented, each level up receives and adds two halves, each level down sends
        // two: depth L. Pipelining (which the executor does) hides most of the n terms.
        if (p == 2) return 2 * al + n * be + n / 2 * ga;  // each tree is a single edge
        return L * (4 * al + 2 * n * be + n * ga);
      default: break;
    }
  } else if (c == collective::reduce_scatter) {
    const double N = P * bytes;
    switch (a) {
      case algorithm::ring:
      case algorithm::hierarchical:  // on one node, a ring
        return (P - 1) * (al + bytes * be + bytes * ga);
      case algorithm::recursive_doubling:
        return L * al + (P2 - 1) / P2 * N * (be + ga) +
               (folded ? (al + N * be + N * ga) + (al + bytes * be) : 0.0);
      default: break;
    }
  } else {
    const double N = P * bytes;
    switch (a) {
      // Out of place the rank's own block is also copied into the output: ring sends its
      // first block straight from the input, beside that copy; the others send after it.
      case algorithm::ring:
      case algorithm::hierarchical:  // on one node, a ring
        return std::max((P - 1) * (al + bytes * be), bytes * ga);
      case algorithm::recursive_doubling:
        // Folding: one block in, then the rest back (two messages unless the pair is ranks 0 and 1).
        return bytes * ga + L * al + (P2 - 1) / P2 * N * be +
               (folded ? (al + bytes * be) + ((f.extra > 1 ? 2 : 1) * al + (N - bytes) * be) : 0.0);
      case algorithm::bruck: {
        double t = 0;
        for (int d = 1; d < p; d *= 2) t += al + std::min(d, p - d) * bytes * be;
        return t + N * ga;  // the rotation into rank order, a local copy
      }
      default: break;
    }
  }
  return std::numeric_limits<double>::infinity();
}

// How a job's ranks sit on nodes, as the automatic choice prices it.
struct node_shape {
  int nodes = 1;
  int per_node = 0;  // ranks on every node; 0 when nodes differ
  cost_params inter{};

  // The ranks of the largest node among p (equal nodes: per_node).
  int largest(int p) const noexcept { return per_node > 0 ? per_node : (p + nodes - 1) / nodes; }

  static node_shape of(std::span<const int> node_of, const cost_params& inter) {
    const node_groups g = node_groups::of(node_of, 0, static_cast<int>(node_of.size()));
    return {g.nodes, g.per_node, inter};
  }
};

// Hierarchical broadcast and reduce (hierarchical.hpp): a dissemination inside the node,
// the level across among the nodes' leaders (one per node: each node's link to itself),
// the level inside, a dissemination again; trees where the buffer fits in a segment, else
// chains that pipeline into each other: the second level adds only its fill.
inline double predicted_hierarchical_rooted(collective c, int p, double bytes, const cost_params& m,
                                            const node_shape& ns, double segment_bytes) {
  const int N = ns.nodes;
  const int L = ns.largest(p);
  const double barriers = 2.0 * detail::ceil_log2(L) * m.alpha;
  if (segment_bytes <= 0 || bytes <= segment_bytes) {
    return barriers + predicted_seconds(algorithm::binomial, c, N, bytes, ns.inter) +
           predicted_seconds(algorithm::binomial, c, L, bytes, m);
  }
  const double ga = c == collective::reduce ? m.gamma : 0.0;
  const double fill = (L - 1) * (m.alpha + segment_bytes * (m.beta + ga));
  return barriers + fill + predicted_seconds(algorithm::chain, c, N, bytes, ns.inter, segment_bytes);
}

// Predicted seconds on nodes: `m` prices the links inside a node, ns.inter those between
// nodes. A flat algorithm's busiest edges cross nodes, so the links between price it:
// a ring's one edge out of each node (ranks numbered node by node) has the node's link
// to itself, the other algorithms' L ranks of a node share it. The hierarchical one pays
// each level its own links, the L groups across nodes sharing each node's link.
inline double predicted_on_nodes(algorithm a, collective c, int p, double bytes, const cost_params& m,
                                 const node_shape& ns, double segment_bytes = 0) {
  if (ns.nodes <= 1) return predicted_seconds(a, c, p, bytes, m, segment_bytes);
  const int L = std::max(ns.per_node, 1);
  cost_params shared = ns.inter;
  shared.beta *= L;
  if (a == algorithm::ring) return predicted_seconds(a, c, p, bytes, ns.inter, segment_bytes);
  if (a == algorithm::leader && c == collective::all_reduce) {
    // Inside each node as on one; across, one rank per node on its link.
    return predicted_seconds(a, c, ns.largest(p), bytes, m, segment_bytes) +
           predicted_seconds(algorithm::recursive_doubling, c, ns.nodes, bytes, ns.inter);
  }
  if (a != algorithm::hierarchical) return predicted_seconds(a, c, p, bytes, shared, segment_bytes);
  if (!implements(a, c)) return std::numeric_limits<double>::infinity();
  if (rooted(c)) return predicted_hierarchical_rooted(c, p, bytes, m, ns, segment_bytes);
  // Unequal nodes: a flat ring in node order.
  if (ns.per_node == 0) return predicted_seconds(algorithm::ring, c, p, bytes, ns.inter);
  // With one rank per node, out of place, the input is copied into the output first.
  const double copy = c == collective::all_reduce && L == 1 ? bytes * m.gamma : 0.0;
  auto ring = [](collective k, int q, double b, const cost_params& cp) {
    return predicted_seconds(algorithm::ring, k, q, b, cp);
  };
  const int N = ns.nodes;
  if (c == collective::all_gather) return ring(c, N, bytes, shared) + ring(c, L, N * bytes, m);
  if (c == collective::reduce_scatter) return ring(c, L, N * bytes, m) + ring(c, N, bytes, shared);
  const double shard = bytes / L;
  const algorithm across = hierarchical_ring_across(N) ? algorithm::ring : algorithm::rabenseifner;
  const double levels =
      ring(collective::reduce_scatter, L, shard, m) + ring(collective::all_gather, L, shard, m);
  return copy + levels + predicted_seconds(across, collective::all_reduce, N, shard, shared);
}

inline algorithm choose(collective c, int p, double bytes, const cost_params& m, double segment_bytes = 0,
                        const node_shape& ns = {}) {
  algorithm best = algorithm::ring;
  double best_t = std::numeric_limits<double>::infinity();
  for (auto a : all_algorithms) {
    const double t = predicted_on_nodes(a, c, p, bytes, m, ns, segment_bytes);
    if (t < best_t) {
      best_t = t;
      best = a;
    }
  }
  return best;
}

// The GPU hierarchy's ways (cuda/hierarchical.cuh composes communicators, not a schedule,
// until its path has run on a GPU), priced by the same model: `intra` inside a node,
// `inter` on one node's link. The defaults describe shared memory and a 1 Gbit/s network
// with 50 us latency; give what collx-calibrate or a measurement says of yours.
struct hierarchical_options {
  cost_params intra{2e-6, 1.0 / 8e9, 1.0 / 16e9};
  cost_params inter{50e-6, 1.0 / 125e6, 1.0 / 16e9};
  hier_way way = hier_way::automatic;
};

// Predicted seconds of an all-reduce of `bytes` (the whole buffer) each way on nodes `t`
// (equal nodes): flat, a ring over every rank; hierarchical, the schedule's price;
// leader, the node's all-reduce, the leaders' across, and the node's all-gather.
inline double hier_predict(const node_groups& t, const hierarchical_options& ho, hier_way way, double bytes) {
  const node_shape ns{t.nodes, t.per_node, ho.inter};
  const int P = t.nodes * t.per_node;
  if (way == hier_way::flat) {
    return predicted_on_nodes(algorithm::ring, collective::all_reduce, P, bytes, ho.intra, ns);
  }
  if (way != hier_way::leader) {
    return predicted_on_nodes(algorithm::hierarchical, collective::all_reduce, P, bytes, ho.intra, ns);
  }
  auto best = [](collective c, int p, double b, const cost_params& m) {
    return predicted_seconds(choose(c, p, b, m), c, p, b, m);
  };
  return best(collective::all_reduce, t.per_node, bytes, ho.intra) +
         best(collective::all_reduce, t.nodes, bytes, ho.inter) +
         best(collective::all_gather, t.per_node, bytes, ho.intra);
}

// The cheapest way for `bytes` by the model, unless the options name one.
inline hier_way hier_choose(const node_groups& t, const hierarchical_options& ho, double bytes) {
  if (ho.way != hier_way::automatic) return ho.way;
  if (t.nodes == 1 || t.per_node == 1) return hier_way::flat;
  hier_way w = hier_way::flat;
  for (hier_way c : {hier_way::hierarchical, hier_way::leader}) {
    if (hier_predict(t, ho, c, bytes) < hier_predict(t, ho, w, bytes)) w = c;
  }
  return w;
}

// The algorithm a call runs: the call's own choice, else the communicator's (which
// yields to the automatic one for a collective it does not implement: bruck, say, set
// for all-gathers, when an all-reduce comes), else the model's. bytes is per rank.
inline algorithm resolve(algorithm call, algorithm communicator_default, collective c, int p, double bytes,
                         const cost_params& m, double segment_bytes = 0, const node_shape& ns = {}) {
  algorithm a = call != algorithm::automatic ? call : communicator_default;
  if (a == algorithm::automatic || !implements(a, c)) a = choose(c, p, bytes, m, segment_bytes, ns);
  return a;
}

// COLLX_ALGO, if set: the algorithm for every call that does not name one. An unknown
// name is an error rather than a silent fallback.
inline algorithm algorithm_from_env(algorithm fallback) {
  const char* v = std::getenv("COLLX_ALGO");
  if (v == nullptr || *v == '\0') return fallback;
  if (auto a = parse_algorithm(v)) return *a;
  std::string names = "auto";
  for (auto a : all_algorithms) names.append(", ").append(to_string(a));
  throw error(errc::invalid_argument, "COLLX_ALGO", error::no_rank, error::no_rank,
              std::string("unknown algorithm '") + v + "'; use one of " + names);
}

inline schedule build(algorithm a, const call_shape& c) {
  const recursive_params rp{c.rank, c.ranks, c.count, c.segment, c.in_place};
  if (!implements(a, c.coll) || a == algorithm::automatic) {
    throw error(
        errc::unsupported, to_string(c.coll), c.rank, error::no_rank,
        "algorithm " + std::string(to_string(a)) + " does not implement " + std::string(to_string(c.coll)));
  }
  if (c.coll == collective::barrier) return dissemination(c.rank, c.ranks);
  if (per_peer(c.coll)) {
    const exchange_params ep{c.rank, c.ranks, c.send_counts, c.recv_counts, c.segment};
    return c.coll == collective::send_recv ? direct(ep, c.dst, c.src) : pairwise_v(ep);
  }
  const rooted_params rp_root{{c.rank, c.ranks, c.count, c.segment, c.in_place}, c.root};
  if (c.coll == collective::all_to_all)
    return a == algorithm::bruck ? bruck_all_to_all(rp) : pairwise(rp_root);
  if (c.coll == collective::gather || c.coll == collective::scatter) {
    return a == algorithm::binomial ? binomial_personalized(c.coll, rp_root) : linear(c.coll, rp_root);
  }
  if (rooted(c.coll)) {
    return a == algorithm::hierarchical ? hierarchical_schedule(c.coll, rp_root, c.node_of)
                                        : rooted(c.coll, a, rp_root);
  }
  if (c.count == 0) {
    // Every algorithm shares ring's empty round for count 0: it still carries the call's
    // signature (algorithm included) to a neighbour, so mismatches are caught.
    schedule s = ring(c.coll, {c.rank, c.ranks, 0, c.segment, c.in_place});
    s.algo = a;
    s.root = c.root;
    return s;
  }
  switch (a) {
    case algorithm::ring:
      if (const node_groups g = node_groups::of(c.node_of, c.rank, c.ranks); !g.in_rank_order()) {
        return ring_in_node_order(c.coll, {c.rank, c.ranks, c.count, c.segment, c.in_place}, g, a);
      }
      return ring(c.coll, {c.rank, c.ranks, c.count, c.segment, c.in_place});
    case algorithm::recursive_doubling: return recursive_doubling(c.coll, rp);
    case algorithm::rabenseifner: return rabenseifner(rp);
    case algorithm::bruck: return bruck(rp);
    case algorithm::tree: return double_binary_tree(rp);
    case algorithm::hierarchical: return hierarchical_schedule(c.coll, rp_root, c.node_of);
    case algorithm::leader:
      return leader_all_reduce({c.rank, c.ranks, c.count, c.segment, c.in_place}, c.node_of);
    case algorithm::binomial:
    case algorithm::chain:
    case algorithm::dissemination:
    case algorithm::pairwise:
    case algorithm::linear:
    case algorithm::scatter_allgather:
    case algorithm::direct:
    case algorithm::automatic: break;
  }
  return {};
}

}  // namespace collx::algorithms
