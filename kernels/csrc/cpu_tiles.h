// Helpers shared by the CPU kernels (adaptive_conv_cpu.cpp, jbu_cpu.cpp): the d×d stencil and the tap correlation
// over a row of pixels in register tiles, and huge pages for large outputs.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

// A portable build still uses the wide vector units: GCC emits each hot function for AVX-512, AVX2+FMA and
// baseline x86-64, and the loader picks the best one for the machine.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FEATUP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FEATUP_CPU_CLONES
#endif

// Vectors wider than the baseline clone's registers only live inside inlined helpers, so the ABI note GCC gives
// about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace featup {
namespace {

constexpr int64_t kTileX = 16;       // pixels per tile: one AVX-512 or two AVX2 float vectors
constexpr int64_t kBlockC = 4;       // channels that share each load of a filter tap
constexpr int64_t kBlockRows = 16;   // rows per forward / input-gradient task
constexpr int64_t kCorrBlockC = 32;  // channels staged at once for the filter gradient

// Ask Linux to back a fresh output tensor with 2 MiB pages before anything touches it. Outputs here are hundreds of
// MiB, newly mapped on every call (the CPU allocator does not cache), and faulting them in 4 KiB pages cost about
// a third of the forward; the whole 2 MiB pages inside the buffer are the ones advised. A hint: ignored where
// transparent huge pages are off.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes(), first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
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

// 32 bytes of consecutive values (8 floats): the accumulators below are of this width, which GCC keeps in registers
// on AVX2; arrays of 16-wide tile vectors went through memory there.
template <typename T>
struct Half {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t count = 32 / sizeof(T);
};

template <typename T>
[[gnu::always_inline]] inline typename Half<T>::type load_half(const T* p) {
  typename Half<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
[[gnu::always_inline]] inline void store_half(T* p, const typename Half<T>::type& v) {
  std::memcpy(p, &v, sizeof(v));
}

// dst[c][x] = sum_{i,j} w[i*w_i + j*w_j + x] * src[c*src_c + i*s_i + j*s_j + x] for c < NC and the kTileX
// pixels x: NC × (kTileX / Half) accumulators in registers, so that the FMAs of consecutive taps do not wait on
// each other, and each filter load serves NC channels.
template <typename T, int D, int NC>
[[gnu::always_inline]] inline void stencil_tile(const T* w, const T* src, int64_t src_c, TapStrides t, T* dst,
                                                int64_t dst_c) {
  constexpr int64_t N = Half<T>::count, H = kTileX / N;
  typename Half<T>::type acc[H][NC] = {};
  for (int i = 0; i < D; ++i) {
    for (int j = 0; j < D; ++j) {
      const T* wp = w + i * t.w_i + j * t.w_j;
      const T* sp = src + i * t.s_i + j * t.s_j;
#pragma GCC unroll 4
      for (int64_t h = 0; h < H; ++h) {
        const auto wv = load_half(wp + h * N);
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) acc[h][c] += wv * load_half(sp + c * src_c + h * N);
      }
    }
  }
#pragma GCC unroll 4
  for (int64_t h = 0; h < H; ++h) {
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) store_half(dst + c * dst_c + h * N, acc[h][c]);
  }
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
// pixels x, in register-width parts: the D taps of one filter row accumulate in registers over all channels.
template <typename T, int D>
[[gnu::always_inline]] inline void correlate_tile(const T* g, int64_t g_c, const T* src, int64_t src_c,
                                                  int64_t src_row, int64_t nc, T* dkt, int64_t dk_tap) {
  for (int64_t h = 0; h < kTileX; h += Half<T>::count) {
    for (int i = 0; i < D; ++i) {
      typename Half<T>::type acc[D];
#pragma GCC unroll 16
      for (int j = 0; j < D; ++j) acc[j] = load_half(dkt + (i * D + j) * dk_tap + h);
      for (int64_t c = 0; c < nc; ++c) {
        const auto gv = load_half(g + c * g_c + h);
        const T* sp = src + c * src_c + i * src_row + h;
#pragma GCC unroll 16
        for (int j = 0; j < D; ++j) acc[j] += gv * load_half(sp + j);
      }
#pragma GCC unroll 16
      for (int j = 0; j < D; ++j) store_half(dkt + (i * D + j) * dk_tap + h, acc[j]);
    }
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

}  // namespace
}  // namespace featup
