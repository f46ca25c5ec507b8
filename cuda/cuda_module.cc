// The _cuda extension: hands the CUDA FFI handlers to Python for registration.
#include <nanobind/nanobind.h>

#include "cuda_handlers.h"

namespace nb = nanobind;

NB_MODULE(_cuda, m) {
  m.def("registrations", []() {
    nb::dict targets;
    targets["jaxcsb_spmm"] = nb::capsule(reinterpret_cast<void*>(jaxcsb::cuda::kCudaSpmm));
    targets["jaxcsb_sddmm"] = nb::capsule(reinterpret_cast<void*>(jaxcsb::cuda::kCudaSddmm));
    return targets;
  });
}
