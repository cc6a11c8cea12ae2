#pragma once

// The baselines collx-bench runs beside collx in the same run: MPI's own collectives
// (MPI_Allreduce, MPI_Allgather, MPI_Reduce_scatter_block, MPI_Bcast, MPI_Reduce,
// MPI_Alltoall, MPI_Gather, MPI_Scatter) and Gloo's (allreduce, allgather,
// reduce-scatter, broadcast, reduce, alltoall, gather, scatter) over its TCP transport on
// loopback. Each is compiled in only where CMake found its library
// (COLLX_BENCH_HAVE_MPI, COLLX_BENCH_HAVE_GLOO), so collx-bench builds without either;
// one that cannot run says why instead of returning a figure.
//
// They run on the element counts collx-bench uses, fill and check through callbacks so
// that the harness's own inputs and serial reference serve collx and its peers alike, and
// time as collx-bench does: the mean per iteration after warm-up, the maximum over ranks.
//
// In place follows MPI's convention, which Gloo shares: for all-reduce and all-gather it
// is what collx calls in place, but an in-place reduce-scatter leaves the rank's block at
// the start of the buffer, where MPI_IN_PLACE puts it, not at rank * count. The check
// callback is handed the result wherever it lies.

#include <collx/collx.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include "baseline_api.hpp"

#if COLLX_BENCH_HAVE_MPI
#include <mpi.h>
#endif

#if COLLX_BENCH_HAVE_GLOO
#include <gloo/algorithm.h>
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/context.h>
#include <gloo/gather.h>
#include <gloo/math.h>
#include <gloo/reduce.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/scatter.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/types.h>
#endif

namespace bench {

namespace detail {

// collx-bench's inputs: small integers, so sums and products are exact in every type and
// a correct result is bit-exact. 0..6, or 0..1 where p ranks of 6 would pass 256, the
// largest integer bf16 holds exactly.
inline int reference_value(const baseline_case& c, int ranks, int rank, std::size_t k) {
  const auto range = static_cast<std::size_t>(ranks * 6 <= 256 ? 7 : 2);
  const auto r = static_cast<std::size_t>(rank);
  return c.op == collx::reduce_op::prod ? 1 + static_cast<int>((k + r) % 7 == 0)
                                        : static_cast<int>((k * 3 + r * 5) % range);
}

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, collx::half> || std::is_same_v<T, collx::bfloat16>) {
    return T(static_cast<float>(x));
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(static_cast<long long>(x));  // modular, as collx's integer arithmetic
  } else {
    return static_cast<T>(x);
  }
}

template <class T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, collx::half> || std::is_same_v<T, collx::bfloat16>) {
    return static_cast<double>(static_cast<float>(x));
  } else {
    return static_cast<double>(x);
  }
}

inline void reference_fill(const baseline_case& c, int ranks, int rank, std::size_t first, void* buf,
                           std::size_t n) {
  collx::detail::visit_dtype(c.type, [&](auto tag) {
    using T = decltype(tag);
    auto* v = static_cast<T*>(buf);
    for (std::size_t i = 0; i < n; ++i) v[i] = from_double<T>(reference_value(c, ranks, rank, first + i));
  });
}

// Element k of the reduction over all ranks, computed here and not by collx: exact
// integers (modulo 2^64, then the type's width, as integer types wrap), the average in
// double.
inline double reference_reduction(const baseline_case& c, int ranks, std::size_t k) {
  std::uint64_t acc = static_cast<std::uint64_t>(reference_value(c, ranks, 0, k));
  double wide = static_cast<double>(acc);  // the same in double, for the floating types' products
  for (int r = 1; r < ranks; ++r) {
    const int x = reference_value(c, ranks, r, k);
    switch (c.op) {
      case collx::reduce_op::sum:
      case collx::reduce_op::avg: acc += static_cast<std::uint64_t>(x); break;
      case collx::reduce_op::prod:
        acc *= static_cast<std::uint64_t>(x);
        wide *= x;
        break;
      case collx::reduce_op::min: acc = std::min(acc, static_cast<std::uint64_t>(x)); break;
      case collx::reduce_op::max: acc = std::max(acc, static_cast<std::uint64_t>(x)); break;
    }
  }
  if (c.op == collx::reduce_op::avg) return static_cast<double>(acc) / ranks;
  if (c.op == collx::reduce_op::prod && collx::is_floating(c.type)) return wide;
  return static_cast<double>(static_cast<std::int64_t>(acc));
}

// Elements of got[0..n) that differ from want(k); bit-exact but for the average, which
// rounds once to the type.
template <class Want>
long long count_wrong(const baseline_case& c, const void* got, std::size_t n, Want&& want) {
  long long w = 0;
  collx::detail::visit_dtype(c.type, [&](auto tag) {
    using T = decltype(tag);
    const auto* g = static_cast<const T*>(got);
    const double tol = std::is_same_v<T, collx::half>       ? 1e-3
                       : std::is_same_v<T, collx::bfloat16> ? 8e-3
                       : std::is_same_v<T, float>           ? 1e-6
                                                            : 1e-12;
    for (std::size_t i = 0; i < n; ++i) {
      const double x = want(i);
      if (c.op == collx::reduce_op::avg && collx::is_floating(c.type)) {
        w += std::abs(to_double(g[i]) - x) <= tol * std::max(1.0, std::abs(x)) ? 0 : 1;
      } else {
        const T t = from_double<T>(x);
        w += std::memcmp(&g[i], &t, sizeof(T)) != 0 ? 1 : 0;
      }
    }
  });
  return w;
}

}  // namespace detail

// collx-bench's inputs and its serial reference, computed independently of collx's own
// reduction code, for every contender: collx, the baselines, the GPU runners.
inline baseline_data reference_data(const baseline_case& c, int ranks) {
  baseline_data d;
  d.fill = [c, ranks](void* buf, int rank, std::size_t n) {
    detail::reference_fill(c, ranks, rank, 0, buf, n);
  };
  d.check = [c, ranks](const void* result, int rank, std::size_t n) -> long long {
    const std::size_t m = std::min(n, c.count);
    const std::size_t es = collx::size_of(c.type);
    const auto mine = static_cast<std::size_t>(rank) * c.count;
    // Block j of a gathered result, each element from rank_of(j) at index at(j, i).
    auto blocks = [&](auto&& rank_of, auto&& at) {
      long long w = 0;
      for (int j = 0; static_cast<std::size_t>(j) * c.count < n && j < ranks; ++j) {
        const auto* block =
            static_cast<const std::byte*>(result) + static_cast<std::size_t>(j) * c.count * es;
        w += detail::count_wrong(c, block, c.count, [&](std::size_t i) {
          return detail::reference_value(c, ranks, rank_of(j), at(j, i));
        });
      }
      return w;
    };
    switch (c.coll) {
      case collx::collective::all_to_all:
        return blocks([](int j) { return j; }, [&](int, std::size_t i) { return mine + i; });
      case collx::collective::gather:
        if (rank != c.root) return 0;  // the other ranks' output is not the call's
        return blocks([](int j) { return j; }, [](int, std::size_t i) { return i; });
      case collx::collective::scatter:
        return detail::count_wrong(
            c, result, m, [&](std::size_t k) { return detail::reference_value(c, ranks, c.root, mine + k); });
      case collx::collective::all_gather: {
        long long w = 0;
        for (int j = 0; j < ranks && static_cast<std::size_t>(j) * c.count < n; ++j) {
          const auto* block =
              static_cast<const std::byte*>(result) + static_cast<std::size_t>(j) * c.count * es;
          w += detail::count_wrong(c, block, c.count,
                                   [&](std::size_t k) { return detail::reference_value(c, ranks, j, k); });
        }
        return w;
      }
      case collx::collective::broadcast:
        return detail::count_wrong(
            c, result, m, [&](std::size_t k) { return detail::reference_value(c, ranks, c.root, k); });
      case collx::collective::send_recv:  // a ring shift: rank-1's input
        return detail::count_wrong(c, result, m, [&](std::size_t k) {
          return detail::reference_value(c, ranks, (rank - 1 + ranks) % ranks, k);
        });
      case collx::collective::reduce:
        if (rank != c.root) return 0;  // the other ranks' output is not the call's
        break;
      default: break;
    }
    const std::size_t first =
        c.coll == collx::collective::reduce_scatter ? static_cast<std::size_t>(rank) * c.count : 0;
    return detail::count_wrong(
        c, result, m, [&](std::size_t k) { return detail::reference_reduction(c, ranks, first + k); });
  };
  return d;
}

namespace detail {

inline bool valid_case(const baseline_case& c, std::string& why) {
  if (c.iters < 1 || c.warmup < 0) {
    why = "needs at least one timed iteration and no negative warm-up";
    return false;
  }
  return true;
}

inline const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

// Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; MPICH's hydra PMI_SIZE; PMIx launchers
// PMIX_RANK.
inline bool launched_by_mpirun() {
  return env("OMPI_COMM_WORLD_SIZE") != nullptr || env("PMI_SIZE") != nullptr || env("PMIX_RANK") != nullptr;
}

// Runs one case: make(send, recv) builds the call once (a library may set it up ahead of
// the timed loop, as a real user would), then warm-up, barrier, the timed iterations, and
// one more checked call on fresh inputs with the result region poisoned first, so an
// element the call fails to write is counted, not left over from the timed calls.
template <class Make>
baseline_result drive(const baseline_case& c, int rank, int ranks, const baseline_data& data, Make&& make,
                      const group_ops& g) {
  const std::size_t es = collx::size_of(c.type);
  const std::size_t in_n = input_elements(c, ranks);
  const std::size_t out_n = output_elements(c, ranks);
  // Where the rank's input sits in an in-place buffer: its own block of an all-gather.
  const std::size_t at = c.coll == collx::collective::all_gather || c.coll == collx::collective::gather
                             ? static_cast<std::size_t>(rank) * c.count
                             : 0;
  std::vector<std::byte> in(in_n * es);
  std::vector<std::byte> out((c.in_place ? std::max(in_n, out_n) : out_n) * es);
  if (in_n > 0) data.fill(in.data(), rank, in_n);
  std::byte* send = c.in_place ? out.data() + at * es : in.data();
  std::byte* recv = out.data();
  auto prepare = [&] {
    if (c.in_place && in_n > 0) std::memcpy(out.data() + at * es, in.data(), in_n * es);
  };
  const std::function<void()> once = make(send, recv);
  prepare();
  for (int i = 0; i < c.warmup; ++i) once();
  g.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < c.iters; ++i) once();
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / c.iters;
  baseline_result r;
  r.time_us = g.max(t) * 1e6;
  r.wrong = -1;
  if (!c.check) return r;
  if (!out.empty()) std::memset(out.data(), 0xff, out.size());
  prepare();
  once();
  r.wrong = g.sum(out_n > 0 ? data.check(recv, rank, out_n) : 0);
  return r;
}

inline baseline_data or_reference(const baseline_data& d, const baseline_case& c, int ranks) {
  return d.fill && d.check ? d : reference_data(c, ranks);
}

#if COLLX_BENCH_HAVE_MPI
// MPI is initialized by the first baseline that needs it, unless the caller did, and
// finalized when the last one goes: MPI cannot be initialized twice, so a harness keeps
// one baseline alive for its whole run.
class mpi_session {
 public:
  static std::shared_ptr<mpi_session> acquire(std::string& why) {
    static std::mutex m;
    static std::weak_ptr<mpi_session> current;
    const std::lock_guard<std::mutex> lock(m);
    if (auto s = current.lock()) return s;
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin != 0) {
      why = "MPI was finalized already";
      return nullptr;
    }
    std::shared_ptr<mpi_session> s(new mpi_session);
    current = s;
    return s;
  }
  ~mpi_session() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (owns_ && fin == 0) MPI_Finalize();
  }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;

 private:
  mpi_session() {
    int init = 0;
    MPI_Initialized(&init);
    if (init != 0) return;
    // Funneled: the baselines call MPI from one thread; collx's ranks as threads never do.
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    owns_ = true;
  }
  bool owns_ = false;
};
#endif

}  // namespace detail

// MPI's collectives on MPI_COMM_WORLD, or on a communicator the caller gives.
class mpi_baseline {
 public:
  // Collective over the communicator, which it duplicates. Initializes MPI when launched
  // by mpirun and nobody has yet; where it cannot run, run() and why_not() say why.
  mpi_baseline() {
#if COLLX_BENCH_HAVE_MPI
    if (available(why_)) attach(MPI_COMM_WORLD);
#else
    available(why_);
#endif
  }
#if COLLX_BENCH_HAVE_MPI
  // The caller's communicator, after the caller's MPI_Init.
  explicit mpi_baseline(MPI_Comm comm) {
    if (available(why_)) attach(comm);
  }
#endif
  ~mpi_baseline() {
#if COLLX_BENCH_HAVE_MPI
    int fin = 0;
    MPI_Finalized(&fin);
    if (comm_ != MPI_COMM_NULL && fin == 0) MPI_Comm_free(&comm_);
#endif
  }
  mpi_baseline(const mpi_baseline&) = delete;
  mpi_baseline& operator=(const mpi_baseline&) = delete;

  static bool available(std::string& why) {
#if COLLX_BENCH_HAVE_MPI
    int init = 0;
    int fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin != 0) {
      why = "MPI was finalized already";
      return false;
    }
    // Already initialized: the caller's MPI, however it was launched.
    if (init == 0 && !detail::launched_by_mpirun()) {
      why = "not launched by mpirun (OMPI_COMM_WORLD_SIZE unset)";
      return false;
    }
    return true;
#else
    why = "built without MPI (CMake found no MPI: install libopenmpi-dev)";
    return false;
#endif
  }

  // Empty when it can run; otherwise why not.
  const std::string& why_not() const { return why_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // Collective: every rank of the communicator calls it with the same case.
  std::optional<baseline_result> run(const baseline_case& c, std::string& why,
                                     const baseline_data& data = {}) {
#if COLLX_BENCH_HAVE_MPI
    if (!why_.empty()) {
      why = why_;
      return std::nullopt;
    }
    if (!detail::valid_case(c, why)) return std::nullopt;
    const bool reduces = collx::reduces(c.coll);
    MPI_Datatype t = MPI_DATATYPE_NULL;
    switch (c.type) {
      case collx::dtype::i8: t = MPI_INT8_T; break;
      case collx::dtype::u8: t = MPI_UINT8_T; break;
      case collx::dtype::i32: t = MPI_INT32_T; break;
      case collx::dtype::i64: t = MPI_INT64_T; break;
      case collx::dtype::f32: t = MPI_FLOAT; break;
      case collx::dtype::f64: t = MPI_DOUBLE; break;
      // Gathering moves bits, whatever they mean; reducing needs arithmetic MPI lacks.
      case collx::dtype::f16:
      case collx::dtype::bf16: t = reduces ? MPI_DATATYPE_NULL : MPI_UINT16_T; break;
    }
    if (t == MPI_DATATYPE_NULL) {
      why = "MPI has no " + std::string(collx::to_string(c.type)) + " arithmetic";
      return std::nullopt;
    }
    MPI_Op op = MPI_SUM;
    switch (c.op) {
      case collx::reduce_op::sum: op = MPI_SUM; break;
      case collx::reduce_op::prod: op = MPI_PROD; break;
      case collx::reduce_op::min: op = MPI_MIN; break;
      case collx::reduce_op::max: op = MPI_MAX; break;
      case collx::reduce_op::avg: op = MPI_OP_NULL; break;
    }
    if (reduces && op == MPI_OP_NULL) {
      why = "MPI has no average (a sum and a division would not be MPI's own)";
      return std::nullopt;
    }
    if (c.count > static_cast<std::size_t>(INT_MAX)) {
      why = "count past MPI's int counts";
      return std::nullopt;
    }
    const int n = static_cast<int>(c.count);
    const MPI_Comm comm = comm_;
    const bool in_place = c.in_place;
    const int root = c.root;
    const int me = rank_;
    const std::size_t bytes = c.count * collx::size_of(c.type);
    baseline_result meta;
    auto make = [&](std::byte* send, std::byte* recv) -> std::function<void()> {
      void* s = in_place ? MPI_IN_PLACE : send;
      switch (c.coll) {
        case collx::collective::all_reduce:
          meta.algorithm = "MPI_Allreduce";
          return [=] { MPI_Allreduce(s, recv, n, t, op, comm); };
        case collx::collective::all_gather:
          meta.algorithm = "MPI_Allgather";
          if (in_place) return [=] { MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, n, t, comm); };
          return [=] { MPI_Allgather(send, n, t, recv, n, t, comm); };
        case collx::collective::reduce_scatter:
          meta.algorithm = "MPI_Reduce_scatter_block";
          return [=] { MPI_Reduce_scatter_block(s, recv, n, t, op, comm); };
        case collx::collective::broadcast:
          meta.algorithm = "MPI_Bcast";
          // MPI_Bcast has only the in-place form: out of place, the root first copies its
          // input to its output, as a user of MPI would.
          return [=] {
            if (!in_place && me == root) std::memcpy(recv, send, bytes);
            MPI_Bcast(recv, n, t, root, comm);
          };
        case collx::collective::all_to_all:
          meta.algorithm = "MPI_Alltoall";
          if (in_place) return [=] { MPI_Alltoall(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, n, t, comm); };
          return [=] { MPI_Alltoall(send, n, t, recv, n, t, comm); };
        case collx::collective::send_recv:
          meta.algorithm = "MPI_Sendrecv";
          return [=, p = size_] {
            MPI_Sendrecv(send, n, t, (me + 1) % p, 0, recv, n, t, (me - 1 + p) % p, 0, comm,
                         MPI_STATUS_IGNORE);
          };
        case collx::collective::gather:
          meta.algorithm = "MPI_Gather";
          return [=] { MPI_Gather(send, n, t, recv, n, t, root, comm); };
        case collx::collective::scatter:
          meta.algorithm = "MPI_Scatter";
          return [=] { MPI_Scatter(send, n, t, recv, n, t, root, comm); };
        case collx::collective::reduce:
          meta.algorithm = "MPI_Reduce";
          // In place, the root passes MPI_IN_PLACE and the others their buffer as the input.
          return [=] { MPI_Reduce(in_place && me != root ? send : s, recv, n, t, op, root, comm); };
        default: break;
      }
      return [] {};
    };
    detail::group_ops g;
    g.barrier = [comm] { MPI_Barrier(comm); };
    g.max = [comm](double v) {
      MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, comm);
      return v;
    };
    g.sum = [comm](long long v) {
      MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_LONG_LONG, MPI_SUM, comm);
      return v;
    };
    baseline_result r = detail::drive(c, rank_, size_, detail::or_reference(data, c, size_), make, g);
    r.algorithm = meta.algorithm;
    return r;
#else
    (void)c;
    (void)data;
    why = why_;
    return std::nullopt;
#endif
  }

 private:
#if COLLX_BENCH_HAVE_MPI
  void attach(MPI_Comm comm) {
    session_ = detail::mpi_session::acquire(why_);
    if (!session_) return;
    // A communicator of its own, so the baseline's traffic never matches the harness's.
    MPI_Comm_dup(comm, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // A fresh job's first few dozen calls run slow: after a case's own 5 warm-up calls the
    // first 8-byte all-reduce still took ~20x its steady time (Open MPI 4.1.4). Spent here,
    // they no longer land in whichever case comes first.
    for (int i = 0; i < 100; ++i) {
      int x = 0;
      MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_SUM, comm_);
    }
  }
  std::shared_ptr<detail::mpi_session> session_;
  MPI_Comm comm_ = MPI_COMM_NULL;
#endif
  int rank_ = 0;
  int size_ = 1;
  std::string why_;
};

namespace detail {

#if COLLX_BENCH_HAVE_GLOO
// Calls f with a value of the Gloo element type for t; false where Gloo has no arithmetic
// for t. collx::half and gloo::float16 are both IEEE binary16 bits.
template <class F>
bool gloo_visit(collx::dtype t, F&& f) {
  switch (t) {
    case collx::dtype::i8: f(std::int8_t{}); return true;
    case collx::dtype::u8: f(std::uint8_t{}); return true;
    case collx::dtype::i32: f(std::int32_t{}); return true;
    case collx::dtype::i64: f(std::int64_t{}); return true;
    case collx::dtype::f16: f(gloo::float16{}); return true;
    case collx::dtype::f32: f(float{}); return true;
    case collx::dtype::f64: f(double{}); return true;
    case collx::dtype::bf16: return false;
  }
  return false;
}

using gloo_fn = void (*)(void*, const void*, const void*, std::size_t);

template <class T>
gloo_fn gloo_function(collx::reduce_op op) {
  switch (op) {
    case collx::reduce_op::prod: return static_cast<gloo_fn>(&gloo::product<T>);
    case collx::reduce_op::min: return static_cast<gloo_fn>(&gloo::min<T>);
    case collx::reduce_op::max: return static_cast<gloo_fn>(&gloo::max<T>);
    default: return static_cast<gloo_fn>(&gloo::sum<T>);
  }
}

template <class T>
const gloo::ReductionFunction<T>* gloo_reduction(collx::reduce_op op) {
  switch (op) {
    case collx::reduce_op::prod: return gloo::ReductionFunction<T>::product;
    case collx::reduce_op::min: return gloo::ReductionFunction<T>::min;
    case collx::reduce_op::max: return gloo::ReductionFunction<T>::max;
    default: return gloo::ReductionFunction<T>::sum;
  }
}
#endif

}  // namespace detail

// Gloo's collectives over its TCP transport on loopback (one node): all-reduce with its
// ring (gloo::allreduce), all-gather with its ring (gloo::allgather), reduce-scatter with
// gloo::ReduceScatterHalvingDoubling, the one reduce-scatter this Gloo has.
class gloo_baseline {
 public:
  // Rank `rank` of `size`, meeting the others through a Gloo FileStore in store_dir, which
  // must exist, be seen by every rank and serve this one group; the caller removes it.
  // Ranks may be processes or threads of one process.
  gloo_baseline(int rank, int size, std::string store_dir)
      : rank_(rank), size_(size), dir_(std::move(store_dir)) {}
  ~gloo_baseline() {
#if COLLX_BENCH_HAVE_GLOO
    ctx_.reset();
#endif
    if (remove_dir_) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  gloo_baseline(const gloo_baseline&) = delete;
  gloo_baseline& operator=(const gloo_baseline&) = delete;

  static bool available(std::string& why) {
#if COLLX_BENCH_HAVE_GLOO
    (void)why;
    return true;
#else
    why = "built without Gloo (libgloo-dev not installed)";
    return false;
#endif
  }

  // From the launch: under mpirun, rank and size from MPI and a store directory that rank 0
  // makes under /tmp and broadcasts; under a launcher that sets RANK, WORLD_SIZE and
  // COLLX_JOB_ID, /tmp/collx-gloo-<COLLX_JOB_ID>, which must be new to this job. Rank 0
  // removes the directory once every rank has connected. Collective under mpirun.
  // nullptr, with why, where neither launched this process.
  static std::unique_ptr<gloo_baseline> from_environment(std::string& why) {
    if (!available(why)) return nullptr;
    std::unique_ptr<gloo_baseline> g;
#if COLLX_BENCH_HAVE_MPI
    if (detail::launched_by_mpirun()) {
      auto s = detail::mpi_session::acquire(why);
      if (!s) return nullptr;
      int rank = 0;
      int size = 1;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      MPI_Comm_size(MPI_COMM_WORLD, &size);
      // A store in /tmp and TCP on loopback reach only the ranks of this node.
      MPI_Comm node = MPI_COMM_NULL;
      int node_size = 0;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
      MPI_Comm_size(node, &node_size);
      MPI_Comm_free(&node);
      if (node_size != size) {
        why = "gloo baseline runs on one node (TCP on loopback), and this job spans several";
        return nullptr;
      }
      char dir[64] = "/tmp/collx-gloo-XXXXXX";
      if (rank == 0 && mkdtemp(dir) == nullptr) dir[0] = '\0';
      MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
      if (dir[0] == '\0') {
        why = "gloo: rank 0 could not make a store directory under /tmp";
        return nullptr;
      }
      g = std::make_unique<gloo_baseline>(rank, size, dir);
      g->keep_ = std::move(s);
      g->remove_dir_ = rank == 0;
      return g;
    }
#endif
    const char* rank_s = detail::env("RANK");
    const char* size_s = detail::env("WORLD_SIZE");
    const char* job = detail::env("COLLX_JOB_ID");
    // Open MPI's own variables, where this build has no MPI to ask: PMIX_NAMESPACE names
    // the job uniquely.
    if (rank_s == nullptr && size_s == nullptr && detail::env("OMPI_COMM_WORLD_SIZE") != nullptr) {
      rank_s = detail::env("OMPI_COMM_WORLD_RANK");
      size_s = detail::env("OMPI_COMM_WORLD_SIZE");
      job = detail::env("PMIX_NAMESPACE");
    }
    if (rank_s == nullptr || size_s == nullptr || job == nullptr) {
      why = "not launched by mpirun nor by a launcher that sets RANK, WORLD_SIZE and COLLX_JOB_ID";
      return nullptr;
    }
    const int rank = std::atoi(rank_s);
    const int size = std::atoi(size_s);
    if (size < 1 || rank < 0 || rank >= size) {
      why = "RANK or WORLD_SIZE out of range";
      return nullptr;
    }
    std::string id(job);
    for (char& ch : id) {
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') ch = '-';
    }
    const std::string dir = "/tmp/collx-gloo-" + id;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      why = "gloo: cannot make " + dir + ": " + ec.message();
      return nullptr;
    }
    g = std::make_unique<gloo_baseline>(rank, size, dir);
    g->remove_dir_ = rank == 0;
    return g;
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Collective: the rendezvous, on first use (run() calls it), or earlier by the caller.
  bool connect(std::string& why) {
#if COLLX_BENCH_HAVE_GLOO
    if (ctx_) return true;
    if (!failed_.empty()) {
      why = failed_;
      return false;
    }
    try {
      gloo::transport::tcp::attr a;
      a.hostname = "127.0.0.1";
      auto dev = gloo::transport::tcp::CreateDevice(a);
      gloo::rendezvous::FileStore store(dir_);
      auto ctx = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
      ctx->connectFullMesh(store, dev);
      ctx_ = std::move(ctx);
      // Past this barrier no rank reads the store again: it can go.
      barrier();
    } catch (const std::exception& e) {
      ctx_.reset();
      failed_ = "gloo: rendezvous through " + dir_ + " failed: " + e.what();
      why = failed_;
      return false;
    }
    if (remove_dir_) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      remove_dir_ = false;
    }
    return true;
#else
    why = "built without Gloo (libgloo-dev not installed)";
    return false;
#endif
  }

  // Collective: every rank of the group calls it with the same case.
  std::optional<baseline_result> run(const baseline_case& c, std::string& why,
                                     const baseline_data& data = {}) {
#if COLLX_BENCH_HAVE_GLOO
    if (!detail::valid_case(c, why)) return std::nullopt;
    const bool reduces = collx::reduces(c.coll);
    if (reduces && c.type == collx::dtype::bf16) {
      why = "Gloo has no bf16 arithmetic";
      return std::nullopt;
    }
    if (reduces && c.op == collx::reduce_op::avg) {
      why = "Gloo has no average";
      return std::nullopt;
    }
    if (c.coll == collx::collective::send_recv || c.coll == collx::collective::all_to_all_v ||
        c.coll == collx::collective::barrier) {
      why = std::string("not measured against Gloo: ") + std::string(collx::to_string(c.coll)) +
            " is not one of its collectives";
      return std::nullopt;
    }
    if (c.coll == collx::collective::reduce_scatter &&
        input_elements(c, size_) > static_cast<std::size_t>(INT_MAX)) {
      why = "count past Gloo's int counts";
      return std::nullopt;
    }
    if (!connect(why)) return std::nullopt;
    const std::size_t es = collx::size_of(c.type);
    const std::size_t count = c.count;
    const bool in_place = c.in_place;
    const int p = size_;
    std::string algorithm;
    auto make = [&](std::byte* send, std::byte* recv) -> std::function<void()> {
      std::function<void()> f = [] {};
      switch (c.coll) {
        case collx::collective::all_reduce:
          algorithm = "ring";
          detail::gloo_visit(c.type, [&](auto tag) {
            using T = decltype(tag);
            // Set up once and reused, tag by tag, as the API allows.
            auto o = std::make_shared<gloo::AllreduceOptions>(ctx_);
            o->setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
            if (!in_place) o->setInput(reinterpret_cast<T*>(send), count);
            o->setOutput(reinterpret_cast<T*>(recv), count);
            o->setReduceFunction(detail::gloo_function<T>(c.op));
            f = [this, o] {
              o->setTag(next_tag());
              gloo::allreduce(*o);
            };
          });
          break;
        case collx::collective::all_gather: {
          algorithm = "ring";
          auto o = std::make_shared<gloo::AllgatherOptions>(ctx_);
          // Without an input Gloo gathers in place, the rank's own block already there.
          if (!in_place) o->setInput(reinterpret_cast<std::uint8_t*>(send), count * es);
          o->setOutput(reinterpret_cast<std::uint8_t*>(recv), count * es * static_cast<std::size_t>(p));
          f = [this, o] {
            o->setTag(next_tag());
            gloo::allgather(*o);
          };
          break;
        }
        case collx::collective::reduce_scatter:
          algorithm = "halving_doubling";
          detail::gloo_visit(c.type, [&](auto tag) {
            using T = decltype(tag);
            const std::size_t n = count * static_cast<std::size_t>(p);
            // Gloo reduces the whole vector in place and leaves the rank's block at its
            // start: out of place, the input is copied in and the block out, every call.
            std::shared_ptr<std::vector<std::byte>> scratch;
            T* work = reinterpret_cast<T*>(send);
            if (!in_place) {
              scratch = std::make_shared<std::vector<std::byte>>(n * es);
              work = reinterpret_cast<T*>(scratch->data());
            }
            auto algo = std::make_shared<gloo::ReduceScatterHalvingDoubling<T>>(
                ctx_, std::vector<T*>{work}, static_cast<int>(n),
                std::vector<int>(static_cast<std::size_t>(p), static_cast<int>(count)),
                detail::gloo_reduction<T>(c.op));
            f = [=] {
              if (scratch) std::memcpy(scratch->data(), send, n * es);
              algo->run();
              if (scratch) std::memcpy(recv, scratch->data(), count * es);
            };
          });
          break;
        case collx::collective::broadcast: {
          algorithm = "one_to_all";
          auto o = std::make_shared<gloo::BroadcastOptions>(ctx_);
          // The root's input, when it has one apart; everyone's output.
          if (!in_place && rank_ == c.root) o->setInput(reinterpret_cast<std::uint8_t*>(send), count * es);
          o->setOutput(reinterpret_cast<std::uint8_t*>(recv), count * es);
          o->setRoot(c.root);
          f = [this, o] {
            o->setTag(next_tag());
            gloo::broadcast(*o);
          };
          break;
        }
        case collx::collective::all_to_all: {
          algorithm = "alltoall";
          // Gloo's all-to-all has no in-place form: in place, the buffer is copied out
          // first, every call.
          std::shared_ptr<std::vector<std::byte>> scratch;
          std::byte* from = send;
          const std::size_t total = count * es * static_cast<std::size_t>(p);
          if (in_place) {
            scratch = std::make_shared<std::vector<std::byte>>(total);
            from = scratch->data();
          }
          auto o = std::make_shared<gloo::AlltoallOptions>(ctx_);
          o->setInput(reinterpret_cast<std::uint8_t*>(from), total);
          o->setOutput(reinterpret_cast<std::uint8_t*>(recv), total);
          f = [this, o, scratch, send, total] {
            if (scratch) std::memcpy(scratch->data(), send, total);
            o->setTag(next_tag());
            gloo::alltoall(*o);
          };
          break;
        }
        case collx::collective::gather: {
          algorithm = "gather";
          auto o = std::make_shared<gloo::GatherOptions>(ctx_);
          o->setInput(reinterpret_cast<std::uint8_t*>(send), count * es);
          if (rank_ == c.root)
            o->setOutput(reinterpret_cast<std::uint8_t*>(recv), count * es * static_cast<std::size_t>(p));
          o->setRoot(c.root);
          f = [this, o] {
            o->setTag(next_tag());
            gloo::gather(*o);
          };
          break;
        }
        case collx::collective::scatter: {
          algorithm = "scatter";
          auto o = std::make_shared<gloo::ScatterOptions>(ctx_);
          std::vector<std::uint8_t*> blocks;
          for (int j = 0; j < p && rank_ == c.root; ++j) {
            blocks.push_back(reinterpret_cast<std::uint8_t*>(send) +
                             static_cast<std::size_t>(j) * count * es);
          }
          if (rank_ == c.root) o->setInputs(blocks, count * es);
          o->setOutput(reinterpret_cast<std::uint8_t*>(recv), count * es);
          o->setRoot(c.root);
          f = [this, o] {
            o->setTag(next_tag());
            gloo::scatter(*o);
          };
          break;
        }
        case collx::collective::reduce:
          algorithm = "ring";
          detail::gloo_visit(c.type, [&](auto tag) {
            using T = decltype(tag);
            auto o = std::make_shared<gloo::ReduceOptions>(ctx_);
            if (!in_place) o->setInput(reinterpret_cast<T*>(send), count);
            o->setOutput(reinterpret_cast<T*>(recv), count);
            o->setRoot(c.root);
            o->setReduceFunction(detail::gloo_function<T>(c.op));
            f = [this, o] {
              o->setTag(next_tag());
              gloo::reduce(*o);
            };
          });
          break;
        default: break;
      }
      // Gloo's algorithms are not all ready for empty vectors; there is nothing to move.
      if (count == 0) f = [] {};
      return f;
    };
    detail::group_ops g;
    g.barrier = [this] { barrier(); };
    g.max = [this](double v) {
      reduce_one(&v, static_cast<detail::gloo_fn>(&gloo::max<double>));
      return v;
    };
    g.sum = [this](long long v) {
      std::int64_t x = v;
      reduce_one(&x, static_cast<detail::gloo_fn>(&gloo::sum<std::int64_t>));
      return static_cast<long long>(x);
    };
    try {
      baseline_result r = detail::drive(c, rank_, size_, detail::or_reference(data, c, size_), make, g);
      r.algorithm = algorithm;
      return r;
    } catch (const std::exception& e) {
      why = std::string("gloo: ") + e.what();
      return std::nullopt;
    }
#else
    (void)c;
    (void)data;
    why = "built without Gloo (libgloo-dev not installed)";
    return std::nullopt;
#endif
  }

 private:
#if COLLX_BENCH_HAVE_GLOO
  // Every rank calls the same collectives in the same order, so counting gives every
  // call the same tag on every rank and a tag of its own.
  std::uint32_t next_tag() { return tag_++; }

  void barrier() {
    gloo::BarrierOptions o(ctx_);
    o.setTag(next_tag());
    gloo::barrier(o);
  }

  template <class T>
  void reduce_one(T* v, detail::gloo_fn fn) {
    gloo::AllreduceOptions o(ctx_);
    o.setOutput(v, 1);
    o.setReduceFunction(fn);
    o.setTag(next_tag());
    gloo::allreduce(o);
  }

  std::shared_ptr<gloo::Context> ctx_;
  std::uint32_t tag_ = 0;
  std::string failed_;
#endif
  int rank_;
  int size_;
  std::string dir_;
  bool remove_dir_ = false;
  std::shared_ptr<void> keep_;  // the MPI session from_environment relied on
};

}  // namespace bench
