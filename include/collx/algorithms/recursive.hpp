#pragma once

// recursive doubling all-reduce: log2(p) steps, n*log2(p) bytes sent per rank: few steps,
//   so it wins where latency dominates (small n).
// Rabenseifner all-reduce: recursive-halving reduce-scatter, then recursive-doubling
//   all-gather: 2*log2(p) steps, 2n(p-1)/p bytes sent per rank: ring's bandwidth with
//   log-many steps.
// recursive halving reduce-scatter: log2(p) steps, n(p-1)/p bytes sent per rank
//   (n = the whole input).
// recursive doubling all-gather: log2(p) steps, n(p-1)/p bytes sent per rank
//   (n = the gathered output).
// When p is not a power of two, two extra steps fold it onto the largest power of two
// p2 < p (Thakur, Rabenseifner and Gropp 2005): the first 2(p-p2) ranks pair up, each
// even rank hands its data to its odd neighbour before the main steps and gets the
// answer back after them; they cost one more full-size message each way.
//
// In the main steps rank v talks to v XOR mask for mask = 1, 2, 4, ... (doubling) or
// p2/2, ..., 2, 1 (halving). Halving keeps the half of the current range that holds
// the rank's own blocks and sends the other half to its partner, who does the mirror:
// each step halves the data and doubles the number of contributions in it. Doubling
// runs the same exchanges backwards, each step doubling what every rank holds.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "collx/algorithms/ring.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

namespace detail {

// p ranks folded onto p2, the largest power of two not above p.
struct fold {
  int p;
  int p2;
  int extra;  // p - p2: ranks 0..2*extra-1 form pairs (even, odd)

  explicit fold(int ranks) : p(ranks), p2(1), extra(0) {
    while (p2 * 2 <= p) p2 *= 2;
    extra = p - p2;
  }
  bool paired(int r) const noexcept { return r < 2 * extra; }
  // The virtual rank of r in the power-of-two group, or -1 for an even rank of a pair.
  int virt(int r) const noexcept {
    if (paired(r)) return r % 2 == 1 ? r / 2 : -1;
    return r - extra;
  }
  int real(int v) const noexcept { return v < extra ? 2 * v + 1 : v + extra; }
  // The blocks (one per real rank) that virtual ranks [a, b) stand for: a pair's
  // virtual rank stands for both of its ranks' blocks. first_block(p2) == p.
  std::size_t first_block(int v) const noexcept {
    return static_cast<std::size_t>(v < extra ? 2 * v : v + extra);
  }
  std::uint32_t log2p2() const noexcept {
    std::uint32_t l = 0;
    while ((1 << l) < p2) ++l;
    return l;
  }
};

// Emits one message (or one receive) per segment of [lo, hi).
template <class F>
void for_segments(std::size_t lo, std::size_t hi, std::size_t seg, F&& f) {
  for (std::size_t a = lo; a < hi; a += seg) f(a, std::min(seg, hi - a));
}

}  // namespace detail

struct recursive_params {
  int rank = 0;
  int ranks = 1;
  std::size_t count = 0;
  std::size_t segment = 1;
  bool in_place = false;
};

namespace detail {

// A call's sizes as the block algorithms (Bruck's, the pairwise exchange) read them:
// elements per block, per segment (at least 1), ranks and this rank; block(q) is where
// rank q's block starts.
struct block_sizes {
  std::size_t n, seg;
  int p, r;
  explicit block_sizes(const recursive_params& prm)
      : n(prm.count), seg(std::max<std::size_t>(prm.segment, 1)), p(prm.ranks), r(prm.rank) {}
  std::size_t block(int q) const noexcept { return static_cast<std::size_t>(q) * n; }
};

}  // namespace detail

namespace detail {

// The doubling half, shared by Rabenseifner and the all-gather: at mask m, virtual rank
// v swaps the blocks of its aligned group of m virtual ranks for its partner group's,
// so each step doubles what it holds. elem(v) is where virtual rank v's blocks start.
template <class Elem>
void gather_doubling(schedule_builder& b, const fold& f, int v, Elem&& elem, std::size_t seg,
                     std::uint32_t& phase) {
  for (int mask = 1; mask < f.p2; mask <<= 1, ++phase) {
    const int peer = f.real(v ^ mask);
    const int mine = v & ~(mask - 1);
    const int theirs = (v ^ mask) & ~(mask - 1);
    for_segments(elem(mine), elem(mine + mask), seg, [&](std::size_t o, std::size_t k) {
      b.send(peer, {buffer::output, o, k}, phase);
    });
    for_segments(elem(theirs), elem(theirs + mask), seg, [&](std::size_t o, std::size_t k) {
      b.recv(peer, {buffer::output, o, k}, phase);
    });
  }
}

// The fold of a non-power-of-two p: each even rank of a pair sends its whole data (in
// `from`, [0, total)) to its odd neighbour, which reduces it with its own into `into`.
// Returns true on the odd rank, whose data now lives in `into`.
inline bool fold_in(schedule_builder& b, const fold& f, int r, buffer from, buffer into, std::size_t total,
                    std::size_t seg, std::uint32_t phase) {
  if (!f.paired(r)) return false;
  for_segments(0, total, seg, [&](std::size_t o, std::size_t k) {
    if (r % 2 == 0) {
      b.send(r + 1, {from, o, k}, phase);
    } else {
      b.recv_reduce(r - 1, {from, o, k}, {into, o, k}, phase);
    }
  });
  return r % 2 == 1;
}

// The fold undone: each odd rank of a pair sends `count` elements from `from` to its
// even neighbour, which receives them into `to`.
inline void fold_out(schedule_builder& b, const fold& f, int r, region from, region to, std::size_t seg,
                     std::uint32_t phase) {
  if (!f.paired(r)) return;
  for_segments(0, from.count, seg, [&](std::size_t o, std::size_t k) {
    if (r % 2 == 1) {
      b.send(r - 1, {from.buf, from.offset + o, k}, phase);
    } else {
      b.recv(r + 1, {to.buf, to.offset + o, k}, phase);
    }
  });
}

// The halving half: at mask = p2/2, ..., 2, 1, virtual rank v keeps the half of its
// current range of virtual ranks [lo, hi) that holds v, and gives the other half to
// its partner v XOR mask, who does the mirror. f(mask, peer, keep_lo, keep_hi, give_lo,
// give_hi) emits one step; ranges are in virtual ranks.
template <class F>
void for_halving(const fold& f, int v, F&& step) {
  int lo = 0;
  int hi = f.p2;
  for (int mask = f.p2 / 2; mask >= 1; mask >>= 1) {
    const int mid = lo + mask;
    const bool low = v < mid;
    const int keep_lo = low ? lo : mid;
    const int keep_hi = low ? mid : hi;
    step(mask, f.real(v ^ mask), keep_lo, keep_hi, low ? mid : lo, low ? hi : mid);
    lo = keep_lo;
    hi = keep_hi;
  }
}

inline schedule start(collective c, algorithm a, const recursive_params& params) {
  return empty_schedule(c, a, params.rank, params.ranks, params.count, params.in_place);
}

// What every recursive schedule starts from: the call's sizes, this rank, and the fold
// of its ranks to a power of two.
struct recursive_position {
  std::size_t n, seg;  // elements per rank, per segment
  int r;               // this rank
  fold f;
  std::size_t up;  // ranks, as a size

  explicit recursive_position(const recursive_params& params)
      : n(params.count),
        seg(std::max<std::size_t>(params.segment, 1)),
        r(params.rank),
        f(params.ranks),
        up(static_cast<std::size_t>(params.ranks)) {}
};

// all-reduce by recursive doubling (whole buffer every step), or by Rabenseifner
// (halving then doubling over the p chunks of the buffer).
inline schedule all_reduce_recursive(algorithm a, const recursive_params& params) {
  schedule s = start(collective::all_reduce, a, params);
  schedule_builder b(s);
  const recursive_position at(params);
  const auto& [n, seg, r, f, up] = at;
  const buffer in = params.in_place ? buffer::output : buffer::input;
  if (params.ranks == 1) {
    if (!params.in_place) b.copy({buffer::input, 0, n}, {buffer::output, 0, n}, 0);
    return s;
  }
  // Out of place, a rank's data stays in the input until it is first reduced into output.
  bool fresh = true;
  auto cur = [&] { return fresh ? in : buffer::output; };
  std::uint32_t phase = 0;

  if (fold_in(b, f, r, in, buffer::output, n, seg, phase)) fresh = false;
  ++phase;

  const int v = f.virt(r);
  if (v >= 0) {
    const chunking ch{n, static_cast<std::size_t>(f.p)};
    auto elem = [&](int vb) { return ch.offset(f.first_block(vb)); };
    if (a == algorithm::recursive_doubling) {
      for (int mask = 1; mask < f.p2; mask <<= 1, ++phase) {
        const int peer = f.real(v ^ mask);
        const buffer from = cur();
        detail::for_segments(0, n, seg, [&](std::size_t o, std::size_t k) {
          b.send(peer, {from, o, k}, phase);
          b.recv_reduce(peer, {from, o, k}, {buffer::output, o, k}, phase);
        });
        fresh = false;
      }
    } else {  // Rabenseifner
      for_halving(f, v, [&](int, int peer, int keep_lo, int keep_hi, int give_lo, int give_hi) {
        const buffer from = cur();
        // Send what the partner keeps; receive and reduce what this rank keeps.
        for_segments(elem(give_lo), elem(give_hi), seg, [&](std::size_t o, std::size_t k) {
          b.send(peer, {from, o, k}, phase);
        });
        for_segments(elem(keep_lo), elem(keep_hi), seg, [&](std::size_t o, std::size_t k) {
          b.recv_reduce(peer, {from, o, k}, {buffer::output, o, k}, phase);
        });
        fresh = false;
        ++phase;
      });
      detail::gather_doubling(b, f, v, elem, seg, phase);
    }
  } else {
    phase += a == algorithm::rabenseifner ? 2 * f.log2p2() : f.log2p2();  // sat out the main steps
  }

  fold_out(b, f, r, {buffer::output, 0, n}, {buffer::output, 0, n}, seg, phase);
  return s;
}

}  // namespace detail

// count 0 moves nothing: the bodies below assume at least one element.
inline schedule rabenseifner(const recursive_params& params) {
  if (params.count == 0) return detail::start(collective::all_reduce, algorithm::rabenseifner, params);
  return detail::all_reduce_recursive(algorithm::rabenseifner, params);
}

namespace detail {

// reduce-scatter by recursive halving over the p blocks of the input. Partial sums
// live in scratch (the caller's input is never written, and in place the other ranks'
// blocks are left alone); the rank's own block lands in output at the last step.
inline schedule reduce_scatter_halving(const recursive_params& params) {
  schedule s = start(collective::reduce_scatter, algorithm::recursive_doubling, params);
  schedule_builder b(s);
  const recursive_position at(params);
  const auto& [n, seg, r, f, up] = at;
  const buffer in = params.in_place ? buffer::output : buffer::input;
  const std::size_t result = params.in_place ? static_cast<std::size_t>(r) * n : 0;
  if (params.ranks == 1) {
    if (!params.in_place) b.copy({buffer::input, 0, n}, {buffer::output, 0, n}, 0);
    return s;
  }
  s.scratch_count = up * n;
  bool fresh = true;
  auto cur = [&] { return fresh ? in : buffer::scratch; };
  std::uint32_t phase = 0;
  if (detail::fold_in(b, f, r, in, buffer::scratch, up * n, seg, phase)) fresh = false;
  ++phase;
  const int v = f.virt(r);
  if (v >= 0) {
    auto elem = [&](int vb) { return f.first_block(vb) * n; };
    detail::for_halving(f, v, [&](int mask, int peer, int keep_lo, int keep_hi, int give_lo, int give_hi) {
      const buffer from = cur();
      // At the last step a rank keeps its own block (and, for a pair, its partner's):
      // both sides cut that step per block, so the own block lands whole in output.
      const bool last = mask == 1;
      auto cut = [&](int vlo, int vhi, auto&& emit) {
        if (!last) return detail::for_segments(elem(vlo), elem(vhi), seg, emit);
        for (std::size_t blk = f.first_block(vlo); blk < f.first_block(vhi); ++blk) {
          detail::for_segments(blk * n, (blk + 1) * n, seg, emit);
        }
      };
      cut(give_lo, give_hi, [&](std::size_t o, std::size_t k) { b.send(peer, {from, o, k}, phase); });
      cut(keep_lo, keep_hi, [&](std::size_t o, std::size_t k) {
        const std::size_t own = static_cast<std::size_t>(r) * n;
        if (last && o >= own && o < own + n) {
          b.recv_reduce(peer, {from, o, k}, {buffer::output, result + (o - own), k}, phase);
        } else {
          b.recv_reduce(peer, {from, o, k}, {buffer::scratch, o, k}, phase);
        }
      });
      fresh = false;
      ++phase;
    });
  } else {
    phase += f.log2p2();
  }
  // The odd rank holds its even partner's finished block in scratch.
  const std::size_t theirs = static_cast<std::size_t>(r - r % 2) * n;
  detail::fold_out(b, f, r, {buffer::scratch, theirs, n}, {buffer::output, result, n}, seg, phase);
  return s;
}

// all-gather by recursive doubling over the p blocks of the output.
inline schedule all_gather_doubling(const recursive_params& params) {
  schedule s = start(collective::all_gather, algorithm::recursive_doubling, params);
  schedule_builder b(s);
  const recursive_position at(params);
  const auto& [n, seg, r, f, up] = at;
  const std::size_t own = static_cast<std::size_t>(r) * n;
  if (!params.in_place) b.copy({buffer::input, 0, n}, {buffer::output, own, n}, 0);
  if (params.ranks == 1) return s;
  std::uint32_t phase = 0;
  if (f.paired(r)) {
    // The even rank's block travels to its odd partner, which gathers for both.
    detail::for_segments(0, n, seg, [&](std::size_t o, std::size_t k) {
      if (r % 2 == 0) {
        b.send(r + 1, {params.in_place ? buffer::output : buffer::input, (params.in_place ? own : 0) + o, k},
               phase);
      } else {
        b.recv(r - 1, {buffer::output, own - n + o, k}, phase);
      }
    });
  }
  ++phase;
  const int v = f.virt(r);
  if (v >= 0) {
    auto elem = [&](int vb) { return f.first_block(vb) * n; };
    detail::gather_doubling(b, f, v, elem, seg, phase);
  } else {
    phase += f.log2p2();
  }
  // Everything but the even rank's own block goes back to it.
  const std::size_t skip = static_cast<std::size_t>(r - r % 2) * n;
  for (const region part :
       {region{buffer::output, 0, skip}, region{buffer::output, skip + n, up * n - skip - n}}) {
    detail::fold_out(b, f, r, part, part, seg, phase);
  }
  return s;
}

}  // namespace detail

inline schedule recursive_doubling(collective c, const recursive_params& params) {
  if (params.count == 0) return detail::start(c, algorithm::recursive_doubling, params);
  switch (c) {
    case collective::all_reduce: return detail::all_reduce_recursive(algorithm::recursive_doubling, params);
    case collective::reduce_scatter: return detail::reduce_scatter_halving(params);
    case collective::all_gather: return detail::all_gather_doubling(params);
    default: break;
  }
  return {};
}

}  // namespace collx::algorithms
