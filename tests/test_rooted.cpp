// broadcast, reduce, all-to-all, gather, scatter and barrier on the local transport,
// ranks as threads, against a serial reference computed here (never by collx's
// reduction code): every element type and reduction, every root for p in {1, 2, 3, 5,
// 7, 8, 13} and roots 0, 1, p/2 and p-1 for p in {12, 16}, counts 0, 1, odd and (f32,
// i32, up to 8 ranks) past the default segment, in place and out of place (where the
// collective has both), each algorithm forced and the automatic choice.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "reference.hpp"

using collx::algorithm;
using collx::collective;
using collx::errc;
using collx::reduce_op;

namespace {

constexpr int rank_counts[] = {1, 2, 3, 5, 7, 8, 12, 13, 16};
// Rank counts run from a few roots only: the first two, the middle and the last (every
// root of 16 ranks would take most of a minute per algorithm on two cores).
constexpr int few_roots_at[] = {12, 16};

std::vector<int> roots_of(collective c, int p) {
  if (c == collective::all_to_all) return {0};
  if (std::find(std::begin(few_roots_at), std::end(few_roots_at), p) != std::end(few_roots_at))
    return {0, 1, p / 2, p - 1};
  std::vector<int> all(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) all[static_cast<std::size_t>(r)] = r;
  return all;
}

// Rank r's element i: a hash of (r, i), so that a block sent to the wrong rank or offset
// cannot compare equal. Small integers, so that every sum, product (of 1, 2 and -1, at
// most 16 factors), minimum and maximum is exact in every type, 16-bit floats included.
long long value(int r, std::size_t i, reduce_op op, bool is_signed) {
  const std::uint64_t h = test::mix(static_cast<std::uint64_t>(r) * 0x9e3779b97f4a7c15ULL + i + 1);
  if (op == reduce_op::prod) {
    constexpr int factors[] = {1, 2, -1};
    return factors[h % (is_signed ? 3 : 2)];
  }
  return static_cast<long long>(h % 9) - (is_signed ? 4 : 0);
}

// The serial reference, in exact integers (integer results wrap as the types do); avg
// in double.
double reference(reduce_op op, int p, std::size_t i, bool is_signed) {
  long long acc = value(0, i, op, is_signed);
  for (int r = 1; r < p; ++r) {
    const long long v = value(r, i, op, is_signed);
    switch (op) {
      case reduce_op::sum:
      case reduce_op::avg: acc += v; break;
      case reduce_op::prod: acc *= v; break;
      case reduce_op::min: acc = std::min(acc, v); break;
      case reduce_op::max: acc = std::max(acc, v); break;
    }
  }
  return op == reduce_op::avg ? static_cast<double>(acc) / p : static_cast<double>(acc);
}

// Exact, but for avg, whose division rounds once to the type.
template <class T>
bool same(T got, double want, reduce_op op) {
  if constexpr (std::is_integral_v<T>) {
    return got == test::from_d<T>(want);
  } else {
    if (op != reduce_op::avg) return test::to_d(got) == test::to_d(test::from_d<T>(want));
    const double tol = std::is_same_v<T, collx::half>       ? 1e-3
                       : std::is_same_v<T, collx::bfloat16> ? 8e-3
                                                            : 1e-6;
    return std::abs(test::to_d(got) - want) <= tol * (1 + std::abs(want));
  }
}

constexpr double untouched = 99;  // what output holds before a call

struct shape {
  int root;
  std::size_t n;
  bool in_place;
  reduce_op op;
};

// The shapes one rank count runs: each root (roots_of), count and form; the reductions
// for reduce. `large` (0: none) is a count past the default segment.
std::vector<shape> shapes(collective c, int p, bool is_float, std::size_t large) {
  std::vector<shape> out;
  std::vector<std::size_t> counts = {0, 1, 7, 1001};
  if (large != 0) counts.push_back(large);
  for (int root : roots_of(c, p)) {
    for (std::size_t n : counts) {
      for (bool ip : {false, true}) {
        if (!collx::reduces(c)) {
          out.push_back({root, n, ip, reduce_op::sum});
          continue;
        }
        for (auto op : {reduce_op::sum, reduce_op::prod, reduce_op::min, reduce_op::max, reduce_op::avg}) {
          if (op == reduce_op::avg && !is_float) continue;
          out.push_back({root, n, ip, op});
        }
      }
    }
  }
  return out;
}

// all_to_all, gather or scatter: blocks of n, rank r's input element k is value(r, k).
// The forms off the root alternate between a full buffer and an empty one.
template <class T>
long long run_move(collx::communicator& comm, collective c, const shape& s, algorithm a) {
  const int me = comm.rank();
  const auto up = static_cast<std::size_t>(comm.size());
  const auto mine_at = static_cast<std::size_t>(me) * s.n;
  constexpr bool is_signed = std::is_signed_v<T> || !std::is_integral_v<T>;
  collx::options o;
  o.algo = a;
  if (s.n == 1001) o.segment_bytes = 10 * sizeof(T);
  const bool full = me == s.root || (s.n % 2 == 1);  // off the root, empty when n is even
  std::size_t in_n = c == collective::gather ? s.n : (c == collective::scatter && !full ? 0 : s.n * up);
  const std::size_t out_n =
      c == collective::scatter ? s.n : (c == collective::gather && !full ? 0 : s.n * up);
  if (s.in_place) in_n = s.n * up;  // every form in place: the p blocks
  std::vector<T> in(in_n), out(out_n, test::from_d<T>(untouched));
  for (std::size_t k = 0; k < in_n; ++k)
    in[k] = test::from_d<T>(static_cast<double>(value(me, k, s.op, is_signed)));
  if (s.in_place && c == collective::gather) {  // only the own block is the contribution
    for (std::size_t k = 0; k < in_n; ++k) {
      if (k / s.n != static_cast<std::size_t>(me)) in[k] = test::from_d<T>(untouched);
      if (k / s.n == static_cast<std::size_t>(me))
        in[k] = test::from_d<T>(static_cast<double>(value(me, k - mine_at, s.op, is_signed)));
    }
  }
  const std::vector<T> mine = in;
  if (c == collective::all_to_all) {
    s.in_place ? comm.all_to_all(in, o) : comm.all_to_all(in, out, o);
  } else if (c == collective::gather) {
    s.in_place ? comm.gather(in, s.root, o) : comm.gather(in, out, s.root, o);
  } else {
    s.in_place ? comm.scatter(in, s.root, o) : comm.scatter(in, out, s.root, o);
  }
  const std::vector<T>& got = s.in_place ? in : out;
  long long wrong = 0;
  for (std::size_t k = 0; k < got.size(); ++k) {
    const std::size_t j = s.n == 0 ? 0 : k / s.n;
    const std::size_t i = s.n == 0 ? 0 : k % s.n;
    const bool own = j == static_cast<std::size_t>(me);
    double want = s.in_place ? test::to_d(mine[k]) : untouched;  // what the call must not touch
    if (c == collective::all_to_all) {
      want = static_cast<double>(value(static_cast<int>(j), mine_at + i, s.op, is_signed));
    } else if (c == collective::gather && me == s.root) {
      want = static_cast<double>(value(static_cast<int>(j), i, s.op, is_signed));
    } else if (c == collective::scatter && (!s.in_place || own)) {
      want = static_cast<double>(value(s.root, mine_at + (s.in_place ? i : k), s.op, is_signed));
    }
    if (test::to_d(got[k]) != test::to_d(test::from_d<T>(want))) ++wrong;
  }
  if (!s.in_place) {
    for (std::size_t k = 0; k < in.size(); ++k) wrong += test::to_d(in[k]) != test::to_d(mine[k]) ? 1 : 0;
  }
  return wrong;
}

// One call of `c` on this rank, checked against the reference; returns the wrong elements.
template <class T>
long long run_one(collx::communicator& comm, collective c, const shape& s, algorithm a) {
  if (c == collective::all_to_all || c == collective::gather || c == collective::scatter) {
    return run_move<T>(comm, c, s, a);
  }
  const int me = comm.rank();
  const int p = comm.size();
  constexpr bool is_signed = std::is_signed_v<T> || !std::is_integral_v<T>;
  collx::options o;
  o.algo = a;
  if (s.n == 1001) o.segment_bytes = 10 * sizeof(T);  // a hundred segments: the pipeline runs
  std::vector<T> in(s.n);
  for (std::size_t i = 0; i < s.n; ++i)
    in[i] = test::from_d<T>(static_cast<double>(value(me, i, s.op, is_signed)));
  std::vector<T> out(s.n, test::from_d<T>(untouched));
  const std::vector<T> mine = in;
  std::vector<T>& result = s.in_place ? in : out;
  if (c == collective::broadcast) {
    if (s.in_place) {
      comm.broadcast(in, s.root, o);
    } else {
      comm.broadcast(in, out, s.root, o);
    }
  } else if (s.in_place) {
    comm.reduce(in, s.op, s.root, o);
  } else {
    comm.reduce(in, out, s.op, s.root, o);
  }
  long long wrong = 0;
  for (std::size_t i = 0; i < s.n; ++i) {
    double want = 0;
    if (c == collective::broadcast) {
      want = static_cast<double>(value(s.root, i, s.op, is_signed));
    } else if (me == s.root) {
      want = reference(s.op, p, i, is_signed);
    } else {  // not the call's to write: as the caller left it
      want = s.in_place ? test::to_d(mine[i]) : untouched;
    }
    if (!same(result[i], want, s.op)) ++wrong;
    if (!s.in_place && test::to_d(in[i]) != test::to_d(mine[i])) ++wrong;  // the input is never written
  }
  return wrong;
}

template <class... T>
long long run_all(collx::communicator& comm, collective c, algorithm a, test::types<T...>) {
  long long wrong = 0;
  auto one_type = [&](auto tag) {
    using U = decltype(tag);
    // The count past the default segment for f32 and i32, up to 8 ranks: beyond, every
    // rank's input of a scatter or all-to-all (p blocks, hashed element by element)
    // would take most of the test's time.
    const bool has_large = std::is_same_v<U, float> || std::is_same_v<U, std::int32_t>;
    const std::size_t large = has_large && comm.size() <= 8 ? test::past_segment<U>() : 0;
    for (const auto& s : shapes(c, comm.size(), !std::is_integral_v<U>, large)) {
      const long long w = run_one<U>(comm, c, s, a);
      if (w != 0) {
        MESSAGE("rank " << comm.rank() << "/" << comm.size() << " root " << s.root << " n " << s.n << " "
                        << std::string(s.in_place ? "in place" : "out of place") << " " << to_string(s.op)
                        << " " << to_string(collx::dtype_v<U>) << ": " << w << " wrong");
      }
      wrong += w;
    }
  };
  (one_type(T{}), ...);
  return wrong;
}

void check_against_reference(collective c, algorithm a) {
  for (int p : rank_counts) {
    CAPTURE(p);
    std::atomic<long long> wrong{0};
    auto errors = test::run_ranks(
        p, [&](collx::communicator& comm) { wrong += run_all(comm, c, a, test::all_types{}); });
    test::expect_ok(errors);
    CHECK(wrong.load() == 0);
  }
}

}  // namespace

TEST_CASE("broadcast, binomial tree, matches the serial reference") {
  check_against_reference(collective::broadcast, algorithm::binomial);
}
TEST_CASE("broadcast, pipelined chain, matches the serial reference") {
  check_against_reference(collective::broadcast, algorithm::chain);
}
TEST_CASE("broadcast, automatic choice, matches the serial reference") {
  check_against_reference(collective::broadcast, algorithm::automatic);
}
TEST_CASE("reduce, binomial tree, matches the serial reference") {
  check_against_reference(collective::reduce, algorithm::binomial);
}
TEST_CASE("reduce, pipelined chain, matches the serial reference") {
  check_against_reference(collective::reduce, algorithm::chain);
}
TEST_CASE("reduce, automatic choice, matches the serial reference") {
  check_against_reference(collective::reduce, algorithm::automatic);
}

TEST_CASE("all-to-all, pairwise exchange, matches the serial reference") {
  check_against_reference(collective::all_to_all, algorithm::pairwise);
}
TEST_CASE("gather, linear, matches the serial reference") {
  check_against_reference(collective::gather, algorithm::linear);
}
TEST_CASE("scatter, linear, matches the serial reference") {
  check_against_reference(collective::scatter, algorithm::linear);
}
TEST_CASE("all-to-all, Bruck, matches the serial reference") {
  check_against_reference(collective::all_to_all, algorithm::bruck);
}
TEST_CASE("gather, binomial tree, matches the serial reference") {
  check_against_reference(collective::gather, algorithm::binomial);
}
TEST_CASE("scatter, binomial tree, matches the serial reference") {
  check_against_reference(collective::scatter, algorithm::binomial);
}
TEST_CASE("broadcast, van de Geijn (scatter then ring all-gather), matches the serial reference") {
  check_against_reference(collective::broadcast, algorithm::scatter_allgather);
}
TEST_CASE("reduce, Rabenseifner (recursive halving then gather), matches the serial reference") {
  check_against_reference(collective::reduce, algorithm::rabenseifner);
}
TEST_CASE("all-to-all, gather and scatter, automatic choice, match the serial reference") {
  for (auto c : {collective::all_to_all, collective::gather, collective::scatter}) {
    CAPTURE(std::string(to_string(c)));
    check_against_reference(c, algorithm::automatic);
  }
}

TEST_CASE("the untyped and async forms: broadcast's input and reduce's output may be null off the root") {
  auto errors = test::run_ranks(5, [](collx::communicator& comm) {
    const int me = comm.rank();
    std::vector<double> in(33), out(33, untouched);
    for (std::size_t i = 0; i < in.size(); ++i)
      in[i] = static_cast<double>(value(me, i, reduce_op::sum, true));
    comm.broadcast(me == 3 ? in.data() : nullptr, out.data(), out.size(), collx::dtype::f64, 3);
    for (std::size_t i = 0; i < out.size(); ++i)
      CHECK(out[i] == static_cast<double>(value(3, i, reduce_op::sum, true)));
    std::fill(out.begin(), out.end(), untouched);
    comm.reduce(in.data(), me == 1 ? out.data() : nullptr, in.size(), collx::dtype::f64, reduce_op::max, 1);
    if (me == 1) {
      for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == reference(reduce_op::max, 5, i, true));
    }
    std::vector<float> a(17, static_cast<float>(me)), b(me == 0 ? 17 : 0);
    auto r1 = comm.broadcast_async(a, 4);
    auto r2 = comm.reduce_async(std::span<const float>(a), std::span<float>(b), reduce_op::sum, 0);
    auto r3 = comm.barrier_async();
    r1.wait();
    r2.wait();
    r3.wait();
    CHECK(a[16] == 4.0f);
    if (me == 0) CHECK(b[0] == 20.0f);
  });
  test::expect_ok(errors);
}

TEST_CASE("a barrier lets no rank leave before every rank has entered") {
  for (int p : rank_counts) {
    CAPTURE(p);
    std::vector<std::atomic<long long>> entered(static_cast<std::size_t>(p));
    std::atomic<int> early{0};
    auto errors = test::run_ranks(p, [&](collx::communicator& comm) {
      for (int round = 0; round < 3; ++round) {
        // A different rank is late each round.
        if (comm.rank() == round % p) std::this_thread::sleep_for(std::chrono::milliseconds(30));
        entered[static_cast<std::size_t>(comm.rank())] = round + 1;
        comm.barrier();
        for (auto& e : entered) {
          if (e.load() < round + 1) ++early;
        }
        comm.barrier();  // nobody starts the next round before all have looked
      }
    });
    test::expect_ok(errors);
    CHECK(early.load() == 0);
  }
}

TEST_CASE("a root outside the communicator is refused on every rank before any byte moves") {
  auto errors = test::run_ranks(3, [](collx::communicator& comm) {
    std::vector<int> v(4, comm.rank());
    const std::vector<int> before = v;
    CHECK_THROWS_AS(comm.broadcast(v, 3), collx::error);
    CHECK_THROWS_AS(comm.reduce(v, reduce_op::sum, -1), collx::error);
    CHECK(v == before);
    comm.barrier();  // the communicator is still healthy: nothing was sent
  });
  test::expect_ok(errors);
}

TEST_CASE("ranks that name different roots, or different counts, all get a mismatch error") {
  struct variant {
    const char* name;
    std::function<void(collx::communicator&)> call;
  };
  const std::vector<variant> variants = {
      {"broadcast root",
       [](collx::communicator& c) {
         std::vector<float> v(8, 1.0f);
         c.broadcast(v, c.rank() == c.size() - 1 ? 1 : 0);
       }},
      {"broadcast root, each rank its own",
       [](collx::communicator& c) {
         std::vector<float> v(8, 1.0f);
         c.broadcast(v, c.rank());
       }},
      {"reduce root",
       [](collx::communicator& c) {
         std::vector<float> v(8, 1.0f);
         c.reduce(v, reduce_op::sum, c.rank() == 0 ? c.size() - 1 : 0);
       }},
      {"broadcast count",
       [](collx::communicator& c) {
         std::vector<float> v(c.rank() == 1 ? 9 : 8, 1.0f);
         c.broadcast(v, 0);
       }},
      {"gather root",
       [](collx::communicator& c) {
         std::vector<float> in(3, 1.0f), out(3 * static_cast<std::size_t>(c.size()));
         c.gather(in, out, c.rank() == 1 ? 1 : 0);
       }},
      {"all-to-all block",
       [](collx::communicator& c) {
         std::vector<float> v(static_cast<std::size_t>(c.size()) * (c.rank() == 0 ? 2 : 3), 1.0f);
         c.all_to_all(v);
       }},
      {"barrier against a broadcast",
       [](collx::communicator& c) {
         if (c.rank() == 0) {
           c.barrier();
         } else {
           std::vector<float> v(1, 1.0f);
           c.broadcast(v, 1);
         }
       }},
  };
  collx::communicator_config cfg;
  cfg.timeout = std::chrono::seconds(20);
  for (int p : {2, 3, 4}) {
    for (const auto& v : variants) {
      CAPTURE(p);
      CAPTURE(std::string(v.name));
      const auto start = std::chrono::steady_clock::now();
      auto errors = test::run_ranks(p, v.call, cfg);
      CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
      for (std::size_t r = 0; r < errors.size(); ++r) {
        auto e = test::as_error(errors[r]);
        CHECK_MESSAGE(e.has_value(), "rank " << r << " did not fail");
        if (e) CHECK(e->kind() == errc::mismatch);
      }
    }
  }
}
