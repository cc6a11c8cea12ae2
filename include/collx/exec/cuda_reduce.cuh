#pragma once

// Reduction kernels on device memory, so that a GPU rank reduces where its data lives
// instead of staging through the host. nvcc only.
//
// Cost: dst = a op b moves 3n bytes for n-byte operands (two reads, one write) where a
// copy moves 2n, so the kernels are bound by memory bandwidth, never by arithmetic, and
// at equal bandwidth a reduction takes 1.5x a cudaMemcpy of the same buffer. They are
// written for that bound: 16-byte loads, several in flight per thread, whatever the
// operands' alignments (exec/vector_walk.hpp). The bandwidth
// they reach is benchmarks/cuda_kernels.cu's to measure (collx-cuda-kernels); no number
// here came from a GPU, as the machine this was written on had none.
//
// The results match the host's (core/reduce.hpp) bit for bit on NaN-free data: signed
// integers wrap; f16 and bf16 are computed natively, rounding once, as the host's float
// detour does (float's 24-bit significand holds 2p+2 bits of an f16 or bf16 one, so
// rounding to float and then to the narrow type cannot double-round; bf16 products that
// fall below float's normal range are the exception); min and max take the host's rule,
// so that a NaN in b is ignored and one in a kept. A NaN produced by arithmetic may carry
// another payload than the host's.
//
// Kernels run on the current device, which must own dst, a and b.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/reduce.hpp"
#include "collx/exec/cuda_check.hpp"
#include "collx/exec/vector_walk.hpp"

namespace collx::cuda {

namespace detail {

// One block is 512 threads and two are resident per SM (__launch_bounds__ holds the
// registers to that): 1024 threads x 4 vectors x 16 bytes x 2 operands = 128 KiB in
// flight per SM, several times what HBM's latency-bandwidth product asks for.
inline constexpr unsigned block_threads = 512;
inline constexpr unsigned blocks_per_sm = 2;
inline constexpr unsigned unroll = 4;

// ---- element arithmetic --------------------------------------------------------------

// collx's 16-bit storage types beside the CUDA type that computes on them.
template <class T>
struct native16 {
  static constexpr bool is = false;
};
template <>
struct native16<collx::half> {
  static constexpr bool is = true;
  static __device__ __forceinline__ __half in(unsigned short bits) { return __ushort_as_half(bits); }
  static __device__ __forceinline__ unsigned short out(__half x) { return __half_as_ushort(x); }
  static __device__ __forceinline__ __half2 join(__half lo, __half hi) { return __halves2half2(lo, hi); }
  static __device__ __forceinline__ __half low(__half2 h) { return __low2half(h); }
  static __device__ __forceinline__ __half high(__half2 h) { return __high2half(h); }
};
template <>
struct native16<collx::bfloat16> {
  static constexpr bool is = true;
  static __device__ __forceinline__ __nv_bfloat16 in(unsigned short bits) {
    return __ushort_as_bfloat16(bits);
  }
  static __device__ __forceinline__ unsigned short out(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
  static __device__ __forceinline__ __nv_bfloat162 join(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return __halves2bfloat162(lo, hi);
  }
  static __device__ __forceinline__ __nv_bfloat16 low(__nv_bfloat162 h) { return __low2bfloat16(h); }
  static __device__ __forceinline__ __nv_bfloat16 high(__nv_bfloat162 h) { return __high2bfloat16(h); }
};

template <class T, reduce_op Op>
__device__ __forceinline__ T apply(T a, T b) {
  if constexpr (native16<T>::is) {
    const auto x = native16<T>::in(a.bits);
    const auto y = native16<T>::in(b.bits);
    if constexpr (Op == reduce_op::min) {
      return __hlt(y, x) ? b : a;
    } else if constexpr (Op == reduce_op::max) {
      return __hlt(x, y) ? b : a;
    } else {
      T r;
      r.bits = native16<T>::out(Op == reduce_op::prod ? __hmul(x, y) : __hadd(x, y));
      return r;
    }
  } else if constexpr (Op == reduce_op::min) {
    return b < a ? b : a;
  } else if constexpr (Op == reduce_op::max) {
    return a < b ? b : a;
  } else {
    // Signed integers compute in the unsigned type of their width, as on the host.
    using C = typename collx::detail::compute<T>::type;
    const C x = static_cast<C>(a);
    const C y = static_cast<C>(b);
    if constexpr (Op == reduce_op::prod) {
      return static_cast<T>(static_cast<C>(x * y));
    } else {  // sum and avg
      return static_cast<T>(static_cast<C>(x + y));
    }
  }
}

// ---- 16-byte vectors -----------------------------------------------------------------

// Two 16-bit lanes of a 32-bit word as the CUDA pair type; the lower address is the low
// 16 bits, and join puts its first argument there.
template <class T>
__device__ __forceinline__ auto as_pair(unsigned w) {
  using N = native16<T>;
  return N::join(N::in(static_cast<unsigned short>(w & 0xffffu)),
                 N::in(static_cast<unsigned short>(w >> 16)));
}
template <class T, class Pair>
__device__ __forceinline__ unsigned bits_of(Pair h) {
  using N = native16<T>;
  return static_cast<unsigned>(N::out(N::low(h))) | (static_cast<unsigned>(N::out(N::high(h))) << 16);
}

template <class T, reduce_op Op>
__device__ __forceinline__ unsigned pair_op(unsigned x, unsigned y) {
  const auto a = as_pair<T>(x);
  const auto b = as_pair<T>(y);
  return bits_of<T>(Op == reduce_op::prod ? __hmul2(a, b) : __hadd2(a, b));
}

// The 16/sizeof(T) lanes of two vectors, combined lane by lane.
template <class T, reduce_op Op>
__device__ __forceinline__ uint4 apply16(uint4 x, uint4 y) {
  if constexpr (native16<T>::is && (Op == reduce_op::sum || Op == reduce_op::avg || Op == reduce_op::prod)) {
    return make_uint4(pair_op<T, Op>(x.x, y.x), pair_op<T, Op>(x.y, y.y), pair_op<T, Op>(x.z, y.z),
                      pair_op<T, Op>(x.w, y.w));
  } else {
    constexpr unsigned lanes = 16 / sizeof(T);
    T ex[lanes];
    T ey[lanes];
    memcpy(ex, &x, 16);  // register moves once compiled: the arrays never reach memory
    memcpy(ey, &y, 16);
#pragma unroll
    for (unsigned k = 0; k < lanes; ++k) ex[k] = apply<T, Op>(ex[k], ey[k]);
    uint4 r;
    memcpy(&r, ex, 16);
    return r;
  }
}

// The element and vector forms of the reduction, for the walk (exec/vector_walk.hpp).
template <class T, reduce_op Op>
struct element_op {
  __device__ __forceinline__ T operator()(T x, T y) const { return apply<T, Op>(x, y); }
};
template <class T, reduce_op Op>
struct vector_op {
  __device__ __forceinline__ uint4 operator()(uint4 x, uint4 y) const { return apply16<T, Op>(x, y); }
};

// dst[i] = a[i] op b[i] for i in [0, n), shared by threads tid = 0..nthreads-1, in
// 16-byte vectors at any alignment of the three (exec/vector_walk.hpp: dst aligned
// first, a source misaligned against it read as aligned vectors and funnel-shifted).
// dst may be a or b (each element is read and written by the same thread, reads first),
// but may not overlap either partially. Unroll: the vectors of each operand a thread
// loads at once.
template <class T, reduce_op Op, unsigned Unroll = unroll>
__device__ void reduce_range(T* dst, const T* a, const T* b, std::size_t n, unsigned tid, unsigned nthreads) {
  collx::detail::walk_reduce<Unroll, uint4>(dst, a, b, n, tid, nthreads, element_op<T, Op>{},
                                            vector_op<T, Op>{});
}

// A plain copy, the same way: the baseline reduce_range is measured against, and what
// the peer executor's lanes move pieces with. dst and src must not overlap.
template <unsigned Unroll = unroll>
__device__ void copy_range(std::byte* dst, const std::byte* src, std::size_t bytes, unsigned tid,
                           unsigned nthreads) {
  collx::detail::walk_copy<Unroll, uint4>(reinterpret_cast<unsigned char*>(dst),
                                          reinterpret_cast<const unsigned char*>(src), bytes, tid, nthreads);
}

// avg's last step, d[i] /= divisor, as the host's finish_avg does it: in the type itself
// for float and double, through float for f16 and bf16; nothing for integers.
template <class T>
__device__ void divide_range(T* d, std::size_t n, int divisor, unsigned tid, unsigned nthreads) {
  if constexpr (std::is_floating_point_v<T>) {
    const T div = static_cast<T>(divisor);
    for (std::size_t i = tid; i < n; i += nthreads) d[i] /= div;
  } else if constexpr (std::is_same_v<T, collx::half>) {
    const float div = static_cast<float>(divisor);
    for (std::size_t i = tid; i < n; i += nthreads) {
      d[i].bits = __half_as_ushort(__float2half_rn(__half2float(__ushort_as_half(d[i].bits)) / div));
    }
  } else if constexpr (std::is_same_v<T, collx::bfloat16>) {
    const float div = static_cast<float>(divisor);
    for (std::size_t i = tid; i < n; i += nthreads) {
      d[i].bits =
          __bfloat16_as_ushort(__float2bfloat16_rn(__bfloat162float(__ushort_as_bfloat16(d[i].bits)) / div));
    }
  }
}

// ---- kernels -------------------------------------------------------------------------

// Block c takes chunks c, c + gridDim.x, ...; reduce() sizes the grid so that usually
// each block has one.
template <class T, reduce_op Op>
__global__ void __launch_bounds__(block_threads, blocks_per_sm)
    reduce_kernel(T* dst, const T* a, const T* b, std::size_t n, std::size_t chunk) {
  for (std::size_t begin = blockIdx.x * chunk; begin < n; begin += std::size_t{gridDim.x} * chunk) {
    const std::size_t len = n - begin < chunk ? n - begin : chunk;
    reduce_range<T, Op>(dst + begin, a + begin, b + begin, len, threadIdx.x, blockDim.x);
  }
}

// A template only so that several translation units may include this header: a plain
// __global__ function would be defined in each, and the link would fail.
template <class = void>
__global__ void __launch_bounds__(block_threads, blocks_per_sm)
    copy_kernel(std::byte* dst, const std::byte* src, std::size_t bytes, std::size_t chunk) {
  for (std::size_t begin = blockIdx.x * chunk; begin < bytes; begin += std::size_t{gridDim.x} * chunk) {
    const std::size_t len = bytes - begin < chunk ? bytes - begin : chunk;
    copy_range<>(dst + begin, src + begin, len, threadIdx.x, blockDim.x);
  }
}

template <class T>
__global__ void __launch_bounds__(block_threads, blocks_per_sm)
    divide_kernel(T* d, std::size_t n, int divisor) {
  divide_range<T>(d, n, divisor, blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x);
}

// ---- launching -----------------------------------------------------------------------

// The current device's multiprocessor count, asked once per device.
inline int sm_count() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  constexpr int cached = 64;
  static std::atomic<int> counts[cached] = {};
  if (device >= 0 && device < cached) {
    if (const int c = counts[device].load(std::memory_order_relaxed); c > 0) return c;
  }
  int c = 0;
  check(cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(multiprocessors)");
  if (c < 1) c = 1;
  if (device >= 0 && device < cached) counts[device].store(c, std::memory_order_relaxed);
  return c;
}

struct launch_shape {
  unsigned blocks;
  std::size_t chunk;  // elements per block
};

// Chunks of whole 16-byte vectors (so that every chunk starts at the same misalignment
// as the first), at least one vector per thread, one per resident block where n allows.
inline launch_shape shape_for(std::size_t n, std::size_t elem_size) {
  const std::size_t lanes = 16 / elem_size;
  const std::size_t max_blocks = static_cast<std::size_t>(sm_count()) * blocks_per_sm;
  std::size_t chunk = (n + max_blocks - 1) / max_blocks;
  chunk = (chunk + lanes - 1) / lanes * lanes;
  const std::size_t min_chunk = std::size_t{block_threads} * lanes;
  if (chunk < min_chunk) chunk = min_chunk;
  return {static_cast<unsigned>((n + chunk - 1) / chunk), chunk};
}

template <class T, reduce_op Op>
void launch_reduce(void* dst, const void* a, const void* b, std::size_t n, cudaStream_t stream) {
  const launch_shape s = shape_for(n, sizeof(T));
  reduce_kernel<T, Op><<<s.blocks, block_threads, 0, stream>>>(static_cast<T*>(dst), static_cast<const T*>(a),
                                                               static_cast<const T*>(b), n, s.chunk);
  check(cudaGetLastError(), "reduce kernel launch");
}

template <class T>
void launch_reduce_typed(reduce_op op, void* dst, const void* a, const void* b, std::size_t n,
                         cudaStream_t stream) {
  collx::detail::visit_reduce_op(op, [&](auto reduction) {
    launch_reduce<T, collx::detail::combining<decltype(reduction)::value>>(dst, a, b, n, stream);
  });
}

}  // namespace detail

// dst[i] = a[i] op b[i] for n elements of type t in device memory, queued on stream (no
// synchronization). dst may be a or b, never a partial overlap. avg reduces as sum
// (finish_avg divides at the end) and is refused for integer types.
inline void reduce(dtype t, reduce_op op, void* dst, const void* a, const void* b, std::size_t n,
                   cudaStream_t stream) {
  if (!supports(t, op)) {
    throw error(errc::invalid_argument, "cuda reduce", error::no_rank, error::no_rank,
                std::string(to_string(op)) + " is for floating types only, not " + std::string(to_string(t)));
  }
  if (n == 0) return;
  collx::detail::visit_dtype(
      t, [&](auto tag) { detail::launch_reduce_typed<decltype(tag)>(op, dst, a, b, n, stream); });
}

// data[i] /= divisor for the floating types, queued on stream; nothing for integers (as
// on the host, where reduce already refused avg for them).
inline void finish_avg(dtype t, void* data, std::size_t n, int divisor, cudaStream_t stream) {
  if (n == 0 || !is_floating(t)) return;
  collx::detail::visit_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_integral_v<T>) {
      const detail::launch_shape s = detail::shape_for(n, sizeof(T));
      detail::divide_kernel<T>
          <<<s.blocks, detail::block_threads, 0, stream>>>(static_cast<T*>(data), n, divisor);
      check(cudaGetLastError(), "finish_avg kernel launch");
    }
  });
}

// A copy kernel of bytes from src to dst (not overlapping), queued on stream: what
// reduce's bandwidth is compared with beside cudaMemcpyAsync.
inline void copy(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  const detail::launch_shape s = detail::shape_for(bytes, 1);
  detail::copy_kernel<><<<s.blocks, detail::block_threads, 0, stream>>>(
      static_cast<std::byte*>(dst), static_cast<const std::byte*>(src), bytes, s.chunk);
  check(cudaGetLastError(), "copy kernel launch");
}

}  // namespace collx::cuda
