// Validation of the index arrays' contents on the CPU, before any kernel reads them.
//
// It runs on every call, so it is kept to two vectorisable passes: block_ptr must rise from 0
// to nnz (which also keeps every block's range inside local), and no local index may have bits
// outside block_size x block_size. Only the blocks clipped by the matrix's edge need the exact
// per-nonzero bound, and an offender is located by a slow pass only once a fast one failed.
#include <algorithm>
#include <functional>
#include <string>

#include "cpu_kernels.h"

namespace jaxcsb::cpu {
namespace {

ffi::Error local_outside(int64_t e, uint16_t local, int64_t rows, int64_t cols) {
  return ffi::Error::InvalidArgument(
      "jaxcsb: local index of nonzero " + std::to_string(e) + " is (" +
      std::to_string(local_row(local)) + ", " + std::to_string(local_col(local)) +
      "), outside its " + std::to_string(rows) + " x " + std::to_string(cols) + " block");
}

// The exact check of one block's nonzeros against its (possibly clipped) extent.
ffi::Error check_block(const CsbShape& s, const int32_t* block_ptr, const uint16_t* local,
                       int64_t b) {
  const int64_t beta = s.block_size;
  const int64_t rows = std::min(beta, s.rows - b / s.block_cols() * beta);
  const int64_t cols = std::min(beta, s.cols - b % s.block_cols() * beta);
  for (int64_t e = block_ptr[b]; e < block_ptr[b + 1]; ++e) {
    if (local_row(local[e]) >= rows || local_col(local[e]) >= cols) {
      return local_outside(e, local[e], rows, cols);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

ffi::Error check_structure_contents(const CsbShape& s, const int32_t* block_ptr,
                                    const uint16_t* local, int64_t nnz) {
  const int64_t blocks = s.num_blocks();
  if (block_ptr[0] != 0 || block_ptr[blocks] != nnz) {
    return ffi::Error::InvalidArgument(
        "jaxcsb: block_ptr must start at 0 and end at nnz = " + std::to_string(nnz) + ", got " +
        std::to_string(block_ptr[0]) + " and " + std::to_string(block_ptr[blocks]));
  }
  // Rising from 0 to nnz keeps every range inside local: check it before reading local.
  bool decreases = false;
  for (int64_t b = 0; b < blocks; ++b) decreases |= block_ptr[b + 1] < block_ptr[b];
  if (decreases) {
    const int64_t b =
        std::adjacent_find(block_ptr, block_ptr + blocks + 1, std::greater<>()) - block_ptr;
    return ffi::Error::InvalidArgument(
        "jaxcsb: block_ptr must not decrease and stay within 0..nnz = " + std::to_string(nnz) +
        ", got block_ptr[" + std::to_string(b) + ".." + std::to_string(b + 1) +
        "] = " + std::to_string(block_ptr[b]) + ", " + std::to_string(block_ptr[b + 1]));
  }
  const uint16_t outside = static_cast<uint16_t>(~(((s.block_size - 1) << 8) | (s.block_size - 1)));
  uint16_t any_outside = 0;
  for (int64_t e = 0; e < nnz; ++e) any_outside |= local[e] & outside;
  const bool clipped_rows = s.rows % s.block_size != 0, clipped_cols = s.cols % s.block_size != 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const bool clipped = (clipped_rows && b / s.block_cols() == s.block_rows() - 1) ||
                         (clipped_cols && b % s.block_cols() == s.block_cols() - 1);
    if (any_outside || clipped) {
      if (auto e = check_block(s, block_ptr, local, b); e.failure()) return e;
    }
  }
  return ffi::Error::Success();
}

}  // namespace jaxcsb::cpu
