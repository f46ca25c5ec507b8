// Tensor-core building blocks, shared by the SpMM and the SDDMM on tensor cores: mma.m16n8k16
// on 16-bit values (bfloat16, float16) with its operands' fragments read from shared memory
// with ldmatrix, mma.m16n8k8 on TF32 parts of float32 values (three products for float32
// accuracy), wgmma.m64n64k8 on TF32 parts with its B operand in shared memory (sm_90a), float32
// accumulators stored to shared memory, and tiles copied into shared memory with cp.async.
// Included only from .cu files.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda_utils.h"

namespace jaxcsb::cuda {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Four 8 x 8 matrices of 16-bit values from shared memory; lane l gives the address of row
// l % 8 of matrix l / 8. With kTrans each lane receives a column pair instead of a row pair.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(const void* p, uint32_t (&r)[4]) {
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
  }
}

// acc (16 x 8, float32) += a (16 x 16, row-major) * b (16 x 8, column-major).
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4],
                                            const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// acc (16 x 8, float32) += a (16 x 8, row-major) * b (8 x 8, column-major) in TF32: the tensor
// cores read the sign, the exponent and the top 10 bits of the mantissa of each value.
__device__ __forceinline__ void mma_16x8x8_tf32(float (&acc)[4], const uint32_t (&a)[4],
                                                const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Splits x into big + small, both TF32: big is x rounded to TF32 (to nearest, ties away from
// zero: half the weight of its last mantissa bit added to the bits, then the 13 bits below
// cleared), and small = x - big is exact and at most 2^-11 |x|, so that the tensor cores'
// reading of small (its top 10 bits of mantissa) loses at most 2^-21 |x|. small may have the
// opposite sign of x, so a product with an infinite value (or a finite one that rounds up past
// FLT_MAX) can come out NaN where IEEE gives Inf: callers recompute non-finite results exactly.
__device__ __forceinline__ void split_tf32(float x, uint32_t& big, uint32_t& small) {
  big = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
  small = __float_as_uint(x - __uint_as_float(big));
}

// acc += a * b at about float32 accuracy in three TF32 products (3xTF32): a_big b_small +
// a_small b_big + a_big b_big, the small terms first; a_small b_small (at most 2^-22 of a b) is
// left out. Each product is within about 2^-20 of a b (split_tf32).
__device__ __forceinline__ void mma_16x8x8_3xtf32(float (&acc)[4], const uint32_t (&a_big)[4],
                                                  const uint32_t (&a_small)[4],
                                                  const uint32_t (&b_big)[2],
                                                  const uint32_t (&b_small)[2]) {
  mma_16x8x8_tf32(acc, a_big, b_small);
  mma_16x8x8_tf32(acc, a_small, b_big);
  mma_16x8x8_tf32(acc, a_big, b_big);
}

// wgmma, the tensor cores' asynchronous products of a warpgroup (four warps), needs the sm_90a
// target; where the kernels are built without it, their callers take mma.sync instead.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define JAXCSB_WGMMA 1

// The descriptor of a matrix operand in shared memory at `addr`, K-major without swizzle: core
// matrices of 8 rows by 16 bytes, each stored contiguously, `lead_bytes` apart along K and
// `stride_bytes` apart along the rows.
__device__ __forceinline__ uint64_t wgmma_descriptor(unsigned addr, unsigned lead_bytes,
                                                     unsigned stride_bytes) {
  const auto encode = [](unsigned x) { return uint64_t{(x & 0x3ffffu) >> 4}; };
  return encode(addr) | encode(lead_bytes) << 16 | encode(stride_bytes) << 32;
}

// Orders this thread's register writes before the warpgroup's next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
// Pins the accumulators' values in their registers at this point of the thread's instructions:
// the compiler may not move a write of them (such as their zeroing) past the wgmma_fence after
// this, nor a read of them before the wgmma_wait before this.
__device__ __forceinline__ void wgmma_fence_operand(float (&acc)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most kPending of the warpgroup's committed wgmma groups are not done; a group
// done has read its registers and shared memory.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// acc (64 x 64 over the warpgroup, float32) += a (64 x 8, TF32, from registers: warp w holds rows
// 16 w..16 w + 15 in the fragment layout of mma.m16n8k8) * b (8 x 64, TF32, K-major in shared
// memory at `b`). Warp w's accumulators hold rows 16 w.. as eight mma.m16n8 accumulators, one
// for each 8 columns.
__device__ __forceinline__ void wgmma_64x64x8_tf32(float (&acc)[32], const uint32_t (&a)[4],
                                                   uint64_t b) {
  asm volatile(
      "{\n.reg .pred add;\nsetp.ne.b32 add, %37, 0;\n"  // acc += a b, not acc = a b
      "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, add, 1, 1;\n}\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3]), "+f"(acc[4]), "+f"(acc[5]),
        "+f"(acc[6]), "+f"(acc[7]), "+f"(acc[8]), "+f"(acc[9]), "+f"(acc[10]), "+f"(acc[11]),
        "+f"(acc[12]), "+f"(acc[13]), "+f"(acc[14]), "+f"(acc[15]), "+f"(acc[16]), "+f"(acc[17]),
        "+f"(acc[18]), "+f"(acc[19]), "+f"(acc[20]), "+f"(acc[21]), "+f"(acc[22]), "+f"(acc[23]),
        "+f"(acc[24]), "+f"(acc[25]), "+f"(acc[26]), "+f"(acc[27]), "+f"(acc[28]), "+f"(acc[29]),
        "+f"(acc[30]), "+f"(acc[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
#endif

// Makes this thread's stores to shared memory visible to the tensor cores' asynchronous reads
// (wgmma), after a barrier of the threads that stored.
__device__ __forceinline__ void fence_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// The A operand of mma_16x8x8_3xtf32 (rows m0..m0+15, k0..k0+7), split: value(m, k) reads the
// tile. The fragment layout of mma.m16n8k8 (TF32): lane 4 g + t holds rows g and g + 8,
// columns t and t + 4.
template <class Value>
__device__ __forceinline__ void split_a_tf32(Value value, int m0, int k0, uint32_t (&big)[4],
                                             uint32_t (&small)[4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    split_tf32(value(m0 + g + q % 2 * 8, k0 + t + q / 2 * 4), big[q], small[q]);
  }
}

// The B operand of mma_16x8x8_3xtf32 (k0..k0+7, columns n0..n0+7), split: value(k, n) reads
// the tile. Lane 4 g + t holds rows t and t + 4 of column g.
template <class Value>
__device__ __forceinline__ void split_b_tf32(Value value, int k0, int n0, uint32_t (&big)[2],
                                             uint32_t (&small)[2]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int q = 0; q < 2; ++q) split_tf32(value(k0 + t + 4 * q, n0 + g), big[q], small[q]);
}

// The A operand of mma_16x8x16 (rows m0..m0+15, k0..k0+15) from a tile in shared memory with
// row stride `stride`, stored [m][k] (kStoredMK) or [k][m].
template <bool kStoredMK, typename T>
__device__ __forceinline__ void load_a(const T* tile, int stride, int m0, int k0,
                                       uint32_t (&a)[4]) {
  const int lane = threadIdx.x % 32;
  if constexpr (kStoredMK) {
    // Matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
    ldmatrix_x4<false>(tile + (m0 + lane % 16) * stride + k0 + lane / 16 * 8, a);
  } else {
    // The same four matrices, each read along its rows of k.
    const int q = lane / 8, m = m0 + q % 2 * 8, k = k0 + q / 2 * 8 + lane % 8;
    ldmatrix_x4<true>(tile + k * stride + m, a);
  }
}

// The B operands of two mma_16x8x16 (k0..k0+15; columns n0..n0+7 in b0, n0+8..n0+15 in b1) from
// a tile in shared memory with row stride `stride`, stored [k][n] (kStoredKN) or [n][k].
template <bool kStoredKN, typename T>
__device__ __forceinline__ void load_b_pair(const T* tile, int stride, int k0, int n0,
                                            uint32_t (&b0)[2], uint32_t (&b1)[2]) {
  const int lane = threadIdx.x % 32;
  uint32_t r[4];
  if constexpr (kStoredKN) {
    // Matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
    ldmatrix_x4<true>(tile + (k0 + lane % 16) * stride + n0 + lane / 16 * 8, r);
  } else {
    // The same four matrices, each read along its rows of n.
    const int q = lane / 8, n = n0 + q / 2 * 8 + lane % 8, k = k0 + q % 2 * 8;
    ldmatrix_x4<false>(tile + n * stride + k, r);
  }
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// Stores the accumulator of one mma_16x8x16 or mma_16x8x8 (16 x 8) into a float32 tile at
// `tile`, with row stride `stride`. The layout of both: lane l holds rows l / 4 and l / 4 + 8,
// columns 2 (l % 4) and 2 (l % 4) + 1.
__device__ __forceinline__ void store_accumulator(float* tile, int stride, const float (&acc)[4]) {
  const int lane = threadIdx.x % 32;
  float* dst = tile + lane / 4 * stride + 2 * (lane % 4);
  *reinterpret_cast<float2*>(dst) = make_float2(acc[0], acc[1]);
  *reinterpret_cast<float2*>(dst + 8 * stride) = make_float2(acc[2], acc[3]);
}

// Starts copying rows [r0, r0 + kRows) x columns [c0, c0 + kCols) of the row-major matrix `src`
// (rows x cols values) into `dst` (row stride kStride), zero outside the matrix: 16-byte
// cp.async pieces when `vec` (src 16-byte aligned, its rows a multiple of 16 bytes), else value
// by value (complete on return). Thread t of kThreads takes pieces t, t + kThreads, ...
template <typename T, int kRows, int kCols, int kStride, int kThreads>
__device__ __forceinline__ void copy_tile(T* dst, const T* src, int64_t rows, int64_t cols,
                                          int64_t r0, int64_t c0, bool vec, int t) {
  constexpr int kPer = 16 / sizeof(T);  // values per 16-byte piece
  static_assert(kCols % kPer == 0, "rows of 16-byte pieces");
  if (vec) {
    constexpr int kPieces = kRows * kCols / kPer;
    const int rows_in = static_cast<int>(std::clamp<int64_t>(rows - r0, 0, kRows));
    const int cols_in = static_cast<int>(std::clamp<int64_t>(cols - c0, 0, kCols));
    const T* origin = src + r0 * cols + c0;
#pragma unroll
    for (int i0 = 0; i0 < kPieces; i0 += kThreads) {
      const int i = i0 + t, r = i / (kCols / kPer), c = i % (kCols / kPer) * kPer;
      const int valid = r < rows_in ? std::clamp(cols_in - c, 0, kPer) : 0;
      const T* from = valid > 0 ? origin + r * cols + c : src;
      if (i < kPieces) cp_async_16(dst + r * kStride + c, from, valid * sizeof(T));
    }
  } else {
    for (int i = t; i < kRows * kCols; i += kThreads) {
      const int r = i / kCols, c = i % kCols;
      const bool inside = r0 + r < rows && c0 + c < cols;
      dst[r * kStride + c] = inside ? src[(r0 + r) * cols + c0 + c] : from_float<T>(0.0f);
    }
  }
}

}  // namespace jaxcsb::cuda
