#pragma once

// collx-bench's GPU contenders, behind a plain C++ interface: the CUDA code lives in
// cuda_contenders.cu, compiled by nvcc, so that collx_bench.cpp stays host C++ and the
// harness builds without CUDA (it includes this header only under COLLX_BENCH_HAVE_CUDA).
//
// Each contender is one rank's runner with the baselines' run(): the same cases, the same
// fill and check callbacks (the harness's inputs and serial reference), on device buffers
// allocated once for the largest size. A case's time is the mean per iteration over -n
// iterations, taken with the host clock from a barrier to the synchronize that follows the
// last call, the maximum over ranks; the checked call runs after, on fresh inputs, with
// the result region poisoned first.
//
//   collx/cuda        collx::cuda::group: ranks as threads of this process on GPUs
//   collx/<t>+gpu     collx::cuda::staged over the host communicator of transport t
//   collx/cuda_ipc    collx::cuda::ipc_communicator: processes of one host over CUDA IPC
//   collx/cuda_hier   collx::cuda::hierarchical: CUDA IPC inside each node, staged tcp across
//   nccl              NCCL, loaded at run time with dlopen("libnccl.so.2")

#include <collx/communicator.hpp>
#include <collx/launch/init.hpp>
#include <collx/rendezvous/store.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "baseline_api.hpp"

namespace bench::gpu {

// Empty when a CUDA device answers; otherwise why not: "no CUDA device (<cudaGetErrorString>)".
std::string no_device();
int device_count();  // 0 where none answers

// One rank's runner; run() is collective over the runner's ranks, like the baselines'.
class rank_runner {
 public:
  virtual ~rank_runner() = default;
  // c.algo is asked of collx's runners; the result's algorithm names what ran.
  virtual std::optional<baseline_result> run(const baseline_case& c, std::string& why,
                                             const baseline_data& data) = 0;
};

// The barrier and reductions a runner times and counts with: those of the harness's host
// communicator in process mode, a host barrier between the threads in thread mode.
using group_ops = detail::group_ops;

// collx::cuda::group over `devices` (one rank each), made once before the ranks' threads run.
class thread_group {
 public:
  virtual ~thread_group() = default;
  // Rank r's runner, made on rank r's thread; buffers for calls of up to max_bytes per buffer.
  virtual std::unique_ptr<rank_runner> rank(int r, std::size_t max_bytes, group_ops ops) = 0;
  // Stops every rank's kernels (a rank's thread failed): the others' calls throw.
  virtual void abort() noexcept = 0;
};
std::unique_ptr<thread_group> make_thread_group(const std::vector<int>& devices);  // throws collx::error

// collx::cuda::staged over `host` (a process transport's communicator) on `device`.
std::unique_ptr<rank_runner> make_staged(collx::communicator& host, int device, std::size_t max_bytes,
                                         group_ops ops);

// collx::cuda::ipc_communicator (CUDA IPC between the processes of one host) on `device`,
// set up through the job's store: every rank calls this at once.
std::unique_ptr<rank_runner> make_ipc(collx::store& st, int rank, int size, int device, std::size_t max_bytes,
                                      group_ops ops);

// collx::cuda::hierarchical (nodes as COLLX_NODE_ID or the host name say) on `device`,
// set up through the job's store: every rank calls this at once.
std::unique_ptr<rank_runner> make_hier(const std::shared_ptr<collx::store>& st, const collx::launch_info& li,
                                       int device, std::size_t max_bytes, group_ops ops);

// NCCL. Each rank loads it, then all agree (agree_all: true when every rank's argument
// was true) before rank 0 makes the unique id, which share_id carries to every rank (rank 0
// passes it, every rank gets rank 0's back). nullptr, with why, where it cannot run; every
// rank then returns nullptr. ncclCommInitRank is collective: all ranks call this at once.
std::unique_ptr<rank_runner> make_nccl(int rank, int size, int device, std::size_t max_bytes, group_ops ops,
                                       const std::function<bool(bool)>& agree_all,
                                       const std::function<std::string(const std::string&)>& share_id,
                                       std::string& why);

// The NCCL library that make_nccl would load (dlopen("libnccl.so.2")): its version, or
// why it cannot be loaded, without starting NCCL.
bool nccl_loadable(std::string& version_or_why);

}  // namespace bench::gpu
