// The Python module masked_dora._C. Importing it registers every kernel compiled into it
// (csrc/cpu/*.cpp, csrc/cuda/*) with the dispatcher, under schemas that Python defined first
// (masked_dora/ops/*.py). Built against the limited Python API (Py_LIMITED_API, see setup.py):
// no pybind11, only PyModule_Create.
//
// Registration happens here, not in TORCH_LIBRARY_IMPL static initialisers: an error that a
// static initialiser throws terminates the interpreter, whereas here it becomes an ImportError
// (masked_dora records it and falls back to its other backends) and whatever was registered
// before the error is unregistered again.
//
// Module attributes (build facts the dispatcher uses): `with_cuda` (0/1), `cuda_archs` (the SASS
// archs compiled, e.g. "80,90", empty without CUDA), `cuda_ptx_arch` (the arch whose PTX is
// embedded for newer GPUs to JIT, or ""), `torch_version` (the torch it was built against).
#include <Python.h>

#include <exception>
#include <memory>
#include <string>

#include "kernel_signatures.h"

// setup.py passes the build facts as bare tokens (-DMASKED_DORA_CUDA_ARCHS=80,90): a quoted string
// would not survive the shell that ninja runs the compiler in. Stringised here.
#define MASKED_DORA_STR_(...) #__VA_ARGS__
#define MASKED_DORA_STR(...) MASKED_DORA_STR_(__VA_ARGS__)
#ifdef MASKED_DORA_CUDA_ARCHS
#define CUDA_ARCHS_STRING MASKED_DORA_STR(MASKED_DORA_CUDA_ARCHS)
#else
#define CUDA_ARCHS_STRING ""
#endif
#ifdef MASKED_DORA_CUDA_PTX_ARCH
#define CUDA_PTX_ARCH_STRING MASKED_DORA_STR(MASKED_DORA_CUDA_PTX_ARCH)
#else
#define CUDA_PTX_ARCH_STRING ""
#endif
#ifdef MASKED_DORA_TORCH_VERSION
#define TORCH_VERSION_STRING MASKED_DORA_STR(MASKED_DORA_TORCH_VERSION)
#else
#define TORCH_VERSION_STRING ""
#endif

namespace {

// Alive for the life of the process once the import succeeded (a Library unregisters on destruction).
std::unique_ptr<torch::Library> cpu_library;
#ifdef MASKED_DORA_WITH_CUDA
std::unique_ptr<torch::Library> cuda_library;
#endif

void register_all() {
  cpu_library = std::make_unique<torch::Library>(torch::Library::IMPL, "masked_dora", c10::DispatchKey::CPU,
                                                 __FILE__, __LINE__);
  masked_dora::register_dora_linear_cpu(*cpu_library);
  masked_dora::register_compact_linear_cpu(*cpu_library);
#ifdef MASKED_DORA_WITH_CUDA
  cuda_library = std::make_unique<torch::Library>(torch::Library::IMPL, "masked_dora", c10::DispatchKey::CUDA,
                                                  __FILE__, __LINE__);
  masked_dora::register_cuda_kernels(*cuda_library);
#endif
}

void unregister_all() {
#ifdef MASKED_DORA_WITH_CUDA
  cuda_library.reset();
#endif
  cpu_library.reset();
}

}  // namespace

extern "C" {

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "masked_dora compiled kernels (registered with torch.library; see masked_dora.ops)",
      -1,    // no per-module state
      nullptr,
  };
  try {
    register_all();
  } catch (const std::exception& exc) {
    unregister_all();
    std::string what = std::string("masked_dora._C: registering the compiled kernels failed: ") + exc.what();
    PyErr_SetString(PyExc_ImportError, what.c_str());
    return nullptr;
  } catch (...) {
    unregister_all();
    PyErr_SetString(PyExc_ImportError, "masked_dora._C: registering the compiled kernels failed (unknown error)");
    return nullptr;
  }
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef MASKED_DORA_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", CUDA_ARCHS_STRING) < 0 ||
      PyModule_AddStringConstant(module, "cuda_ptx_arch", CUDA_PTX_ARCH_STRING) < 0 ||
      PyModule_AddStringConstant(module, "torch_version", TORCH_VERSION_STRING) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

}  // extern "C"
