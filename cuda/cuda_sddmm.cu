// CUDA SDDMM: out[e] = sum_n L[i_e, n] * R[n, j_e] at the nonzeros (i_e, j_e) of S.
//
// A thread block takes kChunk nonzeros of one CSB block (grid x: blocks, grid y: chunks of a
// block, so the nonzeros of a dense block spread over many thread blocks), kPer per thread,
// each with a float32 accumulator in a register. It walks n in tiles of kTileN:
// for each tile it stages the block's beta rows of L and beta columns of R as float32 rows of
// the tile (converting and, for the n-major layouts, transposing on the way), and every thread
// adds the tile's products for its nonzeros, reading both rows four values at a time.
//
// Bank conflicts: the lanes of a warp hold different nonzeros, so they read different rows of
// the staged tiles. Lane l starts its walk along the tile at 16-byte group l (and wraps
// around), so at every step the 8 lanes of a shared-memory phase read 8 different bank groups
// whatever their rows are. The order of the sum over n therefore depends on the lane, but it
// is fixed for a given problem: results are bitwise reproducible.
#include <algorithm>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace {

struct SddmmParams {
  const int32_t* block_ptr;
  const uint16_t* local;
  const void* lhs;
  const void* rhs;
  void* out;
  int64_t nnz;
  int64_t n;
  int64_t rows;
  int64_t cols;
  int64_t block_cols;
  int64_t num_blocks;
  bool lhs_transposed;
  bool rhs_transposed;
};

// Stages rows [base, base + beta) of a matrix M indexed (row, n), for n in [n0, n0 + kTileN),
// as float32 into dst[row * kStride + n]; zero outside the matrix. M is stored row-major as
// (total, n) when `row_major`, else as (n, total). Consecutive threads take consecutive n, so
// the shared-memory stores never conflict; for the n-major layout the global loads of a warp
// touch 32 rows, whose cache lines the following rows of the tile then reuse from L1.
template <typename T, class Cfg>
__device__ __forceinline__ void stage(float* dst, const T* m, bool row_major, int64_t total,
                                      int64_t n, int64_t base, int64_t n0) {
  for (int i = threadIdx.x; i < Cfg::kBeta * Cfg::kTileN; i += Cfg::kThreads) {
    const int r = i / Cfg::kTileN, k = i % Cfg::kTileN;
    const int64_t gr = base + r, gk = n0 + k;
    float v = 0.0f;
    if (gr < total && gk < n) v = to_float(row_major ? m[gr * n + gk] : m[gk * total + gr]);
    dst[r * Cfg::kStride + k] = v;
  }
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) sddmm_kernel(const SddmmParams p) {
  constexpr int kBeta = Cfg::kBeta, kPer = Cfg::kPer, kGroups = Cfg::kTileN / 4;
  __shared__ __align__(16) float ls[kBeta * Cfg::kStride];
  __shared__ __align__(16) float rs[kBeta * Cfg::kStride];
  const T* lhs = static_cast<const T*>(p.lhs);
  const T* rhs = static_cast<const T*>(p.rhs);
  T* out = static_cast<T*>(p.out);
  const int lane = threadIdx.x % 32;

  for (int64_t b = blockIdx.x; b < p.num_blocks; b += gridDim.x) {
    int64_t e0, e1;
    block_range(p.block_ptr, b, p.nnz, &e0, &e1);
    if (e0 >= e1) continue;
    const int64_t row_base = b / p.block_cols * kBeta, col_base = b % p.block_cols * kBeta;
    for (int64_t k0 = e0 + int64_t{blockIdx.y} * Cfg::kChunk; k0 < e1;
         k0 += int64_t{gridDim.y} * Cfg::kChunk) {
      int r[kPer], c[kPer];
      float acc[kPer];
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t e = k0 + threadIdx.x + j * Cfg::kThreads;
        const uint16_t loc = e < e1 ? p.local[e] : 0;
        // Masking keeps a corrupt local index inside the staged tiles.
        r[j] = (loc >> 8) & (kBeta - 1);
        c[j] = (loc & 0xff) & (kBeta - 1);
        acc[j] = 0.0f;
      }
      for (int64_t n0 = 0; n0 < p.n; n0 += Cfg::kTileN) {
        __syncthreads();  // the previous tile's reads are done
        stage<T, Cfg>(ls, lhs, !p.lhs_transposed, p.rows, p.n, row_base, n0);
        stage<T, Cfg>(rs, rhs, p.rhs_transposed, p.cols, p.n, col_base, n0);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          const float* lrow = ls + r[j] * Cfg::kStride;
          const float* rrow = rs + c[j] * Cfg::kStride;
          float a = acc[j];
#pragma unroll 4
          for (int k = 0; k < kGroups; ++k) {
            const int g = (k + lane) & (kGroups - 1);
            const float4 x = *reinterpret_cast<const float4*>(lrow + 4 * g);
            const float4 y = *reinterpret_cast<const float4*>(rrow + 4 * g);
            a = fmaf(x.x, y.x, a);
            a = fmaf(x.y, y.y, a);
            a = fmaf(x.z, y.z, a);
            a = fmaf(x.w, y.w, a);
          }
          acc[j] = a;
        }
      }
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t e = k0 + threadIdx.x + j * Cfg::kThreads;
        if (e < e1) out[e] = from_float<T>(acc[j]);
      }
    }
  }
}

template <typename T, class Cfg>
cudaError_t launch(const SddmmArgs& a, cudaStream_t stream) {
  SddmmParams p{};
  p.block_ptr = a.block_ptr;
  p.local = a.local;
  p.lhs = a.lhs;
  p.rhs = a.rhs;
  p.out = a.out;
  p.nnz = a.nnz;
  p.n = a.n;
  p.rows = a.shape.rows;
  p.cols = a.shape.cols;
  p.block_cols = a.shape.block_cols();
  p.num_blocks = a.shape.num_blocks();
  p.lhs_transposed = a.lhs_transposed;
  p.rhs_transposed = a.rhs_transposed;
  // x: CSB blocks (a grid-stride loop covers more than 2^31 - 1); y: chunks of one block, as
  // many as a full beta x beta block has. Thread blocks past a block's last chunk exit at once.
  const int64_t grid_x = std::min<int64_t>(p.num_blocks, INT32_MAX);
  const int grid_y = (Cfg::kBeta * Cfg::kBeta + Cfg::kChunk - 1) / Cfg::kChunk;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), 1);
  config.blockDim = dim3(Cfg::kThreads, 1, 1);
  config.stream = stream;
  return launch_kernel(config, sddmm_kernel<T, Cfg>, p);
}

}  // namespace

cudaError_t launch_sddmm(const SddmmArgs& args, const DeviceInfo& dev, cudaStream_t stream) {
  (void)dev;
  if (args.nnz == 0) return cudaSuccess;
  if (args.n == 0 || args.shape.num_blocks() == 0) {
    // An empty sum: zeros (all-zero bits in every supported type).
    const int64_t bytes = args.nnz * (args.dtype == DType::kF32 ? 4 : 2);
    return cudaMemsetAsync(args.out, 0, static_cast<size_t>(bytes), stream);
  }
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_beta(args.shape.block_size, [&](auto beta) {
      using Cfg = typename SelectSddmm<decltype(beta)::value>::type;
      return launch<T, Cfg>(args, stream);
    });
  });
}

}  // namespace jaxcsb::cuda
