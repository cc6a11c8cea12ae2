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
// The composition itself (what moves at each level, for any memory) is
// algorithms/hierarchical.hpp; this header finds the nodes, builds the communicators and
// chooses a way.
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

#include "collx/algorithms/hierarchical.hpp"
#include "collx/algorithms/select.hpp"
#include "collx/communicator.hpp"
#include "collx/front/check.hpp"
#include "collx/launch/init.hpp"
#include "collx/launch/nodes.hpp"

namespace collx {

struct hierarchical_options {
  // The model's parameters inside a node (shared memory) and on one node's link to the
  // others. The inter-node defaults describe a 1 Gbit/s network with 50 us latency; give
  // what collx-calibrate or a measurement says of yours.
  cost_params intra{2e-6, 1.0 / 8e9, 1.0 / 16e9};
  cost_params inter{50e-6, 1.0 / 125e6, 1.0 / 16e9};
  hier_way way = hier_way::automatic;
};

// Predicted seconds of an all-reduce of `bytes` (the whole buffer) each way.
inline double hier_predict(const node_layout& t, const hierarchical_options& ho, hier_way way, double bytes) {
  const int P = t.nodes * t.per_node;
  const int L = t.per_node;
  const int N = t.nodes;
  auto ring = [](collective c, int p, double b, const cost_params& m) {
    return algorithms::predicted_seconds(algorithm::ring, c, p, b, m);
  };
  if (way == hier_way::flat) {
    // A flat ring's busiest edges cross nodes when there are several.
    return ring(collective::all_reduce, P, bytes, N > 1 ? ho.inter : ho.intra);
  }
  auto best = [](collective c, int p, double b, const cost_params& m) {
    return algorithms::predicted_seconds(algorithms::choose(c, p, b, m), c, p, b, m);
  };
  // predicted_seconds takes each rank's part: the whole buffer for all-reduce, one
  // block for reduce-scatter and all-gather.
  if (way == hier_way::leader) {
    return best(collective::all_reduce, L, bytes, ho.intra) +
           best(collective::all_reduce, N, bytes, ho.inter) +
           best(collective::all_gather, L, bytes, ho.intra);
  }
  cost_params shared = ho.inter;
  shared.beta *= L;  // the L groups share the node's link
  return ring(collective::reduce_scatter, L, bytes / L, ho.intra) +
         ring(collective::all_reduce, N, bytes / L, shared) +
         ring(collective::all_gather, L, bytes / L, ho.intra);
}

// The cheapest way for `bytes` by the model, unless the options name one.
inline hier_way hier_choose(const node_layout& t, const hierarchical_options& ho, double bytes) {
  if (ho.way != hier_way::automatic) return ho.way;
  if (t.nodes == 1 || t.per_node == 1) return hier_way::flat;
  hier_way w = hier_way::flat;
  for (hier_way c : {hier_way::hierarchical, hier_way::leader}) {
    if (hier_predict(t, ho, c, bytes) < hier_predict(t, ho, w, bytes)) w = c;
  }
  return w;
}

namespace detail {

// A launched job's environment and its store; refused without a launcher.
struct launched {
  launch_info li;
  std::shared_ptr<collx::store> st;
};
inline launched launched_job(std::chrono::milliseconds timeout) {
  launch_info li = launch_from_env();
  if (li.launcher == "none") {
    throw error(errc::invalid_argument, "topology", error::no_rank, error::no_rank,
                "no launcher: start the ranks with collx-run, mpirun, srun or torchrun's environment");
  }
  std::shared_ptr<collx::store> st = store_from(li, timeout);
  return {std::move(li), std::move(st)};
}

// What every hierarchy sets up alike, in the same order on every rank: the layout, a
// name for this node's shared segments, the world (the flat way) and this rank's group
// across nodes, both over tcp. The caller adds the node's own communicator.
struct hier_base {
  node_layout t;
  std::string node_job;
  communicator_config cfg;
  communicator world;
  communicator across;
};

// The hierarchy's view of the job's store.
inline prefix_store hier_keys(collx::store& st) { return prefix_store(st, "collx/hier"); }

inline hier_base hier_setup(const std::shared_ptr<collx::store>& st, const launch_info& li,
                            communicator_config cfg) {
  node_layout t = node_layout::discover(*st, li.rank, li.size, cfg.timeout);
  t.require_uniform(li.rank);
  // Segment names must differ between nodes that share a /dev/shm (emulated hosts).
  std::string job = env_str("COLLX_JOB_ID");
  if (job.empty()) {
    prefix_store topology(*st, "collx/topology");
    if (li.rank == 0) topology.set("job", std::to_string(std::random_device{}()));
    job = "h" + topology.get("job", cfg.timeout);
  }
  prefix_store hier = hier_keys(*st);
  const std::string host = li.master_addr.empty() ? std::string("127.0.0.1") : li.master_addr;
  cfg.model = agree(hier, li, cfg).model;  // one automatic choice
  communicator world(tcp_transport(hier, li.rank, li.size, host, tcp_options{}, "world"), cfg, st);
  communicator across(
      tcp_transport(hier, t.node, t.nodes, host, tcp_options{}, "across" + std::to_string(t.local) + "/tcp"),
      cfg, st);
  std::string node_job = job + "-n" + std::to_string(t.node);
  return {std::move(t), std::move(node_job), cfg, std::move(world), std::move(across)};
}

// Host memory for the composition: copies, and scratch kept between calls (fresh pages
// cost a fault each on first touch: on the project's VM, 128 MiB of them took longer
// than the collective itself).
struct host_hier_memory {
  std::vector<std::byte> area[2];
  static void copy(std::byte* dst, const std::byte* src, std::size_t bytes) {
    if (bytes != 0) std::memmove(dst, src, bytes);
  }
  static void copy2d(std::byte* dst, std::size_t dpitch, const std::byte* src, std::size_t spitch,
                     std::size_t width, std::size_t rows) {
    for (std::size_t r = 0; r < rows; ++r) copy(dst + r * dpitch, src + r * spitch, width);
  }
  std::byte* scratch(int i, std::size_t bytes) {
    auto& b = area[i];
    if (b.size() < bytes) b.resize(bytes);
    return b.data();
  }
};

inline std::byte* bytes_of(const void* p) { return static_cast<std::byte*>(const_cast<void*>(p)); }

}  // namespace detail

class hierarchical {
 public:
  // From a launched job's environment (init.hpp): the world over tcp (the flat way), the
  // node over shm, and one tcp communicator per local index across nodes.
  static hierarchical from_env(communicator_config cfg = {}, hierarchical_options ho = {}) {
    const detail::launched j = detail::launched_job(cfg.timeout);
    hierarchical h = make(j.st, j.li, cfg, ho);
    detail::retire_store(*j.st, j.li, cfg.timeout);
    return h;
  }

  static hierarchical make(const std::shared_ptr<store>& st, const launch_info& li,
                           communicator_config cfg = {}, hierarchical_options ho = {}) {
    detail::hier_base b = detail::hier_setup(st, li, cfg);
    shm_options so;
    so.timeout = b.cfg.timeout;
    so.job_id = b.node_job;
    prefix_store hier = detail::hier_keys(*st);
    communicator node(
        shm_transport(hier, b.t.local, b.t.per_node, so, "node" + std::to_string(b.t.node) + "/shm"), b.cfg,
        st);
    return hierarchical(std::move(b.t), std::move(b.world), std::move(node), std::move(b.across), ho);
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

  double predict(hier_way way, double bytes) const { return hier_predict(t_, ho_, way, bytes); }
  hier_way choose(double bytes) const { return hier_choose(t_, ho_, bytes); }

  template <class T>
  void all_reduce(std::span<T> data, reduce_op op, hier_way way = hier_way::automatic) {
    check(collective::all_reduce, data.data(), data.data(), data.size(), dtype_v<T>, op);
    if (way == hier_way::automatic) way = choose(static_cast<double>(data.size_bytes()));
    if (way == hier_way::flat || t_.nodes == 1 || t_.per_node == 1) {
      options o;
      o.algo = algorithm::ring;  // what predict() prices; rank order puts each node's ranks in a row
      world_.all_reduce(data, op, o);
      return;
    }
    levels().all_reduce(detail::bytes_of(data.data()), data.size(), dtype_v<T>, op, way, {});
  }

  // out.size() == in.size() * size(): rank q's block at out[q * n].
  template <class T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    check_sizes("all_gather", out.size(), in.size());
    check(collective::all_gather, in.data(), out.data(), in.size(), dtype_v<T>, reduce_op::sum);
    if (t_.nodes == 1 || t_.per_node == 1) {
      world_.all_gather(in, out);
      return;
    }
    levels().all_gather(detail::bytes_of(in.data()), detail::bytes_of(out.data()), in.size(), dtype_v<T>, {});
  }

  // in.size() == out.size() * size(): rank q's result is the reduction of every rank's
  // block q.
  template <class T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, reduce_op op) {
    check_sizes("reduce_scatter", in.size(), out.size());
    check(collective::reduce_scatter, in.data(), out.data(), out.size(), dtype_v<T>, op);
    if (t_.nodes == 1 || t_.per_node == 1) {
      world_.reduce_scatter(in, out, op);
      return;
    }
    levels().reduce_scatter(detail::bytes_of(in.data()), detail::bytes_of(out.data()), out.size(), dtype_v<T>,
                            op, {});
  }

 private:
  using levels_t = algorithms::hier_levels<node_layout, communicator, communicator, detail::host_hier_memory>;
  levels_t levels() { return {t_, node_, across_, mem_}; }

  // Every rank refuses bad input alike, before any level moves a byte.
  void check(collective c, const void* in, void* out, std::size_t n, dtype t, reduce_op op) const {
    detail::check_call(c, in, out, n, t, op, {}, rank(), size());
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
  detail::host_hier_memory mem_;
};

}  // namespace collx
