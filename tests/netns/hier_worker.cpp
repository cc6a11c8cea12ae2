// One rank of the hierarchical tests, started on emulated hosts by cluster.sh (or by
// collx-run with COLLX_NODE_ID set per rank).
//   hier_worker check          every hierarchical collective against a serial reference
//   hier_worker bench BYTES    f32 sum all-reduce of BYTES, flat ring over tcp against
//                              hierarchical, measured and predicted (rank 0 prints)
// Prints "OK <n> cases" when every check held; exits non-zero otherwise.

#include <collx/hierarchical.hpp>

#include "../reference.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace collx;

using test::input;
using test::ref_reduce;

int cases = 0;
int failures = 0;

void expect(bool ok, const char* what, std::size_t n, std::size_t i) {
  ++cases;
  if (!ok) {
    ++failures;
    if (failures < 10) std::printf("WRONG %s n=%zu at %zu\n", what, n, i);
  }
}

template <class T>
void check_all(hierarchical& h) {
  const int p = h.size();
  const int me = h.rank();
  for (std::size_t n :
       {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}, std::size_t{300007}}) {
    for (reduce_op op : {reduce_op::sum, reduce_op::max, reduce_op::avg}) {
      if (op == reduce_op::avg && !std::is_floating_point_v<T>) continue;
      for (hier_way way : {hier_way::hierarchical, hier_way::leader, hier_way::flat, hier_way::automatic}) {
        std::vector<T> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(input(me, i));
        h.all_reduce(std::span<T>(v), op, way);
        bool ok = true;
        std::size_t bad = 0;
        for (std::size_t i = 0; i < n && ok; ++i) {
          ok = std::fabs(static_cast<double>(v[i]) - ref_reduce(op, p, i)) <=
               (op == reduce_op::avg ? 1e-5 : 0.0);
          bad = i;
        }
        expect(ok, "all_reduce", n, bad);
      }
    }
  }
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}}) {
    const auto up = static_cast<std::size_t>(p);
    std::vector<T> in(n), out(n * up);
    for (std::size_t i = 0; i < n; ++i) in[i] = static_cast<T>(input(me, i));
    h.all_gather(std::span<const T>(in), std::span<T>(out));
    bool ok = true;
    for (std::size_t q = 0; q < up && ok; ++q) {
      for (std::size_t i = 0; i < n && ok; ++i)
        ok = out[q * n + i] == static_cast<T>(input(static_cast<int>(q), i));
    }
    expect(ok, "all_gather", n, 0);
    // In place: this rank's block of out is the input.
    std::vector<T> inplace(n * up, T(99));
    std::copy(in.begin(), in.end(),
              inplace.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(me) * n));
    h.all_gather(std::span<const T>(inplace).subspan(static_cast<std::size_t>(me) * n, n),
                 std::span<T>(inplace));
    expect(inplace == out, "all_gather in place", n, 0);
    for (reduce_op op : {reduce_op::sum, reduce_op::max}) {
      std::vector<T> whole(n * up), mine(n);
      for (std::size_t i = 0; i < n * up; ++i) whole[i] = static_cast<T>(input(me, i));
      h.reduce_scatter(std::span<const T>(whole), std::span<T>(mine), op);
      bool good = true;
      for (std::size_t i = 0; i < n && good; ++i) {
        good = static_cast<double>(mine[i]) == ref_reduce(op, p, static_cast<std::size_t>(me) * n + i);
      }
      expect(good, "reduce_scatter", n, 0);
      // In place: the result lands on this rank's block of the input; the others stay.
      std::vector<T> same = whole;
      h.reduce_scatter(std::span<const T>(same),
                       std::span<T>(same).subspan(static_cast<std::size_t>(me) * n, n), op);
      bool kept = true;
      for (std::size_t i = 0; i < n * up && kept; ++i) {
        const bool mine_block = i / std::max<std::size_t>(n, 1) == static_cast<std::size_t>(me);
        kept = same[i] == (mine_block ? mine[i % n] : whole[i]);
      }
      expect(kept, "reduce_scatter in place", n, 0);
    }
  }
}

int bench(hierarchical& h, std::size_t bytes) {
  std::vector<float> v(std::max<std::size_t>(bytes / sizeof(float), 1), 1.0f);
  const hier_way ways[3] = {hier_way::flat, hier_way::hierarchical, hier_way::leader};
  const char* names[3] = {"flat ring over tcp", "hierarchical", "leader"};
  double t[3] = {0, 0, 0};
  const int iters = bytes >= (1u << 20) ? 3 : 200;
  for (int w = 0; w < 3; ++w) {
    h.all_reduce(std::span<float>(v), reduce_op::sum, ways[w]);  // warm-up
    std::vector<float> one(1, 0.0f);
    h.world().all_reduce(one, reduce_op::sum);  // line up
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) h.all_reduce(std::span<float>(v), reduce_op::sum, ways[w]);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    h.world().all_reduce(std::span<double>(&s, 1), reduce_op::max);
    t[w] = s;
  }
  if (h.rank() == 0) {
    const double b = static_cast<double>(v.size() * sizeof(float));
    std::printf("all-reduce f32 sum, %zu bytes, %d nodes x %d ranks, %d calls each\n",
                v.size() * sizeof(float), h.layout().nodes, h.layout().per_node, iters);
    for (int w = 0; w < 3; ++w) {
      std::printf("  %-19s: %10.3f ms measured, %10.3f ms predicted\n", names[w], t[w] * 1e3,
                  h.predict(ways[w], b) * 1e3);
    }
    const double pf = h.predict(hier_way::flat, b);
    const double ph = h.predict(hier_way::hierarchical, b);
    std::printf(
        "  hierarchical over flat: %.2fx measured, %.2fx predicted (measured/predicted %.2f); auto picks "
        "%s\n",
        t[0] / t[1], pf / ph, (t[0] / t[1]) / (pf / ph), names[static_cast<int>(h.choose(b)) - 1]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "check";
  try {
    hierarchical h = hierarchical::from_env();
    if (what == "bench") return bench(h, argc > 2 ? std::strtoull(argv[2], nullptr, 10) : (64u << 20));
    check_all<float>(h);
    check_all<double>(h);
    check_all<std::int32_t>(h);
    std::printf("%s %d cases (rank %d: node %d, local %d)\n", failures == 0 ? "OK" : "FAILED", cases,
                h.rank(), h.layout().node, h.layout().local);
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::printf("ERROR %s\n", e.what());
    return 1;
  }
}
