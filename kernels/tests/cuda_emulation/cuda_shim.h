// Just enough of CUDA's execution model to run adaptive_conv_cuda_kernels.cuh on a CPU: every thread of a
// block is a std::thread, __syncthreads is a std::barrier, blocks run one after another so that __shared__
// arrays can be plain statics. It checks indexing, halos, tiling, channel groups and barriers; it says
// nothing about speed, warps or the GPU memory model.
#pragma once

#include <barrier>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__
using std::min;

template <typename Kernel>
void emulate_launch(dim3 grid, dim3 block, const Kernel& kernel) {
  gridDim = grid;
  blockDim = block;
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    std::barrier<> barrier(block.x * block.y);
    block_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < block.y; ++ty) {
      for (unsigned tx = 0; tx < block.x; ++tx) {
        threads.emplace_back([&, tx, ty] {
          threadIdx = dim3(tx, ty);
          blockIdx = dim3(bx);
          kernel();
        });
      }
    }
    for (std::thread& t : threads) t.join();
  }
}
