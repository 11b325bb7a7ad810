// Kernels and launch planning of featup::adaptive_conv on CUDA, without host glue, so that the kernels can
// also be built for kernels/tests/cuda_emulation (CUDA threads emulated on the CPU, for CI without a GPU).
//
// One launch covers the whole batch; blocks are (32 x 4*R pixel tile, batch element, channel group). A thread
// owns R vertically adjacent pixels and keeps per-pixel state for all D*D taps in registers while it loops
// over channels; the source data of a few channels at a time are staged, converted to the accumulation type,
// in shared memory (rows coalesced along x).
//
//   forward  registers: the pixel's filters       reads: x_padded tile   writes: out
//   dx       registers: the filters that reach    reads: grad_out tile   writes: grad_x  (a gather: no atomics)
//            the pixel, gathered once
//   dK       registers: the D*D tap sums          reads: x tile + grad   writes: grad_filters (each thread
//                                                                          owns its pixels: no atomics)
// float16/bfloat16 accumulate in float32. Small problems split channels into groups for parallelism; the
// filter gradient then sums the groups' partial results in a second pass.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace featup {
namespace {

constexpr int kThreadsX = 32;        // one warp across a tile row: coalesced loads and stores along x
constexpr int kThreadsY = 4;
constexpr int kThreads = kThreadsX * kThreadsY;
// A thread holds R*D*D filter values or tap sums (~165 registers at D=7): small blocks let 3 of them share
// a multiprocessor, so that one block computes while another waits at a barrier.
constexpr int kMinBlocksPerSm = 3;
constexpr int kTileW = kThreadsX;
constexpr int kMinGroupChannels = 32;
constexpr int kBlocksPerSm = 8;      // blocks to aim for per multiprocessor before splitting channels

// Tile shape for accumulation type acc_t and window D: R output rows per thread reuse each staged source row
// for R outputs; R * D * D values must stay in registers, hence R = 1 for double and for 9x9 windows. CC
// channels are staged per pair of barriers, within the 48 KiB of static shared memory.
template <typename acc_t, int D>
struct Geometry {
  static constexpr int R = (D <= 7 && sizeof(acc_t) == 4) ? 2 : 1;
  static constexpr int CC = sizeof(acc_t) == 4 ? 8 : 4;
  static constexpr int TH = kThreadsY * R;              // output rows per tile
  static constexpr int SR = TH + D - 1;                 // staged source rows
  static constexpr int SC = kTileW + D - 1;             // staged source columns
};

// Which tile, batch element and channel group a block works on.
struct BlockTask {
  int tile_y0, tile_x0, b, c_begin, c_end;
};

__device__ inline BlockTask block_task(int tiles_x, int tiles, int groups, int group_channels, int C, int tile_h) {
  const int tile = blockIdx.x % tiles, rest = blockIdx.x / tiles;
  const int group = rest % groups, b = rest / groups;
  const int c_begin = group * group_channels;
  return {tile / tiles_x * tile_h, tile % tiles_x * kTileW, b, c_begin, min(C, c_begin + group_channels)};
}

// Stages channels [c0, c0 + CC) of src (B, C, src_h, src_w) from (origin_y, origin_x) on into the tile;
// anything outside the image or past c_end reads as 0.
template <typename scalar_t, typename acc_t, int CC, int SR, int SC>
__device__ void stage(acc_t (&tile)[CC][SR][SC], const scalar_t* __restrict__ src, int b, int C, int c0,
                      int c_end, int src_h, int src_w, int origin_y, int origin_x) {
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;
  for (int e = tid; e < CC * SR * SC; e += kThreads) {
    const int cc = e / (SR * SC), row = e / SC % SR, col = e % SC;
    const int c = c0 + cc, sy = origin_y + row, sx = origin_x + col;
    const bool inside = c < c_end && sy >= 0 && sy < src_h && sx >= 0 && sx < src_w;
    tile[cc][row][col] = inside ? static_cast<acc_t>(src[((static_cast<int64_t>(b) * C + c) * src_h + sy) * src_w + sx])
                                : acc_t(0);
  }
}

// forward (InputGrad = false): dst = out (B,C,H,W), src = x_padded (B,C,H+D-1,W+D-1);
// input gradient (InputGrad = true): dst = grad_x (B,C,H+D-1,W+D-1), src = grad_out (B,C,H,W).
// Both are dst[y][x] = sum_{a,c} w[a][c] * src_tile[y+a][x+c] with per-pixel weights w: the filters for the
// forward, and for the input gradient w[a][c] = K[y-i, x-j, i, j] with (i, j) = (D-1-a, D-1-c).
template <typename scalar_t, int D, bool InputGrad>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    stencil_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ filters, scalar_t* __restrict__ dst,
                   int C, int H, int W, int tiles_x, int tiles, int groups, int group_channels) {
  using acc_t = at::opmath_type<scalar_t>;
  using G = Geometry<acc_t, D>;
  constexpr int R = G::R, P = D * D;
  __shared__ acc_t tile[G::CC][G::SR][G::SC];

  const int Hp = H + D - 1, Wp = W + D - 1;
  const int out_h = InputGrad ? Hp : H, out_w = InputGrad ? Wp : W;
  const int src_h = InputGrad ? H : Hp, src_w = InputGrad ? W : Wp;
  const BlockTask t = block_task(tiles_x, tiles, groups, group_channels, C, G::TH);
  const int x = t.tile_x0 + threadIdx.x, y_first = t.tile_y0 + threadIdx.y * R;

  acc_t w[R][D][D];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int y = y_first + r;
#pragma unroll
    for (int a = 0; a < D; ++a) {
#pragma unroll
      for (int c = 0; c < D; ++c) {
        const int i = InputGrad ? D - 1 - a : a, j = InputGrad ? D - 1 - c : c;
        const int fy = InputGrad ? y - i : y, fx = InputGrad ? x - j : x;  // the output pixel this tap serves
        const bool inside = y < out_h && x < out_w && fy >= 0 && fy < H && fx >= 0 && fx < W;
        w[r][a][c] = inside
                         ? static_cast<acc_t>(filters[((static_cast<int64_t>(t.b) * H + fy) * W + fx) * P + i * D + j])
                         : acc_t(0);
      }
    }
  }

  const int origin_y = InputGrad ? t.tile_y0 - (D - 1) : t.tile_y0;
  const int origin_x = InputGrad ? t.tile_x0 - (D - 1) : t.tile_x0;
  for (int c0 = t.c_begin; c0 < t.c_end; c0 += G::CC) {
    __syncthreads();  // everyone is done with the previous chunk
    stage<scalar_t, acc_t, G::CC, G::SR, G::SC>(tile, src, t.b, C, c0, t.c_end, src_h, src_w, origin_y, origin_x);
    __syncthreads();
#pragma unroll 1
    for (int cc = 0; cc < G::CC && c0 + cc < t.c_end; ++cc) {
      acc_t acc[R][2];  // two sums per output (even and odd tap rows) halve the chain of dependent FMAs
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc_t(0);
#pragma unroll
      for (int q = 0; q < R + D - 1; ++q) {  // each staged row once, for every output row it feeds
        acc_t v[D];
#pragma unroll
        for (int c = 0; c < D; ++c) v[c] = tile[cc][threadIdx.y * R + q][threadIdx.x + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int a = q - r;
          if (a >= 0 && a < D) {
#pragma unroll
            for (int c = 0; c < D; ++c) acc[r][a & 1] += w[r][a][c] * v[c];
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int y = y_first + r;
        if (y < out_h && x < out_w) {
          dst[((static_cast<int64_t>(t.b) * C + c0 + cc) * out_h + y) * out_w + x] =
              static_cast<scalar_t>(acc[r][0] + acc[r][1]);
        }
      }
    }
  }
}

// dK[b,y,x,a,c] = sum over the group's channels of grad[b,ch,y,x] * x_padded[b,ch,y+a,x+c], written to
// dst + group * B*H*W*D*D (dst_t is the accumulation type when there are several groups to sum).
template <typename scalar_t, typename dst_t, int D>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    filter_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ src, dst_t* __restrict__ dst,
                       int B, int C, int H, int W, int tiles_x, int tiles, int groups, int group_channels) {
  using acc_t = at::opmath_type<scalar_t>;
  using G = Geometry<acc_t, D>;
  constexpr int R = G::R, P = D * D;
  __shared__ acc_t tile[G::CC][G::SR][G::SC];
  __shared__ acc_t gtile[G::CC][G::TH][kTileW];

  const BlockTask t = block_task(tiles_x, tiles, groups, group_channels, C, G::TH);
  const int x = t.tile_x0 + threadIdx.x, y_first = t.tile_y0 + threadIdx.y * R;
  const int tid = threadIdx.y * kThreadsX + threadIdx.x;

  acc_t acc[R][D][D];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int a = 0; a < D; ++a) {
#pragma unroll
      for (int c = 0; c < D; ++c) acc[r][a][c] = acc_t(0);
    }
  }

  for (int c0 = t.c_begin; c0 < t.c_end; c0 += G::CC) {
    __syncthreads();
    stage<scalar_t, acc_t, G::CC, G::SR, G::SC>(tile, src, t.b, C, c0, t.c_end, H + D - 1, W + D - 1, t.tile_y0,
                                                t.tile_x0);
    for (int e = tid; e < G::CC * G::TH * kTileW; e += kThreads) {
      const int cc = e / (G::TH * kTileW), row = e / kTileW % G::TH, col = e % kTileW;
      const int c = c0 + cc, gy = t.tile_y0 + row, gx = t.tile_x0 + col;
      const bool inside = c < t.c_end && gy < H && gx < W;
      gtile[cc][row][col] =
          inside ? static_cast<acc_t>(grad[((static_cast<int64_t>(t.b) * C + c) * H + gy) * W + gx]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 1
    for (int cc = 0; cc < G::CC && c0 + cc < t.c_end; ++cc) {
      acc_t g[R];
#pragma unroll
      for (int r = 0; r < R; ++r) g[r] = gtile[cc][threadIdx.y * R + r][threadIdx.x];
#pragma unroll
      for (int q = 0; q < R + D - 1; ++q) {
        acc_t v[D];
#pragma unroll
        for (int c = 0; c < D; ++c) v[c] = tile[cc][threadIdx.y * R + q][threadIdx.x + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int a = q - r;
          if (a >= 0 && a < D) {
#pragma unroll
            for (int c = 0; c < D; ++c) acc[r][a][c] += g[r] * v[c];
          }
        }
      }
    }
  }

  const int group = blockIdx.x / tiles % groups;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int y = y_first + r;
    if (y >= H || x >= W) continue;
    dst_t* out = dst + ((static_cast<int64_t>(group) * B + t.b) * H * W + static_cast<int64_t>(y) * W + x) * P;
#pragma unroll
    for (int a = 0; a < D; ++a) {
#pragma unroll
      for (int c = 0; c < D; ++c) out[a * D + c] = static_cast<dst_t>(acc[r][a][c]);
    }
  }
}

// out[k] = sum_g partial[g * n + k]: the channel groups' filter gradients.
template <typename scalar_t, typename acc_t>
__global__ void sum_groups_kernel(const acc_t* __restrict__ partial, scalar_t* __restrict__ out, int64_t n,
                                  int groups) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int g = 0; g < groups; ++g) sum += partial[g * n + k];
    out[k] = static_cast<scalar_t>(sum);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid of one launch over a (B, C, out_h, out_w) output: tiles x batch x channel groups, flattened into x.
struct LaunchPlan {
  int tiles_x, tiles, groups, group_channels;
  dim3 grid;
};

inline LaunchPlan plan_launch(const char* op, int64_t B, int64_t C, int64_t out_h, int64_t out_w, int64_t tile_h,
                              int64_t max_groups, int64_t sms) {
  const int64_t tiles_x = ceil_div(out_w, kTileW), tiles = tiles_x * ceil_div(out_h, tile_h);
  int64_t groups = ceil_div(int64_t{kBlocksPerSm} * sms, tiles * B);
  groups = std::max<int64_t>(1, std::min({groups, max_groups, ceil_div(C, kMinGroupChannels)}));
  const int64_t group_channels = ceil_div(C, groups);
  groups = ceil_div(C, group_channels);  // no group without channels
  const int64_t blocks = tiles * B * groups;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": got ", blocks, " thread blocks for a (", B, ", ",
              C, ", ", out_h, ", ", out_w, ") output, expected at most 2^31-1; split the batch");
  return {static_cast<int>(tiles_x), static_cast<int>(tiles), static_cast<int>(groups),
          static_cast<int>(group_channels), dim3(static_cast<unsigned>(blocks))};
}

}  // namespace
}  // namespace featup
