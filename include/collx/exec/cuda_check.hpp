#pragma once

// How collx reports the CUDA runtime's failures, for the executors' kernels and every
// GPU front end alike. Host code: needs the CUDA runtime's header (collx::cuda), not nvcc.

#include <cuda_runtime.h>

#include <string>
#include <string_view>

#include "collx/core/error.hpp"

namespace collx::cuda {

// Throws collx::error (errc::transport: collx has no CUDA code of its own) naming the
// failed call and CUDA's reason.
inline void check(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return;
  std::string msg(what);
  msg.append(": ").append(cudaGetErrorString(e));
  throw error(errc::transport, "cuda", error::no_rank, error::no_rank, msg);
}

}  // namespace collx::cuda
