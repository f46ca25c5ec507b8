// The Compressed Sparse Blocks layout as the kernels see it, shared by host and device code.
//
// A stored matrix S of shape (rows, cols) is cut into block_size x block_size blocks, numbered
// row-major over the grid of block_rows x block_cols blocks.
//   block_ptr[b] .. block_ptr[b + 1]   the nonzeros of block b (int32, nblocks + 1 entries)
//   local[e]                           position of nonzero e inside its block: row << 8 | col
//   values[e]                          its value
// Inside a block the nonzeros are sorted by (row, col). Block-row I is blocks I * block_cols + J
// (contiguous); block-column J is blocks J, J + block_cols, ... (strided). Both product
// directions walk the same arrays: the forward product reads a block-row, the transposed
// product a block-column, with the roles of the local row and column swapped. The kernels
// split their work from block_ptr.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define JAXCSB_HD __host__ __device__ __forceinline__
#else
#define JAXCSB_HD inline
#endif

namespace jaxcsb {

// Static description of a stored matrix and the direction of one product.
struct CsbShape {
  int64_t rows = 0;        // rows of the stored matrix S
  int64_t cols = 0;        // columns of the stored matrix S
  int32_t block_size = 0;  // beta: a power of two, 16..256
  bool transpose = false;  // the product uses S^T: lines are block-columns

  JAXCSB_HD int64_t block_rows() const { return (rows + block_size - 1) / block_size; }
  JAXCSB_HD int64_t block_cols() const { return (cols + block_size - 1) / block_size; }
  JAXCSB_HD int64_t num_blocks() const { return block_rows() * block_cols(); }
  // Rows of op(S): the output dimension of the product.
  JAXCSB_HD int64_t out_dim() const { return transpose ? cols : rows; }
  // Columns of op(S): the contracted dimension of the product.
  JAXCSB_HD int64_t in_dim() const { return transpose ? rows : cols; }
  // Lines (output block-rows of op(S)) and blocks per line.
  JAXCSB_HD int64_t num_lines() const { return transpose ? block_cols() : block_rows(); }
  JAXCSB_HD int64_t line_length() const { return transpose ? block_rows() : block_cols(); }
  // Block id of position p (0 <= p < line_length()) of line `line`.
  JAXCSB_HD int64_t block_at(int64_t line, int64_t p) const {
    return transpose ? p * block_cols() + line : line * block_cols() + p;
  }
};

// Fraction of the stored matrix's positions that hold a nonzero.
JAXCSB_HD double density(const CsbShape& s, int64_t nnz) {
  const double positions = static_cast<double>(s.rows) * static_cast<double>(s.cols);
  return positions > 0 ? static_cast<double>(nnz) / positions : 0.0;
}

JAXCSB_HD int local_row(uint16_t local) { return local >> 8; }
JAXCSB_HD int local_col(uint16_t local) { return local & 0xff; }

// Row of op(S) (the output) and column of op(S) (the input) of a nonzero, inside its block.
JAXCSB_HD int local_out(uint16_t local, bool transpose) {
  return transpose ? local_col(local) : local_row(local);
}
JAXCSB_HD int local_in(uint16_t local, bool transpose) {
  return transpose ? local_row(local) : local_col(local);
}

}  // namespace jaxcsb
