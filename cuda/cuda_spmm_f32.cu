// SpMM kernels for float values, every block size, direction and layout.
#include "cuda_spmm_kernel.h"

namespace jaxcsb::cuda {

template cudaError_t launch_spmm_typed<float>(const SpmmArgs&, const DeviceInfo&, cudaStream_t,
                                              const SpmmOptions&, SpmmKernel);

}  // namespace jaxcsb::cuda
