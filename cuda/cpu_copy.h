// Copies between the CPU kernels' float32 staging buffers and operands of any value type:
// straight, or transposed (n-major operands, batch-leading outputs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_types.h"

namespace jaxcsb::cpu {

// dst[c * dst_stride + r] = src[r * src_stride + c] for r, c < 8: an 8 x 8 tile of floats
// transposed in registers (cpu_transpose.cc).
void transpose_8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride);

// x as a Dst; one of the two types is float32.
template <typename Dst, typename Src>
inline Dst convert(Src x) {
  if constexpr (std::is_same_v<Dst, float>) {
    return to_f32(x);
  } else {
    return from_f32<Dst>(x);
  }
}

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols.
template <typename Src, typename Dst>
void copy_rows(const Src* src, int64_t src_stride, Dst* dst, int64_t dst_stride, int64_t rows,
               int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      dst[r * dst_stride + c] = convert<Dst>(src[r * src_stride + c]);
  }
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols, in 8 x 8 tiles;
// whole float32 tiles are transposed in registers. The tiles go along the destination's rows,
// eight at a time: the strides are often powers of two (a row of 2048 floats), so a walk down
// the destination's columns put every row's cache line in one set of L1 and lost each line
// before its next tile, 32 bytes later, wrote to it (x @ A.T, 2048 x 512 at 90%, n = 256, two
// cores: median 1.64-1.75 -> 1.31-1.51 ms; the transposes went from 19% to 12% of the time).
template <typename Src, typename Dst>
void copy_transposed(const Src* src, int64_t src_stride, Dst* dst, int64_t dst_stride, int64_t rows,
                     int64_t cols) {
  for (int64_t c0 = 0; c0 < cols; c0 += 8) {
    const int64_t c1 = std::min(cols, c0 + 8);
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t r1 = std::min(rows, r0 + 8);
      if constexpr (std::is_same_v<Src, float> && std::is_same_v<Dst, float>) {
        if (r1 - r0 == 8 && c1 - c0 == 8) {
          transpose_8x8(src + r0 * src_stride + c0, src_stride, dst + c0 * dst_stride + r0,
                        dst_stride);
          continue;
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          dst[c * dst_stride + r] = convert<Dst>(src[r * src_stride + c]);
        }
      }
    }
  }
}

}  // namespace jaxcsb::cpu
