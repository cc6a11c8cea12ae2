#pragma once

// The CUDA executor: the peer-memory executor (exec/peer.hpp) inside a kernel. One
// thread block per lane; its thread 0 is the leader that picks the next piece and
// publishes it, and all its threads move the piece with 16-byte vectors
// (exec/cuda_reduce.cuh). Mailboxes are device memory of the receiving rank's GPU,
// written by senders through peer pointers; the failure flags, the waits and the lanes'
// status lie in mapped host memory, so the host reads why a kernel stopped without a
// copy, and can stop spinning kernels by raising the application's flag itself.
//
// Waits are bounded by %globaltimer, so a rank that never launches its part becomes a
// timeout on every other rank, not a kernel that spins forever.

#include <cuda_runtime.h>
#include <cuda/atomic>

#include <cstddef>
#include <cstdint>

#include "collx/exec/cuda_reduce.cuh"
#include "collx/exec/peer.hpp"

namespace collx::cuda::detail {

// Vectors of each operand a thread of a lane loads at once: 2, not the reduction
// kernels' 4, as the lane's own state shares the 64 registers that __launch_bounds__(1024)
// leaves a thread, and with 4 the misaligned paths spilled (ptxas -v, sm_90).
inline constexpr unsigned lane_unroll = 2;

struct device_context {
  peer_memory::action& act;
  peer_memory::leader_state& ls;

  __device__ peer_memory::leader_state& leader_state() const { return ls; }
  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void barrier() const { __syncthreads(); }
  __device__ peer_memory::action& shared_action() const { return act; }
  __device__ static std::uint64_t load_acquire(std::uint64_t* p) {
    return ::cuda::atomic_ref<std::uint64_t, ::cuda::thread_scope_system>(*p).load(
        ::cuda::memory_order_acquire);
  }
  __device__ static void store_release(std::uint64_t* p, std::uint64_t v) {
    ::cuda::atomic_ref<std::uint64_t, ::cuda::thread_scope_system>(*p).store(v, ::cuda::memory_order_release);
  }
  // Orders every thread's slot writes (made visible to the leader by the barrier before
  // it) before the flag that publishes them, for readers on other GPUs too.
  __device__ static void fence() { __threadfence_system(); }
  __device__ static std::uint64_t now_ns() {
    std::uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
  }
  __device__ static void pause() { __nanosleep(256); }
  __device__ static void copy(std::byte* dst, const std::byte* src, std::uint64_t bytes) {
    copy_range<lane_unroll>(dst, src, bytes, threadIdx.x, blockDim.x);
  }
  template <class T, reduce_op Op>
  __device__ static void reduce(T* dst, const T* a, const T* b, std::uint64_t n) {
    reduce_range<T, collx::detail::combining<Op>, lane_unroll>(dst, a, b, n, threadIdx.x, blockDim.x);
  }
};

// Kernel parameters hold 32 lanes' calls (about 4 KB: more than the 4 KB that CUDA
// allowed before 12.1, within the 32 KB it allows since on Volta and later).
inline constexpr int max_lanes = 32;

// Everything a rank's kernel needs, by value: kernel parameters are read-only and free.
struct launch_args {
  peer_memory::world_view w;
  peer_memory::lane_call lanes[max_lanes];
  // avg: each lane divides its part of the result once its call over its slice has finished.
  std::byte* divide_at[max_lanes];
  std::uint64_t divide_count[max_lanes];
  int divisor = 0;
};

template <class T, reduce_op Op>
__global__ void __launch_bounds__(1024) peer_kernel(const launch_args a) {
  __shared__ peer_memory::action act;
  __shared__ peer_memory::leader_state ls;
  device_context ctx{act, ls};
  const unsigned j = blockIdx.x;
  const bool ok = peer_memory::run_lane<T, Op>(ctx, a.lanes[j], a.w);
  if constexpr (Op == reduce_op::avg) {
    if (ok && a.divisor > 1) {
      divide_range<T>(reinterpret_cast<T*>(a.divide_at[j]), a.divide_count[j], a.divisor, threadIdx.x,
                      blockDim.x);
    }
  }
}

template <class T, reduce_op Op>
void launch_peer(const launch_args& a, int lanes, unsigned threads, cudaStream_t stream) {
  peer_kernel<T, Op><<<static_cast<unsigned>(lanes), threads, 0, stream>>>(a);
}

// The kernel for a call's element type and reduction.
inline void launch_peer(dtype t, reduce_op op, const launch_args& a, int lanes, unsigned threads,
                        cudaStream_t stream) {
  collx::detail::visit_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    collx::detail::visit_reduce_op(op, [&](auto reduction) {
      constexpr reduce_op Op = decltype(reduction)::value;
      // avg exists for the floating types only (front/check.hpp refuses it for others).
      if constexpr (Op != reduce_op::avg || is_floating(dtype_v<T>))
        launch_peer<T, Op>(a, lanes, threads, stream);
    });
  });
  check(cudaGetLastError(), "launching the collective's kernel");
}

}  // namespace collx::cuda::detail
