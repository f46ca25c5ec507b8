// XLA FFI handlers of the CUDA kernels: validate with the checks shared with the CPU handlers,
// then enqueue the kernels on XLA's stream.
#include "cuda_handlers.h"

#include <cuda_runtime_api.h>

#include <string>

#include "cuda_kernels.h"
#include "ffi_bindings.h"
#include "ffi_checks.h"

namespace jaxcsb::cuda {
namespace {

DType dtype_of(ValueType t) {
  switch (t) {
    case ValueType::kF32:
      return DType::kF32;
    case ValueType::kBF16:
      return DType::kBF16;
    case ValueType::kF16:
      return DType::kF16;
  }
  return DType::kF32;
}

ffi::Error cuda_error(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("jaxcsb: ") + what + " failed: " + cudaGetErrorName(err) +
                              ": " + cudaGetErrorString(err));
}

ffi::Error Spmm(cudaStream_t stream, ffi::AnyBuffer block_ptr, ffi::AnyBuffer local,
                ffi::AnyBuffer values, ffi::AnyBuffer dense, ffi::Result<ffi::AnyBuffer> out,
                int64_t rows, int64_t cols, int64_t block_size, bool transpose, bool batch_leading,
                ffi::ScratchAllocator scratch) {
  auto problem = check_spmm(block_ptr, local, values, dense, *out, rows, cols, block_size,
                            transpose, batch_leading);
  if (problem.has_error()) return problem.error();
  const SpmmProblem& p = problem.value();
  if (out->element_count() == 0) return ffi::Error::Success();
  DeviceInfo dev;
  if (cudaError_t err = device_info(stream, &dev); err != cudaSuccess) {
    return cuda_error("reading the device properties", err);
  }
  SpmmArgs args;
  args.shape = p.shape;
  args.n = p.n;
  args.nnz = p.nnz;
  args.batch_leading = p.batch_leading;
  args.dtype = dtype_of(p.type);
  args.block_ptr = static_cast<const int32_t*>(block_ptr.untyped_data());
  args.local = static_cast<const uint16_t*>(local.untyped_data());
  args.values = values.untyped_data();
  args.dense = dense.untyped_data();
  args.out = out->untyped_data();
  if (const size_t bytes = spmm_workspace_bytes(args); bytes > 0) {
    // Without it (XLA's allocator is out of memory) a kernel that needs none runs instead.
    args.workspace = scratch.Allocate(bytes, 16).value_or(nullptr);
  }
  if (cudaError_t err = launch_spmm(args, dev, stream); err != cudaSuccess) {
    return cuda_error("launching the SpMM kernel", err);
  }
  return ffi::Error::Success();
}

ffi::Error Sddmm(cudaStream_t stream, ffi::AnyBuffer block_ptr, ffi::AnyBuffer local,
                 ffi::AnyBuffer lhs, ffi::AnyBuffer rhs, ffi::Result<ffi::AnyBuffer> out,
                 int64_t rows, int64_t cols, int64_t block_size, bool lhs_transposed,
                 bool rhs_transposed) {
  auto problem = check_sddmm(block_ptr, local, lhs, rhs, *out, rows, cols, block_size,
                             lhs_transposed, rhs_transposed);
  if (problem.has_error()) return problem.error();
  const SddmmProblem& p = problem.value();
  if (out->element_count() == 0) return ffi::Error::Success();
  DeviceInfo dev;
  if (cudaError_t err = device_info(stream, &dev); err != cudaSuccess) {
    return cuda_error("reading the device properties", err);
  }
  SddmmArgs args;
  args.shape = p.shape;
  args.n = p.n;
  args.nnz = p.nnz;
  args.lhs_transposed = p.lhs_transposed;
  args.rhs_transposed = p.rhs_transposed;
  args.dtype = dtype_of(p.type);
  args.block_ptr = static_cast<const int32_t*>(block_ptr.untyped_data());
  args.local = static_cast<const uint16_t*>(local.untyped_data());
  args.lhs = lhs.untyped_data();
  args.rhs = rhs.untyped_data();
  args.out = out->untyped_data();
  if (cudaError_t err = launch_sddmm(args, dev, stream); err != cudaSuccess) {
    return cuda_error("launching the SDDMM kernel", err);
  }
  return ffi::Error::Success();
}

}  // namespace

// Not declared command-buffer compatible: the first call on a device reads its properties and
// raises the kernels' shared-memory limit, which CUDA refuses during stream capture
// (cudaErrorStreamCaptureUnsupported inside jitted loops), so XLA must launch these directly.
// The SpMM also takes XLA's scratch memory, for the workspace of the kernels that sort a
// product's nonzeros once.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    kCudaSpmm, Spmm,
    spmm_binding<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::ScratchAllocator>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kCudaSddmm, Sddmm,
                              sddmm_binding<ffi::PlatformStream<cudaStream_t>>());

}  // namespace jaxcsb::cuda
