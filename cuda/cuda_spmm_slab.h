// The slab kernels of float32 SpMM at high sparsity (cuda_spmm_slab.cu), which sort a product's
// nonzeros once into a workspace.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "cuda_kernels.h"

namespace jaxcsb::cuda {

// Bytes of the workspace that launch_spmm_slab needs for `a`.
size_t spmm_slab_workspace_bytes(const SpmmArgs& a);
// Sorts the nonzeros into a.workspace, then multiplies; cudaErrorInvalidValue where the slab
// kernels do not serve the product (slab_serves), a.workspace is null or `cluster` (the thread
// blocks that sort one line's part, 0: the heuristic's choice) is not 0 to 8.
cudaError_t launch_spmm_slab(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                             int cluster);

}  // namespace jaxcsb::cuda
