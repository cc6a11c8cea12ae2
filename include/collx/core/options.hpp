#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace collx {

// The values travel in every message's envelope: new ones are added at the end.
enum class collective : std::uint8_t {
  all_reduce,
  all_gather,
  reduce_scatter,
  broadcast,
  reduce,
  barrier,
  all_to_all,
  gather,
  scatter,
  all_to_all_v,
  send_recv
};

inline constexpr collective all_collectives[] = {
    collective::all_reduce, collective::all_gather,   collective::reduce_scatter, collective::broadcast,
    collective::reduce,     collective::barrier,      collective::all_to_all,     collective::gather,
    collective::scatter,    collective::all_to_all_v, collective::send_recv};

constexpr std::string_view to_string(collective c) noexcept {
  switch (c) {
    case collective::all_reduce: return "all_reduce";
    case collective::all_gather: return "all_gather";
    case collective::reduce_scatter: return "reduce_scatter";
    case collective::broadcast: return "broadcast";
    case collective::reduce: return "reduce";
    case collective::barrier: return "barrier";
    case collective::all_to_all: return "all_to_all";
    case collective::gather: return "gather";
    case collective::scatter: return "scatter";
    case collective::all_to_all_v: return "all_to_all_v";
    case collective::send_recv: return "send_recv";
  }
  return "?";
}

// Whether one rank, the root, is the source (broadcast, scatter) or the destination
// (reduce, gather).
constexpr bool rooted(collective c) noexcept {
  return c == collective::broadcast || c == collective::reduce || c == collective::gather ||
         c == collective::scatter;
}

// Whether the blocks a rank sends and receives are sized per peer, by counts each rank
// gives for its own side (all_to_all_v; send_recv, which names one peer to send to and
// one to receive from): every message then carries its pair's block count in its
// envelope, so that sides that disagree find out.
constexpr bool per_peer(collective c) noexcept {
  return c == collective::all_to_all_v || c == collective::send_recv;
}

// Whether the call involves only the ranks it names (send_recv): it is not one of the
// communicator's numbered collective calls, which every rank makes.
constexpr bool point_to_point(collective c) noexcept { return c == collective::send_recv; }

// Whether the call combines values with a reduce_op.
constexpr bool reduces(collective c) noexcept {
  return c == collective::all_reduce || c == collective::reduce_scatter || c == collective::reduce;
}

// The algorithms this build knows. automatic lets the library choose by the cost model.
// recursive_doubling ("rd") is recursive doubling for all-reduce and all-gather and its
// mirror, recursive halving, for reduce-scatter. binomial and chain are the rooted
// collectives' trees (algorithms/rooted.hpp), binomial also gather's and scatter's;
// dissemination is the barrier's; pairwise (all-to-all) and linear (gather, scatter) are
// algorithms/personalized.hpp's; bruck is also an all-to-all (algorithms/bruck.hpp);
// scatter_allgather is van de Geijn's broadcast, and rabenseifner also a reduce
// (algorithms/rooted.hpp); pairwise also runs all_to_all_v, and direct, send_recv
// (algorithms/exchange.hpp). hierarchical and leader know the job's nodes
// (algorithms/hierarchical.hpp): hierarchical composes each collective's levels inside
// and across nodes; leader is the small all-reduce's way, each node's sum by its first
// rank, the leaders' all-reduce across, and the result handed back inside the node.
enum class algorithm : std::uint8_t {
  automatic,
  ring,
  recursive_doubling,
  rabenseifner,
  bruck,
  tree,
  binomial,
  chain,
  dissemination,
  pairwise,
  linear,
  scatter_allgather,
  direct,
  hierarchical,
  leader
};

inline constexpr algorithm all_algorithms[] = {algorithm::ring,
                                               algorithm::recursive_doubling,
                                               algorithm::rabenseifner,
                                               algorithm::bruck,
                                               algorithm::tree,
                                               algorithm::binomial,
                                               algorithm::chain,
                                               algorithm::dissemination,
                                               algorithm::pairwise,
                                               algorithm::linear,
                                               algorithm::scatter_allgather,
                                               algorithm::direct,
                                               algorithm::hierarchical,
                                               algorithm::leader};
inline constexpr algorithm last_algorithm = algorithm::leader;

constexpr std::string_view to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::automatic: return "auto";
    case algorithm::ring: return "ring";
    case algorithm::recursive_doubling: return "rd";
    case algorithm::rabenseifner: return "rabenseifner";
    case algorithm::bruck: return "bruck";
    case algorithm::tree: return "tree";
    case algorithm::binomial: return "binomial";
    case algorithm::chain: return "chain";
    case algorithm::dissemination: return "dissemination";
    case algorithm::pairwise: return "pairwise";
    case algorithm::linear: return "linear";
    case algorithm::scatter_allgather: return "scatter_allgather";
    case algorithm::direct: return "direct";
    case algorithm::hierarchical: return "hierarchical";
    case algorithm::leader: return "leader";
  }
  return "?";
}

// The names of COLLX_ALGO and of command lines.
constexpr std::optional<algorithm> parse_algorithm(std::string_view s) noexcept {
  if (s == "auto") return algorithm::automatic;
  for (auto a : all_algorithms) {
    if (s == to_string(a)) return a;
  }
  return std::nullopt;
}

// Which collectives each algorithm implements.
constexpr bool implements(algorithm a, collective c) noexcept {
  switch (a) {
    case algorithm::automatic: return true;
    case algorithm::ring:
    case algorithm::recursive_doubling:
      return c == collective::all_reduce || c == collective::all_gather || c == collective::reduce_scatter;
    case algorithm::rabenseifner: return c == collective::all_reduce || c == collective::reduce;
    case algorithm::tree: return c == collective::all_reduce;
    case algorithm::bruck: return c == collective::all_gather || c == collective::all_to_all;
    case algorithm::binomial:
      return c == collective::broadcast || c == collective::reduce || c == collective::gather ||
             c == collective::scatter;
    case algorithm::chain: return c == collective::broadcast || c == collective::reduce;
    case algorithm::dissemination: return c == collective::barrier;
    case algorithm::pairwise: return c == collective::all_to_all || c == collective::all_to_all_v;
    case algorithm::linear: return c == collective::gather || c == collective::scatter;
    case algorithm::scatter_allgather: return c == collective::broadcast;
    case algorithm::direct: return c == collective::send_recv;
    case algorithm::hierarchical:
      return c == collective::all_reduce || c == collective::all_gather || c == collective::reduce_scatter ||
             c == collective::broadcast || c == collective::reduce;
    case algorithm::leader: return c == collective::all_reduce;
  }
  return false;
}

// Per-call options. Zero means "the communicator's default" for every field but tag.
struct options {
  algorithm algo = algorithm::automatic;
  std::chrono::milliseconds timeout{0};
  // Must be equal on every rank for the same call; lets a caller label operations so
  // that a mix-up between two call sites is reported as a mismatch.
  std::uint32_t tag = 0;
  std::size_t segment_bytes = 0;
};

}  // namespace collx
