// CPU kernels of featup::adaptive_conv.
//
// Work is split into tasks run by at::parallel_for (OpenMP in PyTorch's builds). Inside a task, pixels are
// processed in register tiles of 16 consecutive values (GCC/Clang vectors) with float accumulation (double
// for float64); float16/bfloat16 data are widened into small per-task buffers first.
//
//   forward  out[b,c,y,x] = sum_{i,j} K[b,y,x,i,j] x[b,c,y+i,x+j]      tasks: (batch, 16 rows, 4 channels)
//   dK       dK[b,y,x,i,j] = sum_c g[b,c,y,x] x[b,c,y+i,x+j]           tasks: one output row, all taps
//   dx       dx[b,c,v,u] = sum_{i,j} K[b,v-i,u-j,i,j] g[b,c,v-i,u-j]   tasks: like the forward
//
// Every task owns what it writes, so there are no atomics and results do not depend on the thread count.
#include "adaptive_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

// A portable build still uses the wide vector units: GCC emits each hot function for AVX-512, AVX2+FMA and
// baseline x86-64, and the loader picks the best one for the machine.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FEATUP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FEATUP_CPU_CLONES
#endif

// Tile vectors wider than the baseline clone's registers only live inside inlined helpers, so the ABI note
// GCC gives about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace featup {
namespace {

constexpr int64_t kTileX = 16;       // pixels per register tile: one AVX-512 or two AVX2 float vectors
constexpr int64_t kBlockC = 4;       // channels that share each load of a filter tap
constexpr int64_t kBlockRows = 16;   // rows per forward / input-gradient task
constexpr int64_t kCorrBlockC = 32;  // channels staged at once for the filter gradient

// kTileX consecutive values as one GCC/Clang vector; each clone maps it onto its widest registers.
template <typename T>
struct Tile {
  typedef T type __attribute__((vector_size(kTileX * sizeof(T))));
};

template <typename T>
[[gnu::always_inline]] inline typename Tile<T>::type load_tile(const T* p) {
  typename Tile<T>::type v;
  std::memcpy(&v, p, sizeof(v));  // an unaligned vector load
  return v;
}

template <typename T>
[[gnu::always_inline]] inline void store_tile(T* p, const typename Tile<T>::type& v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T, typename scalar_t>
void widen(const scalar_t* src, int64_t n, T* dst) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(src[k]);
}

template <typename scalar_t, typename T>
void narrow(const T* src, int64_t n, scalar_t* dst) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<scalar_t>(src[k]);
}

// Where tap (i, j) of a stencil reads: filter values at w + i*w_i + j*w_j and data at src + i*s_i + j*s_j.
// The forward and the input gradient are the same stencil with different strides.
struct TapStrides {
  int64_t w_i, w_j, s_i, s_j;
};

// dst[c][x] = sum_{i,j} w[i*w_i + j*w_j + x] * src[c*src_c + i*s_i + j*s_j + x] for c < NC and the kTileX
// pixels x; the accumulators stay in registers and each filter load serves NC channels.
template <typename T, int D, int NC>
[[gnu::always_inline]] inline void stencil_tile(const T* w, const T* src, int64_t src_c, TapStrides t, T* dst,
                                                int64_t dst_c) {
  typename Tile<T>::type acc[NC] = {};
  for (int i = 0; i < D; ++i) {
    for (int j = 0; j < D; ++j) {
      const auto wv = load_tile(w + i * t.w_i + j * t.w_j);
      const T* sp = src + i * t.s_i + j * t.s_j;
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[c] += wv * load_tile(sp + c * src_c);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) store_tile(dst + c * dst_c, acc[c]);
}

// One row of `width` pixels for nc <= kBlockC channels. A row that is not a whole number of tiles ends with a
// tile overlapping the previous one, which rewrites the same values; rows narrower than a tile go pixel by pixel.
template <typename T, int D>
FEATUP_CPU_CLONES void stencil_row(const T* w, const T* src, int64_t src_c, TapStrides t, int64_t nc,
                                   int64_t width, T* dst, int64_t dst_c) {
  if (width < kTileX) {
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t x = 0; x < width; ++x) {
        T acc = 0;
        for (int i = 0; i < D; ++i) {
          for (int j = 0; j < D; ++j) acc += w[i * t.w_i + j * t.w_j + x] * src[c * src_c + i * t.s_i + j * t.s_j + x];
        }
        dst[c * dst_c + x] = acc;
      }
    }
    return;
  }
  for (int64_t x0 = 0; x0 < width; x0 += kTileX) {
    const int64_t x = std::min(x0, width - kTileX);
    if (nc == kBlockC) {
      stencil_tile<T, D, kBlockC>(w + x, src + x, src_c, t, dst + x, dst_c);
      continue;
    }
    for (int64_t c = 0; c < nc; ++c) {
      stencil_tile<T, D, 1>(w + x, src + c * src_c + x, src_c, t, dst + c * dst_c + x, dst_c);
    }
  }
}

// dkt[(i*D+j)*dk_tap + x] += sum_{c < nc} g[c*g_c + x] * src[c*src_c + i*src_row + j + x] for the kTileX
// pixels x: the D taps of one filter row accumulate in registers over all channels.
template <typename T, int D>
[[gnu::always_inline]] inline void correlate_tile(const T* g, int64_t g_c, const T* src, int64_t src_c,
                                                  int64_t src_row, int64_t nc, T* dkt, int64_t dk_tap) {
  for (int i = 0; i < D; ++i) {
    typename Tile<T>::type acc[D];
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j) acc[j] = load_tile(dkt + (i * D + j) * dk_tap);
    for (int64_t c = 0; c < nc; ++c) {
      const auto gv = load_tile(g + c * g_c);
      const T* sp = src + c * src_c + i * src_row;
#pragma GCC unroll 16
      for (int j = 0; j < D; ++j) acc[j] += gv * load_tile(sp + j);
    }
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j) store_tile(dkt + (i * D + j) * dk_tap, acc[j]);
  }
}

// One row of `width` pixels for nc <= kCorrBlockC channels. The last tile overlaps the previous one and sees
// zeros in place of the gradient of pixels already done; rows narrower than a tile go pixel by pixel.
template <typename T, int D>
FEATUP_CPU_CLONES void correlate_row(const T* g, int64_t g_c, const T* src, int64_t src_c, int64_t src_row,
                                     int64_t nc, int64_t width, T* dkt, int64_t dk_tap) {
  if (width < kTileX) {
    for (int64_t c = 0; c < nc; ++c) {
      for (int p = 0; p < D * D; ++p) {
        const T* sp = src + c * src_c + (p / D) * src_row + p % D;
        for (int64_t x = 0; x < width; ++x) dkt[p * dk_tap + x] += g[c * g_c + x] * sp[x];
      }
    }
    return;
  }
  int64_t x0 = 0;
  for (; x0 + kTileX <= width; x0 += kTileX) {
    correlate_tile<T, D>(g + x0, g_c, src + x0, src_c, src_row, nc, dkt + x0, dk_tap);
  }
  if (x0 == width) return;
  const int64_t x = width - kTileX, done = x0 - x;
  T masked[kCorrBlockC * kTileX] = {};
  for (int64_t c = 0; c < nc; ++c) std::copy(g + c * g_c + x0, g + c * g_c + width, masked + c * kTileX + done);
  correlate_tile<T, D>(masked, kTileX, src + x, src_c, src_row, nc, dkt + x, dk_tap);
}

// The filters as zero-bordered tap planes: kz[b][i*D+j][D-1+y][D-1+x] = K[b,y,x,i,j]. Both stencils read
// filter values of consecutive pixels from it, and the border makes taps that fall off the image read 0.
template <typename scalar_t, int D>
at::Tensor tap_planes(const scalar_t* filters, const AdaptiveConvShape& s, at::ScalarType acc_dtype) {
  constexpr int64_t P = D * D;
  const int64_t H = s.H, W = s.W, Hz = H + 2 * (D - 1), Wz = W + 2 * (D - 1);
  at::Tensor kz = at::zeros({s.B, P, Hz, Wz}, at::TensorOptions().dtype(acc_dtype));
  using T = at::opmath_type<scalar_t>;
  T* out = kz.mutable_data_ptr<T>();
  at::parallel_for(0, s.B * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, y = r % H;
      const scalar_t* k = filters + r * W * P;
      T* base = out + (b * P * Hz + y + D - 1) * Wz + D - 1;
      for (int64_t p = 0; p < P; ++p) {
        for (int64_t x = 0; x < W; ++x) base[p * Hz * Wz + x] = static_cast<T>(k[x * P + p]);
      }
    }
  });
  return kz;
}

// Tasks of a stencil over `rows` rows: (batch, block of kBlockRows rows, block of kBlockC channels), channels
// fastest, so that consecutive tasks of a thread reuse the same tap planes from cache.
struct StencilTasks {
  int64_t channel_blocks, row_blocks;
  StencilTasks(const AdaptiveConvShape& s, int64_t rows)
      : channel_blocks((s.C + kBlockC - 1) / kBlockC), row_blocks((rows + kBlockRows - 1) / kBlockRows) {}
  int64_t count(int64_t batch) const { return batch * channel_blocks * row_blocks; }
};

template <typename scalar_t, int D>
void forward_kernel(const scalar_t* x, const scalar_t* filters, scalar_t* out, const AdaptiveConvShape& s) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<scalar_t, T>;
  constexpr int64_t P = D * D;
  const int64_t C = s.C, H = s.H, W = s.W, Hp = s.Hp(), Wp = s.Wp();
  const int64_t Hz = H + 2 * (D - 1), Wz = W + 2 * (D - 1);
  const at::Tensor kz = tap_planes<scalar_t, D>(filters, s, c10::CppTypeToScalarType<T>::value);
  const T* kzp = kz.const_data_ptr<T>();
  const StencilTasks tasks(s, H);
  at::parallel_for(0, tasks.count(s.B), 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> xs(kDirect ? 0 : kBlockC * (kBlockRows + D - 1) * Wp), os(kDirect ? 0 : kBlockC * W);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t cb = task % tasks.channel_blocks, rb = task / tasks.channel_blocks % tasks.row_blocks;
      const int64_t b = task / tasks.channel_blocks / tasks.row_blocks;
      const int64_t c0 = cb * kBlockC, nc = std::min(kBlockC, C - c0);
      const int64_t y0 = rb * kBlockRows, y1 = std::min(H, y0 + kBlockRows);
      const scalar_t* xb = x + ((b * C + c0) * Hp + y0) * Wp;  // padded rows y0 .. y1+D-2 of nc channels
      const T* src = nullptr;
      int64_t src_c = Hp * Wp;
      if constexpr (kDirect) {
        src = xb;
      } else {
        src_c = (y1 - y0 + D - 1) * Wp;
        for (int64_t c = 0; c < nc; ++c) widen(xb + c * Hp * Wp, src_c, xs.data() + c * src_c);
        src = xs.data();
      }
      const TapStrides taps{D * Hz * Wz, Hz * Wz, Wp, 1};
      for (int64_t y = y0; y < y1; ++y) {
        const T* w = kzp + (b * P * Hz + y + D - 1) * Wz + D - 1;
        scalar_t* orow = out + ((b * C + c0) * H + y) * W;
        if constexpr (kDirect) {
          stencil_row<T, D>(w, src + (y - y0) * Wp, src_c, taps, nc, W, orow, H * W);
        } else {
          stencil_row<T, D>(w, src + (y - y0) * Wp, src_c, taps, nc, W, os.data(), W);
          for (int64_t c = 0; c < nc; ++c) narrow(os.data() + c * W, W, orow + c * H * W);
        }
      }
    }
  });
}

template <typename scalar_t, int D>
void filter_grad_kernel(const scalar_t* g, const scalar_t* x, scalar_t* dfilters, const AdaptiveConvShape& s) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same_v<scalar_t, T>;
  constexpr int64_t P = D * D;
  const int64_t C = s.C, H = s.H, W = s.W, Hp = s.Hp(), Wp = s.Wp();
  at::parallel_for(0, s.B * H, 1, [&](int64_t r0, int64_t r1) {
    std::vector<T> dkt(P * W);  // this row's filter gradient, tap-major so that pixels are contiguous
    std::vector<T> gs(kDirect ? 0 : kCorrBlockC * W), xs(kDirect ? 0 : kCorrBlockC * D * Wp);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, y = r % H;
      std::fill(dkt.begin(), dkt.end(), T(0));
      for (int64_t c0 = 0; c0 < C; c0 += kCorrBlockC) {
        const int64_t nc = std::min(kCorrBlockC, C - c0);
        const scalar_t* gr = g + ((b * C + c0) * H + y) * W;
        const scalar_t* xr = x + ((b * C + c0) * Hp + y) * Wp;
        if constexpr (kDirect) {
          correlate_row<T, D>(gr, H * W, xr, Hp * Wp, Wp, nc, W, dkt.data(), W);
        } else {
          for (int64_t c = 0; c < nc; ++c) {
            widen(gr + c * H * W, W, gs.data() + c * W);
            widen(xr + c * Hp * Wp, D * Wp, xs.data() + c * D * Wp);
          }
          correlate_row<T, D>(gs.data(), W, xs.data(), D * Wp, Wp, nc, W, dkt.data(), W);
        }
      }
      scalar_t* dk = dfilters + r * W * P;
      for (int64_t px = 0; px < W; ++px) {
        for (int64_t p = 0; p < P; ++p) dk[px * P + p] = static_cast<scalar_t>(dkt[p * W + px]);
      }
    }
  });
}

template <typename scalar_t, int D>
void input_grad_kernel(const scalar_t* g, const scalar_t* filters, scalar_t* dx, const AdaptiveConvShape& s) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t P = D * D;
  const int64_t C = s.C, H = s.H, W = s.W, Hp = s.Hp(), Wp = s.Wp();
  const int64_t Hz = H + 2 * (D - 1), Wz = W + 2 * (D - 1);
  const at::Tensor kz = tap_planes<scalar_t, D>(filters, s, c10::CppTypeToScalarType<T>::value);
  const T* kzp = kz.const_data_ptr<T>();
  const StencilTasks tasks(s, Hp);
  at::parallel_for(0, tasks.count(s.B), 1, [&](int64_t t0, int64_t t1) {
    // The gradient rows a task reads, zero-bordered like the tap planes: gz[c][r][D-1+x] = g[b,c,v0-(D-1)+r,x].
    const int64_t gz_c = (kBlockRows + D - 1) * Wz;
    std::vector<T> gz(kBlockC * gz_c), os(kBlockC * Wp);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t cb = task % tasks.channel_blocks, rb = task / tasks.channel_blocks % tasks.row_blocks;
      const int64_t b = task / tasks.channel_blocks / tasks.row_blocks;
      const int64_t c0 = cb * kBlockC, nc = std::min(kBlockC, C - c0);
      const int64_t v0 = rb * kBlockRows, v1 = std::min(Hp, v0 + kBlockRows);
      std::fill(gz.begin(), gz.end(), T(0));
      for (int64_t c = 0; c < nc; ++c) {
        for (int64_t r = 0; r < v1 - v0 + D - 1; ++r) {
          const int64_t y = v0 - (D - 1) + r;
          if (y >= 0 && y < H) widen(g + ((b * C + c0 + c) * H + y) * W, W, gz.data() + c * gz_c + r * Wz + D - 1);
        }
      }
      // Tap (i, j) of dx pixel (v, u) is output pixel (v-i, u-j): both pointers walk backwards.
      const TapStrides taps{D * Hz * Wz - Wz, Hz * Wz - 1, -Wz, -1};
      for (int64_t v = v0; v < v1; ++v) {
        const T* w = kzp + (b * P * Hz + v + D - 1) * Wz + D - 1;
        const T* src = gz.data() + (v - v0 + D - 1) * Wz + D - 1;
        scalar_t* drow = dx + ((b * C + c0) * Hp + v) * Wp;
        if constexpr (std::is_same_v<scalar_t, T>) {
          stencil_row<T, D>(w, src, gz_c, taps, nc, Wp, drow, Hp * Wp);
        } else {
          stencil_row<T, D>(w, src, gz_c, taps, nc, Wp, os.data(), Wp);
          for (int64_t c = 0; c < nc; ++c) narrow(os.data() + c * Wp, Wp, drow + c * Hp * Wp);
        }
      }
    }
  });
}

at::Tensor forward_cpu(const at::Tensor& x_padded, const at::Tensor& filters) {
  const AdaptiveConvShape s = check_forward_args(x_padded, filters, "featup::adaptive_conv_forward");
  const at::Tensor x = x_padded.contiguous(), k = filters.contiguous();
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_conv_forward_cpu", [&] {
    dispatch_window(s.d, "featup::adaptive_conv_forward", [&](auto window) {
      forward_kernel<scalar_t, decltype(window)::value>(
          x.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_padded,
                                                const at::Tensor& filters) {
  const AdaptiveConvShape s = check_backward_args(grad_out, x_padded, filters, "featup::adaptive_conv_backward");
  const at::Tensor g = grad_out.contiguous(), x = x_padded.contiguous(), k = filters.contiguous();
  if (s.B * s.H * s.W == 0) return {at::zeros_like(x), at::zeros_like(k)};
  at::Tensor dx = at::empty_like(x), dk = at::empty_like(k);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_conv_backward_cpu", [&] {
    dispatch_window(s.d, "featup::adaptive_conv_backward", [&](auto window) {
      constexpr int D = decltype(window)::value;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      filter_grad_kernel<scalar_t, D>(gp, x.const_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(), s);
      input_grad_kernel<scalar_t, D>(gp, k.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return {dx, dk};
}

}  // namespace

TORCH_LIBRARY_IMPL(featup, CPU, m) {
  m.impl("adaptive_conv_forward", &forward_cpu);
  m.impl("adaptive_conv_backward", &backward_cpu);
}

}  // namespace featup
