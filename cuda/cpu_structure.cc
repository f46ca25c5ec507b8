// Validation of the index arrays' contents on the CPU, before any kernel reads them.
#include <algorithm>
#include <string>

#include "cpu_kernels.h"

namespace jaxcsb::cpu {

ffi::Error check_structure_contents(const CsbShape& s, const int32_t* block_ptr,
                                    const uint16_t* local, int64_t nnz) {
  const int64_t blocks = s.num_blocks();
  if (block_ptr[0] != 0 || block_ptr[blocks] != nnz) {
    return ffi::Error::InvalidArgument(
        "jaxcsb: block_ptr must start at 0 and end at nnz = " + std::to_string(nnz) + ", got " +
        std::to_string(block_ptr[0]) + " and " + std::to_string(block_ptr[blocks]));
  }
  const int64_t beta = s.block_size;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t e0 = block_ptr[b], e1 = block_ptr[b + 1];
    // e0 >= 0 holds by induction from block_ptr[0] == 0; e1 <= nnz must be checked before
    // local[e0 .. e1) is read, since a later decrease would be found too late.
    if (e1 < e0 || e1 > nnz) {
      return ffi::Error::InvalidArgument(
          "jaxcsb: block_ptr must not decrease and stay within 0..nnz = " + std::to_string(nnz) +
          ", got block_ptr[" + std::to_string(b) + ".." + std::to_string(b + 1) +
          "] = " + std::to_string(e0) + ", " + std::to_string(e1));
    }
    const int64_t rows = std::min(beta, s.rows - b / s.block_cols() * beta);
    const int64_t cols = std::min(beta, s.cols - b % s.block_cols() * beta);
    for (int64_t e = e0; e < e1; ++e) {
      if (local_row(local[e]) >= rows || local_col(local[e]) >= cols) {
        return ffi::Error::InvalidArgument(
            "jaxcsb: local index of nonzero " + std::to_string(e) + " is (" +
            std::to_string(local_row(local[e])) + ", " + std::to_string(local_col(local[e])) +
            "), outside its " + std::to_string(rows) + " x " + std::to_string(cols) + " block");
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace jaxcsb::cpu
