// The exchanges sized per peer: all_to_all_v and send/recv. Their schedules proven by the
// verifier for p = 1..64; the calls on the local transport, ranks as threads, against a
// reference computed here for every element type, p in {1, 2, 3, 5, 7, 8, 12, 13, 16},
// uneven counts with zeros, one-element, segmented blocks and blocks past the default
// segment; the checks before a byte moves; and mismatched split sizes, sizes, types and
// tags failing every rank involved.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "reference.hpp"

using collx::algorithm;
using collx::collective;
using collx::errc;
using collx::schedule;

namespace {

constexpr int rank_counts[] = {1, 2, 3, 5, 7, 8, 12, 13, 16};

// Element i of what rank `from` sends rank `to`: a small integer hashed from all three,
// exact in every type, so a block from the wrong rank or offset cannot compare equal.
double value(int from, int to, std::size_t i) {
  const std::uint64_t h =
      test::mix((static_cast<std::uint64_t>(from) << 40) ^ (static_cast<std::uint64_t>(to) << 20) ^ (i + 1));
  return static_cast<double>(h % 100);
}

// How many elements rank `from` sends rank `to` in each count pattern.
enum class pattern { zeros, small_uneven, segmented, large };

std::size_t count_of(pattern pt, int from, int to) {
  const auto h = test::mix(static_cast<std::uint64_t>(from) * 131 + static_cast<std::uint64_t>(to));
  switch (pt) {
    case pattern::zeros: return 0;
    case pattern::small_uneven: return h % 4;  // 0..3: zeros, ones and odd counts
    case pattern::segmented: return h % 3 == 0 ? 0 : 37 + h % 60;
    case pattern::large: return test::past_segment<float>() + h % 7;  // past the default segment
  }
  return 0;
}

struct counts {
  std::vector<std::size_t> send, recv;
};

counts counts_of(pattern pt, int me, int p) {
  counts c;
  for (int q = 0; q < p; ++q) {
    c.send.push_back(count_of(pt, me, q));
    c.recv.push_back(count_of(pt, q, me));
  }
  return c;
}

std::size_t sum(const std::vector<std::size_t>& v) {
  return std::accumulate(v.begin(), v.end(), std::size_t{0});
}

// ---- the verifier ----

std::vector<schedule> all_to_all_v_schedules(int p, pattern pt, std::size_t segment) {
  std::vector<schedule> all;
  for (int r = 0; r < p; ++r) {
    const counts c = counts_of(pt, r, p);
    collx::algorithms::call_shape k;
    k.coll = collective::all_to_all_v;
    k.rank = r;
    k.ranks = p;
    k.segment = segment;
    k.send_counts = c.send;
    k.recv_counts = c.recv;
    all.push_back(collx::algorithms::build(algorithm::pairwise, k));
  }
  return all;
}

// Each rank sends n(r) elements to to(r) (-1: none) and receives from from(r).
std::vector<schedule> send_recv_schedules(int p, const std::function<int(int)>& to,
                                          const std::function<int(int)>& from, std::size_t segment) {
  auto n = [](int r) { return static_cast<std::size_t>(r % 3 == 2 ? 0 : 5 + 11 * r); };
  std::vector<schedule> all;
  for (int r = 0; r < p; ++r) {
    std::vector<std::size_t> sc(static_cast<std::size_t>(p), 0), rc(static_cast<std::size_t>(p), 0);
    if (to(r) >= 0) sc[static_cast<std::size_t>(to(r))] = n(r);
    if (from(r) >= 0) rc[static_cast<std::size_t>(from(r))] = n(from(r));
    collx::algorithms::call_shape k;
    k.coll = collective::send_recv;
    k.rank = r;
    k.ranks = p;
    k.segment = segment;
    k.send_counts = sc;
    k.recv_counts = rc;
    k.dst = to(r);
    k.src = from(r);
    all.push_back(collx::algorithms::build(algorithm::direct, k));
  }
  return all;
}

// ---- the calls ----

template <class T>
long long run_all_to_all_v(collx::communicator& comm, pattern pt, bool async) {
  const int me = comm.rank();
  const int p = comm.size();
  const counts c = counts_of(pt, me, p);
  std::vector<T> in, out(sum(c.recv), test::from_d<T>(-1));
  for (int q = 0; q < p; ++q) {
    for (std::size_t i = 0; i < c.send[static_cast<std::size_t>(q)]; ++i)
      in.push_back(test::from_d<T>(value(me, q, i)));
  }
  const std::vector<T> before = in;
  collx::options o;
  if (pt == pattern::segmented) o.segment_bytes = 16 * sizeof(T);  // several segments a block
  if (async) {
    comm.all_to_all_v_async(std::span<const T>(in), c.send, std::span<T>(out), c.recv, o).wait();
  } else {
    comm.all_to_all_v(in, c.send, out, c.recv, o);
  }
  long long wrong = 0;
  std::size_t at = 0;
  for (int j = 0; j < p; ++j) {
    for (std::size_t i = 0; i < c.recv[static_cast<std::size_t>(j)]; ++i, ++at)
      wrong += test::to_d(out[at]) != value(j, me, i) ? 1 : 0;
  }
  for (std::size_t k = 0; k < in.size(); ++k) wrong += test::to_d(in[k]) != test::to_d(before[k]) ? 1 : 0;
  return wrong;
}

// f(T{}) for every element type T, its wrong elements summed.
template <class F, class... T>
long long sum_over_types(F&& f, test::types<T...>) {
  return (f(T{}) + ...);
}

long long run_all_to_all_v_types(collx::communicator& comm) {
  return sum_over_types(
      [&](auto tag) {
        using U = decltype(tag);
        long long wrong = 0;
        for (auto pt : {pattern::zeros, pattern::small_uneven, pattern::segmented})
          wrong += run_all_to_all_v<U>(comm, pt, false);
        if constexpr (std::is_same_v<U, float>) {
          // Blocks past the default segment up to 8 ranks (at 16, 8 MiB in and out a rank).
          if (comm.size() <= 8 && test::past_segment<U>() != 0)
            wrong += run_all_to_all_v<U>(comm, pattern::large, false);
          wrong += run_all_to_all_v<U>(comm, pattern::small_uneven, true);
        }
        return wrong;
      },
      test::all_types{});
}

// A pipeline: rank r receives n elements from r-1, checks them, and sends its own to
// r+1 (rank 0 only sends, the last only receives).
template <class T>
long long run_pipeline(collx::communicator& comm, std::size_t n) {
  const int me = comm.rank();
  const int p = comm.size();
  collx::options o;
  if (n == 1001) o.segment_bytes = 10 * sizeof(T);
  long long wrong = 0;
  if (me > 0) {
    std::vector<T> got(n, test::from_d<T>(-1));
    comm.recv(got, me - 1, 7, o);
    for (std::size_t i = 0; i < n; ++i) wrong += test::to_d(got[i]) != value(me - 1, me, i) ? 1 : 0;
  }
  if (me + 1 < p) {
    std::vector<T> mine(n);
    for (std::size_t i = 0; i < n; ++i) mine[i] = test::from_d<T>(value(me, me + 1, i));
    comm.send(mine, me + 1, 7, o);
  }
  return wrong;
}

// A ring shift with send_recv: each rank sends to r+1 and receives from r-1, counts
// differing by rank (n + r).
template <class T>
long long run_ring_shift(collx::communicator& comm, std::size_t n, bool async) {
  const int me = comm.rank();
  const int p = comm.size();
  const int to = (me + 1) % p;
  const int from = (me - 1 + p) % p;
  std::vector<T> mine(n + static_cast<std::size_t>(me)), got(n + static_cast<std::size_t>(from));
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = test::from_d<T>(value(me, to, i));
  if (async) {
    comm.send_recv_async(std::span<const T>(mine), to, std::span<T>(got), from).wait();
  } else {
    comm.send_recv(mine, to, got, from);
  }
  long long wrong = 0;
  for (std::size_t i = 0; i < got.size(); ++i) wrong += test::to_d(got[i]) != value(from, me, i) ? 1 : 0;
  return wrong;
}

long long run_point_to_point_types(collx::communicator& comm) {
  return sum_over_types(
      [&](auto tag) {
        using U = decltype(tag);
        long long wrong = 0;
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}})
          wrong += run_pipeline<U>(comm, n) + run_ring_shift<U>(comm, n, false);
        // Past the default segment, unless COLLX_TEST_MAX_COUNT cuts it (then that count).
        const std::size_t past = test::past_segment<U>();
        const std::size_t large = past != 0 ? past : test::max_count();
        if constexpr (std::is_same_v<U, float>)
          wrong += run_pipeline<U>(comm, large) + run_ring_shift<U>(comm, large, true);
        return wrong;
      },
      test::all_types{});
}

collx::communicator_config quick(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  collx::communicator_config cfg;
  cfg.timeout = timeout;
  return cfg;
}

// Runs f on p ranks; every rank must fail with `kind`, well within the timeout.
void expect_every_rank_fails(
    int p, const std::function<void(collx::communicator&)>& f, errc kind,
    const std::function<bool(int)>& involved = [](int) { return true; }) {
  const auto start = std::chrono::steady_clock::now();
  auto errors = test::run_ranks(p, f, quick());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  for (std::size_t r = 0; r < errors.size(); ++r) {
    if (!involved(static_cast<int>(r))) {
      CHECK_MESSAGE(!errors[r], "rank " << r << " is not involved but failed");
      continue;
    }
    auto e = test::as_error(errors[r]);
    CHECK_MESSAGE(e.has_value(), "rank " << r << " did not fail");
    if (e) CHECK_MESSAGE(e->kind() == kind, "rank " << r << ": " << std::string(e->what()));
  }
}

}  // namespace

TEST_CASE("the verifier proves pairwise all-to-all-v for p = 1..64, uneven counts with zeros") {
  for (int p = 1; p <= 64; ++p) {
    for (auto pt : {pattern::zeros, pattern::small_uneven, pattern::segmented}) {
      for (std::size_t seg : {std::size_t{1} << 20, std::size_t{16}}) {
        CAPTURE(p);
        CAPTURE(static_cast<int>(pt));
        CAPTURE(seg);
        const auto v = collx::verify(all_to_all_v_schedules(p, pt, seg));
        CHECK_MESSAGE(v.ok, v.message);
      }
    }
  }
}

TEST_CASE("the verifier proves send/recv: ring shifts, pipelines, pairs and a rank copying to itself") {
  for (int p = 1; p <= 64; p += (p < 9 ? 1 : 7)) {
    CAPTURE(p);
    for (std::size_t seg : {std::size_t{1} << 20, std::size_t{4}}) {
      CAPTURE(seg);
      auto shift = collx::verify(send_recv_schedules(
          p, [p](int r) { return (r + 1) % p; }, [p](int r) { return (r - 1 + p) % p; }, seg));
      CHECK_MESSAGE(shift.ok, shift.message);
      auto pipe = collx::verify(send_recv_schedules(
          p, [p](int r) { return r + 1 < p ? r + 1 : -1; }, [](int r) { return r - 1; }, seg));
      CHECK_MESSAGE(pipe.ok, pipe.message);
      auto pairs = collx::verify(send_recv_schedules(
          p, [p](int r) { return (r ^ 1) < p ? r ^ 1 : -1; }, [p](int r) { return (r ^ 1) < p ? r ^ 1 : -1; },
          seg));
      CHECK_MESSAGE(pairs.ok, pairs.message);
    }
  }
}

TEST_CASE("the verifier rejects exchanges whose sides disagree or whose blocks land wrong") {
  auto all = all_to_all_v_schedules(3, pattern::segmented, 1 << 20);
  all[1].recv_counts[0] += 1;
  auto v = collx::verify(all);
  CHECK_FALSE(v.ok);
  CHECK(v.message.find("expects") != std::string::npos);
  // A pairwise exchange that puts a block one element late.
  all = all_to_all_v_schedules(3, pattern::segmented, 1 << 20);
  bool planted = false;
  for (auto& st : all[2].steps) {
    if (!planted && st.kind == collx::step_kind::recv && st.dst.count > 0) {
      st.dst.offset += 1;
      planted = true;
    }
  }
  REQUIRE(planted);
  CHECK_FALSE(collx::verify(all).ok);
  // A receiver that finishes without its receipt's partner: rank 1 sends no receipt.
  auto sr = send_recv_schedules(
      2, [](int r) { return r == 0 ? 1 : -1; }, [](int r) { return r == 1 ? 0 : -1; }, 1 << 20);
  std::erase_if(sr[1].steps, [](const collx::step& st) { return st.kind == collx::step_kind::send; });
  for (auto& st : sr[1].steps) st.dep_count = 0;
  CHECK_FALSE(collx::verify(sr).ok);
}

TEST_CASE("the closed-form costs of all-to-all-v and send/recv stay near the schedule replay") {
  const collx::cost_params models[] = {{3e-6, 1.0 / 12e9, 1.0 / 7e9}, {20e-6, 1.0 / 1e9, 1.0 / 20e9}};
  for (const auto& m : models) {
    for (int p : {2, 3, 5, 8, 13, 16}) {
      for (std::size_t n : {std::size_t{16}, std::size_t{4096}, std::size_t{720720}}) {
        // Equal blocks, unsegmented: the formula's n is the block.
        std::vector<schedule> v, sr;
        for (int r = 0; r < p; ++r) {
          const std::vector<std::size_t> each(static_cast<std::size_t>(p), n);
          std::vector<std::size_t> one(static_cast<std::size_t>(p), 0), other = one;
          one[static_cast<std::size_t>((r + 1) % p)] = n;
          other[static_cast<std::size_t>((r - 1 + p) % p)] = n;
          v.push_back(collx::algorithms::pairwise_v({r, p, each, each, std::size_t{1} << 40}));
          sr.push_back(collx::algorithms::direct({r, p, one, other, std::size_t{1} << 40}, (r + 1) % p,
                                                 (r - 1 + p) % p));
        }
        const double bytes = static_cast<double>(n) * 4;
        for (const auto& [c, a, all] : {std::tuple{collective::all_to_all_v, algorithm::pairwise, &v},
                                        std::tuple{collective::send_recv, algorithm::direct, &sr}}) {
          const double replay = collx::predict(*all, m, 4).seconds;
          const double formula = collx::algorithms::predicted_seconds(a, c, p, bytes, m);
          INFO(collx::to_string(c), " p=", p, " n=", n, " replay=", replay, " formula=", formula);
          CHECK(formula >= 0.7 * replay);
          CHECK(formula <= 1.4 * replay);
        }
      }
    }
  }
}

// Runs `wrong_on` on every rank, for each rank count; it returns the elements it found wrong.
void check_every_rank_count(const std::function<long long(collx::communicator&)>& wrong_on) {
  for (int p : rank_counts) {
    CAPTURE(p);
    std::atomic<long long> wrong{0};
    test::expect_ok(test::run_ranks(p, [&](collx::communicator& comm) { wrong += wrong_on(comm); }));
    CHECK(wrong.load() == 0);
  }
}

TEST_CASE("all-to-all-v matches the reference: every type, uneven counts with zeros, segmented and large") {
  check_every_rank_count([](collx::communicator& comm) { return run_all_to_all_v_types(comm); });
}

TEST_CASE("send and recv, and send_recv, match the reference: pipelines and ring shifts, every type") {
  check_every_rank_count([](collx::communicator& comm) { return run_point_to_point_types(comm); });
}

TEST_CASE("point to point is not a numbered call: ranks that made none keep step with those that made some") {
  auto errors = test::run_ranks(4, [](collx::communicator& comm) {
    const int me = comm.rank();
    std::vector<int> a(5, me), b(5, -1);
    for (int round = 0; round < 3; ++round) {
      if (me == 1) comm.send(a, 2);
      if (me == 2) {
        comm.recv(b, 1);
        CHECK(b[4] == 1);
      }
      std::vector<int> x(3, me);
      comm.all_reduce(x, collx::reduce_op::sum);
      CHECK(x[2] == 6);
      if (me == 0) {
        std::vector<int> c(2, -1);
        comm.send_recv(std::vector<int>(2, 9), 0, c, 0);  // to itself: a copy
        CHECK(c[1] == 9);
      }
    }
    comm.barrier();
  });
  test::expect_ok(errors);
}

TEST_CASE("untyped send, recv and all_to_all_v") {
  auto errors = test::run_ranks(3, [](collx::communicator& comm) {
    const int me = comm.rank();
    std::vector<double> in(6, me), out(6, -1);
    const std::vector<std::size_t> each(3, 2);
    comm.all_to_all_v(in.data(), each, out.data(), each, collx::dtype::f64);
    CHECK(out == std::vector<double>{0, 0, 1, 1, 2, 2});
    if (me == 0) comm.send(in.data(), 4, collx::dtype::f64, 2, 3);
    if (me == 2) {
      comm.recv(out.data(), 4, collx::dtype::f64, 0, 3);
      CHECK(out[3] == 0.0);
    }
  });
  test::expect_ok(errors);
}

TEST_CASE("bad exchange arguments are refused before any byte moves, and the communicator stays healthy") {
  auto errors = test::run_ranks(3, [](collx::communicator& comm) {
    const int me = comm.rank();
    std::vector<float> in(6, 1.0f), out(6, -1.0f);
    const std::vector<float> before = out;
    const std::vector<std::size_t> two(3, 2), wrong_len(2, 3), more{2, 2, 3};
    auto refused = [&](auto&& call, errc kind = errc::invalid_argument) {
      try {
        call();
        FAIL("accepted");
      } catch (const collx::error& e) {
        CHECK_MESSAGE(e.kind() == kind, std::string(e.what()));
      }
    };
    refused([&] { comm.all_to_all_v(in, wrong_len, out, wrong_len); });
    refused([&] { comm.all_to_all_v(in, more, out, two); });  // 7 to send, input has 6
    refused([&] { comm.all_to_all_v(in, two, in, two); });    // no in-place form
    refused([&] {
      std::vector<std::size_t> a = two;
      a[static_cast<std::size_t>(me)] = 1;  // own block: 1 to send, 2 to receive
      comm.all_to_all_v(in.data(), a, out.data(), two, collx::dtype::f32);
    });
    refused([&] { comm.all_to_all_v(nullptr, two, out.data(), two, collx::dtype::f32); });
    refused([&] { comm.send(in, 3); });
    refused([&] { comm.recv(out, -2); });
    refused([&] { comm.send(in, me); });  // to itself without receiving
    refused([&] { comm.send_recv(in.data(), 6, me, out.data(), 5, me, collx::dtype::f32); });
    refused([&] {
      collx::options o;
      o.tag = 4;
      comm.send(in, (me + 1) % 3, 5, o);  // two different tags
    });
    refused(
        [&] {
          collx::options o;
          o.algo = algorithm::ring;
          comm.send(in, (me + 1) % 3, 0, o);
        },
        errc::unsupported);
    CHECK(out == before);
    comm.barrier();
  });
  test::expect_ok(errors);
}

TEST_CASE("all-to-all-v split sizes that two ranks disagree on fail every rank with a mismatch") {
  for (int p : {2, 3, 4, 5}) {
    CAPTURE(p);
    expect_every_rank_fails(
        p,
        [](collx::communicator& comm) {
          const int me = comm.rank();
          counts c = counts_of(pattern::small_uneven, me, comm.size());
          if (me == 0) c.send[1] += 1;  // rank 1 expects one element fewer
          std::vector<float> in(sum(c.send), 1.0f), out(sum(c.recv));
          comm.all_to_all_v(in, c.send, out, c.recv);
        },
        errc::mismatch);
  }
}

TEST_CASE("a send and a recv that differ in size, type or tag fail both sides; other ranks are untouched") {
  struct variant {
    const char* name;
    std::function<void(collx::communicator&)> recv;
  };
  const std::vector<variant> variants = {
      {"size",
       [](collx::communicator& c) {
         std::vector<float> v(6);
         c.recv(v, 0, 1);
       }},
      {"type",
       [](collx::communicator& c) {
         std::vector<std::int32_t> v(5);
         c.recv(v, 0, 1);
       }},
      {"tag",
       [](collx::communicator& c) {
         std::vector<float> v(5);
         c.recv(v, 0, 2);
       }},
      {"size, 0 against 5",
       [](collx::communicator& c) {
         std::vector<float> v;
         c.recv(v, 0, 1);
       }},
      {"a send_recv that also expects data back",
       [](collx::communicator& c) {
         std::vector<float> v(5), back;
         c.send_recv(back, 0, v, 0, 1);
       }},
  };
  for (const auto& v : variants) {
    CAPTURE(std::string(v.name));
    expect_every_rank_fails(
        3,
        [&](collx::communicator& comm) {
          if (comm.rank() == 0) comm.send(std::vector<float>(5, 1.0f), 1, 1);
          if (comm.rank() == 1) v.recv(comm);
        },
        errc::mismatch, [](int r) { return r < 2; });
  }
}

TEST_CASE(
    "two ranks that both send first find out at once: each one's data meets the other's wait for a receipt") {
  for (int p : {2, 3}) {
    CAPTURE(p);
    expect_every_rank_fails(
        p,
        [](collx::communicator& comm) {
          if (comm.rank() > 1) return;
          std::vector<int> a(3, 1), b(3);
          comm.send(a, 1 - comm.rank());
          comm.recv(b, 1 - comm.rank());
        },
        errc::mismatch, [](int r) { return r < 2; });
  }
}
