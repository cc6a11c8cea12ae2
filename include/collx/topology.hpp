#pragma once

// Topology and hierarchical collectives: ranks grouped by node, a communicator inside
// each node (shared memory) and communicators across nodes (tcp), and the collectives
// composed from them as NCCL and Horovod do.
//
//   collx::hierarchical h = collx::hierarchical::from_env();   // launched job, any launcher
//   h.all_reduce(std::span(grads), collx::reduce_op::sum);
//
// Nodes: COLLX_NODE_ID when set (any string; ranks with the same value share a node),
// else the host name. Every node must hold the same number of ranks (else a clear
// error). Inside a node the ranks are ordered by global rank: local index l.
//
// Hierarchical all-reduce of n elements, L ranks per node, N nodes:
//   1. intra-node reduce-scatter: local rank l holds the node's sum of shard l (n/L);
//   2. inter-node all-reduce of shard l among the N ranks with local index l, all L
//      shards at once, each over its own connections;
//   3. intra-node all-gather of the shards.
// Every byte crosses the node's link 2(N-1)/N * n / L times per local rank, L ranks at
// once: 2(N-1)/N * n in all, against 2(P-1)/P * n for a flat ring whose busiest edges
// cross nodes. Elements past the last whole shard (n mod L) go the flat way: an intra
// all-reduce, then an inter all-reduce.
// All-gather: inter-node all-gather of each rank's block among its local index's group,
// then intra-node all-gather, then the blocks put in global rank order. Reduce-scatter:
// the reverse (blocks ordered by local index, intra reduce-scatter, inter reduce-scatter).
//
// Leader variant, for small messages: intra-node all-reduce, inter-node all-reduce among
// the nodes' first ranks (local index 0) only, then the leader's result handed to its
// node (an intra-node all-gather of which each rank keeps block 0: collx has no
// broadcast yet). Fewer inter-node messages per node than the sharded way (one group,
// not L).
//
// The cost of each way, with separate intra- and inter-node parameters (the L
// inter-node groups share the node's link, so inter-node beta counts L times), is
// predict(); choose() picks the cheaper for a size, and the collectives use it unless
// told (hier_way::flat or hier_way::hierarchical).

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "collx/algorithms/select.hpp"
#include "collx/communicator.hpp"
#include "collx/init.hpp"

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
    st.set(prefix + "/node/" + std::to_string(rank), id);
    std::vector<std::string> ids(static_cast<std::size_t>(size));
    for (int q = 0; q < size; ++q)
      ids[static_cast<std::size_t>(q)] = st.get(prefix + "/node/" + std::to_string(q), timeout);
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

enum class hier_way { automatic, flat, hierarchical, leader };

struct hierarchical_options {
  // The model's parameters inside a node (shared memory) and on one node's link to the
  // others. The inter-node defaults describe a 1 Gbit/s network with 50 us latency; give
  // what collx-calibrate or a measurement says of yours.
  cost_params intra{2e-6, 1.0 / 8e9, 1.0 / 16e9};
  cost_params inter{50e-6, 1.0 / 125e6, 1.0 / 16e9};
  hier_way way = hier_way::automatic;
};

class hierarchical {
 public:
  // From a launched job's environment (init.hpp): the world over tcp (the flat way), the
  // node over shm, and one tcp communicator per local index across nodes.
  static hierarchical from_env(communicator_config cfg = {}, hierarchical_options ho = {}) {
    const launch_info li = launch_from_env();
    if (li.launcher == "none") {
      throw error(errc::invalid_argument, "topology", error::no_rank, error::no_rank,
                  "no launcher: start the ranks with collx-run, mpirun, srun or torchrun's environment");
    }
    std::shared_ptr<store> st = store_from(li, cfg.timeout);
    hierarchical h = make(st, li, cfg, ho);
    detail::retire_store(*st, li, cfg.timeout);
    return h;
  }

  static hierarchical make(const std::shared_ptr<store>& st, const launch_info& li,
                           communicator_config cfg = {}, hierarchical_options ho = {}) {
    node_layout t = node_layout::discover(*st, li.rank, li.size, cfg.timeout);
    // Segment names must differ between nodes that share a /dev/shm (emulated hosts).
    std::string job = detail::env_str("COLLX_JOB_ID");
    if (job.empty()) {
      if (li.rank == 0) st->set("collx/topology/job", std::to_string(std::random_device{}()));
      job = "h" + st->get("collx/topology/job", cfg.timeout);
    }
    const std::string host = li.master_addr.empty() ? std::string("127.0.0.1") : li.master_addr;
    cfg.model = detail::agree(*st, li, cfg, "collx/hier").model;  // one automatic choice
    communicator world(tcp_transport(*st, li.rank, li.size, host, tcp_options{}, "collx/hier/world"), cfg,
                       st);
    shm_options so;
    so.timeout = cfg.timeout;
    so.job_id = job + "-n" + std::to_string(t.node);
    communicator node(
        shm_transport(*st, t.local, t.per_node, so, "collx/hier/node" + std::to_string(t.node) + "/shm"), cfg,
        st);
    communicator across(tcp_transport(*st, t.node, t.nodes, host, tcp_options{},
                                      "collx/hier/across" + std::to_string(t.local) + "/tcp"),
                        cfg, st);
    return hierarchical(std::move(t), std::move(world), std::move(node), std::move(across), ho);
  }

  hierarchical(node_layout t, communicator world, communicator node, communicator across,
               hierarchical_options ho)
      : t_(std::move(t)),
        world_(std::move(world)),
        node_(std::move(node)),
        across_(std::move(across)),
        ho_(ho) {}

  int rank() const { return world_.rank(); }
  int size() const { return world_.size(); }
  const node_layout& layout() const { return t_; }
  communicator& world() { return world_; }
  communicator& node() { return node_; }
  communicator& across() { return across_; }

  // Predicted seconds of an all-reduce of `bytes` (the whole buffer) each way.
  double predict(hier_way way, double bytes) const {
    const int P = size();
    const int L = t_.per_node;
    const int N = t_.nodes;
    auto ring = [](collective c, int p, double b, const cost_params& m) {
      return algorithms::predicted_seconds(algorithm::ring, c, p, b, m);
    };
    if (way == hier_way::flat) {
      // A flat ring's busiest edges cross nodes when there are several.
      return ring(collective::all_reduce, P, bytes, N > 1 ? ho_.inter : ho_.intra);
    }
    auto best = [](collective c, int p, double b, const cost_params& m) {
      return algorithms::predicted_seconds(algorithms::choose(c, p, b, m), c, p, b, m);
    };
    if (way == hier_way::leader) {
      return best(collective::all_reduce, L, bytes, ho_.intra) +
             best(collective::all_reduce, N, bytes, ho_.inter) +
             best(collective::all_gather, L, bytes * L, ho_.intra);
    }
    cost_params shared = ho_.inter;
    shared.beta *= L;  // the L groups share the node's link
    return ring(collective::reduce_scatter, L, bytes, ho_.intra) +
           ring(collective::all_reduce, N, bytes / L, shared) +
           ring(collective::all_gather, L, bytes, ho_.intra);
  }

  hier_way choose(double bytes) const {
    if (ho_.way != hier_way::automatic) return ho_.way;
    if (t_.nodes == 1 || t_.per_node == 1) return hier_way::flat;
    hier_way w = hier_way::flat;
    for (hier_way c : {hier_way::hierarchical, hier_way::leader}) {
      if (predict(c, bytes) < predict(w, bytes)) w = c;
    }
    return w;
  }

  template <class T>
  void all_reduce(std::span<T> data, reduce_op op, hier_way way = hier_way::automatic) {
    if (way == hier_way::automatic) way = choose(static_cast<double>(data.size_bytes()));
    if (way == hier_way::flat || t_.nodes == 1 || t_.per_node == 1) {
      options o;
      o.algo = algorithm::ring;  // what predict() prices; rank order puts each node's ranks in a row
      world_.all_reduce(data, op, o);
      return;
    }
    const std::size_t L = static_cast<std::size_t>(t_.per_node);
    if (way == hier_way::leader) {
      node_.all_reduce(data, op);
      if (t_.local == 0) {
        options o;
        o.algo = algorithm::ring;
        across_.all_reduce(data, op, o);  // only the leaders' group
      }
      auto all = scratch<T>(0, data.size() * L);
      node_.all_gather(std::span<const T>(data.data(), data.size()), all);
      std::copy_n(all.begin(), data.size(), data.begin());  // the leader's block
      return;
    }
    const std::size_t shard = data.size() / L;
    const std::size_t whole = shard * L;
    if (shard > 0) {
      auto main = data.first(whole);
      node_.reduce_scatter(main, op);  // in place: shard `local` holds the node's reduction
      auto mine = main.subspan(static_cast<std::size_t>(t_.local) * shard, shard);
      across_.all_reduce(mine, op);
      node_.all_gather(main);
    }
    if (whole < data.size()) {
      auto rest = data.subspan(whole);
      node_.all_reduce(rest, op);
      across_.all_reduce(rest, op);
    }
  }

  // out.size() == in.size() * size(): rank q's block at out[q * n].
  template <class T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    const std::size_t n = in.size();
    check_sizes("all_gather", out.size(), n);
    if (t_.nodes == 1 || t_.per_node == 1) {
      world_.all_gather(in, out);
      return;
    }
    const auto N = static_cast<std::size_t>(t_.nodes);
    const auto L = static_cast<std::size_t>(t_.per_node);
    auto group = scratch<T>(0, N * n);  // blocks of (k, my local) for every node k
    across_.all_gather(in, group);
    auto all = scratch<T>(1, L * N * n);  // [l][k] blocks
    node_.all_gather(std::span<const T>(group), all);
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t k = 0; k < N; ++k) {
        const auto q = static_cast<std::size_t>(t_.rank_of[k][l]);
        std::copy_n(all.begin() + static_cast<std::ptrdiff_t>((l * N + k) * n), n,
                    out.begin() + static_cast<std::ptrdiff_t>(q * n));
      }
    }
  }

  // in.size() == out.size() * size(): rank q's result is the reduction of every rank's
  // block q.
  template <class T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, reduce_op op) {
    const std::size_t n = out.size();
    check_sizes("reduce_scatter", in.size(), n);
    if (t_.nodes == 1 || t_.per_node == 1) {
      world_.reduce_scatter(in, out, op);
      return;
    }
    const auto N = static_cast<std::size_t>(t_.nodes);
    const auto L = static_cast<std::size_t>(t_.per_node);
    auto byl = scratch<T>(0, L * N * n);  // [l][k]: block of rank (k, l)
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t k = 0; k < N; ++k) {
        const auto q = static_cast<std::size_t>(t_.rank_of[k][l]);
        std::copy_n(in.begin() + static_cast<std::ptrdiff_t>(q * n), n,
                    byl.begin() + static_cast<std::ptrdiff_t>((l * N + k) * n));
      }
    }
    auto group = scratch<T>(1, N * n);
    node_.reduce_scatter(std::span<const T>(byl), group, op);
    across_.reduce_scatter(std::span<const T>(group), out, op);
  }

 private:
  // Working space kept between calls: fresh pages cost a fault each on first touch (on
  // the project's VM, 128 MiB of them took longer than the collective itself).
  template <class T>
  std::span<T> scratch(int i, std::size_t n) {
    auto& b = scratch_[i];
    if (b.size() < n * sizeof(T)) b.resize(n * sizeof(T));
    return {reinterpret_cast<T*>(b.data()), n};
  }

  void check_sizes(const char* what, std::size_t whole, std::size_t n) const {
    if (whole != n * static_cast<std::size_t>(size())) {
      throw error(errc::invalid_argument, what, rank(), error::no_rank,
                  "the whole buffer holds " + std::to_string(whole) + " elements, not " + std::to_string(n) +
                      " x " + std::to_string(size()) + " ranks");
    }
  }

  node_layout t_;
  communicator world_;
  communicator node_;
  communicator across_;
  hierarchical_options ho_;
  std::vector<std::byte> scratch_[2];
};

}  // namespace collx
