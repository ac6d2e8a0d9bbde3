// The Python module adamw8._C: importing it loads this shared library, whose
// TORCH_LIBRARY_IMPL blocks register the CPU (and, when built, CUDA) kernels.
// It defines no Python functions: everything is reached through torch.ops.adamw8.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
