// The shared-memory transport with its ranks as threads of one process, so that a
// ThreadSanitizer build (make test-tsan) sees every rank's transport state, executor and
// communicator in one process (not the rings' ordering between ranks: each rank maps the
// segments at its own addresses):
// all_reduce, reduce_scatter and all_gather with every algorithm that implements them,
// in place and out of place, against the serial reference of the multi-process tests.

#include <doctest/doctest.h>

#include <collx/collx.hpp>
#include <collx/rendezvous/store.hpp>
#include <collx/transport/shm.hpp>

#include <unistd.h>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"

using namespace collx;
using namespace std::chrono_literals;

namespace {

struct shm_case {
  std::size_t slot_bytes;
  std::size_t slots;
};

// Default slots (an executor segment fits one, so the executor always reduces out of
// views); and the smallest legal ring, 2 slots of 4 KiB, where a large message spans many
// chunks, the sender waits on the receiver for every other one, and only segments of
// at most 4 KiB are reduced out of views.
const shm_case cases[] = {{shm_options{}.slot_bytes, shm_options{}.slots}, {4096, 2}};

// The counts: empty, one element, odd, a few KiB, and more than one default slot.
std::vector<std::size_t> counts() {
  return {0, 1, 7, 1001, shm_options{}.slot_bytes / sizeof(double) + 1001};
}

// What one rank found wrong, reported to the main thread (which alone asserts).
struct report {
  std::size_t wrong = 0;
  std::size_t calls = 0;
  std::string first;
  // Builds the message only for a wrong element: the checks cover millions of them.
  void check(const char* coll, const std::string& where, std::size_t i, double got, double want) {
    if (got == want || ++wrong > 3) return;
    first += std::string("\n  ") + coll + " " + where + ": [" + std::to_string(i) +
             "] = " + std::to_string(got) + ", expected " + std::to_string(want);
  }
};

// One rank: every collective, algorithm, count and placement on one communicator.
void run_rank(communicator& c, report& rep) {
  const int r = c.rank();
  const int p = c.size();
  const auto up = static_cast<std::size_t>(p);
  const auto ur = static_cast<std::size_t>(r);
  options opt;
  opt.timeout = 60s;  // a deadlock is collx's timeout error, naming the step
  for (auto algo : all_algorithms) {
    opt.algo = algo;
    for (std::size_t n : counts()) {
      for (bool in_place : {false, true}) {
        const std::string where = std::string(to_string(algo)) + " n=" + std::to_string(n) +
                                  (in_place ? " in place" : " out of place") + " rank " + std::to_string(r);
        if (implements(algo, collective::all_reduce)) {
          std::vector<double> in(n), out(n, -1.0);
          for (std::size_t i = 0; i < n; ++i) in[i] = test::input(r, i);
          if (in_place) {
            out = in;
            c.all_reduce(out, reduce_op::sum, opt);
          } else {
            c.all_reduce(in, out, reduce_op::sum, opt);
          }
          for (std::size_t i = 0; i < n; ++i) {
            rep.check("all_reduce", where, i, out[i], test::ref_reduce(reduce_op::sum, p, i));
          }
          ++rep.calls;
        }
        if (implements(algo, collective::reduce_scatter)) {
          std::vector<double> in(n * up);
          for (std::size_t i = 0; i < in.size(); ++i) in[i] = test::input(r, i);
          std::vector<double> out(n, -1.0);
          const double* mine = out.data();
          std::vector<double> buf;
          if (in_place) {
            buf = in;
            c.reduce_scatter(buf, reduce_op::sum, opt);
            mine = buf.data() + ur * n;
          } else {
            c.reduce_scatter(in, out, reduce_op::sum, opt);
          }
          for (std::size_t i = 0; i < n; ++i) {
            rep.check("reduce_scatter", where, i, mine[i], test::ref_reduce(reduce_op::sum, p, ur * n + i));
          }
          ++rep.calls;
        }
        if (implements(algo, collective::all_gather)) {
          std::vector<double> in(n), out(n * up, -1.0);
          for (std::size_t i = 0; i < n; ++i) in[i] = test::input(r, i);
          if (in_place) {
            std::copy(in.begin(), in.end(), out.begin() + static_cast<std::ptrdiff_t>(ur * n));
            c.all_gather(out, opt);
          } else {
            c.all_gather(in, out, opt);
          }
          for (std::size_t i = 0; i < out.size(); ++i) {
            rep.check("all_gather", where, i, out[i], test::input(static_cast<int>(i / n), i % n));
          }
          ++rep.calls;
        }
      }
    }
  }
}

// p shm ranks as threads of this process, meeting through a file store in a fresh
// directory. Each rank maps every segment itself, exactly as separate processes do.
void run_job(int p, const shm_case& sc) {
  std::random_device rd;
  const std::string job = "test-shm-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  const auto dir = (std::filesystem::temp_directory_path() / ("collx-" + job)).string();
  std::vector<report> reports(static_cast<std::size_t>(p));
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < p; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      auto st = std::make_shared<file_store>(dir);
      shm_options o;
      o.slot_bytes = sc.slot_bytes;
      o.slots = sc.slots;
      o.job_id = job;
      o.timeout = 20s;
      communicator c(shm_transport(*st, r, p, o), {}, st);
      run_rank(c, reports[static_cast<std::size_t>(r)]);
      // No rank closes its segment (its liveness lock) while a peer may still wait on it.
      st->barrier("done", p, 20s);
    }));
  }
  std::vector<std::string> errors;
  for (auto& f : ranks) {
    try {
      f.get();
    } catch (const std::exception& e) {
      errors.push_back(e.what());
    }
  }
  std::filesystem::remove_all(dir);
  for (const auto& e : errors) FAIL_CHECK("a rank failed: " << e);
  for (int r = 0; r < p; ++r) {
    const auto& rep = reports[static_cast<std::size_t>(r)];
    CHECK_MESSAGE(rep.wrong == 0, "rank " << r << ": " << rep.wrong << " wrong elements:" << rep.first);
    // Every collective each algorithm implements ran, at every count, in both placements.
    std::size_t expected = 0;
    for (auto algo : all_algorithms) {
      for (auto coll : {collective::all_reduce, collective::reduce_scatter, collective::all_gather}) {
        if (implements(algo, coll)) expected += 2 * counts().size();
      }
    }
    CHECK(rep.calls == expected);
  }
  // The segments were unlinked once every rank had mapped them.
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    CHECK(e.path().filename().string().find("collx-" + job) == std::string::npos);
  }
}

}  // namespace

TEST_CASE("default slots, p=2 and 3 ranks as threads: every collective and algorithm matches the reference") {
  for (int p : {2, 3}) {
    CAPTURE(p);
    run_job(p, cases[0]);
  }
}

TEST_CASE(
    "2 slots of 4 KiB, p=2 and 3 ranks as threads: every collective and algorithm matches the reference") {
  for (int p : {2, 3}) {
    CAPTURE(p);
    run_job(p, cases[1]);
  }
}
