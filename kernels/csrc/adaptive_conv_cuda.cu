// CUDA host side of featup::adaptive_conv: checks, device guard, current stream, one launch per kernel for the
// whole batch. The kernels are in adaptive_conv_cuda_kernels.cuh.
#include "adaptive_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "adaptive_conv_cuda_kernels.cuh"

namespace featup {
namespace {

int64_t multiprocessor_count() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms;
}

void check_int_sizes(const AdaptiveConvShape& s, const char* op) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TORCH_CHECK(s.C <= kMax && s.Hp() <= kMax && s.Wp() <= kMax && s.B <= kMax, op, ": got sizes B=", s.B,
              " C=", s.C, " H=", s.H, " W=", s.W, ", expected each below 2^31");
}

at::Tensor forward_cuda(const at::Tensor& x_padded, const at::Tensor& filters) {
  constexpr const char* op = "featup::adaptive_conv_forward";
  const AdaptiveConvShape s = check_forward_args(x_padded, filters, op);
  check_int_sizes(s, op);
  const c10::cuda::CUDAGuard guard(x_padded.device());
  const at::Tensor x = x_padded.contiguous(), k = filters.contiguous();
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, x.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_conv_forward_cuda", [&] {
    dispatch_window(s.d, op, [&](auto window) {
      constexpr int D = decltype(window)::value;
      using G = Geometry<at::opmath_type<scalar_t>, D>;
      const LaunchPlan p = plan_launch(op, s.B, s.C, s.H, s.W, G::TH, s.C, multiprocessor_count());
      stencil_kernel<scalar_t, D, false><<<p.grid, dim3(kThreadsX, kThreadsY), 0, stream>>>(
          x.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s.C, s.H,
          s.W, p.tiles_x, p.tiles, p.groups, p.group_channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_padded,
                                                 const at::Tensor& filters) {
  constexpr const char* op = "featup::adaptive_conv_backward";
  const AdaptiveConvShape s = check_backward_args(grad_out, x_padded, filters, op);
  check_int_sizes(s, op);
  const c10::cuda::CUDAGuard guard(x_padded.device());
  const at::Tensor g = grad_out.contiguous(), x = x_padded.contiguous(), k = filters.contiguous();
  if (s.B * s.H * s.W == 0 || s.C == 0) return {at::zeros_like(x), at::zeros_like(k)};
  at::Tensor dx = at::empty_like(x), dk = at::empty_like(k);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaptive_conv_backward_cuda", [&] {
    dispatch_window(s.d, op, [&](auto window) {
      constexpr int D = decltype(window)::value;
      using acc_t = at::opmath_type<scalar_t>;
      using G = Geometry<acc_t, D>;
      const dim3 block(kThreadsX, kThreadsY);
      const int64_t sms = multiprocessor_count();

      const LaunchPlan pd = plan_launch(op, s.B, s.C, s.Hp(), s.Wp(), G::TH, s.C, sms);
      stencil_kernel<scalar_t, D, true><<<pd.grid, block, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), s.C, s.H,
          s.W, pd.tiles_x, pd.tiles, pd.groups, pd.group_channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      // Partial sums of several channel groups may take at most as much memory as grad_out in acc_t.
      const LaunchPlan pk = plan_launch(op, s.B, s.C, s.H, s.W, G::TH, std::max<int64_t>(1, s.C / (D * D)), sms);
      if (pk.groups == 1) {
        filter_grad_kernel<scalar_t, scalar_t, D><<<pk.grid, block, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(), s.B, s.C,
            s.H, s.W, pk.tiles_x, pk.tiles, pk.groups, pk.group_channels);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
      at::Tensor partial = at::empty({pk.groups, dk.numel()}, x.options().dtype(acc_dtype));
      filter_grad_kernel<scalar_t, acc_t, D><<<pk.grid, block, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), s.B, s.C,
          s.H, s.W, pk.tiles_x, pk.tiles, pk.groups, pk.group_channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t n = dk.numel();
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kThreads), 65535));
      sum_groups_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), dk.mutable_data_ptr<scalar_t>(), n, pk.groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dx, dk};
}

}  // namespace

TORCH_LIBRARY_IMPL(featup, CUDA, m) {
  m.impl("adaptive_conv_forward", &forward_cuda);
  m.impl("adaptive_conv_backward", &backward_cuda);
}

}  // namespace featup
