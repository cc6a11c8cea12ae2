#pragma once

// A communicator for a job that mpirun or srun launched, met through MPI itself:
//
//   collx::mpi_session mpi;                 // or MPI_Init_thread by the application
//   auto comm = collx::init_from_mpi();     // COLLX_TRANSPORT: mpi, shm, tcp or auto
//
// "mpi" runs collx's schedules over MPI point-to-point. Otherwise rank 0 serves a
// tcp_store on a free port and broadcasts its address with MPI_Bcast, so no
// MASTER_ADDR, shared directory or launcher environment is needed on any number of
// hosts; the ranks then build the shm or tcp transport through that store, as
// init_from_env does ("auto": shm when MPI says every rank shares this node, tcp when
// each node holds one rank, else shared memory inside each node and MPI across).
// The address rank 0 listens on and announces (that one only, not every interface):
// 127.0.0.1 on one node, else COLLX_SOCKET_IFNAME's address, else the address this host
// reaches another rank's host from (by its name, gathered through MPI).
// Include it on its own and link collx::mpi.

#include <collx/launch/init.hpp>
#include <collx/transport/mpi.hpp>

#include <mpi.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace collx {

namespace detail {

// "mpi": collx's schedules over MPI point-to-point.
inline communicator communicator_over_mpi(MPI_Comm comm, communicator_config cfg) {
  // Rank 0's cost model for every rank, as make_communicator does through its store.
  double m[6] = {cfg.model.alpha, cfg.model.beta, cfg.model.gamma,
                 cfg.inter.alpha, cfg.inter.beta, cfg.inter.gamma};
  MPI_Bcast(m, 6, MPI_DOUBLE, 0, comm);
  cfg.model = {m[0], m[1], m[2]};
  cfg.inter = {m[3], m[4], m[5]};
  return detail::communicator_over(mpi_transport(comm), cfg, nullptr);
}

// The rank and size, in `comm` and on this node, as MPI has them.
inline launch_info mpi_launch_info(MPI_Comm comm) {
  launch_info li;
  li.launcher = "mpi";
  MPI_Comm_rank(comm, &li.rank);
  MPI_Comm_size(comm, &li.size);
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, li.rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &li.local_rank);
  MPI_Comm_size(node, &li.local_size);
  // The node by its lowest rank: emulated hosts (network namespaces) share a host name.
  int first = li.rank;
  MPI_Allreduce(&li.rank, &first, 1, MPI_INT, MPI_MIN, node);
  li.node_id = "mpi-node-" + std::to_string(first);
  MPI_Comm_free(&node);
  return li;
}

inline constexpr int host_name_bytes = 256;

struct host_names {
  std::array<char, host_name_bytes> mine{};
  std::vector<char> all;  // on rank 0: every rank's, host_name_bytes each
};

// Every rank's host name, so that rank 0 can listen on the interface that reaches
// the other hosts, not on every interface.
inline host_names gather_host_names(MPI_Comm comm, const launch_info& li) {
  host_names names;
  std::snprintf(names.mine.data(), names.mine.size(), "%s", detail::this_host().c_str());
  names.all.resize(
      li.rank == 0 ? static_cast<std::size_t>(host_name_bytes) * static_cast<std::size_t>(li.size) : 0);
  MPI_Gather(names.mine.data(), host_name_bytes, MPI_CHAR, names.all.data(), host_name_bytes, MPI_CHAR, 0,
             comm);
  return names;
}

// The address rank 0's store listens on and announces: 127.0.0.1 on one node, else
// COLLX_SOCKET_IFNAME's address, else the address this host reaches another rank's
// host from.
inline std::string store_host(const launch_info& li, const host_names& names) {
  std::string host = "127.0.0.1";
  if (li.local_size != li.size) {
    const std::string ifname = detail::env_str("COLLX_SOCKET_IFNAME");
    if (!ifname.empty()) {
      host = detail::interface_address(ifname);
      if (host.empty()) {
        throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
                    "COLLX_SOCKET_IFNAME=" + ifname + " names no interface with an address");
      }
    } else {
      // The address this host reaches another rank's host from.
      host.clear();
      for (int q = 1; q < li.size && host.empty(); ++q) {
        const std::string other(&names.all[static_cast<std::size_t>(q) * host_name_bytes]);
        if (other != names.mine.data()) host = detail::route_address(other);
      }
      if (host.empty()) {
        throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
                    "no route from this host to the other ranks' hosts by name: set COLLX_SOCKET_IFNAME to "
                    "the interface the ranks share");
      }
    }
  }
  return host;
}

// Rank 0's answer: "host:port", or "!" and why it could not serve.
using store_answer = std::array<char, 512>;

// On rank 0: serves the store and writes its address into `said`, or "!" and why.
inline std::shared_ptr<tcp_store> serve_store(const launch_info& li, const host_names& names,
                                              const communicator_config& cfg, store_answer& said) {
  std::shared_ptr<tcp_store> store;
  try {
    const std::string host = store_host(li, names);
    store = std::make_shared<tcp_store>(host, 0, true, cfg.timeout);
    const bool v6 = host.find(':') != std::string::npos;
    std::snprintf(said.data(), said.size(), v6 ? "[%s]:%u" : "%s:%u", host.c_str(), unsigned{store->port()});
  } catch (const std::exception& e) {
    std::snprintf(said.data(), said.size(), "!%s", e.what());
  }
  return store;
}

// Under init_from_mpi, the route across nodes is MPI itself.
struct mpi_across {
  MPI_Comm comm;
  mpi_transport operator()(collx::store&, const launch_info&, const node_layout&,
                           const communicator_config&) const {
    return mpi_transport(comm);
  }
};

}  // namespace detail

inline communicator init_from_mpi(MPI_Comm comm = MPI_COMM_WORLD, communicator_config cfg = {},
                                  std::string transport = {}) {
  if (transport.empty()) transport = detail::env_str("COLLX_TRANSPORT");
  if (transport.empty()) transport = "auto";
  int ready = 0;
  MPI_Initialized(&ready);
  if (ready == 0) {
    throw error(errc::invalid_argument, "init", error::no_rank, error::no_rank,
                "MPI is not initialized: create a collx::mpi_session (or call MPI_Init_thread) first");
  }
  if (transport == "mpi") return detail::communicator_over_mpi(comm, cfg);
  launch_info li = detail::mpi_launch_info(comm);
  const detail::host_names names = detail::gather_host_names(comm, li);

  detail::store_answer said{};
  std::shared_ptr<tcp_store> store;
  if (li.rank == 0) store = detail::serve_store(li, names, cfg, said);
  MPI_Bcast(said.data(), static_cast<int>(said.size()), MPI_CHAR, 0, comm);
  said.back() = '\0';
  if (said[0] == '!') {
    throw error(errc::transport, "init", li.rank, 0,
                std::string("rank 0 could not serve the store: ") + (said.data() + 1));
  }
  const auto [host, port] = detail::split_endpoint(said.data());
  li.master_addr = host;
  li.master_port = static_cast<std::uint16_t>(std::stoi(port));
  if (li.rank != 0) store = std::make_shared<tcp_store>(host, li.master_port, false, cfg.timeout);
  return make_communicator(store, li, transport, cfg, "collx", {}, detail::mpi_across{comm});
}

}  // namespace collx
