// CPU kernels of the three products. Each kernel computes a slice of the work so that the FFI
// handler can spread slices over the XLA thread pool; every output element is written by
// exactly one slice, in a fixed order, so results do not depend on the number of threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ffi_checks.h"

namespace jaxcsb::cpu {

// SpMM work items are (line, n-tile) pairs numbered line-major. Returns the boundaries of
// contiguous item ranges of similar cost (nonzeros times tile width) for `num_threads`
// threads: several per thread, or one when each slice stages the whole dense operand.
std::vector<int64_t> spmm_slices(const SpmmProblem& p, const int32_t* block_ptr,
                                 int64_t num_threads);

// out = op(S) * dense for the work items [item_begin, item_end).
template <typename T>
void spmm(const SpmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* values,
          const T* dense, T* out, int64_t item_begin, int64_t item_end);

// SDDMM work items are blocks. Returns the boundaries of contiguous block ranges of similar
// nonzero count for `num_threads` threads: several per thread, or one when each slice stages
// the whole right operand.
std::vector<int64_t> sddmm_slices(const SddmmProblem& p, const int32_t* block_ptr,
                                  int64_t num_threads);

// Slices per thread when a slice reads its operands in place: a few lines (the transposed
// direction of a tall matrix has only cols / block_size of them) still spread over the threads
// when one of them is delayed. A slice that stages an operand stages all of it, once per slice,
// so then each thread gets one.
constexpr int64_t kSlicesPerThread = 4;
inline int64_t slice_count(int64_t num_threads, bool stages_operand) {
  return std::max<int64_t>(1, (stages_operand ? 1 : kSlicesPerThread) * num_threads);
}

// out[e] = sum_n lhs[i_e, n] * rhs[n, j_e] for the nonzeros of blocks [block_begin, block_end).
template <typename T>
void sddmm(const SddmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* lhs,
           const T* rhs, T* out, int64_t block_begin, int64_t block_end);

// Splits items with the given prefix-summed costs into `num_slices` contiguous ranges.
std::vector<int64_t> balanced_split(const std::vector<int64_t>& cost_prefix, int64_t num_slices);

}  // namespace jaxcsb::cpu

namespace jaxcsb::cpu {

// Checks that block_ptr runs from 0 to nnz without decreasing and that every local index lies
// inside its (possibly clipped) block: O(nnz), run before the kernels trust the arrays.
ffi::Error check_structure_contents(const CsbShape& s, const int32_t* block_ptr,
                                    const uint16_t* local, int64_t nnz);

}  // namespace jaxcsb::cpu
