// The CUDA tests' main: runs doctest where a CUDA device answers; without a GPU says why
// and exits 77, which ctest reports as skipped; fails where a GPU is listed but CUDA
// fails (gpu_gate.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gpu_gate.hpp"

int main(int argc, char** argv) {
  // Up to 8 ranks share one GPU in the tests, each with a stream of its own and one for
  // uploads: give each stream a hardware queue (read when CUDA starts, so first). With
  // COLLX_TEST_DEFAULT_QUEUES set, CUDA keeps its default of 8 (the test of that case).
  if (std::getenv("COLLX_TEST_DEFAULT_QUEUES") != nullptr) {
    ::unsetenv("CUDA_DEVICE_MAX_CONNECTIONS");
  } else {
    ::setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  }
  if (const int gate = test::gpu_gate(); gate >= 0) return gate;
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
