// XLA FFI handlers of the CUDA kernels, registered for platform "CUDA". Same buffers and
// attributes as the CPU handlers (cpu_handlers.h):
//
//   jaxcsb_spmm(block_ptr s32[nblocks + 1], local u16[nnz], values T[nnz],
//               dense T[in_dim, n] or T[n, in_dim]) -> T[out_dim, n] or T[n, out_dim]
//     attributes: rows, cols, block_size (of the stored matrix), transpose, batch_leading
//   jaxcsb_sddmm(block_ptr, local, lhs T[rows, n] or T[n, rows], rhs T[n, cols] or T[cols, n])
//               -> T[nnz]
//     attributes: rows, cols, block_size, lhs_transposed, rhs_transposed
//
// Both enqueue their kernels on XLA's stream, allocate nothing and never synchronise, so they
// are declared compatible with command buffers (CUDA graphs).
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jaxcsb::cuda {

XLA_FFI_DECLARE_HANDLER_SYMBOL(kCudaSpmm);
XLA_FFI_DECLARE_HANDLER_SYMBOL(kCudaSddmm);

}  // namespace jaxcsb::cuda
