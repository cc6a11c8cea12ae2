#pragma once

// What collx asks of the CUDA runtime (about the machine, about pointers) and how it
// reports CUDA's failures, for the GPU front ends, the tests and collx-bench alike. Host
// code: needs the CUDA runtime's header and library (collx::cuda), not nvcc.

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>

#include "collx/core/error.hpp"
#include "collx/exec/cuda_check.hpp"
#include "collx/front/check.hpp"

namespace collx::cuda {

// Empty when a CUDA device answers; otherwise why not, e.g. "no CUDA device (CUDA driver
// version is insufficient for CUDA runtime version)". GPU tests skip with it.
inline std::string no_device() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device (") + cudaGetErrorString(e) + ")";
  }
  if (n == 0) return "no CUDA device (cudaGetDeviceCount found none)";
  return {};
}

// Whether p is memory only a GPU can touch (cudaMalloc'd; managed and mapped host
// memory are reachable from the host too).
inline bool is_device_memory(const void* p) noexcept {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice;
}

// Refuses (collx::error, before any byte moves) a call on buffers that are not device
// memory (of GPU `device`, when one is named), for the GPU front ends whose copy engines
// and kernels need device pointers.
inline void require_device_memory(std::string_view coll, int rank, const void* in, const void* out,
                                  std::size_t count, int device = -1) {
  if (count == 0) return;
  for (const void* ptr : {in, out}) {
    const char* which = ptr == in ? "input" : "output";
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) cudaGetLastError();
    if (a.type != cudaMemoryTypeDevice) {
      throw error(errc::invalid_argument, coll, rank, error::no_rank,
                  std::string(which) + " is not device memory");
    }
    if (device >= 0 && a.device != device) {
      throw error(errc::invalid_argument, coll, rank, error::no_rank,
                  std::string(which) + " is on GPU " + std::to_string(a.device) + ", not this rank's GPU " +
                      std::to_string(device));
    }
  }
}

// From now on, host communicators refuse device buffers with an error naming the way to
// carry them (front/check.hpp). Called by every GPU object's constructor.
inline void install_device_memory_probe() noexcept {
  collx::detail::device_memory_probe.store(&is_device_memory, std::memory_order_relaxed);
}

}  // namespace collx::cuda
