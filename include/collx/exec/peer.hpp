#pragma once

// The peer-memory executor: runs any schedule where ranks can write each other's memory
// (GPUs in one process, CUDA IPC; threads of one process in the tests), with no
// transport in between. It is written once for the host and the device: the CUDA
// executor (exec/cuda.cuh) runs it inside a kernel, one thread block per lane, and the
// host tests run the same code on teams of threads (host_team below), one team per lane,
// the lanes at once, with a real barrier and an elected leader: the logic that runs on
// a GPU, block-level cooperation included, is proven on every machine, under TSan too.
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
// failure flag, and every other lane, scanning the flags while it waits, then stops too,
// so a dead or stuck rank becomes an error on every rank, not a hang.
//
// A call runs as `lanes` independent calls over slices, one per lane (as NCCL's
// channels do): more thread blocks, more bandwidth. An all-reduce's lanes take
// contiguous slices of the buffer; an all-gather's or a reduce-scatter's take the same
// slice of every block, each lane's program spreading its blocks to the caller's block
// stride (algorithms::slice_of_blocks, front/program.hpp's lane_shape). Each lane has its
// own mailboxes, so the lanes never wait for each other; lanes_for says how many a call
// uses.
//
// This header is what a lane sees (host-device code); the program it reads is compiled
// on the host by exec/peer_program.hpp.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "collx/core/reduce.hpp"
#include "collx/exec/host_device.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::peer_memory {

// Ranks a world may have: sizes the leader's per-queue state (leader_state), which lies
// in shared memory on a GPU.
inline constexpr int max_ranks = 32;

// One schedule step, flattened for a kernel.
struct flat_step {
  std::uint8_t kind = 0;  // step_kind
  std::uint8_t src_buf = 0;
  std::uint8_t dst_buf = 0;
  std::uint8_t flags = 0;  // signed_when_empty
  std::int32_t peer = -1;
  std::uint64_t src_off = 0;
  std::uint64_t dst_off = 0;
  std::uint64_t count = 0;
  std::uint32_t dep_begin = 0;
  std::uint32_t dep_count = 0;
};

// A message of a count-0 call: sent and received as one empty piece that carries the
// call's signature, so that a rank calling with count 0 while its peers call with more is
// a mismatch on both sides, as on the host, not a wait for pieces that never come.
// (An empty message of a call with elements is skipped on both ends alike.)
inline constexpr std::uint8_t signed_when_empty = 1;

// A dependency, as the place of the step it waits for: finished once its queue's head
// has passed it. So the executor keeps only the queue heads, never a state per step.
struct dep {
  std::uint32_t queue = 0;
  std::uint32_t pos = 0;
};

// What a lane reads: every array lies in one allocation (program_image).
struct program_view {
  const flat_step* ops = nullptr;
  const dep* deps = nullptr;
  const std::uint32_t* order = nullptr;        // step indices, queue after queue
  const std::uint32_t* queue_begin = nullptr;  // nqueues + 1 offsets into order
  std::uint32_t nqueues = 0;
  std::uint64_t scratch_count = 0;
};

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
  const mailbox* boxes = nullptr;  // [receiver * lanes + lane]
  // [ranks + 1]: rank r's failure (an outcome, 0 while healthy), written by rank r alone
  // (a store, never a compare-and-swap: in mapped host memory that is not atomic across
  // PCIe), read by everyone; [ranks]: the application's abort of the whole world.
  std::uint64_t* failed = nullptr;
  std::uint64_t* waiting = nullptr;  // [rank * lanes + lane]: 1 + the peer it waits for, or 0
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

// aborted: the application gave up (a failure flag's value, never a lane's own outcome).
enum class outcome : std::uint32_t { ok = 0, timeout = 1, mismatch = 2, peer_failed = 3, aborted = 4 };

// How a lane ended; read by the host after the lane has finished.
struct status {
  outcome code = outcome::ok;
  std::int32_t peer =
      -1;  // the rank stuck, the mismatching one, or the one that failed (ranks: the application)
  outcome cause = outcome::ok;   // peer_failed: that rank's own outcome
  std::int32_t waited_for = -1;  // timeout: the peer this lane itself waited for
  std::uint32_t step = 0;        // the step at which it happened
  std::uint32_t lane = 0;
  std::uint64_t expected = 0;  // mismatch: this rank's signature, and the one found
  std::uint64_t got = 0;
  std::uint64_t waited_ns = 0;
};

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

// How many of a world's `max_lanes` lanes a call of `count` elements (per block) uses.
// An all-reduce uses them all (its slices are whole 256-byte units, so a tiny call
// leaves the last lanes empty: they exchange only the call's signature). An all-gather
// or reduce-scatter uses one lane per slot's worth of a block, at least one: a slice
// smaller than a slot only adds pieces (each a leader's pass, two barriers and a flag
// across the link) without adding bytes in flight. Not measured on a GPU yet.
constexpr int lanes_for(collective coll, std::uint64_t count, std::size_t element_size, int max_lanes,
                        std::uint64_t slot_bytes) noexcept {
  if (coll == collective::all_reduce || max_lanes <= 1) return max_lanes < 1 ? 1 : max_lanes;
  const std::uint64_t per_slot = slot_bytes == 0 ? 1 : count * element_size / slot_bytes;
  return per_slot < 1                                       ? 1
         : per_slot < static_cast<std::uint64_t>(max_lanes) ? static_cast<int>(per_slot)
                                                            : max_lanes;
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

// One lane of one rank, running: the leader's bookkeeping and its choice of the next
// piece (decide), and the loop in which every thread of the lane moves it (run).
// Ctx is where it runs (host_context below, or the CUDA executor's): leader(),
// barrier(), the loads and stores, the clock, and the cooperative copy and reduce. T is the
// element's storage type, Op the reduction (avg reduces as sum).
template <class T, reduce_op Op, class Ctx>
class lane_runner {
 public:
  COLLX_HD lane_runner(Ctx& ctx, const lane_call& c, const world_view& w)
      : ctx_(ctx),
        c_(c),
        w_(w),
        pg_(c.prog),
        slots_(static_cast<std::uint64_t>(w.slots)),
        piece_elems_(w.slot_bytes / es),
        mine_(w.boxes[c.rank * w.lanes + c.lane]),
        head_(ctx.leader_state().head),
        pieces_(ctx.leader_state().pieces),
        my_wait_(w.waiting + c.rank * w.lanes + c.lane) {
    if (ctx_.leader()) {
      for (std::uint32_t q = 0; q < pg_.nqueues; ++q) head_[q] = 0, pieces_[q] = 0;
      start_ = ctx_.now_ns();
    }
  }

  // Returns whether the lane finished (false: it stopped, and its status says why).
  COLLX_HD bool run() {
    for (;;) {
      if (ctx_.leader()) ctx_.shared_action() = decide();
      ctx_.barrier();
      const action a = ctx_.shared_action();
      if (a.what == action::done || a.what == action::stop) return a.what == action::done;
      if (a.n == 0) {
        // a count-0 call's signature piece: nothing to move
      } else if (a.what == action::copy) {
        ctx_.copy(a.dst, a.a, a.n);
      } else {
        ctx_.template reduce<T, Op>(reinterpret_cast<T*>(a.dst), reinterpret_cast<const T*>(a.a),
                                    reinterpret_cast<const T*>(a.b), a.n);
      }
      ctx_.barrier();  // every thread's bytes have landed (or been read) before they are published
      if (ctx_.leader()) publish();
    }
  }

 private:
  static constexpr std::uint64_t es = sizeof(T);

  COLLX_HD std::byte* base(std::uint8_t buf) const {
    return buf == static_cast<std::uint8_t>(buffer::output)    ? c_.out
           : buf == static_cast<std::uint8_t>(buffer::scratch) ? c_.scratch
                                                               : const_cast<std::byte*>(c_.in);
  }

  COLLX_HD bool deps_done(const flat_step& o) const {
    for (std::uint32_t k = 0; k < o.dep_count; ++k) {
      const dep d = pg_.deps[o.dep_begin + k];
      if (d.pos >= head_[d.queue]) return false;
    }
    return true;
  }

  COLLX_HD static bool skips(const flat_step& o) {
    return o.count == 0 &&
           ((o.flags & signed_when_empty) == 0 || static_cast<step_kind>(o.kind) == step_kind::copy);
  }

  // The first rank whose failure flag is up (ranks: the application's abort), or -1.
  COLLX_HD int failed_rank(outcome& why) const {
    for (int r = 0; r <= w_.ranks; ++r) {
      const std::uint64_t f = ctx_.load_acquire(w_.failed + r);
      if (f != 0) {
        why = static_cast<outcome>(f);
        return r;
      }
    }
    return -1;
  }

  COLLX_HD void finish(std::uint32_t q) {
    ++head_[q];
    pieces_[q] = 0;
  }

  // A rank that times out waiting for a peer that is itself waiting names the rank at
  // the end of the chain: the one stuck, not a neighbour that waits like itself. (A
  // cycle, as when ranks made different calls, names the immediate peer.)
  COLLX_HD int stuck_rank(int peer) const {
    int at = peer;
    for (int hops = 0; at >= 0 && hops < w_.ranks; ++hops) {
      const std::uint64_t next = ctx_.load_acquire(w_.waiting + at * w_.lanes + c_.lane);
      if (next == 0) return at;
      at = static_cast<int>(next) - 1;
    }
    return peer;
  }

  COLLX_HD action fail(outcome why, int peer, std::uint32_t at_step, std::uint64_t expected,
                       std::uint64_t got, outcome cause = outcome::ok) {
    status& s = *c_.st;
    s.cause = cause;
    s.waited_for = peer;
    s.peer = why == outcome::timeout ? stuck_rank(peer) : peer;
    s.step = at_step;
    s.lane = static_cast<std::uint32_t>(c_.lane);
    s.expected = expected;
    s.got = got;
    s.waited_ns = ctx_.now_ns() - start_;
    ctx_.fence();  // the code last: whoever sees it sees the rest
    s.code = why;
    // A failure poisons the world: everyone else stops at its next look at the flags.
    if (why != outcome::peer_failed) ctx_.store_release(w_.failed + c_.rank, static_cast<std::uint64_t>(why));
    action a;
    a.what = action::stop;
    return a;
  }

  // What publish() does once the action's bytes have moved.
  COLLX_HD void pend(std::uint32_t q, std::uint64_t* word, std::uint64_t value, bool finishes) {
    pending_queue_ = q;
    pending_word_ = word;
    pending_value_ = value;
    pending_finishes_ = finishes;
  }

  COLLX_HD void publish() {
    if (pending_word_ != nullptr) {
      ctx_.fence();
      ctx_.store_release(pending_word_, pending_value_);
    }
    if (pending_finishes_) {
      finish(pending_queue_);
    } else {
      ++pieces_[pending_queue_];
    }
  }

  // Where the head of queue q stands: its step, and the piece of it that moves next.
  struct piece {
    std::uint32_t step;
    std::uint64_t first, n;
    bool last;
  };
  COLLX_HD piece next_piece(std::uint32_t q, const flat_step& o, std::uint32_t i) const {
    const std::uint64_t first = pieces_[q] * piece_elems_;
    const std::uint64_t n = o.count - first < piece_elems_ ? o.count - first : piece_elems_;
    return {i, first, n, first + n == o.count};
  }

  COLLX_HD action start_copy(std::uint32_t q, const flat_step& o) {
    pend(q, nullptr, 0, true);
    action a;
    a.what = action::copy;
    a.dst = base(o.dst_buf) + o.dst_off * es;
    a.a = base(o.src_buf) + o.src_off * es;
    a.n = o.count * es;
    return a;
  }

  // A send: its piece needs room in the receiver's slots. False: no room yet.
  COLLX_HD bool start_send(std::uint32_t q, const flat_step& o, const piece& pc, action& a) {
    const mailbox& theirs = w_.boxes[o.peer * w_.lanes + c_.lane];
    std::uint64_t* ready = theirs.ready + c_.rank;
    const std::uint64_t m = ctx_.load_acquire(ready) + 1;
    if (m > ctx_.load_acquire(theirs.acked + c_.rank) + slots_) return false;
    const std::uint64_t slot = (m - 1) % slots_;
    theirs.sig[static_cast<std::uint64_t>(c_.rank) * slots_ + slot] = c_.sig;
    pend(q, ready, m, pc.last);
    a.what = action::copy;
    a.dst = theirs.slots + (static_cast<std::uint64_t>(c_.rank) * slots_ + slot) * w_.slot_bytes;
    a.a = base(o.src_buf) + (o.src_off + pc.first) * es;
    a.n = pc.n * es;
    return true;
  }

  // A receive: its piece must have arrived, with this call's signature. False: not yet.
  COLLX_HD bool start_recv(std::uint32_t q, const flat_step& o, const piece& pc, action& a) {
    std::uint64_t* acked = mine_.acked + o.peer;
    const std::uint64_t m = ctx_.load_acquire(acked) + 1;
    if (ctx_.load_acquire(mine_.ready + o.peer) < m) return false;
    const std::uint64_t slot = (m - 1) % slots_;
    const std::uint64_t got = mine_.sig[static_cast<std::uint64_t>(o.peer) * slots_ + slot];
    if (got != c_.sig) {
      a = fail(outcome::mismatch, o.peer, pc.step, c_.sig, got);
      return true;
    }
    pend(q, acked, m, pc.last);
    a.dst = base(o.dst_buf) + (o.dst_off + pc.first) * es;
    a.b = mine_.slots + (static_cast<std::uint64_t>(o.peer) * slots_ + slot) * w_.slot_bytes;
    if (static_cast<step_kind>(o.kind) == step_kind::recv) {
      a.what = action::copy;
      a.a = a.b;
      a.n = pc.n * es;
    } else {
      a.what = action::reduce;
      a.a = base(o.src_buf) + (o.src_off + pc.first) * es;
      a.n = pc.n;
    }
    return true;
  }

  // One pass over the queue heads: the first piece that can move, if any. Sets all_done
  // when every queue has finished, and names the earliest blocked step and its peer.
  COLLX_HD bool scan(action& a, bool& all_done, std::uint32_t& blocked_step, int& blocked_peer) {
    all_done = true;
    for (std::uint32_t q = 0; q < pg_.nqueues; ++q) {
      const std::uint32_t qlen = pg_.queue_begin[q + 1] - pg_.queue_begin[q];
      // Empty steps move nothing: both ends of an empty message see the same count, so
      // they skip it alike, and a step that waits on an empty one loses nothing. A
      // count-0 call's messages still carry its signature (signed_when_empty).
      while (head_[q] < qlen && skips(pg_.ops[pg_.order[pg_.queue_begin[q] + head_[q]]])) finish(q);
      if (head_[q] == qlen) continue;
      all_done = false;
      const std::uint32_t i = pg_.order[pg_.queue_begin[q] + head_[q]];
      const flat_step& o = pg_.ops[i];
      if (!deps_done(o)) continue;
      const auto kind = static_cast<step_kind>(o.kind);
      if (kind == step_kind::copy) {
        a = start_copy(q, o);
        return true;
      }
      const piece pc = next_piece(q, o, i);
      if (kind == step_kind::send ? start_send(q, o, pc, a) : start_recv(q, o, pc, a)) return true;
      if (i < blocked_step) blocked_step = i, blocked_peer = o.peer;
    }
    return false;
  }

  // The leader's choice of the next piece to move. Spins, bounded, until one can move.
  // The bound is on waiting: `timeout` without a piece moving, so a long call that keeps
  // moving never times out, and one whose peer never comes does after `timeout`.
  COLLX_HD action decide() {
    if (announced_ != 0) {
      announced_ = 0;
      ctx_.store_release(my_wait_, 0);
    }
    start_ = ctx_.now_ns();
    for (std::uint32_t pass = 1;; ++pass) {
      action a;
      bool all_done = true;
      std::uint32_t blocked_step = 0xffffffffu;
      int blocked_peer = -1;
      if (scan(a, all_done, blocked_step, blocked_peer)) return a;
      if (all_done) return action{};
      // The flags every 16th pass: on a GPU they are reads across PCIe, in a loop that
      // would otherwise read nothing but the GPUs' own memory.
      outcome why = outcome::ok;
      const int failed = pass % 16 == 0 ? failed_rank(why) : -1;
      if (failed >= 0) return fail(outcome::peer_failed, failed, blocked_step, 0, 0, why);
      if (ctx_.now_ns() - start_ > c_.timeout_ns)
        return fail(outcome::timeout, blocked_peer, blocked_step, 0, 0);
      // Say whom this lane waits for (once per change: a store, not one per spin).
      if (static_cast<std::uint64_t>(blocked_peer + 1) != announced_) {
        announced_ = static_cast<std::uint64_t>(blocked_peer + 1);
        ctx_.store_release(my_wait_, announced_);
      }
      ctx_.pause();
    }
  }

  Ctx& ctx_;
  const lane_call& c_;
  const world_view& w_;
  const program_view& pg_;
  const std::uint64_t slots_;
  const std::uint64_t piece_elems_;
  const mailbox& mine_;
  // Leader-only state: the head of each queue and how many pieces of its step are done
  // (the context's, so that on a GPU it lies in shared memory, not in every thread's
  // stack), and what the current action will publish once its bytes have moved.
  std::uint32_t* const head_;
  std::uint64_t* const pieces_;
  std::uint64_t* const my_wait_;
  std::uint64_t announced_ = 0;
  std::uint64_t start_ = 0;
  std::uint32_t pending_queue_ = 0;
  std::uint64_t* pending_word_ = nullptr;  // ready (a send) or acked (a receive)
  std::uint64_t pending_value_ = 0;
  bool pending_finishes_ = false;
};

// Runs one lane (see lane_runner). Returns whether the lane finished (false: it
// stopped, and its status says why).
template <class T, reduce_op Op, class Ctx>
COLLX_HD bool run_lane(Ctx& ctx, const lane_call& c, const world_view& w) {
  lane_runner<T, Op, Ctx> lane(ctx, c, w);
  return lane.run();
}

// Host contexts' members are marked host-device and have bodies on the host only
// (COLLX_HOST_ONLY): run_lane is host-device code, and nvcc's device pass must accept
// its host instantiations, which never run on a GPU.
#if defined(__CUDA_ARCH__)
#define COLLX_HOST_ONLY(...)
#else
#define COLLX_HOST_ONLY(...) __VA_ARGS__
#endif

// A barrier for host threads (what __syncthreads is to a block): every arrival happens
// before every departure, for the threads and for TSan alike. A waiter yields a while
// (pieces are short) before it sleeps.
class host_barrier {
 public:
  explicit host_barrier(unsigned threads) : threads_(threads) {}
  void arrive_and_wait() {
    const std::uint64_t phase = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_) {
      arrived_.store(0, std::memory_order_relaxed);
      {
        const std::lock_guard<std::mutex> lock(m_);
        phase_.store(phase + 1, std::memory_order_release);
      }
      cv_.notify_all();
      return;
    }
    for (int spin = 0; spin < 64; ++spin) {
      if (phase_.load(std::memory_order_acquire) != phase) return;
      std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return phase_.load(std::memory_order_acquire) != phase; });
  }

 private:
  const unsigned threads_;
  std::atomic<unsigned> arrived_{0};
  std::atomic<std::uint64_t> phase_{0};
  std::mutex m_;
  std::condition_variable cv_;
};

struct host_context;

// A lane's team of host threads, as a thread block is on a GPU: its threads share the
// action and the leader's state, meet at a real barrier, split every copy and reduction
// between them, and one of them leads: the first to arrive, not a fixed one, so that
// nothing may depend on which thread it is. run_lane's block-level cooperation (the
// leader decides, everyone moves, the leader publishes once everyone's bytes have
// landed) is then exercised on every machine, under TSan too.
class host_team {
 public:
  explicit host_team(unsigned threads) : threads_(threads == 0 ? 1 : threads), sync_(threads_) {}
  COLLX_HD unsigned size() const noexcept { return threads_; }
  // Runs fn(host_context&) on every thread of the team, the calling one and size() - 1
  // others; returns when all have.
  template <class F>
  void run(F&& fn);

 private:
  friend struct host_context;
  static constexpr unsigned nobody = ~0u;
  const unsigned threads_;
  host_barrier sync_;
  std::atomic<unsigned> leader_{nobody};
  action act_;
  peer_memory::leader_state ls_;
};

// The host's context: one thread of a lane's team, or the whole lane on its own (no
// team: the ipc host loop, where the memory's own engine moves the bytes).
struct host_context {
  action act;
  peer_memory::leader_state ls;
  host_team* team = nullptr;
  unsigned index = 0;  // in the team
  bool is_leader = true;

  host_context() = default;
  host_context(host_team& t, unsigned i, bool leads) : team(&t), index(i), is_leader(leads) {}

  COLLX_HD peer_memory::leader_state& leader_state() noexcept { return team != nullptr ? team->ls_ : ls; }
  COLLX_HD bool leader() const noexcept { return is_leader; }
  COLLX_HD void barrier() noexcept { COLLX_HOST_ONLY(if (team != nullptr) team->sync_.arrive_and_wait();) }
  COLLX_HD action& shared_action() noexcept { return team != nullptr ? team->act_ : act; }
  COLLX_HD static std::uint64_t load_acquire(std::uint64_t* p) noexcept {
    COLLX_HOST_ONLY(return std::atomic_ref<std::uint64_t>(*p).load(std::memory_order_acquire);)
    return *p;
  }
  COLLX_HD static void store_release(std::uint64_t* p, std::uint64_t v) noexcept {
    COLLX_HOST_ONLY(std::atomic_ref<std::uint64_t>(*p).store(v, std::memory_order_release); return;)
    *p = v;
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
  // This thread's share of n items: one contiguous part of the team's size() parts.
  COLLX_HD void share(std::uint64_t n, std::uint64_t& lo, std::uint64_t& len) const noexcept {
    const std::uint64_t parts = team != nullptr ? team->size() : 1;
    lo = n * index / parts;
    len = n * (index + 1) / parts - lo;
  }
  COLLX_HD void copy(std::byte* dst, const std::byte* src, std::uint64_t bytes) const noexcept {
    std::uint64_t lo = 0, len = 0;
    share(bytes, lo, len);
    COLLX_HOST_ONLY(if (len != 0) std::memmove(dst + lo, src + lo, len);)
    (void)dst, (void)src;
  }
  template <class T, reduce_op Op>
  COLLX_HD void reduce(T* dst, const T* a, const T* b, std::uint64_t n) const noexcept {
    std::uint64_t lo = 0, len = 0;
    share(n, lo, len);
    COLLX_HOST_ONLY(
        collx::detail::reduce_loop<T, collx::detail::combining<Op>>(dst + lo, a + lo, b + lo, len);)
    (void)dst, (void)a, (void)b;
  }
};

template <class F>
void host_team::run(F&& fn) {
  leader_.store(nobody);
  auto member = [&](unsigned index) {
    unsigned none = nobody;
    leader_.compare_exchange_strong(none, index);  // the first to get here leads
    sync_.arrive_and_wait();                       // everyone knows who won
    host_context ctx(*this, index, leader_.load() == index);
    fn(ctx);
  };
  std::vector<std::thread> others;
  others.reserve(threads_ - 1);
  for (unsigned i = 1; i < threads_; ++i) others.emplace_back(member, i);
  member(0);
  for (auto& t : others) t.join();
}

}  // namespace collx::peer_memory
