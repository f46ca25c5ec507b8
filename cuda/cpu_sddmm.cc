// CPU SDDMM: out[e] = sum_n L[i_e, n] * R[n, j_e] at the nonzeros of S.
//
// Work items are blocks; a slice is a contiguous range of them (block-row-major). A slice walks
// n in tiles. Per tile it reads every column of R as a float32 row of the tile (staged once per
// tile, or used in place when R is float32 with n contiguous) and the rows of L of the current
// block-row (staged once per block-row), so each staged row serves every nonzero that needs it.
// Each nonzero then adds the dot product of its L row and R row over the tile; four nonzeros
// run together so that four independent accumulator chains hide the multiply-add latency.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_copy.h"
#include "cpu_kernels.h"
#include "cpu_types.h"
#include "cpu_vectors.h"

namespace jaxcsb::cpu {
namespace {

// Columns of n per tile: the staged rows of a 1024-column R then take 2 MiB.
constexpr int64_t kTileWidth = 512;

inline float sum8(Vec8 v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// acc[q] += dot(a[q], b[q]) over `width` floats for q < 4: four independent chains hide the
// multiply-add latency. When the four share their `a` row (nonzeros of one row: the stored
// order groups them), each piece of it is loaded once for the four, so a multiply-add needs
// 1.25 loads instead of 2; the arithmetic, and so the result, is the same either way.
template <bool kSharedA>
__attribute__((always_inline)) inline void dot4(const float* const* a, const float* const* b,
                                                float* acc, int64_t width) {
  Vec8 s[4] = {};
  int64_t j = 0;
  for (; j + 8 <= width; j += 8) {
    if constexpr (kSharedA) {
      const Vec8 x = load<Vec8>(a[0] + j);
      for (int q = 0; q < 4; ++q) s[q] += x * load<Vec8>(b[q] + j);
    } else {
      for (int q = 0; q < 4; ++q) {
        s[q] += load<Vec8>(a[q] + j) * load<Vec8>(b[q] + j);
      }
    }
  }
  for (int q = 0; q < 4; ++q) {
    float tail = 0.0f;
    for (int64_t t = j; t < width; ++t) tail += a[q][t] * b[q][t];
    acc[q] += sum8(s[q]) + tail;
  }
}

// acc[k] += dot(a[k], b[k]) over `width` floats for k < count, four at a time. The order of
// additions is fixed, so results do not depend on threads or alignment.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void dot_rows(
    const float* const* a, const float* const* b, float* acc, int64_t count, int64_t width) {
  int64_t k = 0;
  for (; k + 4 <= count; k += 4) {
    if (a[k] == a[k + 1] && a[k] == a[k + 2] && a[k] == a[k + 3]) {
      dot4<true>(a + k, b + k, acc + k, width);
    } else {
      dot4<false>(a + k, b + k, acc + k, width);
    }
  }
  for (; k < count; ++k) {
    Vec8 s = {};
    int64_t j = 0;
    for (; j + 8 <= width; j += 8) {
      s += load<Vec8>(a[k] + j) * load<Vec8>(b[k] + j);
    }
    float tail = 0.0f;
    for (int64_t t = j; t < width; ++t) tail += a[k][t] * b[k][t];
    acc[k] += sum8(s) + tail;
  }
}

// Rows [base, base + count) of a matrix indexed (row, n), stored as (rows, n) when `row_major`
// else as (n, rows), restricted to columns n0 .. n0 + width, as float32 rows: row r starts at
// result + r * stride. Float32 (rows, n) storage is used in place; anything else is converted
// (and transposed in 8 x 8 tiles, in registers for float32) into `buf`.
template <typename T>
const float* stage_rows(const T* m, bool row_major, int64_t total_rows, int64_t n, int64_t base,
                        int64_t count, int64_t n0, int64_t width, std::vector<float>& buf,
                        int64_t* stride) {
  if constexpr (std::is_same_v<T, float>) {
    if (row_major) {
      *stride = n;
      return m + base * n + n0;
    }
  }
  *stride = kTileWidth;
  buf.resize(count * kTileWidth);
  if (row_major) {
    copy_rows(m + base * n + n0, n, buf.data(), kTileWidth, count, width);
  } else {
    copy_transposed(m + n0 * total_rows + base, total_rows, buf.data(), kTileWidth, width, count);
  }
  return buf.data();
}

}  // namespace

std::vector<int64_t> sddmm_slices(const SddmmProblem& p, const int32_t* block_ptr,
                                  int64_t num_threads) {
  // R is staged (converted or transposed) unless it is float32 with n contiguous.
  const bool stages_rhs = !p.rhs_transposed || p.type != ValueType::kF32;
  const int64_t num_slices = slice_count(num_threads, stages_rhs);
  const int64_t blocks = p.shape.num_blocks();
  std::vector<int64_t> prefix(blocks + 1, 0);
  for (int64_t b = 0; b < blocks; ++b) {
    prefix[b + 1] = prefix[b] + (int64_t{block_ptr[b + 1]} - block_ptr[b]) + 1;
  }
  return balanced_split(prefix, num_slices);
}

template <typename T>
void sddmm(const SddmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* lhs,
           const T* rhs, T* out, int64_t block_begin, int64_t block_end) {
  if (block_begin >= block_end) return;
  const CsbShape& s = p.shape;
  const int64_t beta = s.block_size;
  const int64_t e_begin = block_ptr[block_begin], e_end = block_ptr[block_end];
  std::vector<float> acc(e_end - e_begin, 0.0f), lhs_buf, rhs_buf;
  std::vector<const float*> a_rows(e_end - e_begin), b_rows(e_end - e_begin);
  for (int64_t n0 = 0; n0 < p.n; n0 += kTileWidth) {
    const int64_t width = std::min(kTileWidth, p.n - n0);
    int64_t rhs_stride, lhs_stride = 0;
    const float* rhs_rows =
        stage_rows(rhs, p.rhs_transposed, s.cols, p.n, 0, s.cols, n0, width, rhs_buf, &rhs_stride);
    const float* lhs_rows = nullptr;
    int64_t staged_row = -1;
    for (int64_t b = block_begin; b < block_end; ++b) {
      const int64_t e0 = block_ptr[b], e1 = block_ptr[b + 1];
      if (e0 == e1) continue;
      const int64_t block_row = b / s.block_cols(), col_base = b % s.block_cols() * beta;
      if (block_row != staged_row) {
        const int64_t row_base = block_row * beta, rows = std::min(beta, s.rows - row_base);
        lhs_rows = stage_rows(lhs, !p.lhs_transposed, s.rows, p.n, row_base, rows, n0, width,
                              lhs_buf, &lhs_stride);
        staged_row = block_row;
      }
      for (int64_t e = e0; e < e1; ++e) {
        a_rows[e - e_begin] = lhs_rows + local_row(local[e]) * lhs_stride;
        b_rows[e - e_begin] = rhs_rows + (col_base + local_col(local[e])) * rhs_stride;
      }
      dot_rows(a_rows.data() + (e0 - e_begin), b_rows.data() + (e0 - e_begin),
               acc.data() + (e0 - e_begin), e1 - e0, width);
    }
  }
  for (int64_t e = e_begin; e < e_end; ++e) out[e] = from_f32<T>(acc[e - e_begin]);
}

template void sddmm<float>(const SddmmProblem&, const int32_t*, const uint16_t*, const float*,
                           const float*, float*, int64_t, int64_t);
template void sddmm<Bf16>(const SddmmProblem&, const int32_t*, const uint16_t*, const Bf16*,
                          const Bf16*, Bf16*, int64_t, int64_t);
template void sddmm<F16>(const SddmmProblem&, const int32_t*, const uint16_t*, const F16*,
                         const F16*, F16*, int64_t, int64_t);

}  // namespace jaxcsb::cpu
