#pragma once

// One call from the environment to a communicator, for processes started by a launcher:
//
//   auto comm = collx::init_from_env();
//
// Who am I: RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE (collx-run, torchrun), else
// Open MPI's OMPI_COMM_WORLD_* (mpirun), else Slurm's SLURM_PROCID/SLURM_NTASKS (srun).
// Where do we meet: MASTER_ADDR/MASTER_PORT (rank 0 serves a tcp_store there), else
// COLLX_STORE_DIR or, on one host under mpirun/srun, a file store named after the job.
// Which transport: COLLX_TRANSPORT=shm|tcp|auto; auto is shm when every rank is on
// one node, and shared memory inside each node with tcp across nodes otherwise. (Under mpirun,
// collx/launch/init_mpi.hpp offers the MPI transport and bootstraps the store through MPI.) With no launcher
// at all, the communicator has one rank.

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "collx/communicator.hpp"
#include "collx/core/error.hpp"
#include "collx/core/log.hpp"
#include "collx/launch/env.hpp"
#include "collx/launch/nodes.hpp"
#include "collx/rendezvous/store.hpp"
#include "collx/transport/faulty.hpp"
#include "collx/transport/local.hpp"
#include "collx/transport/routed.hpp"
#include "collx/transport/shm.hpp"
#include "collx/transport/tcp.hpp"

namespace collx {

// What the launcher told this process.
struct launch_info {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;       // ranks on this host, when the launcher says
  std::string master_addr;  // empty: no tcp store
  std::uint16_t master_port = 0;
  std::string store_dir;  // the file store's directory, when no tcp store
  std::string launcher;   // "collx-run/torchrun", "mpirun", "srun" or "none"
  std::string node_id;    // this rank's node as the launcher knows it; empty: by host name
};

inline launch_info launch_from_env() {
  using detail::env_int;
  using detail::env_str;
  launch_info li;
  std::string job;  // names a file store when there is no MASTER_ADDR
  if (auto r = env_int("RANK"), n = env_int("WORLD_SIZE"); r && n) {
    li.rank = static_cast<int>(*r);
    li.size = static_cast<int>(*n);
    li.local_rank = static_cast<int>(env_int("LOCAL_RANK").value_or(-1));
    li.local_size = static_cast<int>(env_int("LOCAL_WORLD_SIZE").value_or(-1));
    li.launcher = "collx-run/torchrun";
    job = env_str("COLLX_JOB_ID");
  } else if (auto mr = env_int("OMPI_COMM_WORLD_RANK"), mn = env_int("OMPI_COMM_WORLD_SIZE"); mr && mn) {
    li.rank = static_cast<int>(*mr);
    li.size = static_cast<int>(*mn);
    li.local_rank = static_cast<int>(env_int("OMPI_COMM_WORLD_LOCAL_RANK").value_or(-1));
    li.local_size = static_cast<int>(env_int("OMPI_COMM_WORLD_LOCAL_SIZE").value_or(-1));
    li.launcher = "mpirun";
    if (const auto id = env_str("OMPI_MCA_ess_base_jobid"); !id.empty()) job = "ompi-" + id;
  } else if (auto sr = env_int("SLURM_PROCID"), sn = env_int("SLURM_NTASKS"); sr && sn) {
    li.rank = static_cast<int>(*sr);
    li.size = static_cast<int>(*sn);
    li.local_rank = static_cast<int>(env_int("SLURM_LOCALID").value_or(-1));
    li.local_size = -1;
    li.launcher = "srun";
    if (const auto id = env_str("SLURM_JOB_ID"); !id.empty())
      job = "slurm-" + id + "." + env_str("SLURM_STEP_ID");
  } else {
    li.launcher = "none";
    return li;
  }
  if (li.size < 1 || li.rank < 0 || li.rank >= li.size) {
    throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
                "the launcher says rank " + std::to_string(li.rank) + " of " + std::to_string(li.size));
  }
  li.master_addr = env_str("MASTER_ADDR");
  if (!li.master_addr.empty()) {
    const auto port = env_int("MASTER_PORT");
    if (!port || *port <= 0 || *port > 65535) {
      throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
                  "MASTER_ADDR is set but MASTER_PORT is missing or not a port number");
    }
    li.master_port = static_cast<std::uint16_t>(*port);
  } else {
    li.store_dir = env_str("COLLX_STORE_DIR");
    if (li.store_dir.empty() && !job.empty()) {
      li.store_dir = (std::filesystem::temp_directory_path() / ("collx-store-" + job)).string();
    }
    if (li.store_dir.empty()) {
      throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
                  "no rendezvous: set MASTER_ADDR and MASTER_PORT (rank 0 serves the store there), or "
                  "COLLX_STORE_DIR to a directory every rank can see");
    }
  }
  return li;
}

// The store the launch info names, rank 0 serving it when it is a tcp_store.
inline std::shared_ptr<store> store_from(const launch_info& li, std::chrono::milliseconds timeout) {
  if (!li.master_addr.empty()) {
    return std::make_shared<tcp_store>(li.master_addr, li.master_port, li.rank == 0, timeout);
  }
  return std::make_shared<file_store>(li.store_dir);
}

namespace detail {

// A file store's directory goes once every rank is done with it.
inline void retire_store(collx::store& st, const launch_info& li, std::chrono::milliseconds timeout) {
  if (li.store_dir.empty()) return;
  st.add("collx/init/left", 1);
  if (li.rank != 0) return;
  const auto deadline = clock::now() + timeout;
  while (st.add("collx/init/left", 0) < li.size && clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::error_code ec;
  std::filesystem::remove_all(li.store_dir, ec);
}

}  // namespace detail

namespace detail {

// What every rank of a new communicator takes from rank 0 through the store: the cost
// model (the automatic choice must agree, and each host reads its own COLLX_MODEL_FILE
// or calibrated cache, which may differ) and an id for the communicator's notes.
struct agreed {
  cost_params model, inter;
  std::string id;
};

// `keys`: the communicator's view of the store.
inline agreed agree(collx::store& keys, const launch_info& li, const communicator_config& cfg) {
  const std::string key = "agreed";
  char id[32] = {};
  if (li.rank == 0) {
    std::random_device rd;
    std::snprintf(id, sizeof id, "%08x%08x", rd(), rd());
    char text[320];
    std::snprintf(text, sizeof text, "%a %a %a %a %a %a %s", cfg.model.alpha, cfg.model.beta, cfg.model.gamma,
                  cfg.inter.alpha, cfg.inter.beta, cfg.inter.gamma, id);
    keys.set(key, text);
    return {cfg.model, cfg.inter, id};
  }
  agreed a;
  const std::string text = keys.get(key, cfg.timeout);
  if (std::sscanf(text.c_str(), "%la %la %la %la %la %la %31s", &a.model.alpha, &a.model.beta, &a.model.gamma,
                  &a.inter.alpha, &a.inter.beta, &a.inter.gamma, id) != 7) {
    throw error(errc::transport, "init", li.rank, 0, "rank 0's settings came malformed: '" + text + "'");
  }
  a.id = id;
  return a;
}

// failure_notes through the rendezvous store: rank r's note is "<peer> <why>" under key
// r of `keys` (a view of st, which it keeps alive). A note that cannot be written or
// read adds nothing: the error stays as the rank saw it.
class store_notes final : public failure_notes {
 public:
  store_notes(std::shared_ptr<collx::store> st, prefix_store keys, int rank, int size)
      : st_(std::move(st)), keys_(std::move(keys)), rank_(rank), size_(size) {}

  void note(int peer, blame why) noexcept override {
    try {
      keys_.set(std::to_string(rank_), std::to_string(peer) + " " + words[static_cast<int>(why)]);
    } catch (const std::exception&) {
    }
  }

  std::pair<int, std::string> follow(int peer, clock::time_point until) noexcept override {
    try {
      return walk(peer, until);
    } catch (const std::exception&) {
      return {peer, ""};
    }
  }

 private:
  static constexpr std::array<const char*, 3> words{"waiting", "lost", "began"};

  // Rank at's note: {peer, why}; {-1, ...} when it noted nothing by `until` or noted
  // nonsense.
  std::pair<int, blame> read(int at, clock::time_point until) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - clock::now());
    std::string text;
    try {
      text = keys_.get(std::to_string(at), std::max(left, std::chrono::milliseconds(1)));
    } catch (const error& e) {
      if (e.kind() == errc::timeout) return {-1, blame::began};
      throw;
    }
    const auto space = text.find(' ');
    const int peer = std::atoi(text.substr(0, space).c_str());
    for (std::size_t w = 0; w < words.size() && space != std::string::npos; ++w) {
      if (text.substr(space + 1) == words[w] && peer >= 0 && peer < size_)
        return {peer, static_cast<blame>(w)};
    }
    return {-2, blame::began};
  }

  std::pair<int, std::string> walk(int peer, clock::time_point until) {
    const auto ask = std::chrono::ceil<std::chrono::milliseconds>(until - clock::now()).count();
    std::vector<bool> seen(static_cast<std::size_t>(size_));
    seen[static_cast<std::size_t>(rank_)] = true;
    int at = peer;
    blame how = blame::waiting;  // how the last rank named at
    std::string story;
    for (;;) {
      if (seen[static_cast<std::size_t>(at)]) return {peer, ""};  // a cycle: no one to single out
      seen[static_cast<std::size_t>(at)] = true;
      const auto [next, why] = read(at, until);
      if (next == -2) return {peer, ""};
      const std::string who = "peer " + std::to_string(at);
      if (next == -1) {
        story += ", which noted nothing within " + std::to_string(ask) + " ms: " + who +
                 (how == blame::waiting ? " is the one stuck" : " is gone");
        break;
      }
      if (why == blame::began || next == at) {
        story += ", which failed on its own: the failure began at " + who;
        break;
      }
      story += "; " + who +
               (why == blame::waiting ? " was itself waiting for peer " : " had itself lost peer ") +
               std::to_string(next);
      at = next;
      how = why;
    }
    if (at == peer) return {peer, ""};
    return {at, story};
  }

  std::shared_ptr<collx::store> st_;
  prefix_store keys_;
  int rank_;
  int size_;
};

// The communicator over t; when COLLX_FAULT names a fault plan, over faulty<T>(t) so
// that the plan's faults strike (collx/transport/faulty.hpp).
template <transport T>
communicator communicator_over(T t, const communicator_config& cfg, std::shared_ptr<void> keep_alive) {
  if (auto plan = fault_plan::from_env()) {
    return communicator(faulty<T>(std::move(t), std::move(*plan)), cfg, std::move(keep_alive));
  }
  return communicator(std::move(t), cfg, std::move(keep_alive));
}

}  // namespace detail

namespace detail {

inline shm_options shm_options_from_env(const communicator_config& cfg, const std::string& job) {
  shm_options so;
  so.timeout = cfg.timeout;
  so.job_id = job;
  if (auto v = env_int("COLLX_SHM_SLOT_BYTES")) so.slot_bytes = static_cast<std::size_t>(*v);
  if (auto v = env_int("COLLX_SHM_SLOTS")) so.slots = static_cast<std::size_t>(*v);
  return so;
}

// tcp listens on the interface that reaches the store's host.
inline std::string store_host(const launch_info& li) {
  return li.master_addr.empty() ? std::string("127.0.0.1") : li.master_addr;
}

// Which transport "auto" means for this job: shm on one node, tcp when every node holds
// one rank, else shm inside nodes and tcp across ("routed"). `keys`: the communicator's
// view of the store.
inline std::string auto_transport(collx::store& keys, const launch_info& li, const communicator_config& cfg,
                                  node_layout& at) {
  if (li.local_size > 0 && li.local_size == li.size && env_str("COLLX_NODE_ID").empty()) return "shm";
  at = node_layout::discover(keys, li.rank, li.size, cfg.timeout, "topology", li.node_id);
  if (at.nodes == 1) return "shm";
  if (at.nodes == li.size) return "tcp";
  return "routed";
}

// The route across nodes that init_from_env takes: tcp to every rank off this node.
struct tcp_across {
  tcp_transport operator()(collx::store& keys, const launch_info& li, const node_layout& at,
                           const communicator_config& cfg) const {
    tcp_options to;
    to.timeout = cfg.timeout;
    to.reach.assign(static_cast<std::size_t>(li.size), true);
    for (int q : at.members()) to.reach[static_cast<std::size_t>(q)] = false;
    return tcp_transport(keys, li.rank, li.size, store_host(li), to, "tcp");
  }
};

// This node's ranks over shared memory (segments named after the job and the node, for
// nodes that share a /dev/shm), the others over what `across` makes.
template <class Across>
auto routed_over(prefix_store& keys, const launch_info& li, const node_layout& at,
                 const communicator_config& cfg, const std::string& job, const Across& across) {
  prefix_store node_keys = keys.view("node" + std::to_string(at.node));
  shm_options so = shm_options_from_env(cfg, job);
  so.job_id = job_id_for(job, node_keys, at.local, cfg.timeout) + "-n" + std::to_string(at.node);
  so.ranks = at.members();
  shm_transport near(node_keys, at.local, static_cast<int>(so.ranks.size()), so, "shm");
  auto far = across(keys, li, at, cfg);
  return routed_transport<shm_transport, decltype(far)>(std::move(near), std::move(far), at.members());
}

// COLLX_DEBUG=INFO: what a communicator of the launched job chose, once per rank. `how`
// names the transport to each peer; `at`, the nodes where the job spans several.
inline void log_communicator(const launch_info& li, const node_layout& at, const std::string& how,
                             const communicator_config& cfg) {
  auto ns = [](double s) { return std::to_string(static_cast<long long>(s * 1e9)) + " ns"; };
  auto mbs = [](double s_per_byte) {
    return std::to_string(static_cast<long long>(1e-6 / s_per_byte)) + " MB/s";
  };
  const bool calibrated = read_model(model_file_path()).has_value();
  std::string line = "rank " + std::to_string(li.rank) + "/" + std::to_string(li.size) + " on host " +
                     this_host() + ", launched by " + (li.launcher.empty() ? "none" : li.launcher) + ": " +
                     how;
  if (at.nodes > 1) {
    line += "; node " + std::to_string(at.node) + " of " + std::to_string(at.nodes) + " (" +
            at.names[static_cast<std::size_t>(at.node)] + ", ranks";
    for (int q : at.members()) line += " " + std::to_string(q);
    line += ")";
  }
  line +=
      "; cost model: alpha " + ns(cfg.model.alpha) + ", beta " + mbs(cfg.model.beta) + ", gamma " +
      mbs(cfg.model.gamma) + " (rank 0's; here " +
      (calibrated ? "calibrated, " + model_file_path() : std::string("built-in: no ") + model_file_path()) +
      ")";
  if (at.nodes > 1)
    line += "; between nodes: alpha " + ns(cfg.inter.alpha) + ", beta " + mbs(cfg.inter.beta) +
            (env_str("COLLX_INTER_MODEL").empty() ? " (built-in)" : " (COLLX_INTER_MODEL)");
  log_info(line);
}

}  // namespace detail

// A communicator over `transport` ("shm", "tcp" or "auto") for the launched job, met
// through `st`. "auto" is shm when the job runs on one node, tcp when each node holds
// one rank, and otherwise shared memory between the ranks of a node with tcp across
// nodes (routed_transport; nodes named by COLLX_NODE_ID, else the host name). Several
// communicators (over different transports, say) may share one store if each has its
// own key prefix. shm names its segments after `job` (empty: COLLX_JOB_ID, else an id
// rank 0 draws): two communicators of one job on one host over shm need names of their
// own.
// `across` makes the route across nodes (detail::tcp_across; init_from_mpi's is MPI).
template <class Across = detail::tcp_across>
communicator make_communicator(const std::shared_ptr<store>& st, const launch_info& li, std::string transport,
                               communicator_config cfg = {}, const std::string& prefix = "collx",
                               const std::string& job = {}, const Across& across = {}) {
  prefix_store keys(*st, prefix);
  node_layout at;
  if (transport == "auto") transport = detail::auto_transport(keys, li, cfg, at);
  const detail::agreed agreed = detail::agree(keys, li, cfg);
  cfg.model = agreed.model;
  cfg.inter = agreed.inter;
  if (at.nodes > 1) cfg.node_of = at.node_of();
  // (A file store is retired once init_from_env is done with it: no notes there.)
  auto explained = [&](communicator c) {
    if (li.store_dir.empty())
      c.compare_notes(
          std::make_shared<detail::store_notes>(st, keys.view("stuck/" + agreed.id), li.rank, li.size));
    return c;
  };
  const bool info = detail::debug_info();
  if (transport == "shm") {
    shm_transport t(keys, li.rank, li.size, detail::shm_options_from_env(cfg, job), "shm");
    if (info) detail::log_communicator(li, at, "shm to every peer", cfg);
    return explained(detail::communicator_over(std::move(t), cfg, st));
  }
  if (transport == "tcp") {
    tcp_options to;
    to.timeout = cfg.timeout;
    tcp_transport t(keys, li.rank, li.size, detail::store_host(li), to, "tcp");
    if (info)
      detail::log_communicator(li, at,
                               "tcp to every peer, " + std::to_string(t.streams()) + " streams a pair", cfg);
    return explained(detail::communicator_over(std::move(t), cfg, st));
  }
  if (transport == "routed") {
    auto t = detail::routed_over(keys, li, at, cfg, job, across);
    if (info) {
      std::string far = "mpi";
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(t.far_route())>, tcp_transport>)
        far = "tcp (" + std::to_string(t.far_route().streams()) + " streams a pair)";
      detail::log_communicator(li, at, "shm to this node's ranks, " + far + " to the others", cfg);
    }
    return explained(detail::communicator_over(std::move(t), cfg, st));
  }
  throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
              "transport '" + transport +
                  "': processes use shm, tcp or auto (COLLX_TRANSPORT=mpi: init_from_mpi in "
                  "collx/launch/init_mpi.hpp)");
}

// The communicator of the launched job. `transport`: "shm", "tcp", "auto" or empty
// (COLLX_TRANSPORT, else auto).
inline communicator init_from_env(communicator_config cfg = {}, std::string transport = {}) {
  const launch_info li = launch_from_env();
  if (transport.empty()) transport = detail::env_str("COLLX_TRANSPORT");
  if (transport.empty()) transport = "auto";
  if (li.size == 1 && li.master_addr.empty() && li.store_dir.empty()) {
    local_world world(1);
    return communicator(world.transport(0), cfg);
  }
  std::shared_ptr<store> st = store_from(li, cfg.timeout);
  communicator c = make_communicator(st, li, transport, cfg);
  detail::retire_store(*st, li, cfg.timeout);
  return c;
}

}  // namespace collx
