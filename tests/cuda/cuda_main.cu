// The CUDA tests' main: runs doctest where a CUDA device answers, and otherwise says
// why not and exits 77, which ctest reports as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <collx/cuda/probe.hpp>

int main(int argc, char** argv) {
  // Up to 8 ranks share one GPU in the tests, each with a stream of its own and one for
  // uploads: give each stream a hardware queue (read when CUDA starts, so first).
  ::setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  if (const std::string why = collx::cuda::no_device(); !why.empty()) {
    std::printf("skipped: %s\n", why.c_str());
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
