#pragma once

// Node discovery: which ranks share a node, learned through the store. Nodes are named
// by COLLX_NODE_ID when set (any string; ranks with the same value share a node), else
// by the host name; inside a node the ranks are ordered by global rank (local index).

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "collx/core/error.hpp"
#include "collx/launch/init.hpp"
#include "collx/rendezvous/store.hpp"

namespace collx {

// Where each rank lives: node index (nodes numbered in order of their lowest rank),
// local index, and the global rank of (node, local).
struct node_layout {
  int nodes = 1;
  int per_node = 1;
  int node = 0;
  int local = 0;
  std::vector<std::vector<int>> rank_of;  // rank_of[node][local]

  // Learns the layout through the store: each rank publishes its node id.
  static node_layout discover(store& st, int rank, int size, std::chrono::milliseconds timeout,
                              const std::string& prefix = "collx/topology") {
    std::string id = detail::env_str("COLLX_NODE_ID");
    if (id.empty()) id = detail::this_host();
    prefix_store nodes = prefix_store(st, prefix).view("node");
    nodes.set(std::to_string(rank), id);
    std::vector<std::string> ids(static_cast<std::size_t>(size));
    for (int q = 0; q < size; ++q) ids[static_cast<std::size_t>(q)] = nodes.get(std::to_string(q), timeout);
    node_layout t;
    std::map<std::string, int> index;
    for (int q = 0; q < size; ++q) {
      auto [it, fresh] = index.emplace(ids[static_cast<std::size_t>(q)], static_cast<int>(t.rank_of.size()));
      if (fresh) t.rank_of.emplace_back();
      t.rank_of[static_cast<std::size_t>(it->second)].push_back(q);
    }
    t.nodes = static_cast<int>(t.rank_of.size());
    t.per_node = static_cast<int>(t.rank_of[0].size());
    for (int k = 0; k < t.nodes; ++k) {
      const auto& r = t.rank_of[static_cast<std::size_t>(k)];
      if (static_cast<int>(r.size()) != t.per_node) {
        throw error(errc::unsupported, "topology", rank, error::no_rank,
                    "node '" + ids[static_cast<std::size_t>(r[0])] + "' holds " + std::to_string(r.size()) +
                        " ranks and node '" + ids[static_cast<std::size_t>(t.rank_of[0][0])] + "' holds " +
                        std::to_string(t.per_node) +
                        ": hierarchical collectives need the same number of ranks on every node");
      }
      for (int l = 0; l < t.per_node; ++l) {
        if (r[static_cast<std::size_t>(l)] == rank) {
          t.node = k;
          t.local = l;
        }
      }
    }
    return t;
  }
};

}  // namespace collx
