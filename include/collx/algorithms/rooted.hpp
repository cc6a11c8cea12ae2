#pragma once

// Rooted collectives: broadcast (the root's buffer to every rank) and reduce (every
// rank's buffer combined at the root). n is the buffer, L = ceil(log2 p), S = n/s
// segments of s bytes:
//
//   binomial broadcast   L (alpha + n beta)                      small n: fewest rounds
//   binomial reduce      L (alpha + n beta + n gamma)
//   chain broadcast      (p - 2 + S)(alpha + s beta) + L alpha   large n: each link
//   chain reduce         (p - 1)(alpha + s beta + s gamma)       carries n once, pipelined
//                        + (S - 1) max(alpha + s beta, s gamma) + L alpha
//   scatter_allgather    (L + p - 1) alpha + 2 n (p-1)/p beta   large n, many ranks:
//     broadcast                                                  2n bytes, not L n, unpipelined
//   rabenseifner reduce  2 log2(p2) alpha + 2 n (p2-1)/p2 beta  large n: n(p2-1)/p2
//                        + n (p2-1)/p2 gamma                     reduced, not L n
//                        (+ alpha + n beta + n gamma: the fold, p not a power of two)
//
// The ranks are renumbered so that the root is 0 (v = (r - root) mod p).
//
// Binomial (Thakur, Rabenseifner and Gropp 2005): v's parent is v minus its highest set
// bit. A broadcast doubles the ranks that hold the data each round: in round k (d = 2^k)
// v < d sends to v + d. A reduce runs the rounds backwards: in the round of d, v in
// [d, 2d) sends its partial result to v - d, which adds it into its own.
//
// Every call must also tell every rank that every other rank made the same call: a tree
// alone lets a rank finish having heard only from its ancestors (the root hears from no
// one), so ranks that named different roots could each finish a broadcast of their own.
// The binomial rounds are therefore those of a dissemination barrier (barrier.hpp): in
// each round every rank sends to v + d and receives from v - d (v - d and v + d for the
// reduce), the data where the tree has an edge, an empty message where it has none, and
// each round's last send and receive wait for the round before's last receive. Every
// rank then hears, through messages whose envelopes (root included) were checked on the
// way, from every rank: a rank that finishes knows that all ranks made its call, and on
// a mismatch none finishes. The empty messages travel beside the data ones, so the cost
// is the tree's. The verifier checks this (every rank must hear from every rank).
//
// Chain: v's parent is v - 1, its child v + 1; segment k crosses edge h at step h + k. A
// dissemination barrier's empty messages go first, waiting for none of its steps: L
// alpha more on each rank's links.
//
// van de Geijn's broadcast (Chan et al. 2007): a binomial scatter of the p chunks of
// the buffer, then a ring all-gather of them. Rabenseifner's reduce (Thakur, Rabenseifner
// and Gropp 2005): a reduce-scatter by recursive halving, then a binomial gather of the
// reduced chunks to the root; a non-power-of-two p folds onto p2 first, as recursive.hpp
// does for all-reduce. Their comments below say how each hears from every rank.
//
// All are cut into segments, and a segment moves on as soon as it has arrived
// (broadcast) or been reduced (reduce). A reduce writes only the root's output: the
// other ranks accumulate in scratch, so a caller's receive buffer there is never touched
// (it may be empty).

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "collx/algorithms/barrier.hpp"
#include "collx/algorithms/recursive.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

struct rooted_params : recursive_params {
  int root = 0;
};

namespace detail {

inline std::uint32_t ceil_log2(int p) noexcept {
  return static_cast<std::uint32_t>(std::bit_width(static_cast<unsigned>(std::max(p, 1) - 1)));
}

// What both collectives start from: the renumbering and the segments.
struct rooted_position {
  int p, v, root;
  std::size_t n, seg;
  buffer own;  // where this rank's data lies (the output, in place)

  explicit rooted_position(const rooted_params& params)
      : p(params.ranks),
        v((params.rank - params.root + params.ranks) % params.ranks),
        root(params.root),
        n(params.count),
        seg(std::max<std::size_t>(params.segment, 1)),
        own(params.in_place ? buffer::output : buffer::input) {}

  int real(int virt) const noexcept { return ((virt % p + p) % p + root) % p; }
  std::size_t segments() const noexcept { return (n + seg - 1) / seg; }
  region piece(buffer b, std::size_t k) const noexcept {
    const std::size_t lo = k * seg;
    return {b, lo, std::min(seg, n - lo)};
  }
  // Segment k's rounds come one tree depth (or, in a chain, one step) after segment k-1's.
  std::uint32_t phase(std::uint32_t round, std::size_t k, std::uint32_t stride) const noexcept {
    return round + static_cast<std::uint32_t>(k) * stride;
  }
};

inline constexpr region signal{buffer::output, 0, 0};  // an empty message

// One round of a dissemination-shaped tree: `out` sends to `to` (the data, or an empty
// message), `in` receives from `from` (into the data, or an empty message), and the
// round's last send and receive wait for the previous round's last receive (`heard`).
struct round_plan {
  int to, from;
  bool data_out, data_in;
  std::uint32_t round;
};

template <class Send, class Receive>
void run_round(schedule_builder& b, const rooted_position& at, const round_plan& rp, bool first_round,
               std::uint32_t& heard, Send&& send_data, Receive&& receive_data) {
  const std::size_t ks = at.segments();
  const std::uint32_t stride = std::max<std::uint32_t>(ceil_log2(at.p), 1);
  auto wait_for_round_before = [&](bool last) {
    if (last && !first_round) b.after(heard);
  };
  if (rp.data_out && ks > 0) {
    for (std::size_t k = 0; k < ks; ++k) {
      wait_for_round_before(k + 1 == ks);
      send_data(at.real(rp.to), k, at.phase(rp.round, k, stride));
    }
  } else {
    wait_for_round_before(true);
    b.send(at.real(rp.to), signal, rp.round);
  }
  if (rp.data_in && ks > 0) {
    for (std::size_t k = 0; k < ks; ++k) {
      wait_for_round_before(k + 1 == ks);
      const std::uint32_t got = receive_data(at.real(rp.from), k, at.phase(rp.round, k, stride));
      if (k + 1 == ks) heard = got;
    }
  } else {
    wait_for_round_before(true);
    heard = b.recv(at.real(rp.from), signal, rp.round);
  }
}

// A run of elements cut into segments, one region each: the pieces of one message.
inline std::vector<region> cut(region whole, std::size_t seg) {
  std::vector<region> out;
  for_segments(whole.offset, whole.end(), seg, [&](std::size_t o, std::size_t k) {
    out.push_back({whole.buf, o, k});
  });
  return out;
}

// One round of a dissemination-shaped tree whose messages differ in size from rank to
// rank (gather, scatter): `out` (a message's segments) goes to `to`, `in` comes from
// `from`, an empty message where either has none; as in run_round, the round's last
// send and receive wait for the round before's last receive (`heard`).
inline void tree_round(schedule_builder& b, int to, int from, const std::vector<region>& out,
                       const std::vector<region>& in, std::uint32_t round, bool first_round,
                       std::uint32_t& heard) {
  auto wait_for_round_before = [&](bool last) {
    if (last && !first_round) b.after(heard);
  };
  if (out.empty()) {
    wait_for_round_before(true);
    b.send(to, signal, round);
  }
  for (std::size_t k = 0; k < out.size(); ++k) {
    wait_for_round_before(k + 1 == out.size());
    b.send(to, out[k], round);
  }
  if (in.empty()) {
    wait_for_round_before(true);
    heard = b.recv(from, signal, round);
  }
  for (std::size_t k = 0; k < in.size(); ++k) {
    wait_for_round_before(k + 1 == in.size());
    const std::uint32_t got = b.recv(from, in[k], round);
    if (k + 1 == in.size()) heard = got;
  }
}

// Binomial broadcast: in round k (d = 2^k), v < d sends to v + d.
inline void broadcast_binomial(schedule& s, const rooted_position& at) {
  schedule_builder b(s);
  const bool root = at.v == 0;
  const buffer from = root ? at.own : buffer::output;
  if (root && at.own == buffer::input) b.copy({buffer::input, 0, at.n}, {buffer::output, 0, at.n}, 0);
  std::uint32_t heard = 0;
  std::uint32_t round = 0;
  for (int d = 1; d < at.p; d *= 2, ++round) {
    const round_plan rp{at.v + d, at.v - d, at.v < d && at.v + d < at.p, at.v >= d && at.v < 2 * d, round};
    run_round(
        b, at, rp, round == 0, heard,
        [&](int peer, std::size_t k, std::uint32_t ph) { b.send(peer, at.piece(from, k), ph); },
        [&](int peer, std::size_t k, std::uint32_t ph) {
          return b.recv(peer, at.piece(buffer::output, k), ph);
        });
  }
}

// Binomial reduce: in the round of d (2^(L-1) down to 1), v in [d, 2d) sends its partial
// result to v - d.
inline void reduce_binomial(schedule& s, const rooted_position& at) {
  schedule_builder b(s);
  const bool root = at.v == 0;
  const buffer acc = root ? buffer::output : buffer::scratch;
  bool fresh = true;  // the rank's partial result is still its own data
  std::uint32_t heard = 0;
  std::uint32_t round = 0;
  for (int d = at.p > 1 ? 1 << (ceil_log2(at.p) - 1) : 0; d >= 1; d /= 2, ++round) {
    const round_plan rp{at.v - d, at.v + d, at.v >= d && at.v < 2 * d, at.v < d && at.v + d < at.p, round};
    if (rp.data_in && !root) s.scratch_count = at.n;
    const buffer cur = fresh ? at.own : acc;
    run_round(
        b, at, rp, round == 0, heard,
        [&](int peer, std::size_t k, std::uint32_t ph) { b.send(peer, at.piece(cur, k), ph); },
        [&](int peer, std::size_t k, std::uint32_t ph) {
          return b.recv_reduce(peer, at.piece(cur, k), at.piece(acc, k), ph);
        });
    if (rp.data_in) fresh = false;
  }
  if (root && fresh && at.own == buffer::input) {  // one rank, out of place
    b.copy({buffer::input, 0, at.n}, {buffer::output, 0, at.n}, 0);
  }
}

// Chain broadcast: segment k leaves v for v + 1 as soon as it has arrived.
inline void broadcast_chain(schedule& s, const rooted_position& at) {
  schedule_builder b(s);
  const bool root = at.v == 0;
  const buffer from = root ? at.own : buffer::output;
  if (root && at.own == buffer::input) b.copy({buffer::input, 0, at.n}, {buffer::output, 0, at.n}, 0);
  for (std::size_t k = 0; k < at.segments(); ++k) {
    const auto hop = static_cast<std::uint32_t>(at.v);
    if (!root) b.recv(at.real(at.v - 1), at.piece(buffer::output, k), at.phase(hop - 1, k, 1));
    if (at.v + 1 < at.p) b.send(at.real(at.v + 1), at.piece(from, k), at.phase(hop, k, 1));
  }
}

// Chain reduce: partial results flow from v = p-1 down to the root, each rank adding its
// own before passing a segment on.
inline void reduce_chain(schedule& s, const rooted_position& at) {
  schedule_builder b(s);
  const bool root = at.v == 0;
  const buffer acc = root ? buffer::output : buffer::scratch;
  const bool leaf = at.v + 1 == at.p;
  if (!root && !leaf) s.scratch_count = at.n;
  const auto hop = static_cast<std::uint32_t>(at.p - 1 - at.v);  // the step this rank's result leaves at
  for (std::size_t k = 0; k < at.segments(); ++k) {
    region cur = at.piece(at.own, k);
    if (!leaf) {
      b.recv_reduce(at.real(at.v + 1), cur, at.piece(acc, k), at.phase(hop - 1, k, 1));
      cur = at.piece(acc, k);
    }
    if (!root) {
      b.send(at.real(at.v - 1), cur, at.phase(hop, k, 1));
    } else if (cur.buf == buffer::input) {  // one rank, out of place
      b.copy(cur, at.piece(buffer::output, k), 0);
    }
  }
}

// van de Geijn broadcast: virtual rank w's share is chunk w of the buffer. A binomial
// scatter (the broadcast's rounds, d = 2^(L-1) down to 1: v sends the chunks of
// [v+d, v+2d) to v+d) gives each rank its chunk, then a ring all-gather (v sends to
// v+1 the chunk it got the step before) gives every rank every chunk. The root holds
// them all already: it receives nothing in the ring and sends from its buffer.
inline void broadcast_scatter_allgather(schedule& s, const rooted_position& at) {
  schedule_builder b(s);
  const bool root = at.v == 0;
  const buffer from = root ? at.own : buffer::output;
  if (root && at.own == buffer::input) b.copy({buffer::input, 0, at.n}, {buffer::output, 0, at.n}, 0);
  const chunking ch{at.n, static_cast<std::size_t>(at.p)};
  auto chunks = [&](buffer buf, int lo, int hi) {
    const auto a = static_cast<std::size_t>(lo);
    const auto z = static_cast<std::size_t>(std::min(hi, at.p));
    return cut({buf, ch.offset(a), ch.offset(z) - ch.offset(a)}, at.seg);
  };
  std::uint32_t heard = 0;
  std::uint32_t round = 0;
  for (int d = at.p > 1 ? 1 << (ceil_log2(at.p) - 1) : 0; d >= 1; d /= 2, ++round) {
    const bool give = at.v % (2 * d) == 0 && at.v + d < at.p;
    const bool take = at.v % (2 * d) == d;
    tree_round(b, at.real(at.v + d), at.real(at.v - d),
               give ? chunks(from, at.v + d, at.v + 2 * d) : std::vector<region>{},
               take ? chunks(buffer::output, at.v, at.v + d) : std::vector<region>{}, round, round == 0,
               heard);
  }
  for (int k = 0; k + 1 < at.p; ++k) {
    const auto step = round + static_cast<std::uint32_t>(k);
    const auto mine = static_cast<int>(mod(at.v - k, at.p));
    const auto theirs = static_cast<int>(mod(at.v - k - 1, at.p));
    if (at.v + 1 < at.p) {
      for (const region& x : chunks(from, mine, mine + 1)) b.send(at.real(at.v + 1), x, step);
    }
    if (!root) {
      for (const region& x : chunks(buffer::output, theirs, theirs + 1)) b.recv(at.real(at.v - 1), x, step);
    }
  }
}

// One exchange of a Rabenseifner reduce: the segments `give` (of buffer `from`) go to
// `peer`, the segments `keep` come back and are reduced with `from`'s into them; an empty
// message stands for an empty range. The last send and receive wait for the exchange
// before's last receive (`heard`), so that each rank hears from all, as in run_round.
inline void reduce_exchange(schedule_builder& b, int peer, buffer from, const std::vector<region>& give,
                            const std::vector<region>& keep, std::uint32_t phase,
                            std::optional<std::uint32_t>& heard) {
  auto wait_for_exchange_before = [&](bool last) {
    if (last && heard) b.after(*heard);
  };
  if (give.empty()) {
    wait_for_exchange_before(true);
    b.send(peer, signal, phase);
  }
  for (std::size_t k = 0; k < give.size(); ++k) {
    wait_for_exchange_before(k + 1 == give.size());
    b.send(peer, {from, give[k].offset, give[k].count}, phase);
  }
  if (keep.empty()) {
    wait_for_exchange_before(true);
    heard = b.recv(peer, signal, phase);
  }
  for (std::size_t k = 0; k < keep.size(); ++k) {
    wait_for_exchange_before(k + 1 == keep.size());
    const std::uint32_t got = b.recv_reduce(peer, {from, keep[k].offset, keep[k].count}, keep[k], phase);
    if (k + 1 == keep.size()) heard = got;
  }
}

// Rabenseifner reduce: the ranks are renumbered u = (r - root + 1) mod p, so that the
// root is u = 1, never the even rank a non-power-of-two fold leaves out (recursive.hpp's
// fold). After the fold, recursive halving leaves virtual rank v with chunk v of the p2
// chunks, reduced over all ranks; then a binomial gather over v XOR (the root's v)
// brings the chunks to the root: at mask m = 1, 2, ..., a rank whose distance to the
// root's v has lowest set bit m sends the chunks of its aligned group of m to v XOR m.
//
// Every rank must hear from every rank (algorithms/rooted.hpp says why): the halving's
// exchanges are a butterfly, each waiting for the one before (empty messages where a
// range is empty), so every rank of the p2 group hears from all, its fold partner's data
// included; the odd rank of a pair then tells the even one, which waits for that empty
// message. No signals beside: listed first, a signal's receive waits for the round
// before, and the host executor would hand its staging slots to a later
// receive-and-reduce queued on another channel, which waits for the one behind that
// signal: on a rendezvous transport, a deadlock.
inline void reduce_rabenseifner(schedule& s, const rooted_params& params) {
  schedule_builder b(s);
  const int p = params.ranks;
  const std::size_t n = params.count;
  const std::size_t seg = std::max<std::size_t>(params.segment, 1);
  const buffer own = params.in_place ? buffer::output : buffer::input;
  const buffer acc = params.rank == params.root ? buffer::output : buffer::scratch;
  if (p == 1) {
    if (own == buffer::input) b.copy({buffer::input, 0, n}, {buffer::output, 0, n}, 0);
    return;
  }
  const int u = static_cast<int>(mod(params.rank - params.root + 1, p));
  auto real = [&](int x) { return static_cast<int>(mod(x + params.root - 1, p)); };
  const fold f(p);
  const std::vector<region> all = cut({own, 0, n}, seg);
  std::optional<std::uint32_t> heard;
  if (f.paired(u) && u % 2 == 0) {  // the fold: hand the data to the odd rank, then hear from it
    reduce_exchange(b, real(u + 1), own, all, {}, 0, heard);
    return;
  }
  if (acc == buffer::scratch) s.scratch_count = n;
  if (f.paired(u)) {  // the fold: the even rank's data, reduced into this rank's
    if (all.empty()) heard = b.recv(real(u - 1), signal, 0);
    for (const region& x : all) heard = b.recv_reduce(real(u - 1), x, {acc, x.offset, x.count}, 0);
  }
  bool fresh = !f.paired(u);
  const int v = f.virt(u);
  const chunking ch{n, static_cast<std::size_t>(f.p2)};
  auto chunks = [&](int lo, int hi) {
    const std::size_t a = ch.offset(static_cast<std::size_t>(lo));
    return cut({acc, a, ch.offset(static_cast<std::size_t>(hi)) - a}, seg);
  };
  std::uint32_t phase = 1;
  for_halving(f, v, [&](int, int peer, int keep_lo, int keep_hi, int give_lo, int give_hi) {
    reduce_exchange(b, real(peer), fresh ? own : acc, chunks(give_lo, give_hi), chunks(keep_lo, keep_hi),
                    phase++, heard);
    fresh = false;
  });
  if (f.paired(u)) {  // the even partner hears, through this rank, from all
    b.after(*heard);
    b.send(real(u - 1), signal, phase);
  }
  const int to_root = v ^ f.virt(1);  // bit m set: this rank's group goes at mask m
  for (int m = 1; m < f.p2 && (to_root & (m - 1)) == 0; m <<= 1, ++phase) {
    const int peer = real(f.real(v ^ m));
    const int mine = v & ~(m - 1);
    const int theirs = (v ^ m) & ~(m - 1);
    for (const region& x :
         chunks((to_root & m) != 0 ? mine : theirs, ((to_root & m) != 0 ? mine : theirs) + m))
      (to_root & m) != 0 ? void(b.send(peer, x, phase)) : void(b.recv(peer, x, phase));
  }
}

}  // namespace detail

// This rank's schedule of a broadcast or a reduce by the binomial tree or the chain.
inline schedule rooted(collective c, algorithm a, const rooted_params& params) {
  schedule s = empty_schedule(c, a, params.rank, params.ranks, params.count, params.in_place, params.root);
  const detail::rooted_position at(params);
  const bool bcast = c == collective::broadcast;
  if (a == algorithm::binomial) {
    bcast ? detail::broadcast_binomial(s, at) : detail::reduce_binomial(s, at);
    return s;
  }
  if (a == algorithm::scatter_allgather) {
    detail::broadcast_scatter_allgather(s, at);
    return s;
  }
  if (a == algorithm::rabenseifner) {
    detail::reduce_rabenseifner(s, params);
    return s;
  }
  // The signals first: they wait for nothing, and behind the data on a link they would
  // only arrive late.
  schedule_builder b(s);
  disseminate(b, params.rank, params.ranks);
  bcast ? detail::broadcast_chain(s, at) : detail::reduce_chain(s, at);
  return s;
}

}  // namespace collx::algorithms
