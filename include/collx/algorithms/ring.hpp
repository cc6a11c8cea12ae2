#pragma once

// ring reduce-scatter: p-1 steps, n(p-1)/p bytes sent per rank; all-gather: p-1 steps,
// n(p-1)/p bytes sent per rank (n = the gathered size); all-reduce = reduce-scatter then
// all-gather: 2(p-1) steps, 2n(p-1)/p bytes sent per rank, bandwidth-optimal for large n.
//
// The ranks stand in a circle; each sends only to its right neighbour and receives only
// from its left. The buffer is cut into p chunks. In the reduce-scatter half, at step s
// rank r passes chunk (r-s-1) to the right and receives chunk (r-s-2) from the left,
// adding its own contribution to it. A chunk that starts at rank c+1 travels p-1 hops
// around the circle, collecting one contribution per hop, and arrives complete at rank c.
// In the all-gather half each rank passes on the complete chunk it just received, so
// after p-1 more steps every rank holds every chunk.
//
// Chunks are cut further into segments, and segment k of step s+1 depends only on
// segment k of step s: a rank forwards the first segment of a chunk while the rest is
// still arriving. That pipelining hides most of the per-step latency on large buffers.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

namespace detail {

// Chunk c of n elements cut into p nearly equal chunks: the first n % p get one more.
struct chunking {
  std::size_t n;
  std::size_t p;
  std::size_t size(std::size_t c) const noexcept { return n / p + (c < n % p ? 1 : 0); }
  std::size_t offset(std::size_t c) const noexcept { return c * (n / p) + std::min(c, n % p); }
};

inline std::size_t mod(long long a, int p) noexcept {
  const long long m = a % p;
  return static_cast<std::size_t>(m < 0 ? m + p : m);
}

// Segment k of a chunk [offset, offset+size) in `seg`-element pieces; empty past the end.
inline region segment(buffer b, std::size_t offset, std::size_t size, std::size_t seg,
                      std::size_t k) noexcept {
  const std::size_t first = k * seg;
  if (first >= size) return {b, offset + size, 0};
  return {b, offset + first, std::min(seg, size - first)};
}

inline std::size_t segments(std::size_t size, std::size_t seg) noexcept { return (size + seg - 1) / seg; }

}  // namespace detail

struct ring_params {
  int rank = 0;
  int ranks = 1;
  std::size_t count = 0;    // elements per rank, as in the public API
  std::size_t segment = 1;  // elements per pipeline segment (at least 1)
  bool in_place = false;
};

namespace detail {

// The schedule's header, with no steps yet.
inline schedule empty_ring_schedule(collective coll, const ring_params& params) {
  return empty_schedule(coll, algorithm::ring, params.rank, params.ranks, params.count, params.in_place);
}

// Where this rank stands on the ring, and the call's sizes: what every collective's
// ring starts from.
struct ring_position {
  int p, r;            // ranks, this rank
  std::size_t n, seg;  // elements per rank, per segment
  buffer in;           // where this rank's input lies (the output, in place)
  int right, left;     // the neighbours it sends to and receives from
  std::uint32_t last;  // the last step of a p-1-step pass

  explicit ring_position(const ring_params& params)
      : p(params.ranks),
        r(params.rank),
        n(params.count),
        seg(std::max<std::size_t>(params.segment, 1)),
        in(params.in_place ? buffer::output : buffer::input),
        right((r + 1) % p),
        left((r + p - 1) % p),
        last(static_cast<std::uint32_t>(p - 2)) {}

  // The chunk this rank sends at `step` of a pass that starts with its own chunk shifted
  // back by `shift`, and the one it receives.
  std::size_t sent(std::uint32_t step, long long shift) const {
    return mod(r - static_cast<long long>(step) - shift, p);
  }
  std::size_t received(std::uint32_t step, long long shift) const { return sent(step, shift + 1); }

  // Every step of one pass, in order: visit(step, chunk sent, chunk received).
  template <class Visit>
  void pass(long long shift, Visit&& visit) const {
    for (std::uint32_t step = 0; step <= last; ++step) visit(step, sent(step, shift), received(step, shift));
  }
};

// count 0, or a single rank: the same for every collective.
inline void ring_empty_or_single_rank(schedule& s, const ring_position& at, const ring_params& params) {
  schedule_builder b(s);
  if (at.n == 0) {
    // Nothing to move, but one empty message around the ring still carries the call's
    // signature, so that a rank passing count 0 where its peers pass more is told so.
    if (at.p > 1) {
      b.send(at.right, {buffer::output, 0, 0}, 0);
      b.recv(at.left, {buffer::output, 0, 0}, 0);
    }
  } else if (!params.in_place) {  // one rank: out of place, the input is the answer
    b.copy({buffer::input, 0, at.n}, {buffer::output, 0, at.n}, 0);
  }
}

// all-reduce: the reduce-scatter half over the p chunks of the buffer, then the
// all-gather half.
inline void ring_all_reduce(schedule& s, const ring_position& at, const ring_params&) {
  schedule_builder b(s);
  const auto [p, r, n, seg, in, right, left, last] = at;
  const chunking ch{n, static_cast<std::size_t>(p)};
  auto piece = [&](buffer buf, std::size_t c, std::size_t k) {
    return detail::segment(buf, ch.offset(c), ch.size(c), seg, k);
  };
  // Reduce-scatter half: out of place, the first hop reads the input directly and
  // every later one accumulates into output, so the input is never copied.
  at.pass(1, [&](std::uint32_t step, std::size_t sc, std::size_t rc) {
    const std::size_t ks = std::max(detail::segments(ch.size(sc), seg), detail::segments(ch.size(rc), seg));
    for (std::size_t k = 0; k < ks; ++k) {
      const region out = piece(step == 0 ? in : buffer::output, sc, k);
      if (out.count != 0) b.send(right, out, step);
      const region acc = piece(buffer::output, rc, k);
      if (acc.count != 0) b.recv_reduce(left, piece(in, rc, k), acc, step);
    }
  });
  // All-gather half: pass on the complete chunk received one step earlier.
  at.pass(0, [&](std::uint32_t step, std::size_t sc, std::size_t rc) {
    const std::size_t ks = std::max(detail::segments(ch.size(sc), seg), detail::segments(ch.size(rc), seg));
    for (std::size_t k = 0; k < ks; ++k) {
      const region out = piece(buffer::output, sc, k);
      if (out.count != 0) b.send(right, out, last + 1 + step);
      const region got = piece(buffer::output, rc, k);
      if (got.count != 0) b.recv(left, got, last + 1 + step);
    }
  });
}

// reduce-scatter over the p blocks of the input.
inline void ring_reduce_scatter(schedule& s, const ring_position& at, const ring_params& params) {
  schedule_builder b(s);
  const auto [p, r, n, seg, in, right, left, last] = at;
  // Chunks are the p blocks of `n` elements; partial sums travel through two
  // scratch slots (one being sent while the next arrives) so that neither the
  // caller's input nor, in place, the other ranks' blocks are overwritten.
  s.scratch_count = 2 * n;
  const std::size_t ks = detail::segments(n, seg);
  const std::size_t result = params.in_place ? static_cast<std::size_t>(r) * n : 0;
  at.pass(1, [&](std::uint32_t step, std::size_t sc, std::size_t rc) {
    for (std::size_t k = 0; k < ks; ++k) {
      const region out = step == 0 ? detail::segment(in, sc * n, n, seg, k)
                                   : detail::segment(buffer::scratch, ((step - 1) % 2) * n, n, seg, k);
      b.send(right, out, step);
      const region operand = detail::segment(in, rc * n, n, seg, k);
      const region acc = step == last ? detail::segment(buffer::output, result, n, seg, k)
                                      : detail::segment(buffer::scratch, (step % 2) * n, n, seg, k);
      b.recv_reduce(left, operand, acc, step);
    }
  });
}

// all-gather over the p blocks of the output.
inline void ring_all_gather(schedule& s, const ring_position& at, const ring_params& params) {
  schedule_builder b(s);
  const auto [p, r, n, seg, in, right, left, last] = at;
  // Out of place, the first hop sends straight from the input while the local copy
  // into the rank's own block of the output proceeds beside it.
  const std::size_t ks = detail::segments(n, seg);
  if (!params.in_place) {
    b.copy({buffer::input, 0, n}, {buffer::output, static_cast<std::size_t>(r) * n, n}, 0);
  }
  at.pass(0, [&](std::uint32_t step, std::size_t sc, std::size_t rc) {
    for (std::size_t k = 0; k < ks; ++k) {
      const region out = step == 0 && !params.in_place ? detail::segment(buffer::input, 0, n, seg, k)
                                                       : detail::segment(buffer::output, sc * n, n, seg, k);
      b.send(right, out, step);
      b.recv(left, detail::segment(buffer::output, rc * n, n, seg, k), step);
    }
  });
}

}  // namespace detail

inline schedule ring(collective coll, const ring_params& params) {
  schedule s = detail::empty_ring_schedule(coll, params);
  const detail::ring_position at(params);
  if (params.count == 0 || params.ranks == 1) {
    detail::ring_empty_or_single_rank(s, at, params);
    return s;
  }
  switch (coll) {
    case collective::all_reduce: detail::ring_all_reduce(s, at, params); break;
    case collective::reduce_scatter: detail::ring_reduce_scatter(s, at, params); break;
    case collective::all_gather: detail::ring_all_gather(s, at, params); break;
    default: break;  // not a ring collective: implements() keeps it from here
  }
  return s;
}

}  // namespace collx::algorithms
