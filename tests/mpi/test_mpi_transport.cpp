// The MPI transport under mpirun: messages of every size arrive whole and in order,
// every collective and algorithm matches a serial reference, and ranks that mismatch,
// stay silent or abort give every rank a collx::error instead of a hang.
//
// Every rank runs every test case, in the same order: constructing a transport is
// collective (MPI_Comm_dup). A watchdog turns a hang into a failed job.
// COLLX_TEST_MPI_SERIALIZED=1 initializes MPI with MPI_THREAD_SERIALIZED first, so the
// transport's locked path runs and mpi_session finds MPI already initialized.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "../expect.hpp"
#include "../skip.hpp"

#include <sys/mman.h>
#include <algorithm>
#include <chrono>
#include <collx/collx.hpp>
#include <collx/transport/mpi.hpp>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using collx::algorithm;
using collx::collective;
using collx::errc;
using collx::reduce_op;
using op_t = collx::mpi_transport::op;
using clock_type = std::chrono::steady_clock;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int p = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

void barrier() { MPI_Barrier(MPI_COMM_WORLD); }

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// Byte i of message k from rank `from`: a multiplicative hash, so a block that lands at
// the wrong offset or in the wrong message does not look right by accident.
std::byte pattern(int from, int k, std::size_t i) {
  const std::uint64_t x =
      (static_cast<std::uint64_t>(i) + 1 + static_cast<std::uint64_t>(from) * 0x1000193ULL +
       static_cast<std::uint64_t>(k) * 0x100000001b3ULL) *
      0x9E3779B97F4A7C15ULL;
  return static_cast<std::byte>(x >> 56);
}

void fill(std::span<std::byte> s, int from, int k) {
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = pattern(from, k, i);
}

std::size_t wrong_bytes(std::span<const std::byte> s, int from, int k) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < s.size(); ++i) bad += s[i] != pattern(from, k, i) ? 1 : 0;
  return bad;
}

constexpr std::byte untouched{0xEE};

collx::envelope env_of(std::uint64_t seq, std::uint64_t count) {
  collx::envelope e;
  e.seq = seq;
  e.count = count;
  return e;
}

// Drives the operations to completion, testing them in the order given; test()'s
// collx::error propagates. A bound turns a lost message into a failure, not a hang.
void wait_all(collx::mpi_transport& t, const std::vector<op_t*>& ops, std::chrono::seconds bound = 30s) {
  const auto deadline = clock_type::now() + bound;
  for (;;) {
    bool all = true;
    for (op_t* o : ops) all = t.test(*o) && all;
    if (all) return;
    REQUIRE_MESSAGE(clock_type::now() < deadline, "operations still pending after " << bound.count() << " s");
    t.poll(10ms);
  }
}

using test::expect_error;

// ---- inputs and the serial reference ----

template <class T>
T input(int r, std::size_t i);

template <>
float input<float>(int r, std::size_t i) {
  // Halves of small integers: every sum over a few ranks is exact in float, in any order.
  const auto v = (static_cast<std::size_t>(r) * 31 + i * 7) % 23;
  return (static_cast<float>(v) - 11.0f) * 0.5f;
}

template <>
std::int32_t input<std::int32_t>(int r, std::size_t i) {
  const auto v =
      ((static_cast<std::uint64_t>(r) + 1) * 2654435761ULL ^ (static_cast<std::uint64_t>(i) * 40503ULL)) %
      100000ULL;
  return static_cast<std::int32_t>(v) - 50000;
}

double fold(reduce_op op, double acc, double v) {
  switch (op) {
    case reduce_op::sum: return acc + v;
    case reduce_op::max: return std::max(acc, v);
    case reduce_op::min: return std::min(acc, v);
    default: FAIL("reference covers sum, min and max only"); return 0;
  }
}

// Element i of the reduction over ranks of element j of each rank's input.
template <class T>
double reference(reduce_op op, int p, std::size_t j) {
  double acc = static_cast<double>(input<T>(0, j));
  for (int q = 1; q < p; ++q) acc = fold(op, acc, static_cast<double>(input<T>(q, j)));
  return acc;
}

template <class T>
std::size_t run_collective(collx::communicator& c, collective coll, const collx::options& o, std::size_t n,
                           bool in_place, reduce_op op) {
  const int p = c.size();
  const int r = c.rank();
  const auto up = static_cast<std::size_t>(p);
  const auto ur = static_cast<std::size_t>(r);
  const T sentinel = static_cast<T>(-77);
  std::size_t bad = 0;
  auto expect = [&](T got, double want) { bad += static_cast<double>(got) == want ? 0 : 1; };
  switch (coll) {
    case collective::all_reduce: {
      std::vector<T> in(n), out(n, sentinel);
      for (std::size_t i = 0; i < n; ++i) in[i] = input<T>(r, i);
      if (in_place) {
        c.all_reduce(in, op, o);
      } else {
        c.all_reduce(in, out, op, o);
        for (std::size_t i = 0; i < n; ++i) bad += in[i] == input<T>(r, i) ? 0 : 1;  // input untouched
      }
      const auto& res = in_place ? in : out;
      for (std::size_t i = 0; i < n; ++i) expect(res[i], reference<T>(op, p, i));
      break;
    }
    case collective::reduce_scatter: {
      std::vector<T> in(n * up), out(n, sentinel);
      for (std::size_t i = 0; i < n * up; ++i) in[i] = input<T>(r, i);
      if (in_place) {
        c.reduce_scatter(in, op, o);
        for (std::size_t i = 0; i < n; ++i) expect(in[ur * n + i], reference<T>(op, p, ur * n + i));
      } else {
        c.reduce_scatter(in, out, op, o);
        for (std::size_t i = 0; i < n; ++i) expect(out[i], reference<T>(op, p, ur * n + i));
      }
      break;
    }
    case collective::all_gather: {
      std::vector<T> in(n), out(n * up, sentinel);
      for (std::size_t i = 0; i < n; ++i) in[i] = input<T>(r, i);
      if (in_place) {
        std::copy(in.begin(), in.end(), out.begin() + static_cast<std::ptrdiff_t>(ur * n));
        c.all_gather(out, o);
      } else {
        c.all_gather(in, out, o);
      }
      for (int q = 0; q < p; ++q) {
        for (std::size_t i = 0; i < n; ++i) {
          expect(out[static_cast<std::size_t>(q) * n + i], static_cast<double>(input<T>(q, i)));
        }
      }
      break;
    }
    default: break;
  }
  return bad;
}

collx::communicator_config config(std::chrono::milliseconds timeout) {
  collx::communicator_config cfg;
  cfg.timeout = timeout;
  return cfg;
}

std::size_t available_memory() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  std::size_t kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

}  // namespace

TEST_CASE("the transport reports the communicator's rank and size, and refuses bad options") {
  INFO("rank ", world_rank());
  collx::mpi_transport t;
  CHECK(t.rank() == world_rank());
  CHECK(t.size() == world_size());
  collx::mpi_transport moved(std::move(t));
  CHECK(moved.size() == world_size());
  CHECK(t.size() == 0);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  op_t o;
  std::byte b{};
  CHECK(expect_error([&] { t.send(0, {}, {&b, 1}, o); }).kind() == errc::invalid_argument);
  CHECK(expect_error([&] { moved.send(world_size(), {}, {&b, 1}, o); }).kind() == errc::invalid_argument);
  collx::mpi_transport_options bad;
  bad.max_message_bytes = 0;
  const auto e = expect_error([&] { collx::mpi_transport x(MPI_COMM_WORLD, bad); });
  CHECK(e.kind() == errc::invalid_argument);
  CHECK(contains(e.what(), "max_message_bytes"));
  CHECK(expect_error([&] { collx::mpi_transport x(MPI_COMM_NULL); }).kind() == errc::invalid_argument);
}

TEST_CASE("messages of 0, 1, 7 and 1 MiB + 3 bytes make a round trip between rank 0 and every rank") {
  INFO("rank ", world_rank());
  collx::mpi_transport t;
  const int me = t.rank();
  const std::size_t sizes[] = {0, 1, 7, (std::size_t{1} << 20) + 3};
  for (int peer = 1; peer < t.size(); ++peer) {
    for (int k = 0; k < 4; ++k) {
      const std::size_t n = sizes[k];
      CAPTURE(peer);
      CAPTURE(n);
      const auto env = env_of(static_cast<std::uint64_t>(k), n);
      if (me == 0) {
        std::vector<std::byte> out(n), back(n, untouched);
        fill(out, 0, k);
        op_t s, r;
        t.recv(peer, env, back, r);
        t.send(peer, env, out, s);
        wait_all(t, {&s, &r});
        CHECK(wrong_bytes(back, peer, k) == 0);
      } else if (me == peer) {
        std::vector<std::byte> in(n, untouched), out(n);
        op_t r, s;
        t.recv(0, env, in, r);
        wait_all(t, {&r});
        CHECK(wrong_bytes(in, 0, k) == 0);
        fill(out, peer, k);
        t.send(0, env, out, s);
        wait_all(t, {&s});
      }
    }
  }
}

TEST_CASE("messages between every pair arrive in the order sent, whatever order the receiver tests them in") {
  INFO("rank ", world_rank());
  collx::mpi_transport t;
  const int p = t.size();
  const int me = t.rank();
  const std::size_t sizes[] = {0, 5, 70000, 3, 4097, 1, 300000, 0};
  constexpr int m = 8;
  const auto slots = static_cast<std::size_t>(m * p);
  std::vector<std::vector<std::byte>> out(slots), in(slots);
  std::vector<op_t> sends(slots), recvs(slots);
  std::vector<op_t*> order;
  for (int q = 0; q < p; ++q) {
    if (q == me) continue;
    for (int k = 0; k < m; ++k) {
      const auto i = static_cast<std::size_t>(q * m + k);
      const std::size_t n = sizes[k];
      in[i].assign(n, untouched);
      t.recv(q, env_of(static_cast<std::uint64_t>(k), n), in[i], recvs[i]);
      order.push_back(&recvs[i]);
    }
  }
  for (int q = 0; q < p; ++q) {
    if (q == me) continue;
    for (int k = 0; k < m; ++k) {
      const auto i = static_cast<std::size_t>(q * m + k);
      out[i].resize(sizes[k]);
      fill(out[i], me, k);
      t.send(q, env_of(static_cast<std::uint64_t>(k), sizes[k]), out[i], sends[i]);
      order.push_back(&sends[i]);
    }
  }
  // Latest first: a later receive whose header comes in must still wait its turn for data.
  std::reverse(order.begin(), order.end());
  wait_all(t, order);
  for (int q = 0; q < p; ++q) {
    if (q == me) continue;
    for (int k = 0; k < m; ++k) {
      CAPTURE(q);
      CAPTURE(k);
      CHECK(wrong_bytes(in[static_cast<std::size_t>(q * m + k)], q, k) == 0);
    }
  }
}

TEST_CASE("a message over max_message_bytes travels as one message of a derived datatype") {
  INFO("rank ", world_rank());
  collx::mpi_transport_options opt;
  opt.max_message_bytes = 1000;
  collx::mpi_transport t(MPI_COMM_WORLD, opt);
  const int p = t.size();
  const int me = t.rank();
  const int next = (me + 1) % p;
  const int prev = (me + p - 1) % p;
  const std::size_t sizes[] = {999, 1000, 1001, 4000, (std::size_t{1} << 20) + 3};
  constexpr int m = 5;
  std::vector<std::vector<std::byte>> out(m), in(m);
  std::vector<op_t> sends(m), recvs(m);
  std::vector<op_t*> all;
  for (int k = 0; k < m; ++k) {
    const auto i = static_cast<std::size_t>(k);
    in[i].assign(sizes[k], untouched);
    out[i].resize(sizes[k]);
    fill(out[i], me, k);
    t.recv(prev, env_of(i, sizes[k]), in[i], recvs[i]);
    t.send(next, env_of(i, sizes[k]), out[i], sends[i]);
    all.push_back(&recvs[i]);
    all.push_back(&sends[i]);
  }
  wait_all(t, all);
  for (int k = 0; k < m; ++k) {
    CAPTURE(sizes[k]);
    CHECK(wrong_bytes(in[static_cast<std::size_t>(k)], prev, k) == 0);
  }
}

TEST_CASE("a message of more than INT_MAX bytes arrives whole (two ranks, if memory allows)") {
  INFO("rank ", world_rank());
  // 4.3 GB in all: run it only where the job has two ranks and the machine has room.
  int run = world_size() == 2 && available_memory() > (std::size_t{7} << 30) ? 1 : 0;
  MPI_Bcast(&run, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (run == 0) COLLX_SKIP_CASE("needs a 2-rank job and 7 GiB of free memory");
  collx::mpi_transport t;
  // Whole 64-bit words, each a hash of its index (byte patterns cost 4x the time here),
  // and 5 bytes more, so the message does not end on a block boundary.
  const std::size_t words = std::size_t{1} << 28;
  const std::size_t n = words * 8 + 5;
  // Huge pages: first touch of 2 GiB in 4 KiB pages costs seconds on a virtual machine.
  constexpr std::size_t huge = std::size_t{2} << 20;
  const std::size_t bytes = (words * 8 + 8 + huge - 1) / huge * huge;
  std::unique_ptr<std::uint64_t, decltype(&std::free)> buf(
      static_cast<std::uint64_t*>(std::aligned_alloc(huge, bytes)), &std::free);
  REQUIRE(buf != nullptr);
  ::madvise(buf.get(), bytes, MADV_HUGEPAGE);
  const std::span<std::byte> s(reinterpret_cast<std::byte*>(buf.get()), n);
  auto word = [](std::size_t i) { return (static_cast<std::uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ULL; };
  const auto env = env_of(42, n);
  op_t o;
  if (t.rank() == 0) {
    for (std::size_t i = 0; i < words; ++i) buf.get()[i] = word(i);
    fill(s.subspan(words * 8), 0, 42);
    t.send(1, env, s, o);
  } else {
    std::fill(s.begin(), s.end(), untouched);
    t.recv(0, env, s, o);
  }
  wait_all(t, {&o}, 120s);
  if (t.rank() == 1) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < words; ++i) bad += buf.get()[i] == word(i) ? 0 : 1;
    CHECK(bad == 0);
    CHECK(wrong_bytes(s.subspan(words * 8), 0, 42) == 0);
  }
}

TEST_CASE("a receive refuses a message whose envelope or size differs, before a byte of it lands") {
  INFO("rank ", world_rank());
  struct variant {
    const char* name;
    std::uint64_t sent_count, expected_count;
    std::size_t sent_bytes, expected_bytes;
    const char* says;
  };
  // The last two are large enough that the data would go by rendezvous: the sender's
  // data send is still pending when the receiver refuses, and must end too.
  const variant variants[] = {
      {"envelope", 4, 5, 16, 16, "but peer 0 called all_reduce(u8, sum, count=4"},
      {"size", 4, 4, 16, 20, "peer 0 sent 16 bytes where this rank expects 20"},
      {"large envelope", 200000, 200001, 200000, 200000, "this rank called all_reduce(u8, sum, count=200001"},
      {"large size", 7, 7, 200000, 200001, "peer 0 sent 200000 bytes where this rank expects 200001"},
  };
  for (const auto& v : variants) {
    CAPTURE(v.name);
    {
      collx::mpi_transport t;
      const auto start = clock_type::now();
      if (t.rank() == 0) {
        std::vector<std::byte> out(v.sent_bytes);
        fill(out, 0, 1);
        op_t s, r;
        std::vector<std::byte> reply(1);
        t.send(1, env_of(1, v.sent_count), out, s);
        t.recv(1, env_of(2, 1), reply, r);  // never sent: the abort message ends it
        const auto e = expect_error([&] { wait_all(t, {&s, &r}); });
        CHECK(e.kind() == errc::mismatch);
        CHECK(contains(e.what(), "peer 1 failed"));
        CHECK(contains(e.what(), v.says));
        t.cancel(s);
        t.cancel(r);
      } else if (t.rank() == 1) {
        std::vector<std::byte> in(v.expected_bytes, untouched);
        op_t r;
        t.recv(0, env_of(1, v.expected_count), in, r);
        const auto e = expect_error([&] { wait_all(t, {&r}); });
        CHECK(e.kind() == errc::mismatch);
        CHECK(e.peer() == 0);
        CHECK(contains(e.what(), v.says));
        CHECK(std::all_of(in.begin(), in.end(), [](std::byte b) { return b == untouched; }));
        t.cancel(r);
        t.abort(e.kind(), e.what(), 0);
        op_t again;
        CHECK(expect_error([&] { t.recv(0, env_of(3, 0), {}, again); }).kind() == errc::aborted);
      }
      CHECK(clock_type::now() - start < 10s);
    }
    barrier();
  }
}

TEST_CASE("an abort reaches the peers, and a rank that fails because of it names where it started") {
  INFO("rank ", world_rank());
  {
    collx::mpi_transport t;
    const int me = t.rank();
    const auto start = clock_type::now();
    if (me == 0) {
      std::this_thread::sleep_for(100ms);
      t.abort(errc::peer_failure, "pulled the plug", 0);
      op_t o;
      std::byte b{};
      const auto e = expect_error([&] { t.send(1, env_of(0, 1), {&b, 1}, o); });
      CHECK(e.kind() == errc::aborted);
      CHECK(contains(e.what(), "this rank has failed (pulled the plug)"));
    } else if (me <= 2) {
      // Rank 1 waits for rank 0, rank 2 for rank 1, which passes rank 0's failure on.
      op_t o;
      std::byte b{};
      t.recv(me - 1, env_of(0, 1), {&b, 1}, o);
      const auto e = expect_error([&] { wait_all(t, {&o}); });
      CHECK(e.kind() == errc::peer_failure);
      CHECK(e.peer() == me - 1);
      CHECK(contains(e.what(), "peer " + std::to_string(me - 1) + " failed"));
      CHECK(contains(e.what(), "pulled the plug"));
      if (me == 2) CHECK(contains(e.what(), "after rank 0 failed"));
      t.cancel(o);
      t.abort(e.kind(), e.what(), 0);
    }
    CHECK(clock_type::now() - start < 10s);
  }
  barrier();
}

TEST_CASE("every collective and every algorithm over MPI matches the serial reference") {
  INFO("rank ", world_rank());
  collx::communicator c(collx::mpi_transport{}, config(60s));
  const std::size_t counts[] = {0, 1, 7, 1001};
  for (const collective coll : {collective::all_reduce, collective::reduce_scatter, collective::all_gather}) {
    for (const algorithm a : collx::all_algorithms) {
      if (!collx::implements(a, coll)) continue;
      for (const std::size_t n : counts) {
        for (const bool in_place : {false, true}) {
          // 64-byte segments cut 1001 elements into dozens of messages per step, so many
          // receives from one peer wait for their headers at once.
          for (const std::size_t seg : {std::size_t{0}, std::size_t{64}}) {
            collx::options o;
            o.algo = a;
            o.segment_bytes = seg;
            INFO(collx::to_string(coll), " ", collx::to_string(a), " n=", n, in_place ? " in place" : "",
                 " segment_bytes=", seg);
            CHECK(run_collective<float>(c, coll, o, n, in_place, reduce_op::sum) == 0);
            CHECK(run_collective<std::int32_t>(c, coll, o, n, in_place, reduce_op::max) == 0);
          }
        }
      }
    }
  }
  CHECK(c.failure().empty());
}

TEST_CASE("async calls over MPI run on the worker thread, in issue order") {
  INFO("rank ", world_rank());
  collx::communicator c(collx::mpi_transport{}, config(60s));
  const auto p = static_cast<float>(c.size());
  std::vector<float> a(1000, 1.0f), b(3000, 2.0f);
  auto ra = c.all_reduce_async(a, reduce_op::sum);
  auto rb = c.all_reduce_async(b, reduce_op::sum);
  rb.wait();
  ra.wait();
  CHECK(std::all_of(a.begin(), a.end(), [&](float x) { return x == p; }));
  CHECK(std::all_of(b.begin(), b.end(), [&](float x) { return x == 2.0f * p; }));
  c.all_reduce(a, reduce_op::max);  // a blocking call after async ones
  CHECK(a[0] == p);
}

TEST_CASE(
    "ranks that call with different counts, reductions or collectives all fail fast, naming both calls") {
  INFO("rank ", world_rank());
  struct variant {
    const char* name;
    void (*call)(collx::communicator&);
  };
  const variant variants[] = {
      {"count 5 vs 6",
       [](collx::communicator& c) {
         std::vector<float> v(c.rank() == 0 ? 5 : 6, 1.0f);
         c.all_reduce(v, reduce_op::sum);
       }},
      {"count 100000 vs 100003",
       [](collx::communicator& c) {
         std::vector<float> v(c.rank() == 0 ? 100000 : 100003, 1.0f);
         collx::options o;
         o.algo = algorithm::ring;
         c.all_reduce(v, reduce_op::sum, o);
       }},
      {"reduction",
       [](collx::communicator& c) {
         std::vector<std::int32_t> v(64, 1);
         c.all_reduce(v, c.rank() == 0 ? reduce_op::max : reduce_op::sum);
       }},
      {"collective",
       [](collx::communicator& c) {
         std::vector<float> v(12, 1.0f), g(12 * static_cast<std::size_t>(c.size()));
         if (c.rank() == 0) {
           c.all_gather(v, g);
         } else {
           c.all_reduce(v, reduce_op::sum);
         }
       }},
  };
  for (const auto& v : variants) {
    {
      collx::communicator c(collx::mpi_transport{}, config(10s));
      const auto start = clock_type::now();
      const auto e = expect_error([&] { v.call(c); });
      // As strings: doctest prints a const char* as an address.
      INFO(std::string(v.name), ": kind ", static_cast<int>(e.kind()), ": ", std::string(e.what()));
      CHECK((e.kind() == errc::mismatch || e.kind() == errc::peer_failure));
      CHECK(contains(e.what(), "called"));
      CHECK(clock_type::now() - start < 5s);  // found out, not timed out
      CHECK_FALSE(c.failure().empty());
    }
    barrier();
  }
}

TEST_CASE("a rank that skips a call makes the others time out within the timeout") {
  INFO("rank ", world_rank());
  {
    collx::communicator c(collx::mpi_transport{}, config(2s));
    const int silent = c.size() - 1;
    if (c.rank() != silent) {
      std::vector<float> v(100, 1.0f);
      const auto start = clock_type::now();
      const auto e = expect_error([&] { c.all_reduce(v, reduce_op::sum); });
      const auto took = clock_type::now() - start;
      INFO(e.what());
      CHECK(e.kind() == errc::timeout);
      CHECK(contains(e.what(), "timed out"));
      CHECK(took >= 1s);
      CHECK(took < 8s);
    }
  }
  barrier();
}

TEST_CASE("abort() from another thread releases a rank blocked in a call, and its peers learn why") {
  INFO("rank ", world_rank());
  {
    collx::communicator c(collx::mpi_transport{}, config(30s));
    const int silent = c.size() - 1;  // keeps the call from finishing on its own
    if (c.rank() != silent) {
      std::thread aborter;
      if (c.rank() == 0) {
        aborter = std::thread([&] {
          std::this_thread::sleep_for(300ms);
          c.abort("torn down by the test");
        });
      }
      const auto start = clock_type::now();
      std::vector<float> v(100, 1.0f);
      // In a ring each rank waits for the one before it, so the failure travels the whole
      // way; with other algorithms a rank that waits only for the silent one times out.
      collx::options o;
      o.algo = algorithm::ring;
      const auto e = expect_error([&] { c.all_reduce(v, reduce_op::sum, o); });
      if (aborter.joinable()) aborter.join();
      INFO(e.what());
      CHECK(e.kind() == errc::aborted);
      CHECK(contains(e.what(), "torn down by the test"));
      if (c.rank() != 0) CHECK((contains(e.what(), "peer 0 failed") || contains(e.what(), "rank 0 failed")));
      CHECK(clock_type::now() - start < 10s);
    }
  }
  barrier();
}

int main(int argc, char** argv) {
  const char* level = std::getenv("COLLX_TEST_MPI_SERIALIZED");
  const bool serialized = level != nullptr && std::string(level) == "1";
  if (serialized) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  }
  int rc = 0;
  {
    collx::mpi_session session(&argc, &argv);
    if (serialized && session.owner()) {
      std::fprintf(stderr, "mpi_session initialized MPI although it was initialized already\n");
      rc = 1;
    }
    // A hang in one rank would stall the others in their next transport's MPI_Comm_dup:
    // end the job instead, which mpirun reports as a failure.
    std::mutex m;
    std::condition_variable cv;
    bool finished = false;
    std::thread watchdog([&] {
      std::unique_lock lock(m);
      if (!cv.wait_for(lock, 200s, [&] { return finished; })) {
        std::fprintf(stderr, "FATAL: rank %d still running after 200 s: a hang\n", world_rank());
        std::fflush(stderr);
        std::_Exit(3);
      }
    });
    doctest::Context ctx(argc, argv);
    if (world_rank() != 0) ctx.setOption("minimal", true);  // other ranks print failures only
    rc = std::max(rc, ctx.run());
    {
      std::lock_guard lock(m);
      finished = true;
    }
    cv.notify_all();
    watchdog.join();
    // Every rank exits with the worst result, whichever rank saw the failure.
    MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  }
  if (serialized) MPI_Finalize();
  return rc;
}
