// Argument checks shared by every backend of featup::adaptive_conv: "got ..., expected ..." errors.
#include "adaptive_conv.h"

namespace featup {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

AdaptiveConvShape check_forward_args(const at::Tensor& x_padded, const at::Tensor& filters, const char* op) {
  TORCH_CHECK(x_padded.dim() == 4, op, ": x_padded must be (B, C, H+d-1, W+d-1), got shape ", x_padded.sizes(),
              ", expected 4 dimensions");
  TORCH_CHECK(filters.dim() == 5, op, ": filters must be (B, H, W, d, d), got shape ", filters.sizes(),
              ", expected 5 dimensions");
  const int64_t d = filters.size(3);
  TORCH_CHECK(filters.size(4) == d && d % 2 == 1, op, ": filters must end in a square odd window (d, d), got ",
              filters.size(3), "x", filters.size(4), ", expected e.g. 7x7");
  AdaptiveConvShape s{x_padded.size(0), x_padded.size(1), filters.size(1), filters.size(2), d};
  TORCH_CHECK(filters.size(0) == s.B, op, ": batch sizes differ, got x_padded ", x_padded.sizes(), " and filters ",
              filters.sizes(), ", expected the same B");
  TORCH_CHECK(x_padded.size(2) == s.Hp() && x_padded.size(3) == s.Wp(), op, ": got x_padded ", x_padded.sizes(),
              " for filters ", filters.sizes(), ", expected x_padded of spatial size (", s.Hp(), ", ", s.Wp(),
              ") = filters' (H+d-1, W+d-1)");
  TORCH_CHECK(is_supported_dtype(x_padded.scalar_type()), op, ": got x_padded of dtype ", x_padded.scalar_type(),
              ", expected float32, float64, float16 or bfloat16");
  TORCH_CHECK(filters.scalar_type() == x_padded.scalar_type(), op, ": got filters of dtype ", filters.scalar_type(),
              " and x_padded of dtype ", x_padded.scalar_type(), ", expected the same dtype");
  TORCH_CHECK(filters.device() == x_padded.device(), op, ": got filters on ", filters.device(),
              " and x_padded on ", x_padded.device(), ", expected the same device");
  return s;
}

AdaptiveConvShape check_backward_args(
    const at::Tensor& grad_out, const at::Tensor& x_padded, const at::Tensor& filters, const char* op) {
  const AdaptiveConvShape s = check_forward_args(x_padded, filters, op);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.B, s.C, s.H, s.W}), op, ": got grad_out of shape ",
              grad_out.sizes(), ", expected the forward output's shape [", s.B, ", ", s.C, ", ", s.H, ", ", s.W, "]");
  TORCH_CHECK(grad_out.scalar_type() == x_padded.scalar_type(), op, ": got grad_out of dtype ",
              grad_out.scalar_type(), ", expected x_padded's dtype ", x_padded.scalar_type());
  TORCH_CHECK(grad_out.device() == x_padded.device(), op, ": got grad_out on ", grad_out.device(),
              ", expected x_padded's device ", x_padded.device());
  return s;
}

}  // namespace featup
