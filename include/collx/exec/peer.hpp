#pragma once

// The peer-memory executor: runs any schedule where ranks can write each other's memory
// (GPUs in one process, CUDA IPC; threads of one process in the tests), with no
// transport in between. It is written once for the host and the device: the CUDA
// executor (exec/cuda.cuh) runs it inside a kernel, one thread block per lane, and the
// host tests run the same code on threads, so the logic that runs on a GPU is proven
// on every machine.
//
// Each receiver owns a mailbox per sender: `slots` slots of slot_bytes each, a ready
// counter the sender bumps after filling a slot, an acked counter the receiver bumps
// after emptying one, and the envelope signature of each slot's piece. Messages are cut
// into slot-sized pieces; piece m of a channel goes to slot (m-1) % slots, and a sender
// may run `slots` pieces ahead of its receiver. The counters never reset, so calls follow
// each other (and CUDA graph replays) without any handshake.
//
// One thread, the leader, picks the next piece to move: among the heads of the 2p+1
// step queues (sends to each peer, receives from each peer, local copies), the first
// whose dependencies are done and whose channel has data or room. Then every thread of
// the lane moves it, and the leader publishes it. A receive that waits never blocks a
// send. Messages must fit in a channel's slots (max_message below): executors cut
// schedules into segments that do, since with a message larger than the slots two
// partners whose reductions wait on their own sends (recursive doubling) deadlock. Every
// wait is bounded: a lane that sees no piece move for its timeout raises the world's
// abort word, and every other lane then stops too, so a dead or stuck rank becomes an
// error on every rank, not a hang.
//
// All-reduce runs as `lanes` independent all-reduces over contiguous slices of the
// buffer, one per lane (as NCCL's channels do): more thread blocks, more bandwidth.
// All-gather and reduce-scatter run on one lane.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "collx/core/error.hpp"
#include "collx/core/reduce.hpp"
#include "collx/schedule/schedule.hpp"
#include "collx/transport/concept.hpp"

#if defined(__CUDACC__)
#define COLLX_HD __host__ __device__
#else
#define COLLX_HD
#endif

namespace collx::peer {

// Ranks a world may have: sizes the leader's per-queue state (leader_state), which lies
// in shared memory on a GPU.
inline constexpr int max_ranks = 32;

// One schedule step, flattened for a kernel.
struct op {
  std::uint8_t kind = 0;  // step_kind
  std::uint8_t src_buf = 0;
  std::uint8_t dst_buf = 0;
  std::uint8_t pad = 0;
  std::int32_t peer = -1;
  std::uint64_t src_off = 0;
  std::uint64_t dst_off = 0;
  std::uint64_t count = 0;
  std::uint32_t dep_begin = 0;
  std::uint32_t dep_count = 0;
};

// A dependency, as the place of the step it waits for: finished once its queue's head
// has passed it. So the executor keeps only the queue heads, never a state per step.
struct dep {
  std::uint32_t queue = 0;
  std::uint32_t pos = 0;
};

// What a lane reads: every array lies in one allocation (program_image).
struct program_view {
  const op* ops = nullptr;
  const dep* deps = nullptr;
  const std::uint32_t* order = nullptr;        // step indices, queue after queue
  const std::uint32_t* queue_begin = nullptr;  // nqueues + 1 offsets into order
  std::uint32_t nqueues = 0;
  std::uint64_t scratch_count = 0;
};

// A schedule compiled into one position-independent block of bytes, to be copied where
// the lane runs (device memory, or left on the host).
struct program_image {
  std::vector<std::byte> bytes;
  std::size_t ops_at = 0, deps_at = 0, order_at = 0, begin_at = 0;
  std::uint32_t nqueues = 0;
  std::uint64_t scratch_count = 0;

  program_view view_at(const std::byte* base) const noexcept {
    program_view v;
    v.ops = reinterpret_cast<const op*>(base + ops_at);
    v.deps = reinterpret_cast<const dep*>(base + deps_at);
    v.order = reinterpret_cast<const std::uint32_t*>(base + order_at);
    v.queue_begin = reinterpret_cast<const std::uint32_t*>(base + begin_at);
    v.nqueues = nqueues;
    v.scratch_count = scratch_count;
    return v;
  }
};

// What a compiled program is cached under: the call shape that built it.
struct program_key {
  collective coll = collective::all_reduce;
  algorithm algo = algorithm::ring;
  std::size_t count = 0, segment = 1;
  bool in_place = false;
  friend bool operator==(const program_key&, const program_key&) = default;
};

// Queue of a step: sends to q at q, receives from q at p+q, local copies at 2p, as in
// the host executor's plan.
inline std::uint32_t queue_of(const step& st, int ranks) noexcept {
  const auto p = static_cast<std::uint32_t>(ranks);
  if (st.kind == step_kind::copy) return 2 * p;
  const auto q = static_cast<std::uint32_t>(st.peer);
  return st.kind == step_kind::send ? q : p + q;
}

inline program_image compile(const schedule& s) {
  const std::uint32_t nq = 2 * static_cast<std::uint32_t>(s.ranks) + 1;
  const std::size_t n = s.steps.size();
  std::vector<std::uint32_t> queue(n), pos(n), count(nq, 0);
  for (std::size_t i = 0; i < n; ++i) {
    queue[i] = queue_of(s.steps[i], s.ranks);
    pos[i] = count[queue[i]]++;
  }
  std::vector<std::uint32_t> begin(nq + 1, 0);
  for (std::uint32_t q = 0; q < nq; ++q) begin[q + 1] = begin[q] + count[q];
  std::vector<std::uint32_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[begin[queue[i]] + pos[i]] = static_cast<std::uint32_t>(i);

  program_image img;
  img.nqueues = nq;
  img.scratch_count = s.scratch_count;
  auto place = [&](std::size_t bytes) {
    const std::size_t at = (img.bytes.size() + 15) / 16 * 16;
    img.bytes.resize(at + bytes);
    return at;
  };
  img.ops_at = place(n * sizeof(op));
  img.deps_at = place(s.deps.size() * sizeof(dep));
  img.order_at = place(n * sizeof(std::uint32_t));
  img.begin_at = place((nq + 1) * sizeof(std::uint32_t));
  for (std::size_t i = 0; i < n; ++i) {
    const step& st = s.steps[i];
    op o;
    o.kind = static_cast<std::uint8_t>(st.kind);
    o.src_buf = static_cast<std::uint8_t>(st.src.buf);
    o.dst_buf = static_cast<std::uint8_t>(st.dst.buf);
    o.peer = st.peer;
    o.src_off = st.src.offset;
    o.dst_off = st.dst.offset;
    o.count = st.count();
    o.dep_begin = st.dep_begin;
    o.dep_count = st.dep_count;
    std::memcpy(img.bytes.data() + img.ops_at + i * sizeof(op), &o, sizeof(op));
  }
  for (std::size_t k = 0; k < s.deps.size(); ++k) {
    const dep d{queue[s.deps[k]], pos[s.deps[k]]};
    std::memcpy(img.bytes.data() + img.deps_at + k * sizeof(dep), &d, sizeof(dep));
  }
  if (n != 0) std::memcpy(img.bytes.data() + img.order_at, order.data(), n * sizeof(std::uint32_t));
  std::memcpy(img.bytes.data() + img.begin_at, begin.data(), (nq + 1) * sizeof(std::uint32_t));
  return img;
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

// One receiver's mailboxes, for one lane: arrays indexed by sender.
struct mailbox {
  std::byte* slots = nullptr;      // [sender][slot][slot_bytes]
  std::uint64_t* ready = nullptr;  // [sender]: pieces delivered, written by the sender
  std::uint64_t* acked = nullptr;  // [sender]: pieces consumed, written by the receiver
  std::uint64_t* sig = nullptr;    // [sender][slot]: the signature of the call that filled it
};

struct world_view {
  int ranks = 1;
  int lanes = 1;
  std::uint32_t slots = 2;
  std::uint64_t slot_bytes = 0;
  const mailbox* boxes = nullptr;       // [receiver * lanes + lane]
  std::uint64_t* abort_word = nullptr;  // 0, or 1 + the rank that failed first
  std::uint64_t* waiting = nullptr;     // [rank * lanes + lane]: 1 + the peer it waits for, or 0
};

// Bytes of mailbox memory one receiver needs for one lane, and how it is laid out.
inline std::size_t mailbox_bytes(const world_view& w) noexcept {
  const auto p = static_cast<std::size_t>(w.ranks);
  return p * w.slots * w.slot_bytes + (2 * p + p * w.slots) * sizeof(std::uint64_t);
}
// The counters' layout: ready[p], acked[p], sig[p*slots], from `words` on; the slots
// may lie elsewhere (in GPU memory, when the counters are in host shared memory).
inline mailbox mailbox_over(std::byte* slots, std::uint64_t* words, int ranks) noexcept {
  const auto p = static_cast<std::size_t>(ranks);
  mailbox m;
  m.slots = slots;
  m.ready = words;
  m.acked = words + p;
  m.sig = words + 2 * p;
  return m;
}
// Slots and counters in one block, counters after the slots.
inline mailbox mailbox_at(std::byte* base, const world_view& w) noexcept {
  const auto p = static_cast<std::size_t>(w.ranks);
  return mailbox_over(base, reinterpret_cast<std::uint64_t*>(base + p * w.slots * w.slot_bytes), w.ranks);
}

enum class outcome : std::uint32_t { ok = 0, timeout = 1, mismatch = 2, peer_failed = 3 };

// How a lane ended; read by the host after the lane has finished.
struct status {
  outcome code = outcome::ok;
  std::int32_t peer = -1;        // the rank stuck, the mismatching one, or the one that failed
  std::int32_t waited_for = -1;  // timeout: the peer this lane itself waited for
  std::uint32_t step = 0;        // the step at which it happened
  std::uint32_t lane = 0;
  std::uint64_t expected = 0;  // mismatch: this rank's signature, and the one found
  std::uint64_t got = 0;
  std::uint64_t waited_ns = 0;
};

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
      kind = named ? errc::peer_failure : errc::aborted;
      why = named ? "rank " + std::to_string(s.peer) + " failed, so this call stopped"
                  : "the group was aborted";
      break;
  }
  if (!called.empty()) why += " (this rank called " + called + ")";
  return error(kind, coll, rank, named ? s.peer : error::no_rank, why);
}

// The signature a piece carries: every field of the envelope, so that ranks that made
// different calls (another collective, count, type, reduction, algorithm, segment or
// call number) find out at the first piece instead of computing garbage. Never 0.
constexpr std::uint64_t signature(const envelope& e) noexcept {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xffu;
      h *= 1099511628211ull;
    }
  };
  mix(e.seq);
  mix(e.count);
  mix(e.segment);
  mix(e.tag);
  mix(static_cast<std::uint64_t>(e.coll) | static_cast<std::uint64_t>(e.type) << 8 |
      static_cast<std::uint64_t>(e.op) << 16 | static_cast<std::uint64_t>(e.algo) << 24);
  return h == 0 ? 1 : h;
}

// The slice of an all-reduce of `count` elements that lane j of `lanes` runs: whole
// 256-byte units, so that every lane's slice starts 16-byte aligned when the buffer does.
constexpr void lane_slice(std::uint64_t count, std::size_t elem, int lanes, int j, std::uint64_t& lo,
                          std::uint64_t& n) noexcept {
  const std::uint64_t unit = elem >= 256 ? 1 : 256 / elem;
  const std::uint64_t units = (count + unit - 1) / unit;
  const auto l = static_cast<std::uint64_t>(lanes);
  const auto uj = static_cast<std::uint64_t>(j);
  const std::uint64_t per = units / l, extra = units % l;
  const std::uint64_t first = uj * per + (uj < extra ? uj : extra);
  const std::uint64_t mine = per + (uj < extra ? 1 : 0);
  lo = first * unit < count ? first * unit : count;
  const std::uint64_t hi = (first + mine) * unit < count ? (first + mine) * unit : count;
  n = hi - lo;
}

// What one lane of one rank runs: its program and where its buffers are.
struct lane_call {
  program_view prog;
  int rank = 0;
  int lane = 0;
  const std::byte* in = nullptr;  // null in place
  std::byte* out = nullptr;
  std::byte* scratch = nullptr;
  std::uint64_t sig = 0;
  std::uint64_t timeout_ns = 0;
  status* st = nullptr;  // this lane's
};

// The leader's bookkeeping: per queue, its head and the pieces of the head step done.
struct leader_state {
  std::uint32_t head[2 * max_ranks + 1];
  std::uint64_t pieces[2 * max_ranks + 1];
};

// What the leader tells the lane's threads to do next.
struct action {
  enum : std::uint32_t { done, copy, reduce, stop } what = done;
  std::byte* dst = nullptr;
  const std::byte* a = nullptr;
  const std::byte* b = nullptr;
  std::uint64_t n = 0;  // bytes for copy, elements for reduce
};

// Runs one lane. Ctx is where it runs (host_context below, or the CUDA executor's):
// leader(), barrier(), the atomics, the clock, and the cooperative copy and reduce.
// T is the element's storage type, Op the reduction (avg reduces as sum).
// Returns whether the lane finished (false: it stopped, and its status says why).
template <class T, reduce_op Op, class Ctx>
COLLX_HD bool run_lane(Ctx& ctx, const lane_call& c, const world_view& w) {
  constexpr std::uint64_t es = sizeof(T);
  const program_view& pg = c.prog;
  const auto S = static_cast<std::uint64_t>(w.slots);
  const std::uint64_t piece_elems = w.slot_bytes / es;
  const mailbox& mine = w.boxes[c.rank * w.lanes + c.lane];

  // Leader-only state: the head of each queue and how many pieces of its step are done
  // (the context's, so that on a GPU it lies in shared memory, not in every thread's
  // stack), and what the current action will publish once its bytes have moved.
  std::uint32_t* const head = ctx.leader_state().head;
  std::uint64_t* const pieces = ctx.leader_state().pieces;
  std::uint32_t pending_queue = 0;
  std::uint64_t* pending_word = nullptr;  // ready (a send) or acked (a receive)
  std::uint64_t pending_value = 0;
  bool pending_finishes = false;
  std::uint64_t start = 0;
  if (ctx.leader()) {
    for (std::uint32_t q = 0; q < pg.nqueues; ++q) head[q] = 0, pieces[q] = 0;
    start = ctx.now_ns();
  }

  auto base = [&](std::uint8_t buf) -> std::byte* {
    return buf == static_cast<std::uint8_t>(buffer::output)    ? c.out
           : buf == static_cast<std::uint8_t>(buffer::scratch) ? c.scratch
                                                               : const_cast<std::byte*>(c.in);
  };
  auto deps_done = [&](const op& o) {
    for (std::uint32_t k = 0; k < o.dep_count; ++k) {
      const dep d = pg.deps[o.dep_begin + k];
      if (d.pos >= head[d.queue]) return false;
    }
    return true;
  };
  auto finish = [&](std::uint32_t q) {
    ++head[q];
    pieces[q] = 0;
  };
  // A rank that times out waiting for a peer that is itself waiting names the rank at
  // the end of the chain: the one stuck, not a neighbour that waits like itself. (A
  // cycle, as when ranks made different calls, names the immediate peer.)
  auto stuck_rank = [&](int peer) {
    int at = peer;
    for (int hops = 0; at >= 0 && hops < w.ranks; ++hops) {
      const std::uint64_t next = ctx.load_acquire(w.waiting + at * w.lanes + c.lane);
      if (next == 0) return at;
      at = static_cast<int>(next) - 1;
    }
    return peer;
  };
  auto fail = [&](outcome why, int peer, std::uint32_t stp, std::uint64_t expected, std::uint64_t got) {
    status& s = *c.st;
    s.waited_for = peer;
    s.peer = why == outcome::timeout ? stuck_rank(peer) : peer;
    s.step = stp;
    s.lane = static_cast<std::uint32_t>(c.lane);
    s.expected = expected;
    s.got = got;
    s.waited_ns = ctx.now_ns() - start;
    ctx.fence();  // the code last: whoever sees it sees the rest
    s.code = why;
    // The first failure poisons the world: everyone else stops at its next wait.
    if (why != outcome::peer_failed) ctx.cas(w.abort_word, 0, static_cast<std::uint64_t>(c.rank) + 1);
    action a;
    a.what = action::stop;
    return a;
  };

  // The leader's choice of the next piece to move. Spins, bounded, until one can move.
  std::uint64_t* const my_wait = w.waiting + c.rank * w.lanes + c.lane;
  std::uint64_t announced = 0;
  // The bound is on waiting: `timeout` without a piece moving, so a long call that keeps
  // moving never times out, and one whose peer never comes does after `timeout`.
  auto decide = [&]() -> action {
    if (announced != 0) {
      announced = 0;
      ctx.store_release(my_wait, 0);
    }
    start = ctx.now_ns();
    for (;;) {
      bool all_done = true;
      std::uint32_t blocked_step = 0xffffffffu;
      int blocked_peer = -1;
      for (std::uint32_t q = 0; q < pg.nqueues; ++q) {
        const std::uint32_t qlen = pg.queue_begin[q + 1] - pg.queue_begin[q];
        // Empty steps move nothing: both ends of an empty message see the same count, so
        // they skip it alike, and a step that waits on an empty one loses nothing.
        while (head[q] < qlen && pg.ops[pg.order[pg.queue_begin[q] + head[q]]].count == 0) finish(q);
        if (head[q] == qlen) continue;
        all_done = false;
        const std::uint32_t i = pg.order[pg.queue_begin[q] + head[q]];
        const op& o = pg.ops[i];
        if (!deps_done(o)) continue;
        const std::uint64_t k = pieces[q];
        const std::uint64_t first = k * piece_elems;
        const std::uint64_t n = o.count - first < piece_elems ? o.count - first : piece_elems;
        const bool last = first + n == o.count;
        const auto kind = static_cast<step_kind>(o.kind);
        if (kind == step_kind::copy) {
          pending_queue = q;
          pending_word = nullptr;
          pending_finishes = true;
          action a;
          a.what = action::copy;
          a.dst = base(o.dst_buf) + o.dst_off * es;
          a.a = base(o.src_buf) + o.src_off * es;
          a.n = o.count * es;
          return a;
        }
        const mailbox& theirs = w.boxes[o.peer * w.lanes + c.lane];
        if (kind == step_kind::send) {
          std::uint64_t* ready = theirs.ready + c.rank;
          const std::uint64_t m = ctx.load_acquire(ready) + 1;
          if (m > ctx.load_acquire(theirs.acked + c.rank) + S) {
            if (i < blocked_step) blocked_step = i, blocked_peer = o.peer;
            continue;
          }
          const std::uint64_t slot = (m - 1) % S;
          theirs.sig[static_cast<std::uint64_t>(c.rank) * S + slot] = c.sig;
          pending_queue = q;
          pending_word = ready;
          pending_value = m;
          pending_finishes = last;
          action a;
          a.what = action::copy;
          a.dst = theirs.slots + (static_cast<std::uint64_t>(c.rank) * S + slot) * w.slot_bytes;
          a.a = base(o.src_buf) + (o.src_off + first) * es;
          a.n = n * es;
          return a;
        }
        // A receive: its piece must have arrived.
        std::uint64_t* acked = mine.acked + o.peer;
        const std::uint64_t m = ctx.load_acquire(acked) + 1;
        if (ctx.load_acquire(mine.ready + o.peer) < m) {
          if (i < blocked_step) blocked_step = i, blocked_peer = o.peer;
          continue;
        }
        const std::uint64_t slot = (m - 1) % S;
        const std::uint64_t got = mine.sig[static_cast<std::uint64_t>(o.peer) * S + slot];
        if (got != c.sig) return fail(outcome::mismatch, o.peer, i, c.sig, got);
        pending_queue = q;
        pending_word = acked;
        pending_value = m;
        pending_finishes = last;
        action a;
        a.dst = base(o.dst_buf) + (o.dst_off + first) * es;
        a.b = mine.slots + (static_cast<std::uint64_t>(o.peer) * S + slot) * w.slot_bytes;
        if (kind == step_kind::recv) {
          a.what = action::copy;
          a.a = a.b;
          a.n = n * es;
        } else {
          a.what = action::reduce;
          a.a = base(o.src_buf) + (o.src_off + first) * es;
          a.n = n;
        }
        return a;
      }
      if (all_done) return action{};
      const std::uint64_t failed = ctx.load_acquire(w.abort_word);
      if (failed != 0) return fail(outcome::peer_failed, static_cast<int>(failed - 1), blocked_step, 0, 0);
      if (ctx.now_ns() - start > c.timeout_ns)
        return fail(outcome::timeout, blocked_peer, blocked_step, 0, 0);
      // Say whom this lane waits for (once per change: a store, not one per spin).
      if (static_cast<std::uint64_t>(blocked_peer + 1) != announced) {
        announced = static_cast<std::uint64_t>(blocked_peer + 1);
        ctx.store_release(my_wait, announced);
      }
      ctx.pause();
    }
  };

  for (;;) {
    if (ctx.leader()) ctx.shared_action() = decide();
    ctx.barrier();
    const action a = ctx.shared_action();
    if (a.what == action::done || a.what == action::stop) return a.what == action::done;
    if (a.what == action::copy) {
      ctx.copy(a.dst, a.a, a.n);
    } else {
      ctx.template reduce<T, Op>(reinterpret_cast<T*>(a.dst), reinterpret_cast<const T*>(a.a),
                                 reinterpret_cast<const T*>(a.b), a.n);
    }
    ctx.barrier();  // every thread's bytes have landed (or been read) before they are published
    if (ctx.leader()) {
      if (pending_word != nullptr) {
        ctx.fence();
        ctx.store_release(pending_word, pending_value);
      }
      if (pending_finishes) {
        finish(pending_queue);
      } else {
        ++pieces[pending_queue];
      }
    }
  }
}

// The host's context: one thread is the whole lane. The tests run lanes on threads.
//
// Host contexts' members are marked host-device and have bodies on the host only
// (COLLX_HOST_ONLY): run_lane is host-device code, and nvcc's device pass must accept
// its host instantiations, which never run on a GPU.
#if defined(__CUDA_ARCH__)
#define COLLX_HOST_ONLY(...)
#else
#define COLLX_HOST_ONLY(...) __VA_ARGS__
#endif
struct host_context {
  action act;
  peer::leader_state ls;
  COLLX_HD peer::leader_state& leader_state() noexcept { return ls; }
  COLLX_HD bool leader() const noexcept { return true; }
  COLLX_HD void barrier() noexcept {}
  COLLX_HD action& shared_action() noexcept { return act; }
  COLLX_HD static std::uint64_t load_acquire(std::uint64_t* p) noexcept {
    COLLX_HOST_ONLY(return std::atomic_ref<std::uint64_t>(*p).load(std::memory_order_acquire);)
    return *p;
  }
  COLLX_HD static void store_release(std::uint64_t* p, std::uint64_t v) noexcept {
    COLLX_HOST_ONLY(std::atomic_ref<std::uint64_t>(*p).store(v, std::memory_order_release); return;)
    *p = v;
  }
  COLLX_HD static void cas(std::uint64_t* p, std::uint64_t expected, std::uint64_t desired) noexcept {
    COLLX_HOST_ONLY(std::atomic_ref<std::uint64_t>(*p).compare_exchange_strong(expected, desired);)
    (void)p, (void)expected, (void)desired;
  }
  COLLX_HD static void fence() noexcept {
    COLLX_HOST_ONLY(std::atomic_thread_fence(std::memory_order_seq_cst);)
  }
  COLLX_HD static std::uint64_t now_ns() noexcept {
    COLLX_HOST_ONLY(return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                          std::chrono::steady_clock::now().time_since_epoch())
                                                          .count());)
    return 0;
  }
  COLLX_HD static void pause() noexcept { COLLX_HOST_ONLY(std::this_thread::yield();) }
  COLLX_HD static void copy(std::byte* dst, const std::byte* src, std::uint64_t bytes) noexcept {
    COLLX_HOST_ONLY(std::memmove(dst, src, bytes);)
    (void)dst, (void)src, (void)bytes;
  }
  template <class T, reduce_op Op>
  COLLX_HD static void reduce(T* dst, const T* a, const T* b, std::uint64_t n) noexcept {
    COLLX_HOST_ONLY(collx::detail::reduce_loop < T,
                    Op == reduce_op::avg ? reduce_op::sum : Op > (dst, a, b, n);)
    (void)dst, (void)a, (void)b, (void)n;
  }
};

}  // namespace collx::peer
