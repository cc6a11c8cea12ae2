#pragma once

// COLLX_HD marks code written once for the host and the device (__host__ __device__
// under nvcc, nothing for a host compiler): the peer executor's lanes (exec/peer.hpp) and
// the reductions' vector walk (exec/vector_walk.hpp), which the host tests run as they are.

#if defined(__CUDACC__)
#define COLLX_HD __host__ __device__
#else
#define COLLX_HD
#endif

// COLLX_UNROLL asks nvcc's device pass to unroll the loop it precedes (#pragma unroll,
// which a host compiler, nvcc's host pass included, would warn about).
#if defined(__CUDA_ARCH__)
#define COLLX_UNROLL _Pragma("unroll")
#else
#define COLLX_UNROLL
#endif
