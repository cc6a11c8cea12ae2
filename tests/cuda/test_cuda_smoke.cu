// The CUDA build itself: a device answers and collx's core headers compile under nvcc.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include "collx/collx.hpp"

TEST_CASE("a CUDA device answers") {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  CHECK(devices > 0);
}
