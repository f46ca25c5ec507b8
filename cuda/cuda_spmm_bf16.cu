// SpMM kernels for __nv_bfloat16 values, every block size, direction and layout.
#include "cuda_spmm_kernel.h"

namespace jaxcsb::cuda {

template cudaError_t launch_spmm_typed<__nv_bfloat16>(const SpmmArgs&, const DeviceInfo&,
                                                      cudaStream_t, const SpmmOptions&, SpmmKernel);

}  // namespace jaxcsb::cuda
