// CPU kernels of the fused JBU layer ops (schemas in adaptive_conv.cpp).
//
// featup::jbu_layer_forward computes one JBU layer's output row by row without ever holding its B×d²×H×W
// filters: a task (batch, block of output rows), for each row, correlates the queries with the padded keys into the row's d² logits
// (correlate_row, as the adaptive conv's filter gradient), turns each 16-pixel tile of them into filters in
// registers (softmax with the spatial logits, then the fixup MLP on [filters, guidance]), and applies those
// filters to every channel of the padded source (stencil_row, as the adaptive conv's forward):
//
//   S[p]   = softmax_p(τ·<q[b,:,y,x], k_padded[b,:,y+i,x+j]> + spatial[p])        p = i·d + j
//   h[o]   = hidden_scale[b,o] · GELU(b1[o] + Σ_t w1[o,t]·S[t] + Σ_g w1[o,d²+g]·guidance[b,g,y,x])
//   K[p]   = S[p] + 0.1 · (b2[p] + Σ_o w2[p,o]·h[o])
//   out[b,c,y,x] = Σ_p K[p] · source_padded[b,c,y+i,x+j]
//
// featup::bicubic_pad_forward is F.interpolate(mode="bicubic", align_corners=False) to (H, W) followed by
// F.pad(mode="reflect") by `pad`, in one separable pass per channel plane; bicubic_pad_backward is its adjoint.
//
// float32 and float64 only (the callers fall back to PyTorch for other dtypes). Tasks own what they write: no
// atomics, and results do not depend on the thread count.
#include "adaptive_conv.h"
#include "cpu_tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace featup {
namespace {

constexpr int64_t kMaxGuidance = 8;  // guidance channels a tile keeps beside its d² filter values


// The element-wise steps run on Half vectors (cpu_tiles.h): GCC turns comparisons and selects on them into single
// AVX2/AVX-512 instructions, but scalarises them on 16-wide vectors.
template <typename T>
using LanesOf = typename Half<T>::type;

// e^x: Cephes' expf (about 1 ulp; rounding by the 1.5·2^23 shifter) for float, std::exp for double.
template <typename T>
[[gnu::always_inline]] inline LanesOf<T> lanes_exp(LanesOf<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    typedef int32_t Int __attribute__((vector_size(32)));
    const LanesOf<float> lo = LanesOf<float>{} - 87.3f, hi = LanesOf<float>{} + 88.7f;
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    const LanesOf<float> shifted = x * 1.44269504088896341f + 12582912.0f;
    const LanesOf<float> n = shifted - 12582912.0f;
    const Int exponent = (reinterpret_cast<const Int&>(shifted) - 0x4B400000 + 127) << 23;
    const LanesOf<float> r = x - n * 0.693359375f + n * 2.12194440e-4f;
    LanesOf<float> y = LanesOf<float>{} + 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    return y * reinterpret_cast<const LanesOf<float>&>(exponent);
  } else {
    for (int64_t k = 0; k < Half<T>::count; ++k) x[k] = std::exp(x[k]);
    return x;
  }
}

// The exact (erf) GELU: for float, erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the formula of PyTorch's
// own vectorised CPU GELU; std::erf for double.
template <typename T>
[[gnu::always_inline]] inline LanesOf<T> lanes_gelu(LanesOf<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    const LanesOf<float> zero{};
    const LanesOf<float> z = x * 0.70710678118654752f;
    const LanesOf<float> a = z < zero ? -z : z;
    const LanesOf<float> t = 1.0f / (a * 0.3275911f + 1.0f);
    LanesOf<float> poly = t * 1.061405429f - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    const LanesOf<float> e = 1.0f - poly * t * lanes_exp<float>(-z * z);
    return x * 0.5f * (1.0f + (z < zero ? -e : e));
  } else {
    for (int64_t k = 0; k < Half<T>::count; ++k) x[k] = 0.5 * x[k] * (1.0 + std::erf(x[k] * 0.70710678118654752));
    return x;
  }
}

// out[u][k] = bias[u] + Σ_{t < n} w[u·w_row + t] · in[t·in_row + k] for u < NO and the Half vector at k: NO accumulators
// in registers, each input load shared by NO weights.
template <typename T, int NO>
[[gnu::always_inline]] inline void dense_lanes(const T* in, int64_t in_row, int64_t n, const T* w, int64_t w_row,
                                               const T* bias, T* out, int64_t out_row) {
  LanesOf<T> acc[NO];
#pragma GCC unroll 8
  for (int u = 0; u < NO; ++u) acc[u] = LanesOf<T>{} + bias[u];
  for (int64_t t = 0; t < n; ++t) {
    const LanesOf<T> v = load_half(in + t * in_row);
#pragma GCC unroll 8
    for (int u = 0; u < NO; ++u) acc[u] += v * w[u * w_row + t];
  }
#pragma GCC unroll 8
  for (int u = 0; u < NO; ++u) store_half(out + u * out_row, acc[u]);
}

// out rows o < m of a dense layer over the Half vector at k (see dense_lanes): blocks of 7 rows (7 accumulators, the
// input and a weight fit AVX2's 16 registers; d² = 49 and 81 split evenly), then blocks of 1.
template <typename T>
[[gnu::always_inline]] inline void dense_rows(const T* in, int64_t in_row, int64_t n, const T* w, const T* bias,
                                              int64_t m, T* out, int64_t out_row) {
  constexpr int NO = 7;
  int64_t o = 0;
  for (; o + NO <= m; o += NO) dense_lanes<T, NO>(in, in_row, n, w + o * n, n, bias + o, out + o * out_row, out_row);
  for (; o < m; ++o) dense_lanes<T, 1>(in, in_row, n, w + o * n, n, bias + o, out + o * out_row, out_row);
}

// The weights of one layer's filters (see the top of the file), read by every tile.
template <typename T>
struct FilterWeights {
  const T *spatial, *w1, *b1, *w2, *b2;
  T temperature;     // τ
  int64_t guidance;  // g: w1 is d²×(d²+g)
};

// One tile of kTileX pixels: logits (d² rows of stride `stride`) and guidance (g rows) in, filters out, all on
// Half vectors (arrays of 16-wide vectors would live in memory on AVX2).
template <typename T, int P>
FEATUP_CPU_CLONES void filter_tile(const T* logits, const T* guidance, int64_t stride, const FilterWeights<T>& fw,
                                   const T* hidden_scale, T* filters) {
  constexpr int64_t N = Half<T>::count, L = kTileX;
  const int64_t G = fw.guidance;
  // The fixup's input [softmax; guidance] as rows of L values, then its hidden and output layers.
  alignas(64) T in[(P + kMaxGuidance) * L], hidden[P * L], fix[P * L];
  for (int64_t g = 0; g < G; ++g) std::copy_n(guidance + g * stride, L, in + (P + g) * L);
  for (int64_t k = 0; k < L; k += N) {
    LanesOf<T> top = load_half(logits + k) * fw.temperature + fw.spatial[0];
    for (int p = 0; p < P; ++p) {
      const LanesOf<T> v = load_half(logits + p * stride + k) * fw.temperature + fw.spatial[p];
      store_half(in + p * L + k, v);
      top = v > top ? v : top;
    }
    LanesOf<T> sum{};
    for (int p = 0; p < P; ++p) {
      const LanesOf<T> e = lanes_exp<T>(load_half(in + p * L + k) - top);
      store_half(in + p * L + k, e);
      sum += e;
    }
    for (int p = 0; p < P; ++p) store_half(in + p * L + k, load_half(in + p * L + k) / sum);
    dense_rows<T>(in + k, L, P + G, fw.w1, fw.b1, P, hidden + k, L);
    for (int q = 0; q < P; ++q) {
      store_half(hidden + q * L + k, lanes_gelu<T>(load_half(hidden + q * L + k)) * hidden_scale[q]);
    }
    dense_rows<T>(hidden + k, L, P, fw.w2, fw.b2, P, fix + k, L);
    for (int p = 0; p < P; ++p) {
      store_half(filters + p * stride + k, load_half(in + p * L + k) + load_half(fix + p * L + k) * T(0.1));
    }
  }
}

struct LayerShape {
  int64_t B, C, H, W, Q, G;  // batch, source channels, output size, query channels, guidance channels
};

// Rows per task: their filters (d² × rows × W) stay in L2 while every channel block of the source is applied to all
// of them, so that each source row, read by d output rows, comes from cache.
constexpr int64_t kLayerRows = 8;

template <typename T, int D>
void jbu_layer_kernel(const LayerShape& s, const T* source, const T* queries, const T* keys, const T* guidance,
                      const FilterWeights<T>& fw, const T* hidden_scale, T* out) {
  constexpr int P = D * D;
  const int64_t C = s.C, H = s.H, W = s.W, Q = s.Q, G = s.G, Hp = H + D - 1, Wp = W + D - 1;
  const int64_t Wb = std::max(W, kTileX);  // row buffers hold at least one whole tile; lanes past W stay 0
  const int64_t blocks = (H + kLayerRows - 1) / kLayerRows;
  at::parallel_for(0, s.B * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> logits(P * Wb), filters(kLayerRows * P * Wb), guide(G * Wb, T(0));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / blocks, y0 = task % blocks * kLayerRows, rows = std::min(kLayerRows, H - y0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t y = y0 + r;
        std::fill(logits.begin(), logits.end(), T(0));
        for (int64_t c0 = 0; c0 < Q; c0 += kCorrBlockC) {
          correlate_row<T, D>(queries + ((b * Q + c0) * H + y) * W, H * W, keys + ((b * Q + c0) * Hp + y) * Wp,
                              Hp * Wp, Wp, std::min(kCorrBlockC, Q - c0), W, logits.data(), Wb);
        }
        for (int64_t g = 0; g < G; ++g) {
          std::copy_n(guidance + ((b * G + g) * H + y) * W, W, guide.data() + g * Wb);
        }
        T* row_filters = filters.data() + r * P * Wb;
        for (int64_t x0 = 0; x0 < W; x0 += kTileX) {
          const int64_t x = std::min(x0, Wb - kTileX);  // the last tile may overlap the previous one
          filter_tile<T, P>(logits.data() + x, guide.data() + x, Wb, fw, hidden_scale + b * P, row_filters + x);
        }
      }
      const TapStrides taps{D * Wb, Wb, Wp, 1};
      for (int64_t c0 = 0; c0 < C; c0 += kBlockC) {
        for (int64_t r = 0; r < rows; ++r) {
          stencil_row<T, D>(filters.data() + r * P * Wb, source + ((b * C + c0) * Hp + y0 + r) * Wp, Hp * Wp, taps,
                            std::min(kBlockC, C - c0), W, out + ((b * C + c0) * H + y0 + r) * W, H * W);
        }
      }
    }
  });
}

void check_float(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype, at::Device device) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": got ", name, " of dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.device() == device, op, ": got ", name, " on ", t.device(), ", expected ", device);
}

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == expected, op, ": got ", name, " of shape ", t.sizes(), ", expected ", expected);
}

at::Tensor jbu_layer_forward_cpu(const at::Tensor& source_padded, const at::Tensor& queries,
                                 const at::Tensor& keys_padded, const at::Tensor& guidance,
                                 const at::Tensor& spatial_logits, double temperature, const at::Tensor& w1,
                                 const at::Tensor& b1,
                                 const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& hidden_scale) {
  constexpr const char* op = "featup::jbu_layer_forward";
  TORCH_CHECK(queries.dim() == 4 && guidance.dim() == 4 && source_padded.dim() == 4, op,
              ": got queries ", queries.sizes(), ", guidance ", guidance.sizes(), " and source_padded ",
              source_padded.sizes(), ", expected 4 dimensions each");
  const int64_t P = spatial_logits.numel(), d = std::lround(std::sqrt(static_cast<double>(P)));
  TORCH_CHECK(spatial_logits.dim() == 1 && d * d == P && d % 2 == 1, op, ": got spatial_logits of shape ",
              spatial_logits.sizes(), ", expected d² values for an odd window d");
  const LayerShape s{queries.size(0), source_padded.size(1), queries.size(2), queries.size(3), queries.size(1),
                     guidance.size(1)};
  TORCH_CHECK(s.G <= kMaxGuidance, op, ": got ", s.G, " guidance channels, expected at most ", kMaxGuidance);
  check_shape(source_padded, {s.B, s.C, s.H + d - 1, s.W + d - 1}, op, "source_padded");
  check_shape(keys_padded, {s.B, s.Q, s.H + d - 1, s.W + d - 1}, op, "keys_padded");
  check_shape(guidance, {s.B, s.G, s.H, s.W}, op, "guidance");
  check_shape(w1, {P, P + s.G}, op, "w1");
  check_shape(b1, {P}, op, "b1");
  check_shape(w2, {P, P}, op, "w2");
  check_shape(b2, {P}, op, "b2");
  check_shape(hidden_scale, {s.B, P}, op, "hidden_scale");
  const at::ScalarType dtype = queries.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": got ", dtype, ", expected float32 or float64");
  const at::Tensor inputs[] = {source_padded, keys_padded, guidance, spatial_logits, w1, b1, w2, b2, hidden_scale};
  const char* names[] = {"source_padded", "keys_padded", "guidance", "spatial_logits", "w1", "b1", "w2", "b2",
                         "hidden_scale"};
  for (int k = 0; k < 9; ++k) check_float(inputs[k], op, names[k], dtype, queries.device());
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, queries.options());
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  const at::Tensor src = source_padded.contiguous(), q = queries.contiguous(), k = keys_padded.contiguous(),
                   g = guidance.contiguous(), sp = spatial_logits.contiguous(), w1c = w1.contiguous(),
                   b1c = b1.contiguous(), w2c = w2.contiguous(), b2c = b2.contiguous(), hs = hidden_scale.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "jbu_layer_forward_cpu", [&] {
    const FilterWeights<scalar_t> fw{sp.const_data_ptr<scalar_t>(), w1c.const_data_ptr<scalar_t>(),
                                     b1c.const_data_ptr<scalar_t>(), w2c.const_data_ptr<scalar_t>(),
                                     b2c.const_data_ptr<scalar_t>(), static_cast<scalar_t>(temperature), s.G};
    dispatch_window(d, op, [&](auto window) {
      jbu_layer_kernel<scalar_t, decltype(window)::value>(
          s, src.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
          g.const_data_ptr<scalar_t>(), fw, hs.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
    });
  });
  return out;
}

// One axis of the padded bicubic resampling: padded output index o reads the 4 source indices index[k·n + o] with
// weights weight[k·n + o] (n outputs; tap-major, so that the row pass gathers with vector loads). Indices, lambdas
// and weights follow ATen's upsample_bicubic2d (align_corners=False, no scale factor: scale = in / out, computed in
// the data's type); output index o is the resampled index reflect(o − pad).
template <typename T>
struct CubicAxis {
  int64_t n;
  std::vector<int32_t> index;
  std::vector<T> weight;

  CubicAxis(int64_t in, int64_t out, int64_t pad) : n(out + 2 * pad), index(4 * n), weight(4 * n) {
    TORCH_CHECK(in < (int64_t(1) << 31), "featup::bicubic_pad: got a source side of ", in, ", expected < 2^31");
    constexpr T A = T(-0.75);
    const T scale = static_cast<T>(in) / static_cast<T>(out);
    for (int64_t o = 0; o < n; ++o) {
      int64_t dst = o - pad;
      dst = dst < 0 ? -dst : (dst >= out ? 2 * (out - 1) - dst : dst);
      const T real = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
      const int64_t base = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
      const T t = std::min(std::max(real - static_cast<T>(base), T(0)), T(1));
      const T x1 = t + T(1), x2 = T(1) - t, x3 = x2 + T(1);
      weight[0 * n + o] = ((A * x1 - T(5) * A) * x1 + T(8) * A) * x1 - T(4) * A;
      weight[1 * n + o] = ((A + T(2)) * t - (A + T(3))) * t * t + T(1);
      weight[2 * n + o] = ((A + T(2)) * x2 - (A + T(3))) * x2 * x2 + T(1);
      weight[3 * n + o] = ((A * x3 - T(5) * A) * x3 + T(8) * A) * x3 - T(4) * A;
      for (int64_t k = 0; k < 4; ++k) {
        index[k * n + o] = static_cast<int32_t>(std::min(std::max(base - 1 + k, int64_t(0)), in - 1));
      }
    }
  }
};

// Rows first (each source row resampled along x into `rows`), then columns: out[Y] = Σ_k wy[Y,k]·rows[iy[Y,k]].
template <typename T>
FEATUP_CPU_CLONES void bicubic_plane(const T* src, int64_t h, int64_t w, const CubicAxis<T>& ax,
                                     const CubicAxis<T>& ay, int64_t Ho, int64_t Wo, T* rows, T* out) {
  const int32_t *i0 = ax.index.data(), *i1 = i0 + Wo, *i2 = i1 + Wo, *i3 = i2 + Wo;
  const T *c0 = ax.weight.data(), *c1 = c0 + Wo, *c2 = c1 + Wo, *c3 = c2 + Wo;
  for (int64_t yy = 0; yy < h; ++yy) {
    const T* s = src + yy * w;
    T* r = rows + yy * Wo;
    for (int64_t X = 0; X < Wo; ++X) r[X] = c0[X] * s[i0[X]] + c1[X] * s[i1[X]] + c2[X] * s[i2[X]] + c3[X] * s[i3[X]];
  }
  for (int64_t Y = 0; Y < Ho; ++Y) {
    const T c[4] = {ay.weight[Y], ay.weight[Ho + Y], ay.weight[2 * Ho + Y], ay.weight[3 * Ho + Y]};
    const T *r0 = rows + ay.index[Y] * Wo, *r1 = rows + ay.index[Ho + Y] * Wo, *r2 = rows + ay.index[2 * Ho + Y] * Wo,
            *r3 = rows + ay.index[3 * Ho + Y] * Wo;
    T* o = out + Y * Wo;
    for (int64_t X = 0; X < Wo; ++X) o[X] = c[0] * r0[X] + c[1] * r1[X] + c[2] * r2[X] + c[3] * r3[X];
  }
}

// The adjoint of bicubic_plane: columns scattered back onto `rows`, then rows back onto the source plane.
template <typename T>
FEATUP_CPU_CLONES void bicubic_plane_adjoint(const T* grad, int64_t h, int64_t w, const CubicAxis<T>& ax,
                                             const CubicAxis<T>& ay, int64_t Ho, int64_t Wo, T* rows, T* dsrc) {
  std::fill(rows, rows + h * Wo, T(0));
  for (int64_t Y = 0; Y < Ho; ++Y) {
    const T* g = grad + Y * Wo;
    for (int64_t k = 0; k < 4; ++k) {
      T* r = rows + ay.index[k * Ho + Y] * Wo;
      const T ck = ay.weight[k * Ho + Y];
      for (int64_t X = 0; X < Wo; ++X) r[X] += ck * g[X];
    }
  }
  std::fill(dsrc, dsrc + h * w, T(0));
  for (int64_t yy = 0; yy < h; ++yy) {
    const T* r = rows + yy * Wo;
    T* d = dsrc + yy * w;
    for (int64_t k = 0; k < 4; ++k) {
      const int32_t* i = ax.index.data() + k * Wo;
      const T* c = ax.weight.data() + k * Wo;
      for (int64_t X = 0; X < Wo; ++X) d[i[X]] += c[X] * r[X];
    }
  }
}

void check_bicubic_args(const at::Tensor& t, int64_t height, int64_t width, int64_t pad, const char* op) {
  TORCH_CHECK(t.dim() == 4, op, ": got a tensor of shape ", t.sizes(), ", expected B×C×h×w");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": got ", t.scalar_type(),
              ", expected float32 or float64");
  TORCH_CHECK(pad >= 0 && height > pad && width > pad, op, ": got output ", height, "x", width, " and pad ", pad,
              ", expected both sides larger than pad >= 0 (reflect padding)");
}

at::Tensor bicubic_pad_forward_cpu(const at::Tensor& source, int64_t height, int64_t width, int64_t pad) {
  constexpr const char* op = "featup::bicubic_pad_forward";
  check_bicubic_args(source, height, width, pad, op);
  TORCH_CHECK(source.size(2) > 0 && source.size(3) > 0, op, ": got an empty source ", source.sizes());
  const at::Tensor src = source.contiguous();
  const int64_t planes = src.size(0) * src.size(1), h = src.size(2), w = src.size(3);
  const int64_t Ho = height + 2 * pad, Wo = width + 2 * pad;
  at::Tensor out = at::empty({src.size(0), src.size(1), Ho, Wo}, src.options());
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "bicubic_pad_forward_cpu", [&] {
    const CubicAxis<scalar_t> ax(w, width, pad), ay(h, height, pad);
    const scalar_t* sp = src.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> rows(h * Wo);
      for (int64_t p = p0; p < p1; ++p) {
        bicubic_plane<scalar_t>(sp + p * h * w, h, w, ax, ay, Ho, Wo, rows.data(), op_ + p * Ho * Wo);
      }
    });
  });
  return out;
}

at::Tensor bicubic_pad_backward_cpu(const at::Tensor& grad_out, int64_t source_height, int64_t source_width,
                                    int64_t pad) {
  constexpr const char* op = "featup::bicubic_pad_backward";
  check_bicubic_args(grad_out, grad_out.size(2) - 2 * pad, grad_out.size(3) - 2 * pad, pad, op);
  TORCH_CHECK(source_height > 0 && source_width > 0, op, ": got source size ", source_height, "x", source_width,
              ", expected both positive");
  const at::Tensor g = grad_out.contiguous();
  const int64_t planes = g.size(0) * g.size(1), h = source_height, w = source_width;
  const int64_t Ho = g.size(2), Wo = g.size(3);
  at::Tensor dsrc = at::empty({g.size(0), g.size(1), h, w}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "bicubic_pad_backward_cpu", [&] {
    const CubicAxis<scalar_t> ax(w, Wo - 2 * pad, pad), ay(h, Ho - 2 * pad, pad);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dsrc.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> rows(h * Wo);
      for (int64_t p = p0; p < p1; ++p) {
        bicubic_plane_adjoint<scalar_t>(gp + p * Ho * Wo, h, w, ax, ay, Ho, Wo, rows.data(), dp + p * h * w);
      }
    });
  });
  return dsrc;
}

}  // namespace

TORCH_LIBRARY_IMPL(featup, CPU, m) {
  m.impl("jbu_layer_forward", &jbu_layer_forward_cpu);
  m.impl("bicubic_pad_forward", &bicubic_pad_forward_cpu);
  m.impl("bicubic_pad_backward", &bicubic_pad_backward_cpu);
}

}  // namespace featup
