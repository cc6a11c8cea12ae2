// A second translation unit for test_cuda_reduce: cuda_reduce.cuh compiles on its own,
// twice over (its guard), and the link proves that two units including it do not both
// define its kernels.
#include "collx/exec/cuda_reduce.cuh"

void cuda_reduce_second_unit(void* dst, const void* a, const void* b, std::size_t n, cudaStream_t stream) {
  collx::cuda::reduce(collx::dtype::f32, collx::reduce_op::sum, dst, a, b, n, stream);
  collx::cuda::finish_avg(collx::dtype::f32, dst, n, 2, stream);
  collx::cuda::copy(dst, a, n, stream);
}
