// collx-bench's GPU contenders (cuda_contenders.hpp): collx::cuda::group with ranks as
// threads, collx::cuda::staged over a process transport, and NCCL loaded at run time.
//
// A rank uses only its own non-blocking stream once the sweep runs, and allocates its
// buffers once, before: cudaFree, cudaMemcpy and cudaDeviceSynchronize wait for the whole
// GPU, and with the group's ranks on one GPU that includes other ranks' kernels, which
// wait for this rank.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "collx/cuda/group.cuh"
#include "collx/cuda/hierarchical.cuh"
#include "collx/cuda/ipc.cuh"
#include "collx/cuda/staged.hpp"
#include "cuda_contenders.hpp"

#if COLLX_BENCH_HAVE_NCCL_H
#include <nccl.h>
#endif

namespace bench::gpu {

namespace {

using collx::cuda::check;

// One rank's stream and device buffers, `cap` bytes each, made once on `device`.
struct rank_buffers {
  int device = 0;
  std::size_t cap = 0;
  cudaStream_t stream = nullptr;
  std::byte* a = nullptr;
  std::byte* b = nullptr;

  rank_buffers(int dev, std::size_t bytes) : device(dev), cap(std::max<std::size_t>(bytes, 16)) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    void* p = nullptr;
    check(cudaMalloc(&p, cap), "cudaMalloc");
    a = static_cast<std::byte*>(p);
    check(cudaMalloc(&p, cap), "cudaMalloc");
    b = static_cast<std::byte*>(p);
  }
  ~rank_buffers() {
    cudaSetDevice(device);
    cudaStreamSynchronize(stream);
    cudaFree(a);
    cudaFree(b);
    cudaStreamDestroy(stream);
  }
  rank_buffers(const rank_buffers&) = delete;
  rank_buffers& operator=(const rank_buffers&) = delete;
};

// One case on device buffers, as detail::drive runs one on host buffers: make(send, recv)
// builds the call; the inputs are filled on the host and copied up, outside the timing;
// warm-up, synchronize, barrier, the timed calls, synchronize; then one more call on fresh
// inputs with the result region poisoned first, copied back and checked.
template <class Make, class Sync>
baseline_result drive(const baseline_case& c, int rank, int ranks, rank_buffers& buf,
                      const baseline_data& data, Make&& make, Sync&& sync, const group_ops& g) {
  const std::size_t es = collx::size_of(c.type);
  const std::size_t in_n = input_elements(c, ranks);
  const std::size_t out_n = output_elements(c, ranks);
  const auto ur = static_cast<std::size_t>(rank);
  // Where the rank's input sits in an in-place buffer: its own block of an all-gather.
  const std::size_t at = c.coll == collx::collective::all_gather ? ur * c.count : 0;
  const std::size_t region = (c.in_place ? std::max(in_n, out_n) : out_n) * es;
  if (in_n * es > buf.cap || region > buf.cap) {
    throw collx::error(collx::errc::invalid_argument, "collx-bench", rank, collx::error::no_rank,
                       "a case larger than the device buffers made for -e");
  }
  std::vector<std::byte> host_in(in_n * es);
  if (in_n > 0) data.fill(host_in.data(), rank, in_n);
  if (!host_in.empty())
    check(cudaMemcpyAsync(buf.a, host_in.data(), host_in.size(), cudaMemcpyHostToDevice, buf.stream),
          "copy in");
  std::byte* send = buf.a;
  std::byte* recv = buf.b;
  if (c.in_place) {
    send = c.coll == collx::collective::all_gather ? buf.b + at * es : buf.b;
    recv = c.coll == collx::collective::reduce_scatter ? buf.b + ur * c.count * es : buf.b;
  }
  // The result: the rank's block of an in-place reduce-scatter, the buffer's start otherwise.
  const std::byte* result = recv;
  auto prepare = [&] {
    if (c.in_place && in_n > 0) {
      check(cudaMemcpyAsync(buf.b + at * es, buf.a, in_n * es, cudaMemcpyDeviceToDevice, buf.stream),
            "copy in place");
    }
  };
  const std::function<void()> once = make(send, recv);
  prepare();
  for (int i = 0; i < c.warmup; ++i) once();
  sync();
  g.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < c.iters; ++i) once();
  sync();
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / c.iters;
  baseline_result r;
  r.time_us = g.max(t) * 1e6;
  r.wrong = -1;
  if (!c.check) return r;
  if (region > 0) check(cudaMemsetAsync(buf.b, 0xff, region, buf.stream), "poisoning the result");
  prepare();
  once();
  std::vector<std::byte> host_out(out_n * es);
  if (!host_out.empty()) {
    check(cudaMemcpyAsync(host_out.data(), result, host_out.size(), cudaMemcpyDeviceToHost, buf.stream),
          "copy back");
  }
  sync();
  r.wrong = g.sum(out_n > 0 ? data.check(host_out.data(), rank, out_n) : 0);
  return r;
}

// Runs f, turning what it throws into `why`.
template <class F>
std::optional<baseline_result> guarded(std::string& why, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    why = e.what();
    return std::nullopt;
  }
}

// One rank of any of collx's GPU front ends (the group's communicator, staged, CUDA IPC):
// they share the untyped calls with a stream at the end. `algo` names what a case runs.
template <class Comm>
class comm_runner final : public rank_runner {
 public:
  using namer = std::function<std::string(const baseline_case&, int ranks)>;
  template <class... A>
  comm_runner(int device, std::size_t max_bytes, group_ops ops, namer algo, A&&... args)
      : comm_(std::forward<A>(args)...),
        buf_(device, max_bytes),
        ops_(std::move(ops)),
        algo_(std::move(algo)) {}

  std::optional<baseline_result> run(const baseline_case& c, std::string& why,
                                     const baseline_data& data) override {
    return guarded(why, [&] {
      collx::options o;
      o.algo = c.algo;
      auto make = [&](std::byte* send, std::byte* recv) -> std::function<void()> {
        Comm* comm = &comm_;
        const cudaStream_t s = buf_.stream;
        switch (c.coll) {
          case collx::collective::all_reduce:
            return [=] { comm->all_reduce(send, recv, c.count, c.type, c.op, s, o); };
          case collx::collective::all_gather:
            return [=] { comm->all_gather(send, recv, c.count, c.type, s, o); };
          case collx::collective::reduce_scatter:
            return [=] { comm->reduce_scatter(send, recv, c.count, c.type, c.op, s, o); };
          default: break;
        }
        return [] {};
      };
      auto sync = [this] {
        if constexpr (requires { comm_.synchronize(buf_.stream); }) {
          comm_.synchronize(buf_.stream);  // throws if a call failed
        } else {
          check(cudaStreamSynchronize(buf_.stream), "cudaStreamSynchronize");
        }
      };
      baseline_result r = drive(c, comm_.rank(), comm_.size(), buf_, data, make, sync, ops_);
      r.algorithm = algo_(c, comm_.size());
      if constexpr (requires { comm_.choose(1.0); }) {  // the hierarchy: which way, then each level's
        const double bytes = static_cast<double>(c.count * collx::size_of(c.type));
        const collx::hier_way way =
            c.coll == collx::collective::all_reduce ? comm_.choose(bytes) : collx::hier_way::hierarchical;
        r.algorithm = std::string(collx::to_string(way)) + "/" + r.algorithm;
      }
      return r;
    });
  }

 private:
  Comm comm_;
  rank_buffers buf_;
  group_ops ops_;
  namer algo_;
};

// What the GPU paths run (collx/cuda/group.cuh, ipc.hpp): what the front end resolves,
// as on the host (front/resolve.hpp), from --algo, then COLLX_ALGO, then the model.
inline std::string as_resolved(const baseline_case& c, int ranks) {
  static const collx::communicator_config cfg;
  return std::string(collx::to_string(
      collx::detail::resolve(c.coll, c.count, c.type, c.op, {.algo = c.algo}, cfg, ranks, 0).algo));
}

class group_impl final : public thread_group {
 public:
  explicit group_impl(const std::vector<int>& devices) : g_(devices), devices_(devices) {}
  std::unique_ptr<rank_runner> rank(int r, std::size_t max_bytes, group_ops ops) override {
    return std::make_unique<comm_runner<collx::cuda::communicator>>(
        devices_.at(static_cast<std::size_t>(r)), max_bytes, std::move(ops), as_resolved, g_.rank(r));
  }
  void abort() noexcept override { g_.abort(); }

 private:
  collx::cuda::group g_;
  std::vector<int> devices_;
};

// ---- NCCL, loaded at run time ------------------------------------------------------------

#if COLLX_BENCH_HAVE_NCCL_H
// The functions collx-bench calls, from dlopen("libnccl.so.2"); declared by nccl.h.
struct nccl_api {
  decltype(&ncclGetVersion) GetVersion = nullptr;
  decltype(&ncclGetUniqueId) GetUniqueId = nullptr;
  decltype(&ncclCommInitRank) CommInitRank = nullptr;
  decltype(&ncclCommDestroy) CommDestroy = nullptr;
  decltype(&ncclCommGetAsyncError) CommGetAsyncError = nullptr;
  decltype(&ncclGetErrorString) GetErrorString = nullptr;
  decltype(&ncclGetLastError) GetLastError = nullptr;
  decltype(&ncclAllReduce) AllReduce = nullptr;
  decltype(&ncclAllGather) AllGather = nullptr;
  decltype(&ncclReduceScatter) ReduceScatter = nullptr;
  std::string version;  // "2.28.3"
  std::string why;      // empty when loaded
};

// Loaded once per process and kept: NCCL is never unloaded.
const nccl_api& nccl() {
  static const nccl_api api = [] {
    nccl_api a;
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* e = dlerror();
      a.why = std::string("dlopen(\"libnccl.so.2\") failed: ") + (e != nullptr ? e : "?") +
              " (NCCL's directory in LD_LIBRARY_PATH?)";
      return a;
    }
    bool all = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (fn == nullptr) {
        if (all) a.why = std::string("libnccl.so.2 has no ") + name;
        all = false;
      }
    };
    sym(a.GetVersion, "ncclGetVersion");
    sym(a.GetUniqueId, "ncclGetUniqueId");
    sym(a.CommInitRank, "ncclCommInitRank");
    sym(a.CommDestroy, "ncclCommDestroy");
    sym(a.CommGetAsyncError, "ncclCommGetAsyncError");
    sym(a.GetErrorString, "ncclGetErrorString");
    sym(a.GetLastError, "ncclGetLastError");
    sym(a.AllReduce, "ncclAllReduce");
    sym(a.AllGather, "ncclAllGather");
    sym(a.ReduceScatter, "ncclReduceScatter");
    if (!all) return a;
    int v = 0;
    if (a.GetVersion(&v) != ncclSuccess) {
      a.why = "ncclGetVersion failed";
      return a;
    }
    // NCCL_VERSION(X,Y,Z): X*10000 + Y*100 + Z since 2.9, X*1000 + Y*100 + Z before.
    const int major = v >= 10000 ? v / 10000 : v / 1000;
    const int minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10;
    a.version = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
    return a;
  }();
  return api;
}

bool nccl_type(collx::dtype t, ncclDataType_t& out) {
  switch (t) {
    case collx::dtype::i8: out = ncclInt8; return true;
    case collx::dtype::u8: out = ncclUint8; return true;
    case collx::dtype::i32: out = ncclInt32; return true;
    case collx::dtype::i64: out = ncclInt64; return true;
    case collx::dtype::f16: out = ncclFloat16; return true;
    case collx::dtype::bf16: out = ncclBfloat16; return true;
    case collx::dtype::f32: out = ncclFloat32; return true;
    case collx::dtype::f64: out = ncclFloat64; return true;
  }
  return false;
}

ncclRedOp_t nccl_op(collx::reduce_op op) {
  switch (op) {
    case collx::reduce_op::sum: return ncclSum;
    case collx::reduce_op::prod: return ncclProd;
    case collx::reduce_op::min: return ncclMin;
    case collx::reduce_op::max: return ncclMax;
    case collx::reduce_op::avg: return ncclAvg;
  }
  return ncclSum;
}

std::string to_hex(const char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned char>(p[i]);
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

bool from_hex(const std::string& s, char* p, std::size_t n) {
  if (s.size() != 2 * n) return false;
  auto nibble = [](char ch) {
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
  };
  for (std::size_t i = 0; i < n; ++i) {
    const int hi = nibble(s[2 * i]);
    const int lo = nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    p[i] = static_cast<char>(hi * 16 + lo);
  }
  return true;
}

class nccl_runner final : public rank_runner {
 public:
  nccl_runner(ncclComm_t comm, int rank, int size, int device, std::size_t max_bytes, group_ops ops)
      : comm_(comm), rank_(rank), size_(size), buf_(device, max_bytes), ops_(std::move(ops)) {}
  ~nccl_runner() override {
    cudaSetDevice(buf_.device);
    cudaStreamSynchronize(buf_.stream);
    nccl().CommDestroy(comm_);
  }
  nccl_runner(const nccl_runner&) = delete;
  nccl_runner& operator=(const nccl_runner&) = delete;

  std::optional<baseline_result> run(const baseline_case& c, std::string& why,
                                     const baseline_data& data) override {
    ncclDataType_t t = ncclFloat32;
    if (!nccl_type(c.type, t)) {
      why = "NCCL has no " + std::string(collx::to_string(c.type));
      return std::nullopt;
    }
    const ncclRedOp_t op = nccl_op(c.op);
    return guarded(why, [&] {
      const nccl_api& api = nccl();
      auto check = [this, &api](ncclResult_t res, const char* what) {
        if (res == ncclSuccess) return;
        const char* last = api.GetLastError(comm_);
        throw collx::error(collx::errc::transport, "nccl", rank_, collx::error::no_rank,
                           std::string(what) + ": " + api.GetErrorString(res) +
                               (last != nullptr && *last != '\0' ? std::string(" (") + last + ")" : ""));
      };
      std::string algorithm;
      auto make = [&](std::byte* send, std::byte* recv) -> std::function<void()> {
        const ncclComm_t comm = comm_;
        const cudaStream_t s = buf_.stream;
        const std::size_t n = c.count;
        switch (c.coll) {
          case collx::collective::all_reduce:
            algorithm = "ncclAllReduce";
            return [=] { check(api.AllReduce(send, recv, n, t, op, comm, s), "ncclAllReduce"); };
          case collx::collective::all_gather:
            algorithm = "ncclAllGather";
            return [=] { check(api.AllGather(send, recv, n, t, comm, s), "ncclAllGather"); };
          case collx::collective::reduce_scatter:
            algorithm = "ncclReduceScatter";
            return [=] { check(api.ReduceScatter(send, recv, n, t, op, comm, s), "ncclReduceScatter"); };
          default: break;
        }
        return [] {};
      };
      auto sync = [&] {
        collx::cuda::check(cudaStreamSynchronize(buf_.stream), "cudaStreamSynchronize");
        ncclResult_t async = ncclSuccess;
        check(api.CommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
        check(async, "NCCL's asynchronous error");
      };
      baseline_result r = drive(c, rank_, size_, buf_, data, make, sync, ops_);
      r.algorithm = algorithm;
      return r;
    });
  }

 private:
  ncclComm_t comm_;
  int rank_;
  int size_;
  rank_buffers buf_;
  group_ops ops_;
};
#endif

}  // namespace

std::string no_device() { return collx::cuda::no_device(); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<thread_group> make_thread_group(const std::vector<int>& devices) {
  return std::make_unique<group_impl>(devices);
}

std::unique_ptr<rank_runner> make_staged(collx::communicator& host, int device, std::size_t max_bytes,
                                         group_ops ops) {
  // What the host communicator resolves the call to, as collx-bench's measure() says.
  auto resolved = [](const baseline_case& c, int p) {
    const collx::communicator_config cfg;
    return std::string(collx::to_string(collx::algorithms::resolve(
        c.algo, cfg.algo, c.coll, p, static_cast<double>(c.count * collx::size_of(c.type)), cfg.model)));
  };
  return std::make_unique<comm_runner<collx::cuda::staged>>(device, max_bytes, std::move(ops), resolved,
                                                            host);
}

std::unique_ptr<rank_runner> make_ipc(collx::store& st, int rank, int size, int device, std::size_t max_bytes,
                                      group_ops ops) {
  return std::make_unique<comm_runner<collx::cuda::ipc_communicator>>(device, max_bytes, std::move(ops),
                                                                      as_resolved, st, rank, size, device);
}

std::unique_ptr<rank_runner> make_hier(const std::shared_ptr<collx::store>& st, const collx::launch_info& li,
                                       int device, std::size_t max_bytes, group_ops ops) {
  // Unless asked, each level chooses for itself (CUDA IPC: ring; tcp: the cost model).
  auto asked = [](const baseline_case& c, int) { return std::string(collx::to_string(c.algo)); };
  return std::make_unique<comm_runner<collx::cuda::hierarchical>>(device, max_bytes, std::move(ops), asked,
                                                                  st, li, device);
}

bool nccl_loadable(std::string& version_or_why) {
#if COLLX_BENCH_HAVE_NCCL_H
  const nccl_api& api = nccl();
  version_or_why = api.why.empty() ? api.version : api.why;
  return api.why.empty();
#else
  version_or_why = "built without nccl.h (CMake found none beside the CUDA toolkit)";
  return false;
#endif
}

std::unique_ptr<rank_runner> make_nccl(int rank, int size, int device, std::size_t max_bytes, group_ops ops,
                                       const std::function<bool(bool)>& agree_all,
                                       const std::function<std::string(const std::string&)>& share_id,
                                       std::string& why) {
#if COLLX_BENCH_HAVE_NCCL_H
  std::string mine;
  const bool loaded = nccl_loadable(mine);
  const bool have_device = device >= 0 && device < device_count();
  if (!have_device && loaded)
    mine = no_device().empty() ? "no device " + std::to_string(device) : no_device();
  if (!agree_all(loaded && have_device)) {
    why = loaded && have_device ? "another rank could not load NCCL or has no GPU" : mine;
    return nullptr;
  }
  const nccl_api& api = nccl();
  check(cudaSetDevice(device), "cudaSetDevice");
  // Rank 0's unique id, or why it has none, through the harness's store.
  std::string sent;
  if (rank == 0) {
    ncclUniqueId id{};
    const ncclResult_t res = api.GetUniqueId(&id);
    sent = res == ncclSuccess ? "id:" + to_hex(id.internal, sizeof id.internal)
                              : std::string("err:ncclGetUniqueId: ") + api.GetErrorString(res);
  }
  const std::string got = share_id(sent);
  ncclUniqueId id{};
  // Every rank gets the same string, so every rank takes the same branch below.
  if (got.rfind("err:", 0) == 0) {
    why = got.substr(4);
    return nullptr;
  }
  if (got.rfind("id:", 0) != 0 || !from_hex(got.substr(3), id.internal, sizeof id.internal)) {
    why = "rank 0's NCCL unique id came malformed";  // to every rank alike: all return here
    return nullptr;
  }
  ncclComm_t comm = nullptr;
  const ncclResult_t res = api.CommInitRank(&comm, size, id, rank);
  std::string failed;
  if (res != ncclSuccess) {
    const char* last = api.GetLastError(nullptr);
    failed = std::string("ncclCommInitRank: ") + api.GetErrorString(res) +
             (last != nullptr && *last != '\0' ? std::string(" (") + last + ")" : "");
  }
  // Every rank learns whether every rank has a communicator, so that all run it or none.
  if (!agree_all(res == ncclSuccess)) {
    if (res == ncclSuccess) api.CommDestroy(comm);
    why = failed.empty() ? "ncclCommInitRank failed on another rank" : failed;
    return nullptr;
  }
  return std::make_unique<nccl_runner>(comm, rank, size, device, max_bytes, std::move(ops));
#else
  (void)rank;
  (void)size;
  (void)device;
  (void)max_bytes;
  (void)ops;
  (void)share_id;
  nccl_loadable(why);
  agree_all(false);
  return nullptr;
#endif
}

}  // namespace bench::gpu
