// Google Benchmark micro-benchmarks: the pieces collx-bench's figures are made of.
//   reduce/<type>/<op>: the host reduction loop, bytes = two operands read + one written
//   memcpy: the copy it is compared with, bytes = one read + one written
//   build/ring/<p>: building one rank's ring all-reduce schedule for p ranks
//   {local,shm,tcp}_pingpong/<bytes>: a message there and back between two ranks (threads
//   of this process, each with its own endpoint) over the in-process, shared-memory and
//   TCP transports; bytes/s counts both directions
//
//   build/benchmarks/collx-micro [--benchmark_filter=reduce]

#include <benchmark/benchmark.h>
#include <collx/collx.hpp>
#include <collx/launch/init.hpp>

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

// A message there and back between two ranks, each a thread with its own endpoint of
// transport T (made by make(rank)); rank 1 echoes every message until it gets one that
// starts with 0xff. The process transports meet through a tcp_store on a free port,
// exactly as separate processes would.
template <class T, class Make>
void pingpong(benchmark::State& state, Make make) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  envelope env;
  env.count = bytes;
  const auto wait = [](T& t, typename T::op& o) {
    while (!t.test(o)) t.poll(std::chrono::milliseconds(10));
  };
  std::thread echo([&] {
    T t = make(1);
    std::vector<std::byte> buf(std::max<std::size_t>(bytes, 1));
    typename T::op r;
    typename T::op s;
    for (;;) {
      t.recv(0, env, std::span(buf.data(), bytes), r);
      wait(t, r);
      if (bytes == 0 || buf[0] == std::byte{0xff}) break;
      t.send(0, env, std::span(buf.data(), bytes), s);
      wait(t, s);
    }
  });
  T t = make(0);
  std::vector<std::byte> out(bytes, std::byte{1}), in(bytes);
  typename T::op s;
  typename T::op r;
  for (auto _ : state) {
    t.send(1, env, out, s);
    t.recv(1, env, in, r);
    wait(t, r);
    wait(t, s);
  }
  if (bytes != 0) out[0] = std::byte{0xff};
  t.send(1, env, out, s);
  wait(t, s);
  echo.join();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(2 * bytes));
}

void bm_local_pingpong(benchmark::State& state) {
  local_world world(2);
  pingpong<local_transport>(state, [&](int r) { return world.transport(r); });
}

template <class T, class Make>
void process_pingpong(benchmark::State& state, Make make) {
  using namespace std::chrono_literals;
  tcp_store server("127.0.0.1", 0, true, 30s);
  const auto port = server.port();
  pingpong<T>(state, [&](int r) {
    if (r == 0) return make(static_cast<store&>(server), 0);
    tcp_store client("127.0.0.1", port, false, 30s);
    return make(static_cast<store&>(client), 1);
  });
}

void bm_shm_pingpong(benchmark::State& state) {
  process_pingpong<shm_transport>(state, [](store& st, int r) { return shm_transport(st, r, 2); });
}

void bm_tcp_pingpong(benchmark::State& state) {
  process_pingpong<tcp_transport>(state,
                                  [](store& st, int r) { return tcp_transport(st, r, 2, "127.0.0.1"); });
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
  for (auto [name, fn] :
       {std::pair{"local_pingpong", &bm_local_pingpong}, std::pair{"shm_pingpong", &bm_shm_pingpong},
        std::pair{"tcp_pingpong", &bm_tcp_pingpong}}) {
    benchmark::RegisterBenchmark(name, fn)->Arg(8)->Arg(4096)->Arg(1 << 20)->Arg(16 << 20)->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
