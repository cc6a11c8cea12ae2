#pragma once

// Exchanges whose blocks are sized per peer: all-to-all-v (every rank a block of its own
// size for every rank, as a mixture-of-experts layer sends tokens) and send/recv (one
// block to one peer, one from another). Each rank knows only its own side's counts: the
// counts it sends with and those it expects. Every message is signed with its pair's
// count (schedule::send_counts, recv_counts), so a pair that disagrees is a mismatch on
// the first message between them, before a byte of it lands. n_q is one block, m the
// largest, L = ceil(log2 p):
//
//   pairwise all-to-all-v   (p-1) alpha + sum_q n_q beta + L alpha  (at most (p-1)(alpha + m beta) + L alpha)
//   direct send/recv        alpha + n beta + alpha                  the data, then its receipt
//
// Pairwise all-to-all-v is pairwise all-to-all (personalized.hpp) with blocks of their
// own sizes, and an empty message where a block is empty: the signature still travels.
// A rank has then heard from every rank, but a disagreement between two others reaches
// only them. So a dissemination barrier's rounds (barrier.hpp) follow, each rank's first
// after all its receives: a rank finishes only once every rank has received, and
// checked, all its blocks. That costs L alpha; without it, a rank could return a result
// while another fails the call for a mismatch with a third.
//
// Direct send/recv: the data goes to the peer in segments; the receiver, once the first
// segment has arrived (its envelope checked), sends an empty receipt back (phase 1;
// the executor signs receipts so that no data message can match one). The sender
// finishes only on the receipt, so a mismatched size, type or tag fails both sides'
// calls, not only the receiver's: one alpha more for the sender. A rank may send to
// itself only while receiving from itself (a local copy).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "collx/algorithms/barrier.hpp"
#include "collx/algorithms/recursive.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

struct exchange_params {
  int rank = 0;
  int ranks = 1;
  std::span<const std::size_t> send_counts;  // per rank, what this rank sends it
  std::span<const std::size_t> recv_counts;  // per rank, what this rank receives from it
  std::size_t segment = 1;
};

namespace detail {

// One block's messages: its segments, or one empty message when it is empty.
template <class F>
void block_messages(std::size_t count, std::size_t seg, F&& message) {
  if (count == 0) {
    message(std::size_t{0}, std::size_t{0});
    return;
  }
  for_segments(0, count, std::max<std::size_t>(seg, 1), message);
}

inline schedule exchange_start(collective c, algorithm a, const exchange_params& prm) {
  schedule s = empty_schedule(c, a, prm.rank, prm.ranks, 0, false, 0);
  s.send_counts.assign(prm.send_counts.begin(), prm.send_counts.end());
  s.recv_counts.assign(prm.recv_counts.begin(), prm.recv_counts.end());
  s.count = input_elements(s);
  return s;
}

}  // namespace detail

inline schedule pairwise_v(const exchange_params& prm) {
  schedule s = detail::exchange_start(collective::all_to_all_v, algorithm::pairwise, prm);
  schedule_builder b(s);
  const int p = prm.ranks;
  const int r = prm.rank;
  const auto send_at = [&](int q) { return block_start(s.send_counts, q); };
  const auto recv_at = [&](int q) { return block_start(s.recv_counts, q); };
  const std::size_t own = s.recv_counts[static_cast<std::size_t>(r)];
  b.copy({buffer::input, send_at(r), own}, {buffer::output, recv_at(r), own}, 0);
  std::vector<std::uint32_t> received;
  for (int k = 1; k < p; ++k) {
    const int to = (r + k) % p;
    const int from = (r - k + p) % p;
    const auto round = static_cast<std::uint32_t>(k - 1);
    detail::block_messages(s.send_counts[static_cast<std::size_t>(to)], prm.segment,
                           [&](std::size_t lo, std::size_t len) {
                             b.send(to, {buffer::input, send_at(to) + lo, len}, round);
                           });
    detail::block_messages(
        s.recv_counts[static_cast<std::size_t>(from)], prm.segment, [&](std::size_t lo, std::size_t len) {
          received.push_back(b.recv(from, {buffer::output, recv_at(from) + lo, len}, round));
        });
  }
  disseminate(b, r, p, received);
  return s;
}

// One rank's side of a send/recv: to `dst` (or none, -1) and from `src` (or none).
inline schedule direct(const exchange_params& prm, int dst, int src) {
  schedule s = detail::exchange_start(collective::send_recv, algorithm::direct, prm);
  schedule_builder b(s);
  const int r = prm.rank;
  if (dst == r) {  // and src == r: the caller checked
    const std::size_t n = s.recv_counts[static_cast<std::size_t>(r)];
    b.copy({buffer::input, 0, n}, {buffer::output, 0, n}, 0);
    return s;
  }
  if (dst >= 0) {
    detail::block_messages(s.send_counts[static_cast<std::size_t>(dst)], prm.segment,
                           [&](std::size_t lo, std::size_t len) {
                             b.send(dst, {buffer::input, lo, len}, 0);
                           });
  }
  if (src >= 0) {
    std::uint32_t first = 0;
    bool any = false;
    detail::block_messages(s.recv_counts[static_cast<std::size_t>(src)], prm.segment,
                           [&](std::size_t lo, std::size_t len) {
                             const std::uint32_t got = b.recv(src, {buffer::output, lo, len}, 0);
                             if (!any) first = got;
                             any = true;
                           });
    b.after(first).send(src, {buffer::output, 0, 0}, receipt_phase);
  }
  if (dst >= 0) b.recv(dst, {buffer::output, 0, 0}, receipt_phase);
  return s;
}

}  // namespace collx::algorithms
