// The featup op schemas (adaptive_conv and the fused JBU layer), declared once, here; kernels are registered
// per backend (adaptive_conv_cpu.cpp, adaptive_conv_cuda.cu, jbu_cpu.cpp).
//
//   out[b,c,y,x] = sum_{i,j} filters[b,y,x,i,j] * x_padded[b,c,y+i,x+j]
//
// Autograd and the shape-only (fake) kernels are registered from Python (featup/ops/_extension.py,
// featup/ops/jbu_layer.py).
#include <Python.h>
#include <torch/library.h>

// Loading the ahead-of-time build with `import featup_kernels` runs the registrations below; the module
// itself is empty. The JIT build is loaded with torch.ops.load_library and never calls this.
extern "C" PyObject* PyInit_featup_kernels(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "featup_kernels", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace featup {

TORCH_LIBRARY(featup, m) {
  m.def("adaptive_conv_forward(Tensor x_padded, Tensor filters) -> Tensor");
  m.def("adaptive_conv_backward(Tensor grad_out, Tensor x_padded, Tensor filters) -> (Tensor, Tensor)");
  // Each half of the backward alone (CPU only; elsewhere callers use adaptive_conv_backward).
  m.def("adaptive_conv_filter_grad(Tensor grad_out, Tensor x_padded) -> Tensor");
  m.def("adaptive_conv_input_grad(Tensor grad_out, Tensor filters) -> Tensor");
  // The fused JBU layer and its padded bicubic upsampling (jbu_cpu.cpp; CPU only: elsewhere featup composes
  // the layer from adaptive_conv and PyTorch ops).
  m.def("jbu_layer_forward(Tensor source_padded, Tensor queries, Tensor keys_padded, Tensor guidance, "
        "Tensor spatial_logits, float temperature, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor hidden_scale) -> Tensor");
  m.def("bicubic_pad_forward(Tensor source, int height, int width, int pad) -> Tensor");
  m.def("bicubic_pad_backward(Tensor grad_out, int source_height, int source_width, int pad) -> Tensor");
}

}  // namespace featup
