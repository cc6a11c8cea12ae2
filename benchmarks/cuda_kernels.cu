// collx-cuda-kernels: how close the reduction kernels (exec/cuda_reduce.cuh) come to the
// memory bandwidth a GPU has. A reduction moves 3n bytes for n-byte operands and a copy
// 2n, so GB/s here counts bytes moved, and the reduce/memcpy column says how much of a
// cudaMemcpy's bandwidth the kernel reaches (1.0: as good as the copy engine's path).
//
//   collx-cuda-kernels [-b 1M] [-e 1G] [-n 20] [-w 3] [--all]
//
// Sizes go from -b to -e in x4 steps (K, M, G suffixes: powers of 1024); each figure is
// the median of -n timed runs after -w warm-ups, timed with CUDA events. Without a CUDA
// device it says why and exits 77.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/reduce.hpp"
#include "collx/cuda/probe.hpp"
#include "collx/exec/cuda_reduce.cuh"

namespace {

struct options {
  std::size_t begin = std::size_t{1} << 20;
  std::size_t end = std::size_t{1} << 30;
  int iters = 20;
  int warmup = 3;
  bool all = false;
};

// "4M" -> 4 MiB; 0 when it does not parse.
std::size_t parse_size(const char* s) {
  char* rest = nullptr;
  const unsigned long long v = std::strtoull(s, &rest, 10);
  if (rest == s) return 0;
  std::size_t mult = 1;
  switch (*rest) {
    case '\0': break;
    case 'k':
    case 'K': mult = std::size_t{1} << 10; break;
    case 'm':
    case 'M': mult = std::size_t{1} << 20; break;
    case 'g':
    case 'G': mult = std::size_t{1} << 30; break;
    default: return 0;
  }
  if (*rest != '\0' && rest[1] != '\0' && std::strcmp(rest + 1, "iB") != 0 &&
      std::strcmp(rest + 1, "B") != 0) {
    return 0;
  }
  return static_cast<std::size_t>(v) * mult;
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "collx-cuda-kernels: %s\nusage: collx-cuda-kernels [-b 1M] [-e 1G] [-n 20] [-w 3] [--all]\n",
               why);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "-b") {
      o.begin = parse_size(value());
    } else if (a == "-e") {
      o.end = parse_size(value());
    } else if (a == "-n") {
      o.iters = std::atoi(value());
    } else if (a == "-w") {
      o.warmup = std::atoi(value());
    } else if (a == "--all") {
      o.all = true;
    } else if (a == "-h" || a == "--help") {
      usage("reduction and copy kernels against cudaMemcpyAsync");
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.begin == 0 || o.end < o.begin) usage("sizes: need 0 < -b <= -e");
  if (o.iters < 1 || o.warmup < 0) usage("need -n >= 1 and -w >= 0");
  return o;
}

std::string human(std::size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  double v = static_cast<double>(bytes);
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f %s", v, units[u]);
  return buf;
}

// The median time in ms of `iters` runs of f after `warmup` untimed ones, each timed alone
// with a pair of events on the default stream.
template <class F>
double median_ms(const options& o, F&& f) {
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  collx::cuda::check(cudaEventCreate(&start), "cudaEventCreate");
  collx::cuda::check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < o.warmup; ++i) f();
  collx::cuda::check(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> ms;
  for (int i = 0; i < o.iters; ++i) {
    collx::cuda::check(cudaEventRecord(start, nullptr), "cudaEventRecord");
    f();
    collx::cuda::check(cudaEventRecord(stop, nullptr), "cudaEventRecord");
    collx::cuda::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    collx::cuda::check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  const std::size_t m = ms.size() / 2;
  return ms.size() % 2 ? ms[m] : (ms[m - 1] + ms[m]) / 2.0;
}

double gbps(std::size_t bytes_moved, double ms) {
  return ms > 0 ? static_cast<double>(bytes_moved) / (ms * 1e6) : 0;
}

int run(const options& o) {
  int device = 0;
  collx::cuda::check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  collx::cuda::check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  int sms = 0;
  int mem_khz = 0;
  int bus_bits = 0;
  collx::cuda::check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "multiprocessors");
  // cudaDeviceProp::memoryClockRate is gone in CUDA 13; the attribute remains.
  collx::cuda::check(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, device), "memory clock");
  collx::cuda::check(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device), "bus width");
  // Double data rate: two transfers per clock over the whole bus.
  const double peak_gbps = static_cast<double>(mem_khz) * 1e3 * 2.0 * (bus_bits / 8.0) / 1e9;
  std::printf("# device %d: %s, sm_%d%d, %d SMs, memory %d MHz x %d bits: %.0f GB/s theoretical\n", device,
              prop.name, prop.major, prop.minor, sms, mem_khz / 1000, bus_bits, peak_gbps);
  std::printf("# GB/s counts bytes moved: reduce 3x the buffer (two reads, one write), copies 2x;\n");
  std::printf("# median of %d runs after %d warm-ups; reduce/memcpy compares GB/s\n", o.iters, o.warmup);

  struct kind {
    collx::dtype t;
    collx::reduce_op op;
  };
  std::vector<kind> kinds;
  if (o.all) {
    for (const collx::dtype t : collx::all_dtypes) {
      for (const collx::reduce_op op : collx::all_reduce_ops) {
        if (collx::supports(t, op)) kinds.push_back({t, op});
      }
    }
  } else {
    using collx::dtype;
    for (const dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::f64, dtype::i32}) {
      kinds.push_back({t, collx::reduce_op::sum});
    }
  }

  void* a = nullptr;
  void* b = nullptr;
  void* d = nullptr;
  collx::cuda::check(cudaMalloc(&a, o.end), "cudaMalloc");
  collx::cuda::check(cudaMalloc(&b, o.end), "cudaMalloc");
  collx::cuda::check(cudaMalloc(&d, o.end), "cudaMalloc");
  // 0x3c in every byte: finite, normal values in every dtype (f16 1.06, bf16 and f32 0.0115).
  collx::cuda::check(cudaMemset(a, 0x3c, o.end), "cudaMemset");
  collx::cuda::check(cudaMemset(b, 0x3c, o.end), "cudaMemset");
  collx::cuda::check(cudaMemset(d, 0, o.end), "cudaMemset");

  std::printf("%10s %5s %5s %12s %12s %12s %12s %14s\n", "size", "dtype", "op", "reduce", "in-place",
              "memcpy", "copy-kernel", "reduce/memcpy");
  for (std::size_t size = o.begin; size <= o.end; size *= 4) {
    const double memcpy_ms = median_ms(o, [&] {
      collx::cuda::check(cudaMemcpyAsync(d, a, size, cudaMemcpyDeviceToDevice, nullptr), "memcpy");
    });
    const double copy_ms = median_ms(o, [&] { collx::cuda::copy(d, a, size, nullptr); });
    const double memcpy_gbps = gbps(2 * size, memcpy_ms);
    const double copy_gbps = gbps(2 * size, copy_ms);
    for (const kind& k : kinds) {
      const std::size_t n = size / collx::size_of(k.t);
      const std::size_t moved = 3 * n * collx::size_of(k.t);
      const double reduce_ms = median_ms(o, [&] { collx::cuda::reduce(k.t, k.op, d, a, b, n, nullptr); });
      const double inplace_ms = median_ms(o, [&] { collx::cuda::reduce(k.t, k.op, a, a, b, n, nullptr); });
      const double reduce_gbps = gbps(moved, reduce_ms);
      std::printf("%10s %5s %5s %12.1f %12.1f %12.1f %12.1f %14.2f\n", human(size).c_str(),
                  std::string(collx::to_string(k.t)).c_str(), std::string(collx::to_string(k.op)).c_str(),
                  reduce_gbps, gbps(moved, inplace_ms), memcpy_gbps, copy_gbps,
                  memcpy_gbps > 0 ? reduce_gbps / memcpy_gbps : 0.0);
    }
    // Refresh a: in-place runs compound into it (harmless to the timing, but keep it finite).
    collx::cuda::check(cudaMemset(a, 0x3c, o.end), "cudaMemset");
    if (size > o.end / 4) break;  // the next x4 step would pass -e (or overflow)
  }
  collx::cuda::check(cudaDeviceSynchronize(), "benchmark");
  cudaFree(a);
  cudaFree(b);
  cudaFree(d);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  if (const std::string why = collx::cuda::no_device(); !why.empty()) {
    std::printf("skipped: %s\n", why.c_str());
    return 77;
  }
  try {
    return run(o);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "collx-cuda-kernels: %s\n", ex.what());
    return 1;
  }
}
