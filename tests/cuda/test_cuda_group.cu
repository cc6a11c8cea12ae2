// GPU collectives in one process (collx/cuda/group.cuh): p = 2, 4 and 8 ranks as threads on
// one GPU, every collective, algorithm, element type and reduction, odd and empty
// counts, in place and not, checked against the serial reference; errors (a rank that
// never calls, ranks that call differently, an abort, bad pointers); CUDA graph capture.
//
// Each rank allocates its device and pinned host buffers once and uses only its own
// non-blocking stream: cudaFree, cudaMemcpy and cudaDeviceSynchronize would wait for the
// other ranks' kernels, which wait for this rank's, and so would copies to or from
// pageable memory (device_case.hpp).

#include <doctest/doctest.h>

#include "../skip.hpp"

#include <collx/cuda/group.cuh>
#include <collx/cuda/staged.hpp>
#include <collx/transport/local.hpp>

#include <atomic>
#include <barrier>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "device_case.hpp"

// Not `using namespace collx`: CUDA has its own ::cuda namespace and ::half type.
using collx::algorithm;
using collx::collective;
using collx::dtype;
using collx::dtype_v;
using collx::errc;
using collx::error;
using collx::options;
using collx::reduce_op;
using collx::to_string;
namespace gpu = collx::cuda;

namespace {

using test::cuda_ok;
template <class Comm>
using rank_env = test::device_rank<Comm>;

// Runs f(rank) on one thread per rank; rethrows the first failure.
void on_ranks(int p, const std::function<void(int)>& f) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(p));
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r) {
    threads.emplace_back([&, r] {
      try {
        f(r);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

template <class T, class Comm>
long long one_call(rank_env<Comm>& env, collective coll, algorithm a, reduce_op op, std::size_t n,
                   bool in_place) {
  return test::device_call<T>(env, coll, a, op, n, in_place);
}

void full_matrix(int p, const std::vector<int>& devices) {
  gpu::group g(devices);
  std::atomic<long long> wrong{0};
  std::atomic<long long> cases{0};
  std::barrier ready(p);
  on_ranks(p, [&](int r) {
    rank_env<gpu::communicator> env(std::size_t{16} << 20, devices[static_cast<std::size_t>(r)], g.rank(r));
    ready.arrive_and_wait();  // no rank allocates while another's kernel waits for it
    long long mine = 0;
    wrong += test::device_all_types(env, (std::size_t{1} << 18) + 3, mine);
    cases += mine;
  });
  MESSAGE("p=", p, ": ", cases.load(), " rank-calls checked");
  CHECK(wrong.load() == 0);
}

}  // namespace

TEST_CASE("cuda group: every collective, algorithm, type and reduction, p = 2, 4, 8 on one GPU") {
  for (int p : {2, 4, 8}) {
    INFO("p = ", p);
    full_matrix(p, std::vector<int>(static_cast<std::size_t>(p), 0));
  }
}

// All-gather and reduce-scatter of every algorithm and in place and not, over `lanes`
// lanes where the size calls for them (peer_memory::lanes_for: one per slot of a block).
template <class T>
long long block_collectives_over_lanes(test::device_rank<gpu::communicator>& env, long long& cases) {
  long long bad = 0;
  for (auto coll : {collective::all_gather, collective::reduce_scatter}) {
    for (auto a : collx::all_algorithms) {
      if (!collx::implements(a, coll)) continue;
      for (std::size_t n :
           {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}, std::size_t{40003}}) {
        for (bool in_place : {false, true}) {
          bad += one_call<T>(env, coll, a, reduce_op::sum, n, in_place);
          ++cases;
        }
      }
    }
  }
  return bad;
}

TEST_CASE("cuda group: all-gather and reduce-scatter split over lanes, p = 3 and 5, odd counts, every type") {
  // 256-byte slots: a 1001-element block of u8 takes 3 lanes, of the wider types 4 (the
  // most); 7 elements one. Each lane runs its slice of every block, in its own mailboxes.
  gpu::group_options o;
  o.slot_bytes = 256;
  for (int p : {3, 5}) {
    INFO("p = ", p);
    gpu::group g(std::vector<int>(static_cast<std::size_t>(p), 0), o);
    CHECK(collx::peer_memory::lanes_for(collective::all_gather, 1001, 1, o.lanes, o.slot_bytes) == 3);
    std::atomic<long long> wrong{0};
    std::atomic<long long> cases{0};
    std::barrier ready(p);
    on_ranks(p, [&](int r) {
      rank_env<gpu::communicator> env(std::size_t{4} << 20, 0, g.rank(r));
      ready.arrive_and_wait();
      long long mine = 0;
      long long bad = block_collectives_over_lanes<std::uint8_t>(env, mine);
      bad += block_collectives_over_lanes<std::int64_t>(env, mine);
      bad += block_collectives_over_lanes<collx::half>(env, mine);
      bad += block_collectives_over_lanes<collx::bfloat16>(env, mine);
      bad += block_collectives_over_lanes<float>(env, mine);
      wrong += bad;
      cases += mine;
    });
    MESSAGE("p=", p, ": ", cases.load(), " rank-calls checked");
    CHECK(wrong.load() == 0);
  }
}

TEST_CASE("cuda group: one rank per GPU, where there are several") {
  int n = 0;
  cuda_ok(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  if (n < 2) COLLX_SKIP_CASE("one GPU only");
  std::vector<int> devices;
  for (int d = 0; d < std::min(n, 8); ++d) devices.push_back(d);
  full_matrix(static_cast<int>(devices.size()), devices);
}

TEST_CASE("cuda group: with the default hardware queues, 4 ranks on one GPU run and 5 are refused") {
  // Run by its own ctest entry with COLLX_TEST_DEFAULT_QUEUES=1, which cuda_main.cu reads
  // to leave CUDA_DEVICE_MAX_CONNECTIONS unset (8 queues): each rank drives two streams,
  // its caller's and its upload stream, and both need a queue.
  if (gpu::group::hardware_queues() != 8) COLLX_SKIP_CASE("CUDA_DEVICE_MAX_CONNECTIONS is set here");
  CHECK(8 / gpu::group::streams_per_rank == 4);
  try {
    gpu::group too_many(std::vector<int>(5, 0));
    FAIL("5 ranks of 2 streams each were taken with 8 hardware queues");
  } catch (const error& e) {
    CHECK(e.kind() == errc::invalid_argument);
    CHECK(std::string(e.what()).find("CUDA_DEVICE_MAX_CONNECTIONS") != std::string::npos);
  }
  const int p = 4;
  gpu::group g(std::vector<int>(p, 0));
  std::atomic<long long> wrong{0};
  std::barrier ready(p);
  on_ranks(p, [&](int r) {
    rank_env<gpu::communicator> env(std::size_t{4} << 20, 0, g.rank(r));
    ready.arrive_and_wait();
    // First calls of several shapes: each uploads its program on the upload stream while
    // the other ranks' kernels may already spin.
    for (std::size_t n : {std::size_t{1}, std::size_t{1001}, std::size_t{100003}}) {
      wrong += one_call<float>(env, collective::all_reduce, algorithm::ring, reduce_op::sum, n, false);
      wrong += one_call<float>(env, collective::all_gather, algorithm::ring, reduce_op::sum, n, true);
    }
  });
  CHECK(wrong.load() == 0);
}

TEST_CASE("cuda group: a rank that never calls is a timeout on the others, naming it") {
  gpu::group_options o;
  o.timeout = std::chrono::milliseconds(500);
  gpu::group g({0, 0, 0}, o);
  std::vector<std::string> what(3);
  std::vector<int> blamed(3, -2);
  const auto t0 = std::chrono::steady_clock::now();
  std::barrier ready(2);
  on_ranks(2, [&](int r) {
    rank_env<gpu::communicator> env(1 << 20, 0, g.rank(r));
    ready.arrive_and_wait();
    try {
      one_call<float>(env, collective::all_reduce, algorithm::ring, reduce_op::sum, 1000, false);
    } catch (const error& e) {
      what[static_cast<std::size_t>(r)] = e.what();
      blamed[static_cast<std::size_t>(r)] = e.peer();
      CHECK((e.kind() == errc::timeout || e.kind() == errc::peer_failure));
    }
    // And the next call is refused.
    CHECK_THROWS_AS(one_call<float>(env, collective::all_reduce, algorithm::ring, reduce_op::sum, 10, false),
                    error);
  });
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
  for (int r = 0; r < 2; ++r) {
    INFO(what[static_cast<std::size_t>(r)]);
    CHECK(!what[static_cast<std::size_t>(r)].empty());
  }
  // The first to time out follows the waits to rank 2; the other names whoever failed first.
  CHECK((blamed[0] == 2 || blamed[1] == 2));
}

TEST_CASE("cuda group: ranks that call differently get a mismatch on every rank, count 0 included") {
  // Three ranks: the one that meets no foreign piece itself learns of the mismatch
  // through the failure flags and says mismatch too, as on the host. Variant 0: another
  // count on rank 2; 1: count 0 on rank 0 (its empty pieces carry its signature); 2: count
  // 0 on rank 1, all-gather.
  for (int variant = 0; variant < 3; ++variant) {
    gpu::group_options o;
    o.timeout = std::chrono::seconds(20);
    gpu::group g({0, 0, 0}, o);
    std::vector<errc> kinds(3, errc::invalid_argument);
    std::vector<std::string> what(3);
    std::barrier ready(3);
    const auto t0 = std::chrono::steady_clock::now();
    on_ranks(3, [&](int r) {
      rank_env<gpu::communicator> env(1 << 20, 0, g.rank(r));
      ready.arrive_and_wait();
      const std::size_t n = variant == 0 ? (r == 2 ? 1001 : 1000) : (r == variant - 1 ? 0 : 1000);
      const collective coll = variant == 2 ? collective::all_gather : collective::all_reduce;
      try {
        one_call<float>(env, coll, algorithm::ring, reduce_op::sum, n, false);
      } catch (const error& e) {
        kinds[static_cast<std::size_t>(r)] = e.kind();
        what[static_cast<std::size_t>(r)] = e.what();
      }
    });
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));  // not the 20 s timeout
    for (int r = 0; r < 3; ++r) {
      INFO("variant ", variant, " rank ", r, ": ", what[static_cast<std::size_t>(r)]);
      CHECK(kinds[static_cast<std::size_t>(r)] == errc::mismatch);
    }
  }
}

TEST_CASE("cuda group: bad input is refused before anything is enqueued") {
  gpu::group g({0});
  auto c = g.rank(0);
  cudaStream_t s;
  cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  std::vector<float> host(16);
  float* d = nullptr;
  cuda_ok(cudaMalloc(&d, 64 * sizeof(float)), "cudaMalloc");
  CHECK_THROWS_AS(c.all_reduce(host.data(), d, 16, reduce_op::sum, s), error);  // pageable host memory
  CHECK_THROWS_AS(c.all_reduce(d, d + 1, 16, reduce_op::sum, s), error);        // overlap
  CHECK_THROWS_AS(c.all_reduce(static_cast<const void*>(d), d, 16, dtype::i32, reduce_op::avg, s), error);
  CHECK_THROWS_AS(c.all_reduce(static_cast<const float*>(nullptr), d, 16, reduce_op::sum, s), error);
  options o;
  o.algo = algorithm::tree;
  CHECK_THROWS_AS(c.all_gather(d, d + 16, 16, s, o), error);  // tree has no all-gather
  CHECK_THROWS_AS(g.rank(1), error);
  CHECK_THROWS_AS(gpu::group({0}, gpu::group_options{0}), error);
  // None of that failed the communicator.
  c.all_reduce(d, d, 16, reduce_op::sum, s);
  c.synchronize(s);
  // A host communicator refuses device memory instead of faulting on it, now that a GPU
  // object exists in the program.
  collx::local_world w(1);
  collx::communicator on_host(w.transport(0));
  try {
    on_host.all_reduce(static_cast<const void*>(d), d + 32, 16, dtype::f32, reduce_op::sum);
    FAIL("a host communicator took device memory");
  } catch (const error& e) {
    CHECK(e.kind() == errc::invalid_argument);
    CHECK(std::string(e.what()).find("staged") != std::string::npos);
  }
  cudaFree(d);
  cudaStreamDestroy(s);
}

TEST_CASE("cuda group: calls captured into a CUDA graph replay correctly") {
  const int p = 4;
  const std::size_t n = 100003;
  gpu::group g(std::vector<int>(p, 0));
  std::atomic<long long> wrong{0};
  std::barrier ready(p);
  on_ranks(p, [&](int r) {
    rank_env<gpu::communicator> env(n * sizeof(float), 0, g.rank(r));
    ready.arrive_and_wait();
    // Pinned, as device_call's copies (device_case.hpp says why).
    auto* h = reinterpret_cast<float*>(env.h_in);
    auto* back = reinterpret_cast<float*>(env.h_out);
    for (std::size_t i = 0; i < n; ++i) h[i] = static_cast<float>(test::input(r, i));
    auto* d = reinterpret_cast<float*>(env.d_out);
    // Once outside the capture: the call's program goes to the GPU.
    cuda_ok(cudaMemcpyAsync(d, h, n * sizeof(float), cudaMemcpyHostToDevice, env.stream), "copy");
    env.comm.all_reduce(d, d, n, reduce_op::sum, env.stream);
    env.comm.synchronize(env.stream);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cuda_ok(cudaStreamBeginCapture(env.stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    env.comm.all_reduce(d, d, n, reduce_op::sum, env.stream);
    cuda_ok(cudaStreamEndCapture(env.stream, &graph), "end capture");
    cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    ready.arrive_and_wait();  // instantiating may wait for the GPU: not while replays spin
    for (int replay = 0; replay < 3; ++replay) {
      cuda_ok(cudaMemcpyAsync(d, h, n * sizeof(float), cudaMemcpyHostToDevice, env.stream), "copy");
      cuda_ok(cudaGraphLaunch(exec, env.stream), "graph launch");
      cuda_ok(cudaMemcpyAsync(back, d, n * sizeof(float), cudaMemcpyDeviceToHost, env.stream), "copy back");
      env.comm.synchronize(env.stream);
      for (std::size_t i = 0; i < n; ++i) {
        if (static_cast<double>(back[i]) != test::ref_reduce(reduce_op::sum, p, i)) ++wrong;
      }
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  });
  CHECK(wrong.load() == 0);
}

TEST_CASE("cuda staged: GPU buffers over a host transport, every collective, p = 3") {
  // The path collx-bench holds beside NCCL's socket transport; here over the in-process
  // transport, whose host side the other tests cover.
  const int p = 3;
  collx::local_world world(p);
  std::atomic<long long> wrong{0};
  std::atomic<long long> cases{0};
  on_ranks(p, [&](int r) {
    collx::communicator host(world.transport(r));
    rank_env<gpu::staged> env(std::size_t{4} << 20, 0, host);
    long long mine = 0;
    wrong += test::device_matrix<float>(env, {0, 1, 7, 1001, 100003}, mine);
    wrong += test::device_matrix<collx::half>(env, {1, 1001}, mine);
    wrong += test::device_matrix<std::int64_t>(env, {1, 1001}, mine);
    cases += mine;
  });
  MESSAGE(cases.load(), " rank-calls checked");
  CHECK(wrong.load() == 0);
}
