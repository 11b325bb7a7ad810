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
#include "cpu_tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace featup {
namespace {

// The filters as zero-bordered tap planes: kz[b][i*D+j][D-1+y][D-1+x] = K[b,y,x,i,j]. Both stencils read
// filter values of consecutive pixels from it, and the border makes taps that fall off the image read 0.
template <typename scalar_t, int D>
at::Tensor tap_planes(const scalar_t* filters, const AdaptiveConvShape& s, at::ScalarType acc_dtype) {
  constexpr int64_t P = D * D;
  const int64_t H = s.H, W = s.W, Hz = H + 2 * (D - 1), Wz = W + 2 * (D - 1);
  // Every element is written once (border rows and columns with 0): no separate zero-fill pass.
  at::Tensor kz = at::empty({s.B, P, Hz, Wz}, at::TensorOptions().dtype(acc_dtype));
  advise_huge_pages(kz);
  using T = at::opmath_type<scalar_t>;
  T* out = kz.mutable_data_ptr<T>();
  at::parallel_for(0, s.B * Hz, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / Hz, y = r % Hz - (D - 1);
      T* row = out + b * P * Hz * Wz + (r % Hz) * Wz;
      if (y < 0 || y >= H) {
        for (int64_t p = 0; p < P; ++p) std::fill_n(row + p * Hz * Wz, Wz, T(0));
        continue;
      }
      const scalar_t* k = filters + (b * H + y) * W * P;
      for (int64_t p = 0; p < P; ++p) {
        T* plane_row = row + p * Hz * Wz;
        std::fill_n(plane_row, D - 1, T(0));
        std::fill_n(plane_row + D - 1 + W, D - 1, T(0));
        for (int64_t x = 0; x < W; ++x) plane_row[D - 1 + x] = static_cast<T>(k[x * P + p]);
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
  advise_huge_pages(out);
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
  advise_huge_pages(dx);
  advise_huge_pages(dk);
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

// One half of backward_cpu each, for callers that need only that gradient (the range logits' neighbour
// products). The output is allocated first and checked with the backward's checks as the missing argument.
at::Tensor filter_grad_cpu(const at::Tensor& grad_out, const at::Tensor& x_padded) {
  constexpr const char* op = "featup::adaptive_conv_filter_grad";
  TORCH_CHECK(grad_out.dim() == 4 && x_padded.dim() == 4 && x_padded.size(2) >= grad_out.size(2), op,
              ": got grad_out ", grad_out.sizes(), " and x_padded ", x_padded.sizes(),
              ", expected (B, C, H, W) and (B, C, H+d-1, W+d-1)");
  const int64_t d = x_padded.size(2) - grad_out.size(2) + 1;
  at::Tensor dk = at::empty({grad_out.size(0), grad_out.size(2), grad_out.size(3), d, d}, x_padded.options());
  const AdaptiveConvShape s = check_backward_args(grad_out, x_padded, dk, op);
  if (s.B * s.H * s.W == 0) return dk;
  advise_huge_pages(dk);
  const at::Tensor g = grad_out.contiguous(), x = x_padded.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_conv_filter_grad_cpu", [&] {
    dispatch_window(s.d, op, [&](auto window) {
      filter_grad_kernel<scalar_t, decltype(window)::value>(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return dk;
}

at::Tensor input_grad_cpu(const at::Tensor& grad_out, const at::Tensor& filters) {
  constexpr const char* op = "featup::adaptive_conv_input_grad";
  TORCH_CHECK(grad_out.dim() == 4 && filters.dim() == 5, op, ": got grad_out ", grad_out.sizes(), " and filters ",
              filters.sizes(), ", expected (B, C, H, W) and (B, H, W, d, d)");
  const int64_t d = filters.size(3);
  at::Tensor dx = at::empty({grad_out.size(0), grad_out.size(1), grad_out.size(2) + d - 1, grad_out.size(3) + d - 1},
                            grad_out.options());
  const AdaptiveConvShape s = check_backward_args(grad_out, dx, filters, op);
  if (s.B * s.H * s.W == 0) return dx.zero_();
  advise_huge_pages(dx);
  const at::Tensor g = grad_out.contiguous(), k = filters.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "adaptive_conv_input_grad_cpu", [&] {
    dispatch_window(s.d, op, [&](auto window) {
      input_grad_kernel<scalar_t, decltype(window)::value>(
          g.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(featup, CPU, m) {
  m.impl("adaptive_conv_forward", &forward_cpu);
  m.impl("adaptive_conv_backward", &backward_cpu);
  m.impl("adaptive_conv_filter_grad", &filter_grad_cpu);
  m.impl("adaptive_conv_input_grad", &input_grad_cpu);
}

}  // namespace featup
