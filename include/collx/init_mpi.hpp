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
// init_from_env does ("auto": shm when MPI says every rank shares this node, else tcp).
// The address rank 0 announces: 127.0.0.1 on one node, else COLLX_SOCKET_IFNAME's
// address, else rank 0's host name (which the other hosts must resolve to an address
// that reaches it).
// Include it on its own and link collx::mpi.

#include <collx/init.hpp>
#include <collx/transport/mpi.hpp>

#include <mpi.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>

namespace collx {

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
  if (transport == "mpi") return detail::communicator_over(mpi_transport(comm), cfg, nullptr);
  launch_info li;
  li.launcher = "mpi";
  MPI_Comm_rank(comm, &li.rank);
  MPI_Comm_size(comm, &li.size);
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, li.rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &li.local_rank);
  MPI_Comm_size(node, &li.local_size);
  MPI_Comm_free(&node);

  // Rank 0's answer: "host:port", or "!" and why it could not serve.
  std::array<char, 512> said{};
  std::shared_ptr<tcp_store> st;
  if (li.rank == 0) {
    try {
      std::string host = "127.0.0.1";
      std::string listen = host;
      if (li.local_size != li.size) {
        const std::string ifname = detail::env_str("COLLX_SOCKET_IFNAME");
        host = ifname.empty() ? detail::this_host() : detail::interface_address(ifname);
        if (host.empty()) {
          throw error(errc::invalid_argument, "init", li.rank, error::no_rank,
                      "COLLX_SOCKET_IFNAME=" + ifname + " names no interface with an address");
        }
        listen = ifname.empty() ? std::string() : host;
      }
      st = std::make_shared<tcp_store>(listen, 0, true, cfg.timeout);
      const bool v6 = host.find(':') != std::string::npos;
      std::snprintf(said.data(), said.size(), v6 ? "[%s]:%u" : "%s:%u", host.c_str(), unsigned{st->port()});
    } catch (const std::exception& e) {
      std::snprintf(said.data(), said.size(), "!%s", e.what());
    }
  }
  MPI_Bcast(said.data(), static_cast<int>(said.size()), MPI_CHAR, 0, comm);
  said.back() = '\0';
  if (said[0] == '!') {
    throw error(errc::transport, "init", li.rank, 0,
                std::string("rank 0 could not serve the store: ") + (said.data() + 1));
  }
  const auto [host, port] = detail::split_endpoint(said.data());
  li.master_addr = host;
  li.master_port = static_cast<std::uint16_t>(std::stoi(port));
  if (li.rank != 0) st = std::make_shared<tcp_store>(host, li.master_port, false, cfg.timeout);
  return make_communicator(st, li, transport, cfg);
}

}  // namespace collx
