// CUDA SpMM entry point: zero-sized and empty problems, then dispatch on the value type to the
// kernels of cuda_spmm_kernel.h, instantiated per type in cuda_spmm_{f32,bf16,f16}.cu.
#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_spmm_slab.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {

template <typename T>
cudaError_t launch_spmm_typed(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                              const SpmmOptions& options, SpmmKernel kernel);

size_t spmm_workspace_bytes(const SpmmArgs& args, const SpmmOptions& options) {
  const bool slab =
      spmm_kernel_for(args, options) == SpmmKernel::kSlab &&
      spmm_kernel_serves(SpmmKernel::kSlab, args.shape.block_size, args.dtype == DType::kF32);
  return slab && args.nnz > 0 ? spmm_slab_workspace_bytes(args) : 0;
}

cudaError_t launch_spmm(const SpmmArgs& args, const DeviceInfo& dev, cudaStream_t stream,
                        const SpmmOptions& options) {
  const int64_t out_count = args.shape.out_dim() * args.n;
  if (out_count == 0) return cudaSuccess;
  if (args.nnz == 0 || args.shape.in_dim() == 0) {
    // Nothing to add: the product is zero (all-zero bits in every supported type).
    const int64_t bytes = out_count * (args.dtype == DType::kF32 ? 4 : 2);
    return cudaMemsetAsync(args.out, 0, static_cast<size_t>(bytes), stream);
  }
  const SpmmKernel kernel = spmm_kernel_to_run(args, options);
  // The slab family, float32 alone, sorts the whole product's nonzeros before its kernels per
  // block size run.
  if (kernel == SpmmKernel::kSlab) return launch_spmm_slab(args, dev, stream, options.cluster);
  return dispatch_dtype(args.dtype, [&](auto tag) {
    return launch_spmm_typed<decltype(tag)>(args, dev, stream, options, kernel);
  });
}

}  // namespace jaxcsb::cuda
