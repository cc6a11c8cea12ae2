#pragma once

// The levels of a hierarchy of communicators, built from a launched job: the layout of
// its nodes (every node must hold the same number of ranks), a name for this node's
// shared segments, the world over tcp (the flat way) and this rank's group across nodes
// over tcp. The GPU hierarchy (cuda/hierarchical.cuh) adds the node's own communicator
// and composes its collectives from them (algorithms::hier_levels).
//
// The host has no such class any more: one communicator spans nodes (init_from_env,
// COLLX_TRANSPORT=auto: shared memory inside a node, tcp across) and runs the
// hierarchical algorithms as schedules (algorithm::hierarchical).

#include <chrono>
#include <memory>
#include <random>
#include <string>

#include "collx/communicator.hpp"
#include "collx/launch/init.hpp"
#include "collx/launch/nodes.hpp"

namespace collx {

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

}  // namespace detail

}  // namespace collx
