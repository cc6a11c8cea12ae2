// One rank of a multi-process test, started by collx-run (or mpirun): it builds its
// communicator from the environment and runs one scenario.
//
//   mp_worker collectives   every collective, every algorithm that implements it, odd
//                           and edge counts, in place and out of place, several types,
//                           each result checked against a serial reference in double
//   mp_worker kill VICTIM   a few good calls, then VICTIM SIGKILLs itself; every other
//                           rank must get a collx::error (not hang) and says so
//   mp_worker mismatch      rank 0 calls a different count: every rank gets an error
//
// Exit status 0 when the scenario held on this rank. Output lines a test script checks:
// "OK <n> cases", "DETECTED <kind> after <ms> ms: <message>".

#include <collx/init.hpp>

#include "../reference.hpp"
#if COLLX_HAVE_MPI
#include <collx/init_mpi.hpp>
#endif

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace collx;
using clk = std::chrono::steady_clock;

using test::input;
using test::ref_reduce;

// Conversions that also serve the 16-bit storage types.
template <class T>
T from_d(double v) {
  if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(v);
  } else {
    return T(static_cast<float>(v));
  }
}
template <class T>
double to_d(T v) {
  if constexpr (std::is_integral_v<T> || std::is_same_v<T, double>) {
    return static_cast<double>(v);
  } else {
    return static_cast<double>(static_cast<float>(v));
  }
}

int failures = 0;
int cases = 0;

template <class T>
bool close_enough(T got, double want, reduce_op op) {
  const double g = to_d(got);
  if (op == reduce_op::avg) return std::fabs(g - want) <= 1e-5 * (1 + std::fabs(want));
  return g == want;
}

template <class T>
void one_case(communicator& comm, collective c, algorithm a, std::size_t n, bool in_place, reduce_op op) {
  const int p = comm.size();
  const int me = comm.rank();
  const auto up = static_cast<std::size_t>(p);
  const auto urank = static_cast<std::size_t>(me);
  options o;
  o.algo = a;
  ++cases;
  std::vector<T> in;
  std::vector<T> out;
  std::size_t first = 0;  // index of this rank's result block, for checking
  std::size_t len = 0;
  auto fill = [&](std::vector<T>& v, std::size_t count, std::size_t at, std::size_t base) {
    for (std::size_t i = 0; i < count; ++i) v[at + i] = from_d<T>(input(me, base + i));
  };
  switch (c) {
    case collective::all_reduce:
      in.resize(n);
      fill(in, n, 0, 0);
      if (in_place) {
        comm.all_reduce(in, op, o);
        out = in;
      } else {
        out.assign(n, from_d<T>(99));
        comm.all_reduce(in, out, op, o);
      }
      len = n;
      break;
    case collective::reduce_scatter:
      in.resize(n * up);
      fill(in, n * up, 0, 0);
      if (in_place) {
        comm.reduce_scatter(in, op, o);
        out = in;
        first = urank * n;
      } else {
        out.assign(n, from_d<T>(99));
        comm.reduce_scatter(in, out, op, o);
      }
      len = n;
      break;
    case collective::all_gather:
      if (in_place) {
        out.assign(n * up, from_d<T>(99));
        fill(out, n, urank * n, 0);
        comm.all_gather(out, o);
      } else {
        in.resize(n);
        fill(in, n, 0, 0);
        out.assign(n * up, from_d<T>(99));
        comm.all_gather(in, out, o);
      }
      len = n * up;
      break;
  }
  long long wrong = 0;
  for (std::size_t i = 0; i < len; ++i) {
    double want = 0;
    if (c == collective::all_reduce) want = ref_reduce(op, p, i);
    if (c == collective::reduce_scatter) want = ref_reduce(op, p, urank * n + i);
    if (c == collective::all_gather)
      want = input(static_cast<int>(i / std::max<std::size_t>(n, 1)), i % std::max<std::size_t>(n, 1));
    if (!close_enough(out[first + i], want, op)) ++wrong;
  }
  // In-place reduce-scatter leaves the other blocks as they were.
  if (c == collective::reduce_scatter && in_place) {
    for (std::size_t i = 0; i < n * up; ++i) {
      if (i >= first && i < first + n) continue;
      if (to_d(out[i]) != input(me, i)) ++wrong;
    }
  }
  if (wrong != 0) {
    ++failures;
    std::printf("FAILED %s %s n=%zu %s %s: %lld wrong\n", std::string(to_string(c)).c_str(),
                std::string(to_string(a)).c_str(), n, in_place ? "in-place" : "out-of-place",
                std::string(to_string(op)).c_str(), wrong);
  }
}

int collectives(communicator& comm) {
  const std::size_t counts[] = {0, 1, 7, 1001, 300007};
  for (collective c : {collective::all_reduce, collective::reduce_scatter, collective::all_gather}) {
    for (algorithm a : all_algorithms) {
      if (!implements(a, c)) continue;
      for (std::size_t n : counts) {
        for (bool ip : {false, true}) {
          one_case<float>(comm, c, a, n, ip, reduce_op::sum);
          if (n <= 1001 && c != collective::all_gather) {
            one_case<std::int32_t>(comm, c, a, n, ip, reduce_op::max);
            one_case<double>(comm, c, a, n, ip, reduce_op::avg);
          }
        }
      }
    }
  }
  // The automatic choice too, and a bf16 sum.
  one_case<float>(comm, collective::all_reduce, algorithm::automatic, 1 << 20, false, reduce_op::sum);
  one_case<bfloat16>(comm, collective::all_reduce, algorithm::automatic, 4099, true, reduce_op::sum);
  if (failures != 0) return 1;
  std::printf("OK %d cases\n", cases);
  return 0;
}

int report(const error& e, clk::time_point t0) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count();
  std::printf("DETECTED %s after %lld ms: %s\n", e.code().message().c_str(), static_cast<long long>(ms),
              e.what());
  std::fflush(stdout);
  return 0;
}

int kill_scenario(communicator& comm, int victim) {
  // collx-run stops the other ranks when one dies; they must live long enough to show
  // that they noticed by themselves.
  std::signal(SIGTERM, SIG_IGN);
  std::vector<float> v(1 << 18, 1.0f);
  for (int i = 0; i < 3; ++i) comm.all_reduce(v, reduce_op::sum);
  if (comm.rank() == victim) {
    std::fflush(stdout);
    std::raise(SIGKILL);
  }
  const auto t0 = clk::now();
  try {
    for (int i = 0; i < 1000; ++i) comm.all_reduce(v, reduce_op::sum);
  } catch (const error& e) {
    return report(e, t0);
  }
  std::printf("NOT DETECTED\n");
  return 1;
}

int mismatch_scenario(communicator& comm) {
  std::vector<float> v(comm.rank() == 0 ? 5 : 6, 1.0f);
  const auto t0 = clk::now();
  try {
    comm.all_reduce(v, reduce_op::sum);
  } catch (const error& e) {
    return report(e, t0);
  }
  std::printf("NOT DETECTED\n");
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "collectives";
  try {
    communicator_config cfg;
    if (scenario != "collectives") cfg.timeout = std::chrono::seconds(20);
#if COLLX_HAVE_MPI
    // Under mpirun with COLLX_INIT=mpi (or COLLX_TRANSPORT=mpi): met through MPI
    // (init_from_mpi); otherwise through the launcher's environment (init_from_env).
    std::optional<mpi_session> mpi;
    const char* t = std::getenv("COLLX_TRANSPORT");
    const char* how = std::getenv("COLLX_INIT");
    if ((t != nullptr && std::string(t) == "mpi") || (how != nullptr && std::string(how) == "mpi"))
      mpi.emplace();
    communicator comm = mpi ? init_from_mpi(MPI_COMM_WORLD, cfg) : init_from_env(cfg);
#else
    communicator comm = init_from_env(cfg);
#endif
    if (scenario == "collectives") return collectives(comm);
    if (scenario == "kill") return kill_scenario(comm, argc > 2 ? std::atoi(argv[2]) : 1);
    if (scenario == "mismatch") return mismatch_scenario(comm);
    std::fprintf(stderr, "unknown scenario '%s'\n", scenario.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::printf("ERROR %s\n", e.what());
    return 1;
  }
}
