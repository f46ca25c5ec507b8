// The _cpu extension: hands the CPU FFI handlers to Python for registration.
#include <nanobind/nanobind.h>

#include "cpu_handlers.h"

namespace nb = nanobind;

NB_MODULE(_cpu, m) {
  m.def("registrations", []() {
    nb::dict targets;
    targets["jaxcsb_spmm"] = nb::capsule(reinterpret_cast<void*>(jaxcsb::cpu::kSpmm));
    targets["jaxcsb_sddmm"] = nb::capsule(reinterpret_cast<void*>(jaxcsb::cpu::kSddmm));
    return targets;
  });
}
