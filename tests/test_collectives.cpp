// The executor on the local transport against a serial reference, for every element
// type, reduction, rank count and the awkward counts, in place and out of place.

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.hpp"
#include "reference.hpp"

using collx::collective;
using collx::dtype;
using collx::reduce_op;

namespace {

// Ring, the bandwidth algorithm, over the full matrix; the others over the rank counts
// that exercise their folding (non-powers of two) and odd counts, and at a folding and a
// power-of-two rank count a count past the default segment (test::past_segment: several
// segments and an odd remainder); every algorithm also at the wider rank counts, up to
// 1001 elements.
constexpr int ring_ranks[] = {1, 2, 3, 4, 5, 6, 8};
constexpr std::size_t ring_counts[] = {0, 1, 7, 1000003};
constexpr int other_ranks[] = {1, 2, 3, 5, 6, 8};
constexpr std::size_t other_counts[] = {0, 1, 7, 1001};
constexpr int segment_ranks[] = {3, 8};
constexpr int wide_ranks[] = {7, 12, 16};
constexpr std::size_t wide_counts[] = {0, 1, 7, 1001};

// The rank counts and element counts one algorithm runs with for T.
struct sweep {
  std::span<const int> ranks;
  std::vector<std::size_t> counts;
};
template <class T>
std::vector<sweep> sweeps(collx::algorithm algo) {
  std::vector<sweep> out;
  if (algo == collx::algorithm::ring) {
    out.push_back({ring_ranks, {std::begin(ring_counts), std::end(ring_counts)}});
  } else {
    out.push_back({other_ranks, {std::begin(other_counts), std::end(other_counts)}});
    if (test::past_segment<T>() != 0) out.push_back({segment_ranks, {test::past_segment<T>()}});
  }
  out.push_back({wide_ranks, {std::begin(wide_counts), std::end(wide_counts)}});
  return out;
}

template <class T>
constexpr bool is_16bit_float = std::is_same_v<T, collx::half> || std::is_same_v<T, collx::bfloat16>;

// Deterministic inputs. Products use small magnitudes so that p of them stay in range.
// The 16-bit floats take small integers (products of powers of two), whose sums and
// products over the ranks are exact in them at every hop: a dropped or doubled
// contribution then shows as an exact difference, where a tolerance scaled to bf16's
// rounding (8 bits) would let it pass.
template <class T>
T input(int rank, std::size_t i, reduce_op op) {
  const std::uint64_t h = test::mix(static_cast<std::uint64_t>(rank) * 0x9e3779b97f4a7c15ULL + i);
  if constexpr (is_16bit_float<T>) {
    constexpr int small[] = {1, 2, -1, -2};
    return T(static_cast<float>(op == reduce_op::prod ? small[h % 4] : static_cast<int>(h % 17) - 8));
  } else if constexpr (std::is_integral_v<T>) {
    if (op == reduce_op::prod) {
      constexpr int small[] = {1, 2, 3, -1, -2};
      const int v = small[h % (std::is_signed_v<T> ? 5 : 3)];
      return static_cast<T>(v);
    }
    return static_cast<T>(static_cast<long long>(h % 200) - (std::is_signed_v<T> ? 100 : 0));
  } else {
    const double u = static_cast<double>(h >> 11) / 9007199254740992.0;  // [0, 1)
    const double v = op == reduce_op::prod ? 0.5 + 1.5 * u : 2.0 * u - 1.0;
    return T(static_cast<float>(v));
  }
}

// The reference: a serial reduction over ranks in rank order. Integers in wrapping
// arithmetic of their own width (what sum and prod mean for them here); floating types
// in double, and the result compared with a tolerance for the rounding of each hop.
template <class T>
struct reference {
  double value = 0;
  double magnitude = 0;  // sum of |terms|: the scale of the rounding error
  T exact{};             // for integers, and for min and max
};

template <class T, class Input>
reference<T> reduce_ref(reduce_op op, int p, Input&& input_of) {
  reference<T> ref;
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    U acc = static_cast<U>(input_of(0));
    for (int r = 1; r < p; ++r) {
      const U x = static_cast<U>(input_of(r));
      switch (op) {
        case reduce_op::sum: acc = static_cast<U>(acc + x); break;
        case reduce_op::prod: acc = static_cast<U>(acc * x); break;
        case reduce_op::min: acc = static_cast<T>(x) < static_cast<T>(acc) ? x : acc; break;
        case reduce_op::max: acc = static_cast<T>(acc) < static_cast<T>(x) ? x : acc; break;
        case reduce_op::avg: break;
      }
    }
    ref.exact = static_cast<T>(acc);
  } else {
    double acc = test::to_d(input_of(0));
    double mag = std::fabs(acc);
    for (int r = 1; r < p; ++r) {
      const double x = test::to_d(input_of(r));
      switch (op) {
        case reduce_op::sum:
        case reduce_op::avg: acc += x; break;
        case reduce_op::prod: acc *= x; break;
        case reduce_op::min: acc = std::min(acc, x); break;
        case reduce_op::max: acc = std::max(acc, x); break;
      }
      mag += std::fabs(x);
    }
    if (op == reduce_op::avg) {
      acc /= p;
      mag /= p;
    }
    if (op == reduce_op::prod) mag = std::fabs(acc);
    ref.value = acc;
    ref.magnitude = mag;
  }
  return ref;
}

template <class T>
double epsilon() {
  if constexpr (std::is_same_v<T, collx::half>)
    return 1.0 / 1024;
  else if constexpr (std::is_same_v<T, collx::bfloat16>)
    return 1.0 / 128;
  else
    return static_cast<double>(std::numeric_limits<T>::epsilon());
}

template <class T>
bool matches(T got, const reference<T>& ref, reduce_op op, int p) {
  if constexpr (std::is_integral_v<T>) {
    return got == ref.exact;
  } else {
    const double g = test::to_d(got);
    if (op == reduce_op::min || op == reduce_op::max) return g == ref.value;
    if constexpr (is_16bit_float<T>) {
      // Exact (input<T>), but avg, whose one division rounds once to the type, and a
      // product of 16 factors of 2, past f16's range: the exact value in T, infinity
      // there (magnitudes only grow, so no partial product overflows before the last).
      if (op != reduce_op::avg) return g == test::to_d(T(static_cast<float>(ref.value)));
      return std::fabs(g - ref.value) <= epsilon<T>() * std::fabs(ref.value);
    }
    // Each of the p-1 hops rounds once (twice for f16/bf16: operands are exact, the
    // sum is rounded), and avg rounds once more.
    const double tol = 2.0 * (p + 1) * epsilon<T>() * ref.magnitude + 1e-300;
    return std::fabs(g - ref.value) <= tol;
  }
}

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
std::size_t digest(std::span<const T> v) {
  return std::hash<std::string_view>{}({reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)});
}

// Every rank's inputs for one (collective, p, count), given as the reduction they are for:
// they depend on it only through prod's small magnitudes (input<T>), so one set serves
// sum, min, max and avg alike and matrix() builds it once for them.
template <class T>
using rank_inputs = std::vector<test::pvector<T>>;  // per rank

template <class T>
std::shared_ptr<const rank_inputs<T>> make_inputs(collective c, int p, std::size_t n, reduce_op op) {
  const auto up = static_cast<std::size_t>(p);
  const std::size_t in_n = c == collective::reduce_scatter ? n * up : n;
  auto inputs = std::make_shared<rank_inputs<T>>(up);
  for (int r = 0; r < p; ++r) {
    auto& v = (*inputs)[static_cast<std::size_t>(r)];
    v.resize(in_n);
    for (std::size_t i = 0; i < in_n; ++i) v[i] = input<T>(r, i, op);
  }
  return inputs;
}

// Inputs and expected results of one (collective, p, count, reduction), computed once
// and shared read-only by the runs in place, out of place and with other segments.
template <class T>
struct fixture {
  collective coll = collective::all_reduce;
  int p = 1;
  std::size_t n = 0;
  reduce_op op = reduce_op::sum;
  std::shared_ptr<const rank_inputs<T>> shared_inputs;  // make_inputs(coll, p, n, op)
  const rank_inputs<T>& inputs;                         // per rank
  test::pvector<reference<T>> expected;  // all_reduce: n; reduce_scatter: p*n, rank r's block at r*n

  fixture(collective c, int ranks, std::size_t count, reduce_op o, std::shared_ptr<const rank_inputs<T>> in)
      : coll(c), p(ranks), n(count), op(o), shared_inputs(std::move(in)), inputs(*shared_inputs) {
    const std::size_t in_n = c == collective::reduce_scatter ? n * static_cast<std::size_t>(p) : n;
    if (c == collective::all_gather) return;
    expected.resize(in_n);
    for (std::size_t i = 0; i < in_n; ++i) {
      expected[i] = reduce_ref<T>(op, p, [&](int q) { return inputs[static_cast<std::size_t>(q)][i]; });
    }
  }
};

struct rank_report {
  std::size_t wrong = 0;
  std::string first;  // the first few wrong elements
  std::size_t digest = 0;
  bool input_intact = true;
  bool others_intact = true;  // in-place reduce_scatter: the blocks of other ranks
};

// One run of the collective on p threads; each rank checks its own result against the
// reference (in parallel) and the main thread asserts on the reports.
template <class T>
void run_case(const fixture<T>& fx, collx::algorithm algo, bool in_place, std::size_t segment_bytes) {
  const int p = fx.p;
  const std::size_t n = fx.n;
  const auto up = static_cast<std::size_t>(p);
  std::vector<rank_report> reports(up);
  collx::options opt;
  opt.segment_bytes = segment_bytes;
  opt.algo = algo;
  // A deadlock shows up as collx's own timeout error, naming the step, well before the
  // watchdog of run_ranks ends the process.
  opt.timeout = std::chrono::seconds(60);
  test::expect_ok(test::run_ranks(p, [&](collx::communicator& c) {
    const auto r = static_cast<std::size_t>(c.rank());
    const test::pvector<T>& in = fx.inputs[r];
    const std::size_t in_digest = digest<T>(std::span<const T>(in));
    auto& rep = reports[r];
    test::pvector<T> out;
    std::span<const T> result;
    switch (fx.coll) {
      case collective::all_reduce:
        if (in_place) {
          out = in;
          c.all_reduce(out, fx.op, opt);
        } else {
          out.assign(n, T{});
          c.all_reduce(in, out, fx.op, opt);
        }
        result = out;
        break;
      case collective::reduce_scatter:
        if (in_place) {
          out = in;
          c.reduce_scatter(out, fx.op, opt);
          result = std::span<const T>(out).subspan(r * n, n);
          for (std::size_t j = 0; j < up; ++j) {
            if (j != r && n != 0 && std::memcmp(out.data() + j * n, in.data() + j * n, n * sizeof(T)) != 0) {
              rep.others_intact = false;
            }
          }
        } else {
          out.assign(n, T{});
          c.reduce_scatter(in, out, fx.op, opt);
          result = out;
        }
        break;
      case collective::all_gather:
        out.assign(n * up, T{});
        if (in_place) {
          std::copy(in.begin(), in.end(), out.begin() + static_cast<std::ptrdiff_t>(r * n));
          c.all_gather(out, opt);
        } else {
          c.all_gather(in, out, opt);
        }
        result = out;
        break;
      default: break;
    }
    rep.input_intact = digest<T>(std::span<const T>(in)) == in_digest;
    rep.digest = digest(result);
    for (std::size_t i = 0; i < result.size(); ++i) {
      bool ok = false;
      if (fx.coll == collective::all_gather) {
        ok = same_bits(result[i], fx.inputs[i / n][i % n]);
      } else {
        const std::size_t at = (fx.coll == collective::reduce_scatter ? r * n : 0) + i;
        ok = matches(result[i], fx.expected[at], fx.op, p);
      }
      if (!ok && ++rep.wrong <= 3) {
        rep.first += " [" + std::to_string(i) + "] = " + std::to_string(test::to_d(result[i]));
      }
    }
  }));
  for (std::size_t r = 0; r < up; ++r) {
    CHECK_MESSAGE(reports[r].wrong == 0,
                  "rank " << r << ": " << reports[r].wrong << " wrong:" << reports[r].first);
    CHECK_MESSAGE(reports[r].input_intact, "rank " << r << " input was modified");
    CHECK_MESSAGE(reports[r].others_intact, "rank " << r << " overwrote other ranks' blocks");
    // all_reduce: every rank holds the same bits, or replicas of a model drift apart.
    if (fx.coll == collective::all_reduce) CHECK(reports[r].digest == reports[0].digest);
  }
}

// Every reduction of collx::all_reduce_ops, prod last.
constexpr auto ops_prod_last = [] {
  std::array<reduce_op, std::size(collx::all_reduce_ops)> ops{};
  std::size_t k = 0;
  for (auto op : collx::all_reduce_ops)
    if (op != reduce_op::prod) ops[k++] = op;
  ops[k] = reduce_op::prod;
  return ops;
}();

// Every reduction (sum alone for all_gather) of one (collective, algorithm, p, n), in
// place and out of place, with the default segment and (small counts) tiny ones.
template <class T>
void every_reduction(collective c, collx::algorithm algo, int p, std::size_t n) {
  const dtype t = collx::dtype_v<T>;
  // prod last: the reductions before it share one set of inputs (make_inputs).
  std::shared_ptr<const rank_inputs<T>> inputs;
  for (auto op : ops_prod_last) {
    if (!collx::supports(t, op)) continue;
    if (c == collective::all_gather && op != reduce_op::sum) continue;  // no reduction
    if (!inputs || op == reduce_op::prod) {
      inputs.reset();  // before the new set: they are the largest buffers here
      inputs = make_inputs<T>(c, p, n, op);
    }
    const fixture<T> fx(c, p, n, op, inputs);
    for (bool in_place : {false, true}) {
      // Default segments, and for small counts tiny segments that force deep pipelines.
      for (std::size_t seg : {std::size_t{0}, sizeof(T) * 2}) {
        if (seg != 0 && n > 1000) continue;
        INFO(collx::to_string(algo), " ", collx::to_string(c), " ", collx::to_string(t), " ",
             collx::to_string(op), " p=", p, " n=", n, " in_place=", in_place, " segment=", seg);
        run_case(fx, algo, in_place, seg);
      }
    }
  }
}

template <class T>
void matrix(collective c) {
  for (auto algo : collx::all_algorithms) {
    if (!collx::implements(algo, c)) continue;
    for (const sweep& sw : sweeps<T>(algo)) {
      for (int p : sw.ranks) {
        if (p > test::max_ranks()) continue;
        for (std::size_t n : sw.counts) every_reduction<T>(c, algo, p, std::min(n, test::max_count()));
      }
    }
  }
}

}  // namespace

#define COLLX_MATRIX(T, NAME)                                                                                \
  TEST_CASE("all_reduce matches the serial reference: " NAME) { matrix<T>(collective::all_reduce); }         \
  TEST_CASE("reduce_scatter matches the serial reference: " NAME) { matrix<T>(collective::reduce_scatter); } \
  TEST_CASE("all_gather matches the serial reference: " NAME) { matrix<T>(collective::all_gather); }

COLLX_MATRIX(std::int8_t, "i8")
COLLX_MATRIX(std::uint8_t, "u8")
COLLX_MATRIX(std::int32_t, "i32")
COLLX_MATRIX(std::int64_t, "i64")
COLLX_MATRIX(collx::half, "f16")
COLLX_MATRIX(collx::bfloat16, "bf16")
COLLX_MATRIX(float, "f32")
COLLX_MATRIX(double, "f64")

TEST_CASE("async calls run in issue order and overlap the caller's work") {
  test::expect_ok(test::run_ranks(3, [](collx::communicator& c) {
    std::vector<float> a(1000, 1.0f), b(2000, 2.0f);
    std::vector<std::int32_t> g(3 * 5);
    std::vector<std::int32_t> mine(5, c.rank());
    auto ra = c.all_reduce_async(a, reduce_op::sum);
    auto rb = c.all_reduce_async(b, reduce_op::max);
    auto rg = c.all_gather_async(mine, g);
    rg.wait();
    rb.wait();
    ra.wait();
    for (float x : a) REQUIRE(x == 3.0f);
    for (float x : b) REQUIRE(x == 2.0f);
    for (std::size_t i = 0; i < g.size(); ++i) REQUIRE(g[i] == static_cast<std::int32_t>(i / 5));
  }));
}

TEST_CASE("the untyped API takes pointers, a count and a dtype, and detects in-place") {
  test::expect_ok(test::run_ranks(4, [](collx::communicator& c) {
    const std::size_t n = 3;
    std::vector<double> buf(4 * n);
    for (std::size_t i = 0; i < n; ++i)
      buf[static_cast<std::size_t>(c.rank()) * n + i] = c.rank() * 10.0 + static_cast<double>(i);
    // In-place all-gather: the input is this rank's block of the output.
    c.all_gather(buf.data() + static_cast<std::size_t>(c.rank()) * n, buf.data(), n, dtype::f64);
    for (std::size_t j = 0; j < 4; ++j) {
      for (std::size_t i = 0; i < n; ++i)
        REQUIRE(buf[j * n + i] == static_cast<double>(j) * 10.0 + static_cast<double>(i));
    }
    std::vector<double> out(n);
    c.reduce_scatter(buf.data(), out.data(), n, dtype::f64, reduce_op::avg);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(out[i] == c.rank() * 10.0 + static_cast<double>(i));
  }));
}
