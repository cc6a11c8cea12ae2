#pragma once

// The peer-memory executor's host side: a schedule compiled into the position-independent
// program its lanes read (exec/peer.hpp), and the error a stopped lane's status stands
// for. Host code only; what a GPU kernel sees is in exec/peer.hpp.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "collx/core/envelope.hpp"
#include "collx/core/error.hpp"
#include "collx/exec/peer.hpp"
#include "collx/schedule/channels.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::peer_memory {

// A schedule compiled into one position-independent block of bytes, to be copied where
// the lane runs (device memory, or left on the host).
struct program_image {
  std::vector<std::byte> bytes;
  std::size_t ops_at = 0, deps_at = 0, order_at = 0, begin_at = 0;
  std::uint32_t nqueues = 0;
  std::uint64_t scratch_count = 0;

  program_view view_at(const std::byte* base) const noexcept {
    program_view v;
    v.ops = reinterpret_cast<const flat_step*>(base + ops_at);
    v.deps = reinterpret_cast<const dep*>(base + deps_at);
    v.order = reinterpret_cast<const std::uint32_t*>(base + order_at);
    v.queue_begin = reinterpret_cast<const std::uint32_t*>(base + begin_at);
    v.nqueues = nqueues;
    v.scratch_count = scratch_count;
    return v;
  }
};

// What a count-0 call runs instead of its schedule: an empty piece to and from every
// peer, each carrying the call's signature (signed_when_empty). A rank that calls with
// count 0 while its peers call with more then meets a foreign signature from every peer
// that sends it anything, and every peer it sends to meets its own: a mismatch, as on the
// host, whatever the algorithm (a ring neighbour's empty round alone is not enough: a
// tree's peers may never receive from it).
inline schedule signature_exchange(const schedule& s) {
  schedule x = s;  // the call's shape; its steps (a count-0 schedule's few) replaced
  x.steps.clear();
  x.deps.clear();
  x.scratch_count = 0;
  for (int k = 1; k < s.ranks; ++k) {
    step to, from;
    to.kind = step_kind::send;
    to.peer = (s.rank + k) % s.ranks;
    from.kind = step_kind::recv;
    from.peer = (s.rank - k + s.ranks) % s.ranks;
    x.steps.push_back(to);
    x.steps.push_back(from);
  }
  return x;
}

// The program of schedule s, each step's flags set to `flags`.
inline program_image compile_with(const schedule& s, std::uint8_t flags) {
  const channel_layout channels(s);
  const std::uint32_t nq = channels.count;
  const std::size_t n = s.steps.size();

  program_image img;
  img.nqueues = nq;
  img.scratch_count = s.scratch_count;
  auto place = [&](std::size_t bytes) {
    const std::size_t at = (img.bytes.size() + 15) / 16 * 16;
    img.bytes.resize(at + bytes);
    return at;
  };
  img.ops_at = place(n * sizeof(flat_step));
  img.deps_at = place(s.deps.size() * sizeof(dep));
  img.order_at = place(n * sizeof(std::uint32_t));
  img.begin_at = place((nq + 1) * sizeof(std::uint32_t));
  for (std::size_t i = 0; i < n; ++i) {
    const step& st = s.steps[i];
    flat_step o;
    o.kind = static_cast<std::uint8_t>(st.kind);
    o.src_buf = static_cast<std::uint8_t>(st.src.buf);
    o.dst_buf = static_cast<std::uint8_t>(st.dst.buf);
    o.peer = st.peer;
    o.src_off = st.src.offset;
    o.dst_off = st.dst.offset;
    o.count = st.count();
    o.dep_begin = st.dep_begin;
    o.dep_count = st.dep_count;
    o.flags = flags;
    std::memcpy(img.bytes.data() + img.ops_at + i * sizeof(flat_step), &o, sizeof(flat_step));
  }
  for (std::size_t k = 0; k < s.deps.size(); ++k) {
    const dep d{channels.channel[s.deps[k]], channels.position[s.deps[k]]};
    std::memcpy(img.bytes.data() + img.deps_at + k * sizeof(dep), &d, sizeof(dep));
  }
  if (n != 0) std::memcpy(img.bytes.data() + img.order_at, channels.order.data(), n * sizeof(std::uint32_t));
  std::memcpy(img.bytes.data() + img.begin_at, channels.begin.data(), (nq + 1) * sizeof(std::uint32_t));
  return img;
}

// The program a lane runs for schedule s (a count-0 call's: signature_exchange).
inline program_image compile(const schedule& s) {
  if (s.count == 0 && s.send_counts.empty() && s.ranks > 1)
    return compile_with(signature_exchange(s), signed_when_empty);
  return compile_with(s, 0);
}

// The largest message of a schedule, in elements. A message must fit in a channel's
// slots: a sender whose message needs more room than the slots hold waits for its
// receiver to consume, and a receiver whose reduction waits on its own send (recursive
// doubling's exchange) never will. Executors cut schedules into segments that fit.
inline std::uint64_t max_message(const schedule& s) noexcept {
  std::uint64_t m = 0;
  for (const auto& st : s.steps) {
    if (st.kind != step_kind::copy && st.count() > m) m = st.count();
  }
  return m;
}

// The error a stopped lane's status stands for. `who` names what must be calling, in
// the timeout's advice ("Is every rank's thread calling", "Is every rank's process ...").
// `called`: the call as this rank made it (envelope::describe), when the caller has it.
inline error to_error(const status& s, std::string_view coll, int rank, int ranks, std::string_view who,
                      const std::string& called = {}) {
  const bool named = s.peer >= 0 && s.peer < ranks;
  const std::string ms = std::to_string(s.waited_ns / 1'000'000);
  errc kind = errc::peer_failure;
  std::string why;
  switch (s.code) {
    case outcome::timeout:
      kind = errc::timeout;
      why = "timed out after " + ms + " ms waiting for peer " + std::to_string(s.waited_for) + " (step #" +
            std::to_string(s.step) + ", lane " + std::to_string(s.lane) + ")";
      if (s.peer != s.waited_for) {
        why += "; peer " + std::to_string(s.waited_for) + " was itself waiting, down to peer " +
               std::to_string(s.peer) + ", which waited for no one: peer " + std::to_string(s.peer) +
               " is the one stuck";
      }
      why += ". " + std::string(who) + ", and did each make the same call?";
      break;
    case outcome::mismatch:
      kind = errc::mismatch;
      why = "peer " + std::to_string(s.peer) + " made a different call (step #" + std::to_string(s.step) +
            ": its signature " + std::to_string(s.got) + ", ours " + std::to_string(s.expected) +
            "): every rank must make the same calls, with the same count, type, reduction and algorithm, "
            "in the same order";
      break;
    default:
      // A mismatch stays one for the ranks that learn of it through the flags, as on
      // the host (as_seen_by_peers): the call was mismatched, whichever rank saw it.
      kind = named ? as_seen_by_peers(s.cause == outcome::mismatch ? errc::mismatch : errc::peer_failure)
                   : errc::aborted;
      why = !named ? "the group was aborted"
            : s.cause == outcome::mismatch
                ? "rank " + std::to_string(s.peer) +
                      " found that the ranks made different calls, so this call "
                      "stopped: every rank must make the same calls, with the same "
                      "count, type, reduction and algorithm, in the same order"
                : "rank " + std::to_string(s.peer) + " failed, so this call stopped";
      break;
  }
  if (!called.empty()) why += " (this rank called " + called + ")";
  return error(kind, coll, rank, named ? s.peer : error::no_rank, why);
}

}  // namespace collx::peer_memory
