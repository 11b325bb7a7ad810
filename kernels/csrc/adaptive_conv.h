// Shared declarations of the featup::adaptive_conv ops: argument checks and per-backend kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <c10/util/Exception.h>

#include <type_traits>

namespace featup {

// Sizes of one adaptive convolution, read from (x_padded, filters) after every check has passed.
struct AdaptiveConvShape {
  int64_t B, C, H, W, d;
  int64_t Hp() const { return H + d - 1; }
  int64_t Wp() const { return W + d - 1; }
};

// Checks ranks, sizes, dtypes and devices of the forward's inputs; `op` names the op in messages.
AdaptiveConvShape check_forward_args(const at::Tensor& x_padded, const at::Tensor& filters, const char* op);

// Checks the backward's inputs: the forward's, plus grad_out shaped like the forward's output.
AdaptiveConvShape check_backward_args(
    const at::Tensor& grad_out, const at::Tensor& x_padded, const at::Tensor& filters, const char* op);

// Calls f(std::integral_constant<int, d>{}) for the window sizes the kernels are instantiated for, so
// that tap loops unroll and per-pixel filters fit in registers.
template <typename F>
void dispatch_window(int64_t d, const char* op, F&& f) {
  switch (d) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 9: return f(std::integral_constant<int, 9>{});
  }
  TORCH_CHECK(false, op, ": got a ", d, "x", d, " filter window, expected d in {1, 3, 5, 7, 9} for the compiled "
              "kernels (the pure-PyTorch path takes any odd d)");
}

}  // namespace featup
