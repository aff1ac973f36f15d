// The Python module masked_dora._C: an empty module whose import runs the static
// TORCH_LIBRARY_IMPL registrations of every kernel compiled into it
// (csrc/cpu/*.cpp, csrc/cuda/*). Built against the limited Python API
// (Py_LIMITED_API, see setup.py): no pybind11, only PyModule_Create.
#include <Python.h>

extern "C" {

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "masked_dora compiled kernels (registered with torch.library; see masked_dora.ops)",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}

}  // extern "C"
