#pragma once

// Node discovery: which ranks share a node, learned through the store. Nodes are named
// by COLLX_NODE_ID when set (any string; ranks with the same value share a node), else
// by the host name; inside a node the ranks are ordered by global rank (local index).
// Nodes may hold different numbers of ranks.

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "collx/core/error.hpp"
#include "collx/launch/env.hpp"
#include "collx/rendezvous/store.hpp"

namespace collx {

// Where each rank lives: node index (nodes numbered in order of their lowest rank),
// local index, and the global rank of (node, local).
struct node_layout {
  int nodes = 1;
  int per_node = 1;  // ranks on every node; 0 when nodes hold different numbers
  int node = 0;
  int local = 0;
  std::vector<std::vector<int>> rank_of;  // rank_of[node][local]
  std::vector<std::string> names;         // each node's id (COLLX_NODE_ID or host name)

  // The layout of `ids`, each rank's node id, seen from `rank`.
  static node_layout of(const std::vector<std::string>& ids, int rank) {
    node_layout t;
    std::map<std::string, int> index;
    for (int q = 0; q < static_cast<int>(ids.size()); ++q) {
      auto [it, fresh] = index.emplace(ids[static_cast<std::size_t>(q)], static_cast<int>(t.rank_of.size()));
      if (fresh) {
        t.rank_of.emplace_back();
        t.names.push_back(it->first);
      }
      auto& members = t.rank_of[static_cast<std::size_t>(it->second)];
      if (q == rank) {
        t.node = it->second;
        t.local = static_cast<int>(members.size());
      }
      members.push_back(q);
    }
    t.nodes = static_cast<int>(t.rank_of.size());
    t.per_node = static_cast<int>(t.rank_of[0].size());
    for (const auto& m : t.rank_of) {
      if (static_cast<int>(m.size()) != t.per_node) t.per_node = 0;
    }
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

  // The ranks of this rank's node, in local order.
  const std::vector<int>& members() const { return rank_of[static_cast<std::size_t>(node)]; }

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
