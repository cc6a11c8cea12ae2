#pragma once

// Whether the GPU tests run here, skip, or fail before they start. A machine without a
// GPU skips (exit 77) and says why; but where nvidia-smi lists a GPU, any CUDA error is a
// failure: a broken driver, a busy or misconfigured device must not read as "skipped".

#include <cuda_runtime.h>

#include <cstdio>
#include <string>

namespace test {

// GPUs nvidia-smi lists ("GPU 0: ..." lines of `nvidia-smi -L`); -1 without nvidia-smi.
inline int gpus_listed() {
  FILE* f = ::popen("nvidia-smi -L 2>/dev/null", "r");
  if (f == nullptr) return -1;
  int gpus = 0;
  char line[512];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::string(line).rfind("GPU ", 0) == 0) ++gpus;
  }
  const int rc = ::pclose(f);
  return rc == 0 || gpus > 0 ? gpus : -1;
}

// -1: a device answers, go on. 77: no device or no driver here (printed: why). 1: a CUDA
// error where a GPU exists or is listed (printed: what failed).
inline int gpu_gate() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess && n > 0) return -1;
  cudaGetLastError();
  const std::string cuda_says = e == cudaSuccess
                                    ? std::string("cudaGetDeviceCount found none")
                                    : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  const int listed = gpus_listed();
  if (listed > 0) {
    std::printf("FAILED: nvidia-smi lists %d GPU(s), but CUDA says: %s\n", listed, cuda_says.c_str());
    return 1;
  }
  const bool no_device = e == cudaSuccess || e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver;
  if (!no_device) {
    std::printf("FAILED: CUDA error that is not the absence of a device or driver: %s\n", cuda_says.c_str());
    return 1;
  }
  std::printf("skipped: no CUDA device (%s; %s)\n", cuda_says.c_str(),
              listed < 0 ? "no nvidia-smi here" : "nvidia-smi lists no GPU");
  return 77;
}

}  // namespace test
