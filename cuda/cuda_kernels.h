// Launchers of the CUDA kernels, callable from plain C++ (the FFI handlers, the test program).
//
// The launchers take raw device pointers and a stream, enqueue their kernels and return the
// launch error; they never synchronise the host and allocate nothing. Index arrays are not
// validated on the host (that would need a copy back): the kernels clamp block_ptr ranges to
// [0, nnz] and skip nonzeros whose local index lies outside the block, so a corrupt structure
// gives wrong numbers but never an out-of-bounds access.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "csb_format.h"

namespace jaxcsb::cuda {

enum class DType { kF32, kBF16, kF16 };

// out = op(S) * dense. dense is (in_dim, n) row-major, or (n, in_dim) when batch_leading; out is
// (out_dim, n), or (n, out_dim) when batch_leading. See csb_format.h for the arrays.
struct SpmmArgs {
  CsbShape shape;
  int64_t n = 0;
  int64_t nnz = 0;
  bool batch_leading = false;
  DType dtype = DType::kF32;
  const int32_t* block_ptr = nullptr;  // [num_blocks + 1]
  const uint16_t* local = nullptr;     // [nnz]
  const void* values = nullptr;        // [nnz]
  const void* dense = nullptr;
  void* out = nullptr;
  // Device memory of spmm_workspace_bytes() bytes (16-byte aligned) for the kernels that sort a
  // product's nonzeros once, or null: the heuristic then picks among the others.
  void* workspace = nullptr;
};

// out[e] = sum_n lhs[i_e, n] * rhs[n, j_e] at the nonzeros (i_e, j_e) of S. lhs is (rows, n), or
// (n, rows) when lhs_transposed; rhs is (n, cols), or (cols, n) when rhs_transposed.
struct SddmmArgs {
  CsbShape shape;
  int64_t n = 0;
  int64_t nnz = 0;
  bool lhs_transposed = false;
  bool rhs_transposed = false;
  DType dtype = DType::kF32;
  const int32_t* block_ptr = nullptr;
  const uint16_t* local = nullptr;
  const void* lhs = nullptr;
  const void* rhs = nullptr;
  void* out = nullptr;  // [nnz]
};

// What the launchers need to know about the device that runs the stream.
struct DeviceInfo {
  int device = 0;
  int num_sms = 0;
  int max_smem_optin = 0;       // bytes of dynamic shared memory a block may opt in to
  int smem_per_sm = 0;          // bytes of shared memory of a multiprocessor
  int smem_reserved = 0;        // bytes of it that the runtime reserves for each thread block
  bool cluster_launch = false;  // thread-block clusters can be launched (sm_90 and later)
};

// Returns the properties of the device that owns `stream`, cached per device (thread-safe).
cudaError_t device_info(cudaStream_t stream, DeviceInfo* info);

// The SpMM kernel family: wide n (a thread block per line and 128-column tile of n), narrow n
// (a warp per CSB block or band of its rows, for small n at block sizes up to 128) or tensor cores
// (CSB blocks expanded into dense tiles, at block sizes up to 64), whose warps split either the
// line's blocks (kTensor) or n (kTensorSplitN), or a slab of the dense operand that a thread
// block keeps for many lines (kSlab: float32 at high sparsity); see cuda_config.h.
enum class SpmmKernel { kAuto, kWide, kNarrow, kTensor, kTensorSplitN, kSlab };

// Configuration forced by tests and benchmarks; the defaults let the heuristics choose.
struct SpmmOptions {
  // CTAs that split one line (1, 2, 4 or 8; the slab family: that sort one line's part, 1 to 8);
  // 0 = heuristic
  int cluster = 0;
  SpmmKernel kernel = SpmmKernel::kAuto;
  // n-tiles that a CTA of the wide kernel walks on lines of one CSB block: 0 = heuristic, 1 = one
  // tile per CTA, more = about that many (lines of several blocks, or clusters, refuse more).
  int tiles_per_block = 0;
};

struct SddmmOptions {
  int cluster = 0;  // CTAs that split the walk over n of one region (1, 2, 4 or 8); 0 = heuristic
};

// The workspace that launch_spmm can use for `args` (0: none).
size_t spmm_workspace_bytes(const SpmmArgs& args, const SpmmOptions& options = {});
cudaError_t launch_spmm(const SpmmArgs& args, const DeviceInfo& dev, cudaStream_t stream,
                        const SpmmOptions& options = {});
cudaError_t launch_sddmm(const SddmmArgs& args, const DeviceInfo& dev, cudaStream_t stream,
                         const SddmmOptions& options = {});

}  // namespace jaxcsb::cuda
