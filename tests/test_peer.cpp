// The peer-memory executor (exec/peer.hpp) on host threads: the same code the CUDA
// executor runs in its kernels, here with a team of threads per rank and lane (as a
// thread block: a barrier, an elected leader, copies and reductions split between the
// threads), the lanes of a rank at once, checked against
// the serial reference for every algorithm, collective, rank count from 1 to 9, odd and
// empty counts, in place and not, with slots small enough that messages span many
// pieces and senders run out of room.

#include <doctest/doctest.h>

#include <collx/algorithms/select.hpp>
#include <collx/exec/peer_program.hpp>
#include <collx/exec/vector_walk.hpp>
#include <collx/front/program.hpp>
#include <collx/front/resolve.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"
#include "reference.hpp"
#include "slack.hpp"

using namespace collx;

namespace {

// Mailboxes for every (receiver, lane), in host memory.
struct host_world {
  peer_memory::world_view w;
  std::vector<std::uint64_t> mem;  // 8-byte aligned
  std::vector<peer_memory::mailbox> boxes;
  std::vector<std::uint64_t> failed;
  std::vector<std::uint64_t> waiting;

  host_world(int ranks, int lanes, std::uint32_t slots, std::uint64_t slot_bytes) {
    w.ranks = ranks;
    w.lanes = lanes;
    w.slots = slots;
    w.slot_bytes = slot_bytes;
    const std::size_t each = (peer_memory::mailbox_bytes(w) + 15) / 16 * 16;
    const auto n = static_cast<std::size_t>(ranks * lanes);
    mem.assign(each * n / 8 + 2, 0);
    auto* base = reinterpret_cast<std::byte*>(mem.data());
    for (std::size_t i = 0; i < n; ++i) boxes.push_back(peer_memory::mailbox_at(base + i * each, w));
    w.boxes = boxes.data();
    failed.assign(static_cast<std::size_t>(ranks) + 1, 0);
    w.failed = failed.data();
    waiting.assign(static_cast<std::size_t>(ranks * lanes), 0);
    w.waiting = waiting.data();
  }
};

struct shape {
  collective coll;
  algorithm algo;
  int p;
  std::size_t count;
  bool in_place;
  int lanes = 1;
  std::size_t segment = 1 << 20;  // elements
  unsigned threads = 2;           // per lane: a team (peer_memory::host_team)
};

std::string describe(const shape& s, std::string_view type, reduce_op op) {
  return std::string(to_string(s.coll)) + " " + std::string(to_string(s.algo)) + " p=" + std::to_string(s.p) +
         " count=" + std::to_string(s.count) + (s.in_place ? " in-place" : "") +
         " lanes=" + std::to_string(s.lanes) + " threads=" + std::to_string(s.threads) + " " +
         std::string(type) + " " + std::string(to_string(op));
}

// The segment a call runs with: the shape's, cut so that a message fits in the slots.
template <class T>
std::size_t segment_for(const host_world& hw, const shape& s) {
  return std::max<std::size_t>(1, std::min<std::size_t>(s.segment, hw.w.slots * hw.w.slot_bytes / sizeof(T)));
}

// One rank's part of a call: each lane's program over its slice (lane_shape, as the GPU
// group cuts its calls: an all-reduce's slice of the buffer, an all-gather's or a
// reduce-scatter's slice of every block), the lanes at once, each on its own team of
// s.threads threads (what a thread block is on a GPU).
template <class T, reduce_op Op>
std::vector<peer_memory::status> run_rank(host_world& hw, const shape& s, int r, test::case_buffers<T>& b,
                                          std::uint64_t sig, std::uint64_t timeout_ns) {
  const auto nl = static_cast<std::size_t>(s.lanes);
  std::vector<peer_memory::status> st(nl);
  std::vector<peer_memory::program_image> images(nl);
  std::vector<std::vector<T>> scratch(nl);
  std::vector<peer_memory::lane_call> calls(nl);
  const detail::call_shape whole{s.coll, s.algo, s.count, segment_for<T>(hw, s), s.in_place};
  for (std::size_t j = 0; j < nl; ++j) {
    const detail::lane_part part = detail::lane_shape(whole, sizeof(T), s.lanes, static_cast<int>(j));
    const schedule sched = detail::schedule_for(part.shape, r, s.p);
    REQUIRE(peer_memory::max_message(sched) <= hw.w.slots * hw.w.slot_bytes / sizeof(T));
    images[j] = peer_memory::compile(sched);
    scratch[j].resize(sched.scratch_count + 1);
    peer_memory::lane_call& c = calls[j];
    c.prog = images[j].view_at(images[j].bytes.data());
    c.rank = r;
    c.lane = static_cast<int>(j);
    c.in = s.in_place ? nullptr : reinterpret_cast<const std::byte*>(b.in.data() + part.first);
    c.out = reinterpret_cast<std::byte*>(b.out.data() + part.first);
    c.scratch = reinterpret_cast<std::byte*>(scratch[j].data());
    c.sig = sig;
    c.timeout_ns = timeout_ns;
    c.st = &st[j];
  }
  std::vector<std::thread> lane_threads;
  for (std::size_t j = 0; j < nl; ++j) {
    lane_threads.emplace_back([&, j] {
      peer_memory::host_team team(s.threads);
      team.run([&](peer_memory::host_context& ctx) { peer_memory::run_lane<T, Op>(ctx, calls[j], hw.w); });
    });
  }
  for (auto& t : lane_threads) t.join();
  if (Op == reduce_op::avg && s.coll != collective::all_gather) {
    finish_avg(dtype_v<T>, b.out.data() + b.first, b.n, s.p);
  }
  return st;
}

template <class T, reduce_op Op>
void check_case(const shape& s, std::uint32_t slots, std::uint64_t slot_bytes) {
  host_world hw(s.p, s.lanes, slots, slot_bytes);
  std::vector<test::case_buffers<T>> bufs;
  for (int r = 0; r < s.p; ++r) bufs.emplace_back(s.coll, s.p, r, s.count, s.in_place);
  std::vector<std::vector<peer_memory::status>> st(static_cast<std::size_t>(s.p));
  // Two calls back to back: the mailbox counters carry on from the first.
  for (std::uint64_t call = 0; call < 2; ++call) {
    if (call == 1) {
      bufs.clear();
      for (int r = 0; r < s.p; ++r) bufs.emplace_back(s.coll, s.p, r, s.count, s.in_place);
    }
    const envelope env{call, s.count, s.segment, 0, s.coll, dtype_v<T>, Op, s.algo};
    std::vector<std::thread> threads;
    for (int r = 0; r < s.p; ++r) {
      threads.emplace_back([&, r] {
        st[static_cast<std::size_t>(r)] =
            run_rank<T, Op>(hw, s, r, bufs[static_cast<std::size_t>(r)], signature(env), 20'000'000'000ull);
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < s.p; ++r) {
      for (const auto& x : st[static_cast<std::size_t>(r)]) {
        INFO(describe(s, to_string(dtype_v<T>), Op), " rank ", r, " peer ", x.peer, " step ", x.step);
        REQUIRE(x.code == peer_memory::outcome::ok);
      }
      INFO(describe(s, to_string(dtype_v<T>), Op), " rank ", r, " call ", call);
      CHECK(bufs[static_cast<std::size_t>(r)].wrong(Op) == 0);
    }
  }
}

template <class F>
void for_shapes(F&& f) {
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (auto algo : all_algorithms) {
      if (!implements(algo, coll)) continue;
      for (int p : {1, 2, 3, 4, 5, 8, 9}) {
        if (p > test::max_ranks()) continue;  // the TSan run stops at 5 (tests/CMakeLists.txt)
        for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}}) {
          for (bool in_place : {false, true}) f(shape{coll, algo, p, count, in_place});
        }
      }
    }
  }
}

// Call #0 of an f32 sum all-reduce of `count` elements on p threads, resolved as the
// GPU group and the ipc front end resolve theirs: options, config and environment
// through detail::resolve with the slots as the message limit, then the call shape's
// program (front/program.hpp). Rank `absent` never calls.
struct resolved_run {
  detail::resolved_call call;
  std::vector<peer_memory::status> status;
  std::vector<test::case_buffers<float>> bufs;
  std::chrono::steady_clock::duration took{};
};

resolved_run run_resolved(int p, std::size_t count, std::uint32_t slots, std::uint64_t slot_bytes,
                          int absent = -1) {
  host_world hw(p, 1, slots, slot_bytes);
  const communicator_config cfg;
  resolved_run run;
  run.call = detail::resolve(collective::all_reduce, count, dtype::f32, reduce_op::sum, options{}, cfg, p, 0,
                             slots * slot_bytes);
  const detail::call_shape key{collective::all_reduce, run.call.algo, count, run.call.segment, false};
  run.status.resize(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) run.bufs.emplace_back(collective::all_reduce, p, r, count, false);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r) {
    if (r == absent) continue;
    threads.emplace_back([&, r] {
      const peer_memory::program_image img = peer_memory::program_for(key, r, p);
      std::vector<float> scratch(img.scratch_count + 1);
      auto& b = run.bufs[static_cast<std::size_t>(r)];
      peer_memory::lane_call c;
      c.prog = img.view_at(img.bytes.data());
      c.rank = r;
      c.in = reinterpret_cast<const std::byte*>(b.in.data());
      c.out = reinterpret_cast<std::byte*>(b.out.data());
      c.scratch = reinterpret_cast<std::byte*>(scratch.data());
      c.sig = signature(run.call.env);
      c.timeout_ns = detail::timeout_ns(run.call.timeout);
      c.st = &run.status[static_cast<std::size_t>(r)];
      peer_memory::host_team team(2);
      team.run([&](peer_memory::host_context& ctx) {
        peer_memory::run_lane<float, reduce_op::sum>(ctx, c, hw.w);
      });
    });
  }
  for (auto& t : threads) t.join();
  run.took = std::chrono::steady_clock::now() - start;
  return run;
}

void check_all_right(const resolved_run& run) {
  for (std::size_t r = 0; r < run.bufs.size(); ++r) {
    INFO("rank ", r);
    CHECK(run.status[r].code == peer_memory::outcome::ok);
    CHECK(run.bufs[r].wrong(reduce_op::sum) == 0);
  }
}

}  // namespace

TEST_CASE("peer executor: every algorithm and collective, p 1-9, odd and empty counts, tiny slots") {
  // 24-byte slots, two of them: a 1001-element f32 message is 167 pieces, and senders
  // keep running out of room.
  for_shapes([](const shape& s) { check_case<float, reduce_op::sum>(s, 2, 24); });
}

TEST_CASE("peer executor: pipeline segments and larger slots") {
  for_shapes([](shape s) {
    s.segment = 100;
    s.threads = 3;
    check_case<std::int32_t, reduce_op::max>(s, 4, 4096);
  });
}

TEST_CASE("peer executor: every element type and reduction") {
  for (auto algo : {algorithm::ring, algorithm::recursive_doubling, algorithm::tree}) {
    for (int p : {2, 3, 4}) {
      shape s{collective::all_reduce, algo, p, 333, false};
      s.threads = 3;
      check_case<std::int8_t, reduce_op::sum>(s, 3, 40);
      check_case<std::int8_t, reduce_op::min>(s, 3, 40);
      check_case<std::uint8_t, reduce_op::sum>(s, 3, 40);
      check_case<std::uint8_t, reduce_op::min>(s, 3, 40);
      check_case<std::uint8_t, reduce_op::max>(s, 3, 40);
      check_case<std::int32_t, reduce_op::prod>(s, 3, 40);
      check_case<std::int64_t, reduce_op::max>(s, 3, 40);
      check_case<half, reduce_op::sum>(s, 3, 40);
      check_case<bfloat16, reduce_op::max>(s, 3, 40);
      check_case<float, reduce_op::avg>(s, 3, 40);
      check_case<double, reduce_op::prod>(s, 3, 40);
    }
  }
}

TEST_CASE("peer executor: all-reduce split over lanes, each its own all-reduce") {
  for (int lanes : {2, 3, 4}) {
    for (auto algo : {algorithm::ring, algorithm::rabenseifner, algorithm::tree}) {
      for (int p : {2, 3, 5}) {
        for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{100}, std::size_t{5003}}) {
          shape s{collective::all_reduce, algo, p, count, count % 2 == 1, lanes};
          s.threads = static_cast<unsigned>(lanes);
          check_case<float, reduce_op::sum>(s, 2, 512);
        }
      }
    }
  }
  // The slices: whole 256-byte units, in order, covering the buffer.
  for (std::uint64_t count : {0ull, 1ull, 63ull, 64ull, 1000ull, 123457ull}) {
    std::uint64_t next = 0;
    for (int j = 0; j < 3; ++j) {
      std::uint64_t lo = 0, n = 0;
      peer_memory::lane_slice(count, 4, 3, j, lo, n);
      CHECK(lo == next);
      CHECK((lo % 64 == 0 || lo == count));
      next = lo + n;
    }
    CHECK(next == count);
  }
}

// The algorithms of a block collective, hierarchical (one node here: a ring in node
// order, itself a composed schedule) included.
std::vector<algorithm> block_algorithms(collective coll) {
  std::vector<algorithm> v;
  for (auto a : all_algorithms) {
    if (implements(a, coll)) v.push_back(a);
  }
  return v;
}

TEST_CASE(
    "peer executor: all-gather and reduce-scatter split over lanes, each lane the same slice of every "
    "block") {
  for (auto coll : {collective::all_gather, collective::reduce_scatter}) {
    for (auto algo : block_algorithms(coll)) {
      for (int lanes : {2, 3}) {
        for (int p : {1, 2, 3, 5}) {
          for (std::size_t count :
               {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{200}, std::size_t{1001}}) {
            for (bool in_place : {false, true}) {
              shape s{coll, algo, p, count, in_place, lanes};
              s.threads = 2;
              check_case<float, reduce_op::sum>(s, 2, 512);
            }
          }
        }
      }
    }
  }
  // Other element sizes: a u8 slice is 256 elements a unit, an i64 one 32.
  for (auto coll : {collective::all_gather, collective::reduce_scatter}) {
    for (int p : {3, 5}) {
      for (bool in_place : {false, true}) {
        shape s{coll, algorithm::ring, p, 1001, in_place, 3};
        check_case<std::uint8_t, reduce_op::sum>(s, 2, 96);
        check_case<std::int64_t, reduce_op::max>(s, 2, 96);
        check_case<half, reduce_op::sum>(s, 3, 64);
      }
    }
  }
}

// The messages from rank `from` to rank `to`, in order, as element counts: what `from`'s
// schedule sends to `to`, or what `to`'s receives from `from`.
std::vector<std::size_t> channel(const schedule& s, int peer, bool sends) {
  std::vector<std::size_t> v;
  for (const auto& st : s.steps) {
    if (st.peer == peer && (sends ? st.kind == step_kind::send : is_receive(st.kind)))
      v.push_back(st.count());
  }
  return v;
}

TEST_CASE(
    "a lane's program over its slice of every block cuts each message alike on both ends, and touches "
    "only its slice") {
  for (auto coll : {collective::all_gather, collective::reduce_scatter}) {
    for (auto algo : block_algorithms(coll)) {
      for (int p : {2, 3, 5, 8}) {
        // u8, 3 lanes: 300 is slices of 256 and 44, 1001 of 512, 256 and 233 elements.
        for (std::size_t count : {std::size_t{300}, std::size_t{1001}}) {
          for (bool in_place : {false, true}) {
            const detail::call_shape whole{coll, algo, count, 96, in_place};
            const detail::lane_part part = detail::lane_shape(whole, 1, 3, count == 300 ? 1 : 2);
            std::vector<schedule> all;
            for (int r = 0; r < p; ++r) all.push_back(detail::schedule_for(part.shape, r, p));
            INFO(to_string(coll), " ", to_string(algo), " p=", p, " count=", count, " in place ", in_place);
            REQUIRE(part.shape.stride == count);
            for (int a = 0; a < p; ++a) {
              for (int b = 0; b < p; ++b) {
                if (a != b)
                  CHECK(channel(all[static_cast<std::size_t>(a)], b, true) ==
                        channel(all[static_cast<std::size_t>(b)], a, false));
              }
            }
            // Every region of a blocked buffer lies within the lane's slice of a block
            // (its offsets count from the slice's start in the first block).
            const std::size_t n = part.shape.count;
            REQUIRE((n == 44 || n == 233));
            for (const auto& sched : all) {
              for (const auto& st : sched.steps) {
                for (const region& g : {st.src, st.dst}) {
                  if (g.count == 0 || g.buf == buffer::scratch) continue;
                  const bool blocked = g.buf == buffer::input ? coll == collective::reduce_scatter
                                                              : coll == collective::all_gather || in_place;
                  if (!blocked) {
                    CHECK(g.end() <= n);
                  } else {
                    CHECK(g.offset % count + g.count <= n);
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE(
    "peer executor: all-gather and reduce-scatter take a lane per slot of a block, all-reduce every lane") {
  constexpr std::uint64_t slot = 4096;
  CHECK(peer_memory::lanes_for(collective::all_reduce, 1, 4, 4, slot) == 4);
  CHECK(peer_memory::lanes_for(collective::all_reduce, 0, 4, 1, slot) == 1);
  for (auto coll : {collective::all_gather, collective::reduce_scatter}) {
    CHECK(peer_memory::lanes_for(coll, 0, 4, 4, slot) == 1);
    CHECK(peer_memory::lanes_for(coll, 1, 4, 4, slot) == 1);
    CHECK(peer_memory::lanes_for(coll, 2 * slot / 4 - 1, 4, 4, slot) == 1);
    CHECK(peer_memory::lanes_for(coll, 2 * slot / 4, 4, 4, slot) == 2);
    CHECK(peer_memory::lanes_for(coll, 3 * slot, 1, 4, slot) == 3);
    CHECK(peer_memory::lanes_for(coll, 1ull << 30, 8, 4, slot) == 4);
    CHECK(peer_memory::lanes_for(coll, 1ull << 30, 8, 1, slot) == 1);
  }
}

TEST_CASE("peer executor: a rank that never comes is a timeout naming it, on every rank") {
  // Rank 2 of 3 does not take part. Ring all-reduce: rank 0 waits for 2, rank 1 for 0
  // (or for room in 2's slots).
  // Both stop within their bound; whichever times out first follows the chain of waits
  // to rank 2 and names it, and raises the abort word, which stops the other.
  for (int round = 0; round < 5; ++round) {
    host_world hw(3, 1, 2, 64);
    const shape s{collective::all_reduce, algorithm::ring, 3, 100, false};
    std::vector<test::case_buffers<float>> bufs;
    for (int r = 0; r < 3; ++r) bufs.emplace_back(s.coll, 3, r, s.count, false);
    const envelope env{0, s.count, s.segment, 0, s.coll, dtype::f32, reduce_op::sum, s.algo};
    std::vector<std::vector<peer_memory::status>> st(2);
    std::vector<std::thread> threads;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, r] {
        st[static_cast<std::size_t>(r)] = run_rank<float, reduce_op::sum>(
            hw, s, r, bufs[static_cast<std::size_t>(r)], signature(env),
            static_cast<std::uint64_t>(test::with_slack(std::chrono::nanoseconds(200'000'000)).count()));
      });
    }
    for (auto& t : threads) t.join();
    CHECK(std::chrono::steady_clock::now() - t0 < test::with_slack(std::chrono::seconds(5)));
    int timeouts = 0;
    for (int r = 0; r < 2; ++r) {
      const auto& x = st[static_cast<std::size_t>(r)][0];
      INFO("rank ", r, " code ", static_cast<int>(x.code), " peer ", x.peer, " waited for ", x.waited_for);
      if (x.code == peer_memory::outcome::timeout) {
        ++timeouts;
        CHECK(x.peer == 2);
        // Rank 0 waits for 2's data; rank 1 for 0's data, or for room in 2's slots.
        CHECK((r == 0 ? x.waited_for == 2 : (x.waited_for == 0 || x.waited_for == 2)));
        CHECK(hw.failed[static_cast<std::size_t>(r)] ==
              static_cast<std::uint64_t>(peer_memory::outcome::timeout));
      } else {
        CHECK(x.code == peer_memory::outcome::peer_failed);
      }
    }
    CHECK(timeouts >= 1);
  }
}

TEST_CASE("peer executor: ranks that make different calls find out at the first piece") {
  // Rank 1 calls with another count: every receive from it sees a foreign signature.
  host_world hw(2, 1, 2, 64);
  std::vector<peer_memory::status> st0, st1;
  const shape a{collective::all_reduce, algorithm::ring, 2, 100, false};
  const shape b{collective::all_reduce, algorithm::ring, 2, 101, false};
  test::case_buffers<float> b0(a.coll, 2, 0, a.count, false), b1(b.coll, 2, 1, b.count, false);
  const envelope ea{0, a.count, a.segment, 0, a.coll, dtype::f32, reduce_op::sum, a.algo};
  const envelope eb{0, b.count, b.segment, 0, b.coll, dtype::f32, reduce_op::sum, b.algo};
  std::thread t0(
      [&] { st0 = run_rank<float, reduce_op::sum>(hw, a, 0, b0, signature(ea), 5'000'000'000ull); });
  std::thread t1(
      [&] { st1 = run_rank<float, reduce_op::sum>(hw, b, 1, b1, signature(eb), 5'000'000'000ull); });
  t0.join();
  t1.join();
  const bool saw =
      st0[0].code == peer_memory::outcome::mismatch || st1[0].code == peer_memory::outcome::mismatch;
  CHECK(saw);
  if (st0[0].code == peer_memory::outcome::mismatch) {
    CHECK(st0[0].peer == 1);
    CHECK(st0[0].expected == signature(ea));
    CHECK(st0[0].got == signature(eb));
  }
  CHECK(st0[0].code != peer_memory::outcome::ok);
  CHECK(st1[0].code != peer_memory::outcome::ok);
}

// The status that stands for a rank's call, as the GPU group picks it: a lane's own
// failure before a lane stopped by another rank's.
const peer_memory::status& worst_of(const std::vector<peer_memory::status>& st) {
  const peer_memory::status* w = &st[0];
  for (const auto& x : st) {
    if (x.code != peer_memory::outcome::ok &&
        (w->code == peer_memory::outcome::ok || w->code == peer_memory::outcome::peer_failed))
      w = &x;
  }
  return *w;
}

TEST_CASE(
    "peer executor: count 0 on one rank and more on the others is a mismatch on every rank, not a timeout") {
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (auto algo : all_algorithms) {
      if (!implements(algo, coll)) continue;
      for (int p : {2, 3, 5}) {
        for (int zero : {0, p - 1}) {
          for (std::size_t n : {std::size_t{1}, std::size_t{7}}) {
            host_world hw(p, 2, 2, 24);
            std::vector<shape> shapes;
            std::vector<test::case_buffers<float>> bufs;
            for (int r = 0; r < p; ++r) {
              shapes.push_back(shape{coll, algo, p, r == zero ? 0 : n, false, 2});
              bufs.emplace_back(coll, p, r, shapes.back().count, false);
            }
            std::vector<std::vector<peer_memory::status>> st(static_cast<std::size_t>(p));
            std::vector<std::thread> threads;
            const auto t0 = std::chrono::steady_clock::now();
            for (int r = 0; r < p; ++r) {
              threads.emplace_back([&, r] {
                const auto ur = static_cast<std::size_t>(r);
                const shape& s = shapes[ur];
                const envelope env{0, s.count, s.segment, 0, coll, dtype::f32, reduce_op::sum, algo};
                st[ur] =
                    run_rank<float, reduce_op::sum>(hw, s, r, bufs[ur], signature(env), 20'000'000'000ull);
              });
            }
            for (auto& t : threads) t.join();
            CHECK(std::chrono::steady_clock::now() - t0 < test::with_slack(std::chrono::seconds(5)));
            for (int r = 0; r < p; ++r) {
              const peer_memory::status& x = worst_of(st[static_cast<std::size_t>(r)]);
              const error e = peer_memory::to_error(x, to_string(coll), r, p, "who");
              INFO(describe(shapes[0], "f32", reduce_op::sum), " zero at ", zero, " n ", n, " rank ", r, ": ",
                   std::string(e.what()));
              CHECK(e.kind() == errc::mismatch);
            }
          }
        }
      }
    }
  }
}

TEST_CASE(
    "peer executor: COLLX_ALGO, COLLX_SEGMENT_BYTES, COLLX_TIMEOUT and automatic reach its calls through "
    "the front end's resolve, as on the host") {
  using namespace std::chrono_literals;
  {
    // tree: neither the model's choice for this call nor a ring default. 8 KiB segments
    // fit the 16 KiB of slots, so they are not cut.
    test::scoped_env timeout("COLLX_TIMEOUT", "0.5"), algo("COLLX_ALGO", "tree"),
        seg("COLLX_SEGMENT_BYTES", "8192");
    const resolved_run run = run_resolved(3, 3000, 4, 4096);
    CHECK(run.call.algo == algorithm::tree);
    CHECK(run.call.segment == 2048);
    CHECK(run.call.timeout == 500ms);
    CHECK(run.call.env.algo == algorithm::tree);
    CHECK(run.call.env.segment == 2048);
    check_all_right(run);
  }
  {
    // A segment larger than the slots is cut to them: the peer executor's one limit.
    test::scoped_env algo("COLLX_ALGO", "rd"), seg("COLLX_SEGMENT_BYTES", "65536");
    const resolved_run run = run_resolved(5, 20000, 4, 4096);
    CHECK(run.call.algo == algorithm::recursive_doubling);
    CHECK(run.call.segment == 4 * 4096 / sizeof(float));
    check_all_right(run);
  }
  {
    // automatic: the model's choice for the call, as the host communicator makes it.
    test::scoped_env algo("COLLX_ALGO", "");
    const communicator_config cfg;
    const resolved_run run = run_resolved(3, 3000, 4, 4096);
    CHECK(run.call.algo == algorithms::choose(collective::all_reduce, 3, 3000 * 4.0, cfg.model));
    check_all_right(run);
  }
  {
    // COLLX_TIMEOUT bounds the wait: rank 2 never calls, and the others stop after about
    // half a second, not the default five minutes.
    test::scoped_env timeout("COLLX_TIMEOUT", "0.5"), algo("COLLX_ALGO", "ring");
    const resolved_run run = run_resolved(3, 3000, 4, 4096, 2);
    CHECK(run.call.timeout == 500ms);
    // The first to time out stops the other (peer_failed).
    CHECK(run.status[0].code != peer_memory::outcome::ok);
    CHECK(run.status[1].code != peer_memory::outcome::ok);
    CHECK((run.status[0].code == peer_memory::outcome::timeout ||
           run.status[1].code == peer_memory::outcome::timeout));
    CHECK(run.took >= 400ms);
    CHECK(run.took < 5s);
  }
}

namespace {

// What the walk reads and writes on a GPU, a uint4, as a host struct.
struct alignas(16) host_vector {
  unsigned x, y, z, w;
};

// The test's own element operation: 3a + b, wrapping in T (an unsigned type of the
// element's width). Not symmetric, so that swapped operands show, and every bit of both
// counts, so that a shifted or misplaced element shows.
template <class T>
T mix(T a, T b) {
  return static_cast<T>(static_cast<T>(a * 3u) + b);
}
template <class T>
struct mix_elements {
  T operator()(T a, T b) const { return mix(a, b); }
};
template <class T>
struct mix_vectors {
  host_vector operator()(host_vector a, host_vector b) const {
    constexpr std::size_t lanes = 16 / sizeof(T);
    T x[lanes], y[lanes];
    std::memcpy(x, &a, 16);
    std::memcpy(y, &b, 16);
    for (std::size_t k = 0; k < lanes; ++k) x[k] = mix(x[k], y[k]);
    host_vector r;
    std::memcpy(&r, x, 16);
    return r;
  }
};

// An operand `shift` bytes into an allocation of its own that ends where it does, 16-byte
// aligned: under ASan (tools/sanitize.sh address) a read past its last byte is a report.
struct operand {
  std::byte* base;
  std::size_t bytes;
  operand(std::size_t shift, std::size_t size)
      : base(static_cast<std::byte*>(::operator new (shift + size, std::align_val_t{16}))),
        bytes(shift + size) {}
  ~operand() { ::operator delete (base, std::align_val_t{16}); }
  operand(const operand&) = delete;
  operand& operator=(const operand&) = delete;
};

// Whether bytes [from, to) of p still hold the guard pattern.
bool untouched(const std::byte* p, std::size_t from, std::size_t to) {
  return std::all_of(p + from, p + to, [](std::byte x) { return x == std::byte{0xa5}; });
}

// dst[i] = mix(a[i], b[i]) walked at byte misalignments md, ma and mb (alias: dst is a
// (1) or b (2)), each thread of `threads` in turn, against the element-by-element
// reference; the bytes around dst stay as they were, and the plan reads no byte outside
// the sources and leaves at most four vectors' worth to the element-by-element loops.
template <class T>
void check_walk(std::size_t md, std::size_t ma, std::size_t mb, int alias, std::size_t n, unsigned threads) {
  constexpr std::size_t size = sizeof(T), lanes = 16 / size, guard = 16;
  INFO("element size ", size, " misalignments dst ", md, " a ", ma, " b ", mb, " alias ", alias, " n ", n,
       " threads ", threads);
  operand da(ma, n * size), db(mb, n * size), dd(guard + md, n * size + guard);
  std::memset(dd.base, 0xa5, dd.bytes);
  T* a = reinterpret_cast<T*>(da.base + ma);
  T* b = reinterpret_cast<T*>(db.base + mb);
  T* d = reinterpret_cast<T*>(dd.base + guard + md);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = static_cast<T>(0x9e3779b97f4a7c15ull * (i + 1) >> 17);
    b[i] = static_cast<T>(0xbf58476d1ce4e5b9ull * (i + 7) >> 23);
  }
  if (alias == 1) std::memcpy(d, a, n * size), a = d;
  if (alias == 2) std::memcpy(d, b, n * size), b = d;
  std::vector<T> want(n);
  for (std::size_t i = 0; i < n; ++i) want[i] = mix(a[i], b[i]);
  const detail::vector_plan p = detail::plan_vectors(d, a, b, n, size);
  for (unsigned tid = 0; tid < threads; ++tid)
    detail::walk_reduce<4, host_vector>(d, a, b, n, tid, threads, mix_elements<T>{}, mix_vectors<T>{});
  CHECK(std::equal(want.begin(), want.end(), d));
  CHECK(untouched(dd.base, 0, guard + md));
  CHECK(untouched(dd.base, guard + md + n * size, dd.bytes));
  for (unsigned shift : {p.a_shift, p.b_shift}) {
    if (p.vectors == 0 || shift == 0) continue;
    CHECK(p.first * size >= shift);
    CHECK(p.first * size - shift + 16 * p.vectors + 16 <= n * size);
  }
  CHECK(n - p.vectors * lanes < 4 * lanes);
}

// The same for the copy walk: every byte misalignment of dst and src.
void check_copy_walk(std::size_t md, std::size_t ms, std::size_t n, unsigned threads) {
  INFO("copy: misalignments dst ", md, " src ", ms, " bytes ", n, " threads ", threads);
  operand src(ms, n), dst(16 + md, n + 16);
  std::memset(dst.base, 0xa5, dst.bytes);
  auto* s = reinterpret_cast<unsigned char*>(src.base + ms);
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<unsigned char>(i * 37 + 11);
  auto* d = reinterpret_cast<unsigned char*>(dst.base + 16 + md);
  for (unsigned tid = 0; tid < threads; ++tid) detail::walk_copy<4, host_vector>(d, s, n, tid, threads);
  CHECK(std::memcmp(d, s, n) == 0);
  CHECK(untouched(dst.base, 0, 16 + md));
  CHECK(untouched(dst.base, 16 + md + n, dst.bytes));
  const detail::vector_plan p = detail::plan_vectors(d, s, s, n, 1);
  if (p.vectors != 0 && p.a_shift != 0) CHECK(p.first - p.a_shift + 16 * p.vectors + 16 <= n);
  CHECK(n - p.vectors * 16 < 64);
}

template <class T>
void check_walks() {
  constexpr std::size_t size = sizeof(T);
  for (std::size_t md = 0; md < 16; md += size) {
    for (std::size_t ma = 0; ma < 16; ma += size) {
      for (std::size_t n = 0; n <= 100; ++n) {
        const auto threads = static_cast<unsigned>(1 + n % 3);
        for (std::size_t mb = 0; mb < 16; mb += size) check_walk<T>(md, ma, mb, 0, n, threads);
        check_walk<T>(md, md, ma, 1, n, threads);  // in place: dst is a; b at ma
        check_walk<T>(md, ma, md, 2, n, threads);  // dst is b; a at ma
      }
    }
  }
}

}  // namespace

TEST_CASE(
    "the reductions' vector walk matches an element-by-element reference at every misalignment of dst, a and "
    "b, for every element size, counts 0 to 100, in place too, reading nothing outside its operands") {
  // The walk sees only the element's size: every collx dtype is 1 (i8, u8), 2 (f16, bf16:
  // their pairs are the vector operation's business), 4 or 8 bytes.
  check_walks<std::uint8_t>();
  check_walks<std::uint16_t>();
  check_walks<std::uint32_t>();
  check_walks<std::uint64_t>();
  // And __byte_perm's rule as the host emulates it: bytes r..r+3 of hi:lo.
  for (unsigned r = 0; r < 4; ++r) {
    CHECK(detail::byte_perm(0x33221100u, 0x77665544u, detail::byte_selector(r)) ==
          static_cast<unsigned>(0x7766554433221100ull >> (8 * r)));
  }
}

TEST_CASE("the copy's vector walk copies every byte and nothing more at every misalignment of dst and src") {
  for (std::size_t md = 0; md < 16; ++md) {
    for (std::size_t ms = 0; ms < 16; ++ms) {
      for (std::size_t n = 0; n <= 100; ++n) check_copy_walk(md, ms, n, static_cast<unsigned>(1 + n % 3));
    }
  }
}
