#pragma once

// How a GPU thread block walks a reduction dst[i] = a[i] op b[i] (or a copy) in 16-byte
// vectors whatever the operands' alignments: the destination is aligned first (its head
// element by element), and a source misaligned against it is read as aligned 16-byte
// vectors, each result vector cut from two neighbours with byte permutes (a funnel
// shift). A ring's chunks start wherever count/p falls, so a slot (aligned) and the chunk
// it meets usually differ in alignment; without this they went element by element.
//
// Host-device code: the vector type V (uint4 on a GPU; any struct of four unsigned x, y,
// z, w) and the operations are parameters, so that the host tests run this very index
// arithmetic against a scalar reference (tests/test_peer.cpp); only __byte_perm is
// emulated there. exec/cuda_reduce.cuh instantiates it for the kernels.

#include <cstddef>
#include <cstdint>

#include "collx/exec/host_device.hpp"

namespace collx::detail {

// The __byte_perm selector whose result is bytes r..r+3 of the eight bytes hi:lo (lo's
// first, little-endian), r in 0..3.
COLLX_HD constexpr unsigned byte_selector(unsigned r) noexcept { return 0x3210u + 0x1111u * r; }

// __byte_perm(lo, hi, selector): byte k of the result is byte (selector >> 4k) & 7 of
// hi:lo. The host's is the same rule written out (the sign-replicating mode, bit 3 of
// each nibble, is never used here).
COLLX_HD inline unsigned byte_perm(unsigned lo, unsigned hi, unsigned selector) noexcept {
#if defined(__CUDA_ARCH__)
  return __byte_perm(lo, hi, selector);
#else
  const std::uint64_t both = (std::uint64_t{hi} << 32) | lo;
  unsigned r = 0;
  for (unsigned k = 0; k < 4; ++k) {
    const unsigned from = (selector >> (4 * k)) & 7u;
    r |= static_cast<unsigned>((both >> (8 * from)) & 0xffu) << (8 * k);
  }
  return r;
#endif
}

// The 16 bytes that start `shift` bytes (0..15) into lo and run on into hi.
template <class V>
COLLX_HD inline V funnel(const V& lo, const V& hi, unsigned shift) noexcept {
  const unsigned sel = byte_selector(shift % 4);
  // The five words from word shift/4 on: the result's four words straddle them.
  unsigned w[5];
  switch (shift / 4) {
    case 0: w[0] = lo.x, w[1] = lo.y, w[2] = lo.z, w[3] = lo.w, w[4] = hi.x; break;
    case 1: w[0] = lo.y, w[1] = lo.z, w[2] = lo.w, w[3] = hi.x, w[4] = hi.y; break;
    case 2: w[0] = lo.z, w[1] = lo.w, w[2] = hi.x, w[3] = hi.y, w[4] = hi.z; break;
    default: w[0] = lo.w, w[1] = hi.x, w[2] = hi.y, w[3] = hi.z, w[4] = hi.w; break;
  }
  V r;
  r.x = byte_perm(w[0], w[1], sel);
  r.y = byte_perm(w[1], w[2], sel);
  r.z = byte_perm(w[2], w[3], sel);
  r.w = byte_perm(w[3], w[4], sel);
  return r;
}

// How n elements of `size` bytes are walked: elements [0, first) and
// [first + vectors * 16/size, n) one by one, the `vectors` 16-byte vectors between
// them whole. dst's vectors are aligned; a source's are read at dst's places from the
// aligned vectors around them, shifted by a_shift or b_shift bytes (0: aligned like
// dst's, read directly). A shifted read touches two aligned vectors: first and vectors
// are chosen so that both always lie within the source's n elements, never beyond.
struct vector_plan {
  std::size_t first = 0;
  std::size_t vectors = 0;
  unsigned a_shift = 0, b_shift = 0;
};

COLLX_HD inline vector_plan plan_vectors(const void* dst, const void* a, const void* b, std::size_t n,
                                         std::size_t size) noexcept {
  const auto d = reinterpret_cast<std::uintptr_t>(dst);
  const auto pa = reinterpret_cast<std::uintptr_t>(a);
  const auto pb = reinterpret_cast<std::uintptr_t>(b);
  vector_plan p;
  p.first = n;
  // Elements not aligned to their own size: element by element, as before vectors.
  if (d % size != 0 || pa % size != 0 || pb % size != 0) return p;
  const std::size_t lanes = 16 / size;
  std::size_t first = (16 - d % 16) % 16 / size;  // until dst is aligned
  p.a_shift = static_cast<unsigned>((pa + first * size) % 16);
  p.b_shift = static_cast<unsigned>((pb + first * size) % 16);
  // A shifted source's first vector starts its shift before the element: it must be
  // one of the source's own (a vector later, the shift is the same).
  const unsigned shift = p.a_shift > p.b_shift ? p.a_shift : p.b_shift;
  if (first * size < shift) first += lanes;
  if (first >= n) return p;
  std::size_t vectors = (n - first) / lanes;
  // And its last reads 16 - shift bytes past its vector: they must be the tail's.
  const std::size_t tail = (n - first - vectors * lanes) * size;
  const bool short_a = p.a_shift != 0 && tail + p.a_shift < 16;
  const bool short_b = p.b_shift != 0 && tail + p.b_shift < 16;
  if (vectors != 0 && (short_a || short_b)) --vectors;
  p.first = first;
  p.vectors = vectors;
  return p;
}

// Source vector v, whole or cut from the aligned vectors v and v + 1 of base.
template <bool Shifted, class V>
COLLX_HD inline V load_vector(const V* base, std::size_t v, unsigned shift) noexcept {
  if constexpr (Shifted) {
    return funnel(base[v], base[v + 1], shift);
  } else {
    return base[v];
  }
}

// d[v] = op(a's vector v, b's vector v) for v in [0, vectors), thread tid taking vectors
// tid, tid + nthreads, ... (neighbouring threads, neighbouring vectors: coalesced), each
// loading Unroll of each operand before it combines them.
template <unsigned Unroll, bool ShiftA, bool ShiftB, class V, class VectorOp>
COLLX_HD void combine_vectors(V* d, const V* a, unsigned sa, const V* b, unsigned sb, std::size_t vectors,
                              unsigned tid, unsigned nthreads, const VectorOp& op) {
  const std::size_t stride = nthreads;
  std::size_t v = tid;
  for (; v + (Unroll - 1) * stride < vectors; v += Unroll * stride) {
    V x[Unroll];
    V y[Unroll];
    COLLX_UNROLL
    for (unsigned k = 0; k < Unroll; ++k) {
      x[k] = load_vector<ShiftA>(a, v + k * stride, sa);
      y[k] = load_vector<ShiftB>(b, v + k * stride, sb);
    }
    COLLX_UNROLL
    for (unsigned k = 0; k < Unroll; ++k) d[v + k * stride] = op(x[k], y[k]);
  }
  for (; v < vectors; v += stride) d[v] = op(load_vector<ShiftA>(a, v, sa), load_vector<ShiftB>(b, v, sb));
}

// The aligned vector that holds a source's first planned element `shift` bytes in.
template <class V, class T>
COLLX_HD inline const V* aligned_below(const T* p, unsigned shift) noexcept {
  return reinterpret_cast<const V*>(reinterpret_cast<const unsigned char*>(p) - shift);
}

// dst[i] = f(a[i], b[i]) for i in [0, n), shared by threads tid = 0..nthreads-1, the
// vectors by g(V, V), lane by lane. dst may be a or b (each element is read and written
// by the same thread, reads first), never a partial overlap of either.
template <unsigned Unroll, class V, class T, class ScalarOp, class VectorOp>
COLLX_HD void walk_reduce(T* dst, const T* a, const T* b, std::size_t n, unsigned tid, unsigned nthreads,
                          const ScalarOp& f, const VectorOp& g) {
  const vector_plan p = plan_vectors(dst, a, b, n, sizeof(T));
  for (std::size_t i = tid; i < p.first; i += nthreads) dst[i] = f(a[i], b[i]);
  if (p.vectors != 0) {
    auto* d = reinterpret_cast<V*>(dst + p.first);
    const V* va = aligned_below<V>(a + p.first, p.a_shift);
    const V* vb = aligned_below<V>(b + p.first, p.b_shift);
    const unsigned sa = p.a_shift, sb = p.b_shift;
    if (sa == 0 && sb == 0) {
      combine_vectors<Unroll, false, false>(d, va, sa, vb, sb, p.vectors, tid, nthreads, g);
    } else if (sb == 0) {
      combine_vectors<Unroll, true, false>(d, va, sa, vb, sb, p.vectors, tid, nthreads, g);
    } else if (sa == 0) {
      combine_vectors<Unroll, false, true>(d, va, sa, vb, sb, p.vectors, tid, nthreads, g);
    } else {
      // Two aligned loads a vector for each operand: half as many vectors at once keep as
      // many loads in flight, and u8's sixteen lanes within its registers (no spills).
      combine_vectors<(Unroll > 1 ? Unroll / 2 : 1), true, true>(d, va, sa, vb, sb, p.vectors, tid, nthreads,
                                                                 g);
    }
  }
  const std::size_t rest = p.first + p.vectors * (16 / sizeof(T));
  for (std::size_t i = rest + tid; i < n; i += nthreads) dst[i] = f(a[i], b[i]);
}

// d[v] = source vector v for v in [0, vectors), as combine_vectors walks them.
template <unsigned Unroll, bool Shifted, class V>
COLLX_HD void move_vectors(V* d, const V* s, unsigned shift, std::size_t vectors, unsigned tid,
                           unsigned nthreads) {
  const std::size_t stride = nthreads;
  std::size_t v = tid;
  for (; v + (Unroll - 1) * stride < vectors; v += Unroll * stride) {
    V x[Unroll];
    COLLX_UNROLL
    for (unsigned k = 0; k < Unroll; ++k) x[k] = load_vector<Shifted>(s, v + k * stride, shift);
    COLLX_UNROLL
    for (unsigned k = 0; k < Unroll; ++k) d[v + k * stride] = x[k];
  }
  for (; v < vectors; v += stride) d[v] = load_vector<Shifted>(s, v, shift);
}

// dst[i] = src[i] for `bytes` bytes, the same way (dst and src must not overlap).
template <unsigned Unroll, class V>
COLLX_HD void walk_copy(unsigned char* dst, const unsigned char* src, std::size_t bytes, unsigned tid,
                        unsigned nthreads) {
  const vector_plan p = plan_vectors(dst, src, src, bytes, 1);
  for (std::size_t i = tid; i < p.first; i += nthreads) dst[i] = src[i];
  if (p.vectors != 0) {
    auto* d = reinterpret_cast<V*>(dst + p.first);
    const V* s = aligned_below<V>(src + p.first, p.a_shift);
    if (p.a_shift == 0) {
      move_vectors<Unroll, false>(d, s, 0, p.vectors, tid, nthreads);
    } else {
      move_vectors<Unroll, true>(d, s, p.a_shift, p.vectors, tid, nthreads);
    }
  }
  for (std::size_t i = p.first + p.vectors * 16 + tid; i < bytes; i += nthreads) dst[i] = src[i];
}

}  // namespace collx::detail
