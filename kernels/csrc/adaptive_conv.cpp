// The featup::adaptive_conv op schemas, declared once, here; kernels are registered per backend
// (adaptive_conv_cpu.cpp, adaptive_conv_cuda.cu).
//
//   out[b,c,y,x] = sum_{i,j} filters[b,y,x,i,j] * x_padded[b,c,y+i,x+j]
//
// Autograd and the shape-only (fake) kernels are registered from Python (featup/ops/_extension.py).
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
}

}  // namespace featup
