// CPU SDDMM: out[e] = sum_n L[i_e, n] * R[n, j_e] at the nonzeros of S.
//
// Work items are blocks. For each nonempty block the kernel stages, tile by tile along n, the
// block's rows of L and columns of R as float32 rows of the tile width (so every layout reduces
// to contiguous dot products), and each nonzero accumulates one dot product per tile.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_types.h"

namespace jaxcsb::cpu {
namespace {

// Two staged tiles of block_size x tile_width float32 values stay in L2 (64 KiB each).
int64_t tile_width(int32_t block_size) { return std::max<int64_t>(16, 16384 / block_size); }

// Eight independent partial sums let the compiler vectorise without reassociating: the order
// of additions is fixed, so results are reproducible.
inline float dot(const float* a, const float* b, int64_t width) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= width; k += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += a[k + l] * b[k + l];
  }
  for (; k < width; ++k) lanes[k & 7] += a[k] * b[k];
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// Stages rows [base, base + count) of a matrix indexed (row, n), stored row-major as (rows, n)
// when `row_major`, else as (n, rows), for columns n0 .. n0 + width.
template <typename T>
void stage_rows(const T* m, bool row_major, int64_t total_rows, int64_t n, int64_t base,
                int64_t count, int64_t n0, int64_t width, int64_t tw, float* stage) {
  if (row_major) {
    for (int64_t r = 0; r < count; ++r) {
      const T* src = m + (base + r) * n + n0;
      for (int64_t k = 0; k < width; ++k) stage[r * tw + k] = to_f32(src[k]);
    }
  } else {
    for (int64_t k = 0; k < width; ++k) {
      const T* src = m + (n0 + k) * total_rows + base;
      for (int64_t r = 0; r < count; ++r) stage[r * tw + k] = to_f32(src[r]);
    }
  }
}

}  // namespace

std::vector<int64_t> sddmm_slices(const SddmmProblem& p, const int32_t* block_ptr,
                                  int64_t num_slices) {
  const int64_t blocks = p.shape.num_blocks();
  std::vector<int64_t> prefix(blocks + 1, 0);
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t nnz = int64_t{block_ptr[b + 1]} - block_ptr[b];
    // Staging costs about 2 * block_size rows per nonempty block.
    prefix[b + 1] = prefix[b] + (nnz ? nnz + 2 * p.shape.block_size : 1);
  }
  return balanced_split(prefix, num_slices);
}

template <typename T>
void sddmm(const SddmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* lhs,
           const T* rhs, T* out, int64_t block_begin, int64_t block_end) {
  const CsbShape& s = p.shape;
  const int64_t beta = s.block_size, tw = tile_width(s.block_size);
  std::vector<float> stage_l(beta * tw), stage_r(beta * tw), acc;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t e0 = block_ptr[b], e1 = block_ptr[b + 1];
    if (e0 == e1) continue;
    const int64_t row_base = b / s.block_cols() * beta, col_base = b % s.block_cols() * beta;
    const int64_t rows = std::min(beta, s.rows - row_base);
    const int64_t cols = std::min(beta, s.cols - col_base);
    acc.assign(e1 - e0, 0.0f);
    for (int64_t n0 = 0; n0 < p.n; n0 += tw) {
      const int64_t width = std::min(tw, p.n - n0);
      stage_rows(lhs, !p.lhs_transposed, s.rows, p.n, row_base, rows, n0, width, tw,
                 stage_l.data());
      stage_rows(rhs, p.rhs_transposed, s.cols, p.n, col_base, cols, n0, width, tw, stage_r.data());
      for (int64_t e = e0; e < e1; ++e) {
        acc[e - e0] += dot(stage_l.data() + local_row(local[e]) * tw,
                           stage_r.data() + local_col(local[e]) * tw, width);
      }
    }
    for (int64_t e = e0; e < e1; ++e) out[e] = from_f32<T>(acc[e - e0]);
  }
}

template void sddmm<float>(const SddmmProblem&, const int32_t*, const uint16_t*, const float*,
                           const float*, float*, int64_t, int64_t);
template void sddmm<Bf16>(const SddmmProblem&, const int32_t*, const uint16_t*, const Bf16*,
                          const Bf16*, Bf16*, int64_t, int64_t);
template void sddmm<F16>(const SddmmProblem&, const int32_t*, const uint16_t*, const F16*,
                         const F16*, F16*, int64_t, int64_t);

}  // namespace jaxcsb::cpu
