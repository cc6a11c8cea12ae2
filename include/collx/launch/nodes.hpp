#pragma once

// Node discovery: which ranks share a node, learned through the store. Nodes are named
// by COLLX_NODE_ID when set (any string; ranks with the same value share a node), else
// by the host name; inside a node the ranks are ordered by global rank (local index).
// Nodes may hold different numbers of ranks.

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "collx/algorithms/hierarchical.hpp"
#include "collx/core/error.hpp"
#include "collx/launch/env.hpp"
#include "collx/rendezvous/store.hpp"

namespace collx {

// Where each rank lives (algorithms::node_groups: node index, nodes numbered in order of
// their lowest rank; local index; the global rank of (node, local)), and each node's name.
struct node_layout : algorithms::node_groups {
  std::vector<std::string> names;  // each node's id (COLLX_NODE_ID or host name)

  // The layout of `ids`, each rank's node id, seen from `rank`.
  static node_layout of(const std::vector<std::string>& ids, int rank) {
    std::map<std::string, int> index;  // id -> node, in order of first appearance
    std::vector<int> numbered;         // each rank's node, as a number
    node_layout t;
    for (const auto& id : ids) {
      const auto [it, fresh] = index.emplace(id, static_cast<int>(t.names.size()));
      if (fresh) t.names.push_back(id);
      numbered.push_back(it->second);
    }
    static_cast<algorithms::node_groups&>(t) =
        algorithms::node_groups::of(numbered, rank, static_cast<int>(ids.size()));
    return t;
  }

  // Learns the layout through the store: each rank publishes its node id, which is
  // COLLX_NODE_ID, else `hint` (what the launcher knows: MPI's shared-memory node), else
  // the host name.
  static node_layout discover(store& st, int rank, int size, std::chrono::milliseconds timeout,
                              const std::string& prefix = "collx/topology", const std::string& hint = {}) {
    std::string id = detail::env_str("COLLX_NODE_ID");
    if (id.empty()) id = hint;
    if (id.empty()) id = detail::this_host();
    prefix_store nodes = prefix_store(st, prefix).view("node");
    nodes.set(std::to_string(rank), id);
    std::vector<std::string> ids(static_cast<std::size_t>(size));
    for (int q = 0; q < size; ++q) ids[static_cast<std::size_t>(q)] = nodes.get(std::to_string(q), timeout);
    return of(ids, rank);
  }

  // For compositions that need the same number of ranks on every node.
  void require_uniform(int rank) const {
    if (per_node != 0) return;
    std::size_t k = 1;
    while (rank_of[k].size() == rank_of[0].size()) ++k;
    throw error(errc::unsupported, "topology", rank, error::no_rank,
                "node '" + names[k] + "' holds " + std::to_string(rank_of[k].size()) + " ranks and node '" +
                    names[0] + "' holds " + std::to_string(rank_of[0].size()) +
                    ": hierarchical collectives need the same number of ranks on every node");
  }
};

}  // namespace collx
