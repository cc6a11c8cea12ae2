// Google Benchmark micro-benchmarks: the pieces collx-bench's figures are made of.
//   reduce/<type>/<op>: the host reduction loop, bytes = two operands read + one written
//   memcpy: the copy it is compared with, bytes = one read + one written
//   build/ring/<p>: building one rank's ring all-reduce schedule for p ranks
//   local_pingpong/<bytes>: a message there and back over the in-process transport
//
//   build/benchmarks/collx-micro [--benchmark_filter=reduce]

#include <benchmark/benchmark.h>
#include <collx/collx.hpp>

#include <cstring>
#include <thread>
#include <vector>

namespace {

using namespace collx;

template <class T>
void bm_reduce(benchmark::State& state, reduce_op op) {
  const auto n = static_cast<std::size_t>(state.range(0)) / sizeof(T);
  std::vector<T> a(n, T(1)), b(n, T(1));
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    std::fill(a.begin(), a.end(), T(1.0f));
    std::fill(b.begin(), b.end(), T(1.0f));
  }
  for (auto _ : state) {
    reduce(dtype_v<T>, op, a.data(), a.data(), b.data(), n);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(3 * n * sizeof(T)));
}

void bm_memcpy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<char> a(n, 1), b(n, 2);
  for (auto _ : state) {
    std::memcpy(a.data(), b.data(), n);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(2 * n));
}

void bm_build_ring(benchmark::State& state) {
  const int p = static_cast<int>(state.range(0));
  for (auto _ : state) {
    auto s =
        algorithms::ring(collective::all_reduce, {0, p, std::size_t{64} << 20, std::size_t{1} << 17, false});
    benchmark::DoNotOptimize(s.steps.data());
  }
  state.counters["ranks"] = p;
}

// Rank 1 echoes every message until it gets an empty one.
void bm_local_pingpong(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  local_world world(2);
  envelope env;
  env.count = bytes;
  std::thread echo([&] {
    local_transport t = world.transport(1);
    std::vector<std::byte> buf(bytes);
    local_transport::op r;
    local_transport::op s;
    for (;;) {
      env.count = bytes;
      t.recv(0, env, buf, r);
      while (!t.test(r)) t.poll(std::chrono::milliseconds(10));
      if (buf.empty() || buf[0] == std::byte{0xff}) break;
      t.send(0, env, buf, s);
      while (!t.test(s)) t.poll(std::chrono::milliseconds(10));
    }
  });
  local_transport t = world.transport(0);
  std::vector<std::byte> out(bytes, std::byte{1}), in(bytes);
  local_transport::op s;
  local_transport::op r;
  for (auto _ : state) {
    t.send(1, env, out, s);
    t.recv(1, env, in, r);
    while (!t.test(r)) t.poll(std::chrono::milliseconds(10));
    while (!t.test(s)) t.poll(std::chrono::milliseconds(10));
  }
  out[0] = std::byte{0xff};
  t.send(1, env, out, s);
  while (!t.test(s)) t.poll(std::chrono::milliseconds(10));
  echo.join();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(2 * bytes));
}

constexpr std::int64_t small = 64 << 10;  // in cache
constexpr std::int64_t large = 64 << 20;  // in memory

}  // namespace

int main(int argc, char** argv) {
  auto reduce_case = [](const char* name, auto fn) {
    benchmark::RegisterBenchmark(name, fn)->Arg(small)->Arg(large);
  };
  reduce_case("reduce/f32/sum", [](benchmark::State& st) { bm_reduce<float>(st, reduce_op::sum); });
  reduce_case("reduce/f64/sum", [](benchmark::State& st) { bm_reduce<double>(st, reduce_op::sum); });
  reduce_case("reduce/f16/sum", [](benchmark::State& st) { bm_reduce<half>(st, reduce_op::sum); });
  reduce_case("reduce/bf16/sum", [](benchmark::State& st) { bm_reduce<bfloat16>(st, reduce_op::sum); });
  reduce_case("reduce/i32/sum", [](benchmark::State& st) { bm_reduce<std::int32_t>(st, reduce_op::sum); });
  reduce_case("reduce/i8/max", [](benchmark::State& st) { bm_reduce<std::int8_t>(st, reduce_op::max); });
  reduce_case("reduce/f32/max", [](benchmark::State& st) { bm_reduce<float>(st, reduce_op::max); });
  benchmark::RegisterBenchmark("memcpy", bm_memcpy)->Arg(small)->Arg(large);
  benchmark::RegisterBenchmark("build/ring", bm_build_ring)
      ->Arg(8)
      ->Arg(64)
      ->Arg(512)
      ->Arg(4096)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("local_pingpong", bm_local_pingpong)
      ->Arg(8)
      ->Arg(4096)
      ->Arg(1 << 20)
      ->Arg(16 << 20)
      ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
