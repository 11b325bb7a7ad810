// The CUDA forward and backward of featup::adaptive_conv, with the same kernels and launch plans as
// csrc/adaptive_conv_cuda.cu, run on CPU tensors through cuda_shim.h. `sms` stands in for the device's
// multiprocessor count: a large value forces the channel-group split and the filter-gradient reduction.
#include <torch/extension.h>

#include "cuda_shim.h"

#include "adaptive_conv.h"
#include "adaptive_conv_cuda_kernels.cuh"

namespace featup {
namespace {

at::Tensor forward(const at::Tensor& x_padded, const at::Tensor& filters, int64_t sms) {
  const AdaptiveConvShape s = check_forward_args(x_padded, filters, "emulated forward");
  const at::Tensor x = x_padded.contiguous(), k = filters.contiguous();
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "emulated_forward", [&] {
    dispatch_window(s.d, "emulated forward", [&](auto window) {
      constexpr int D = decltype(window)::value;
      using G = Geometry<at::opmath_type<scalar_t>, D>;
      const LaunchPlan p = plan_launch("emulated forward", s.B, s.C, s.H, s.W, G::TH, s.C, sms);
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* kp = k.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      emulate_launch(p.grid, dim3(kThreadsX, kThreadsY), [&] {
        stencil_kernel<scalar_t, D, false>(xp, kp, op, s.C, s.H, s.W, p.tiles_x, p.tiles, p.groups, p.group_channels);
      });
    });
  });
  return out;
}

// Returns (grad_x, grad_filters, number of channel groups the filter gradient was split into).
std::tuple<at::Tensor, at::Tensor, int64_t> backward(const at::Tensor& grad_out, const at::Tensor& x_padded,
                                                     const at::Tensor& filters, int64_t sms) {
  const AdaptiveConvShape s = check_backward_args(grad_out, x_padded, filters, "emulated backward");
  const at::Tensor g = grad_out.contiguous(), x = x_padded.contiguous(), k = filters.contiguous();
  at::Tensor dx = at::empty_like(x), dk = at::empty_like(k);
  int64_t groups = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "emulated_backward", [&] {
    dispatch_window(s.d, "emulated backward", [&](auto window) {
      constexpr int D = decltype(window)::value;
      using acc_t = at::opmath_type<scalar_t>;
      using G = Geometry<acc_t, D>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* kp = k.const_data_ptr<scalar_t>();
      scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
      scalar_t* dkp = dk.mutable_data_ptr<scalar_t>();
      const dim3 block(kThreadsX, kThreadsY);
      const LaunchPlan pd = plan_launch("emulated backward", s.B, s.C, s.Hp(), s.Wp(), G::TH, s.C, sms);
      emulate_launch(pd.grid, block, [&] {
        stencil_kernel<scalar_t, D, true>(gp, kp, dxp, s.C, s.H, s.W, pd.tiles_x, pd.tiles, pd.groups,
                                          pd.group_channels);
      });
      const LaunchPlan pk =
          plan_launch("emulated backward", s.B, s.C, s.H, s.W, G::TH, std::max<int64_t>(1, s.C / (D * D)), sms);
      groups = pk.groups;
      if (pk.groups == 1) {
        emulate_launch(pk.grid, block, [&] {
          filter_grad_kernel<scalar_t, scalar_t, D>(gp, xp, dkp, s.B, s.C, s.H, s.W, pk.tiles_x, pk.tiles, pk.groups,
                                                    pk.group_channels);
        });
        return;
      }
      const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
      at::Tensor partial = at::empty({pk.groups, dk.numel()}, x.options().dtype(acc_dtype));
      acc_t* pp = partial.mutable_data_ptr<acc_t>();
      emulate_launch(pk.grid, block, [&] {
        filter_grad_kernel<scalar_t, acc_t, D>(gp, xp, pp, s.B, s.C, s.H, s.W, pk.tiles_x, pk.tiles, pk.groups,
                                               pk.group_channels);
      });
      const int64_t n = dk.numel();
      emulate_launch(dim3(2), dim3(kThreads), [&] { sum_groups_kernel<scalar_t, acc_t>(pp, dkp, n, pk.groups); });
    });
  });
  return {dx, dk, groups};
}

}  // namespace
}  // namespace featup

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &featup::forward);
  m.def("backward", &featup::backward);
}
