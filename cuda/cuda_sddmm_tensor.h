// CUDA SDDMM on tensor cores: out[e] = sum_n L[i_e, n] * R[n, j_e] at the nonzeros (i_e, j_e)
// of S, for 16-bit values (bfloat16, float16) at block sizes 16 to 64 and float32 at 16 to 128.
//
// The CUDA-core SDDMM (cuda_sddmm.cu) reads shared memory for every multiply-add of a nonzero.
// Here a thread block computes the whole dense product of a region of CSB blocks (one block,
// or 2 x 2 of them), C = L[region rows, :] * R[:, region columns] summed over all of n, with
// float32 accumulators, and keeps C at the blocks' nonzeros. At 90% sparsity that is 10x the
// useful multiply-adds, at ~15x the CUDA-core rate for 16-bit values (mma.m16n8k16). Float32
// values take three TF32 products (mma.m16n8k8 on each operand split into a TF32 part and its
// remainder; up to about 2^-20 of each product lost, against 2^-24 in float32), which pay
// where the blocks are dense enough (tensor_sddmm_preferred). Each warp owns a 16-row strip of C,
// whose accumulators stay in registers for the whole walk over n. The region's rows of L and
// columns of R go through shared memory in chunks of 128 bytes of n, copied as stored
// (cp.async, the next chunk in flight while this one is multiplied) and read with ldmatrix
// (16-bit; transposed where the operand is stored n-major) or value by value (float32). Where
// the regions are too few to fill the GPU, a cluster of thread blocks splits each region's walk
// over n and adds the partial Cs through distributed shared memory.
//
// A kept entry of C is the dot product of its own row of L and column of R, as in the
// reference: the products at structural zeros are computed and dropped, so an Inf or NaN
// elsewhere in the operands does not reach it. Every sum has a fixed order: the results are
// reproducible.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda_kernels.h"
#include "cuda_mma.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace sddmm_tensor_detail {

struct Params {
  SddmmArgs a;  // lhs [rows][n] ([n][rows] when lhs_transposed), rhs [n][cols] ([cols][n] when
                // rhs_transposed)
  // Derived from a.shape once on the host: computed in the kernel they cost registers (and
  // spilled in two layouts).
  int64_t block_rows;
  int64_t block_cols;
  int64_t region_cols;  // regions of kSpan x kSpan blocks in a row of them
  int64_t num_regions;
  bool lhs_vec;  // lhs 16-byte aligned, its rows a multiple of 16 bytes (cp.async pieces)
  bool rhs_vec;
  int cluster;  // thread blocks that split the walk over n of one region
};

// Shared-memory layout for value type T, block size kBeta and the operands' layouts (n-major:
// stored [n][i] with i the row of L or the column of R). 16-bit rows are padded by 16 bytes so
// that the 8 rows read by one ldmatrix phase fall into distinct bank groups; float32 rows so
// that the 32 values of a TF32 fragment fall into distinct banks (a stride of 4 mod 32 values
// where the fragment's 8 rows step along a row's index, 8 mod 32 where its 4 steps do).
template <typename T, int kBeta_, int kSpan_, bool kLhsNMajor, bool kRhsNMajor>
struct Shape {
  static constexpr bool kTf32 = sizeof(T) == 4;
  static constexpr int kBeta = kBeta_;
  static constexpr int kSpan = kSpan_;         // blocks per side of a thread block's region
  static constexpr int kSide = kBeta * kSpan;  // rows and columns of the region
  static constexpr int kWarps = kSide / 16;    // a 16-row strip of C each
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kNTiles = kSide / 8;       // 8-column pieces of a strip
  static constexpr int kChunk = 128 / sizeof(T);  // values of n per stage: 128-byte rows
  // Thread blocks per multiprocessor that the registers must allow: 2 for regions of 128 (128
  // registers a thread, of which the accumulators take 64), else no bound (0; an explicit 1 lets
  // the compiler take up to 1.5x the registers, and the thread blocks per multiprocessor drop).
  static constexpr int kMinBlocks = kSide == 128 ? 2 : 0;
  // An operand's chunk as stored: [n][i] when it is n-major, else [i][n].
  template <bool kNMajor>
  struct Chunk {
    static constexpr int kRows = kNMajor ? kChunk : kSide;
    static constexpr int kCols = kNMajor ? kSide : kChunk;
    static constexpr int kStride = kCols + (kTf32 && !kNMajor ? 4 : 8);
    static constexpr int kValues = kRows * kStride;
  };
  using L = Chunk<kLhsNMajor>;
  using R = Chunk<kRhsNMajor>;
  static constexpr int kStageValues = L::kValues + R::kValues;
  // C in float32, [row][col], over the stages once the walk is done.
  static constexpr int kCStride = kSide + 4;
  static constexpr size_t kSmemBytes =
      std::max<size_t>(2 * size_t{kStageValues} * sizeof(T), size_t{kSide} * kCStride * 4);

  static_assert(kSide >= 16 && kSide <= 128 && kSide % 16 == 0, "regions of 16 to 128");
  static_assert(kStageValues * sizeof(T) % 16 == 0, "16-byte aligned stages");
};

// Starts copying indices [i0, i0 + kSide) x n [n0, n0 + kChunk) of operand m (`dim` rows of L
// or columns of R) into `dst`, as stored.
template <typename T, class S, bool kNMajor>
__device__ __forceinline__ void copy_operand(T* dst, const void* m, int64_t dim, int64_t n,
                                             int64_t i0, int64_t n0, bool vec) {
  using C = typename S::template Chunk<kNMajor>;
  const T* src = static_cast<const T*>(m);
  if constexpr (kNMajor) {
    copy_tile<T, C::kRows, C::kCols, C::kStride, S::kThreads>(dst, src, n, dim, n0, i0, vec,
                                                              threadIdx.x);
  } else {
    copy_tile<T, C::kRows, C::kCols, C::kStride, S::kThreads>(dst, src, dim, n, i0, n0, vec,
                                                              threadIdx.x);
  }
}

// Starts copying chunk `chunk` of n of the region's rows of L and columns of R into `stage`.
template <typename T, class S, bool kLhsNMajor, bool kRhsNMajor>
__device__ __forceinline__ void copy_chunk(const Params& p, int64_t row0, int64_t col0,
                                           int64_t chunk, T* stage) {
  const int64_t n0 = chunk * S::kChunk;
  copy_operand<T, S, kLhsNMajor>(stage, p.a.lhs, p.a.shape.rows, p.a.n, row0, n0, p.lhs_vec);
  copy_operand<T, S, kRhsNMajor>(stage + S::L::kValues, p.a.rhs, p.a.shape.cols, p.a.n, col0, n0,
                                 p.rhs_vec);
}

// C[row, col] over all of n in float32 on CUDA cores, in storage order: the slow path of
// entries whose tensor-core sum is not finite. Three TF32 products do not keep IEEE semantics
// there (split_tf32: a remainder's sign may differ from its value's, so x * Inf can give
// Inf - Inf), and a 16-bit product takes the same path, for one rule.
template <typename T>
__device__ float exact_entry(const SddmmArgs& a, int64_t row, int64_t col) {
  const T* lhs = static_cast<const T*>(a.lhs);
  const T* rhs = static_cast<const T*>(a.rhs);
  float sum = 0.0f;
  for (int64_t k = 0; k < a.n; ++k) {
    const T l = a.lhs_transposed ? lhs[k * a.shape.rows + row] : lhs[row * a.n + k];
    const T r = a.rhs_transposed ? rhs[col * a.n + k] : rhs[k * a.shape.cols + col];
    sum = fmaf(to_float(l), to_float(r), sum);
  }
  return sum;
}

// Value (i, k) of a staged chunk: i the row of L or column of R, k the index along n.
template <bool kNMajor>
__device__ __forceinline__ float staged(const float* tile, int stride, int i, int k) {
  return kNMajor ? tile[k * stride + i] : tile[i * stride + k];
}

// acc (the warp's strip of C) += its rows of L's chunk * R's chunk, float32 in three TF32
// products (split_tf32).
template <class S, bool kLhsNMajor, bool kRhsNMajor>
__device__ __forceinline__ void multiply_chunk_3xtf32(const float* stage,
                                                      float (&acc)[S::kNTiles][4]) {
  const float* l = stage;
  const float* r = stage + S::L::kValues;
  const int m0 = threadIdx.x / 32 * 16;
  auto l_value = [&](int m, int k) { return staged<kLhsNMajor>(l, S::L::kStride, m, k); };
  auto r_value = [&](int k, int n) { return staged<kRhsNMajor>(r, S::R::kStride, n, k); };
#pragma unroll
  for (int k0 = 0; k0 < S::kChunk; k0 += 8) {
    uint32_t a_big[4], a_small[4];
    split_a_tf32(l_value, m0, k0, a_big, a_small);
#pragma unroll
    for (int nt = 0; nt < S::kNTiles; ++nt) {
      uint32_t b_big[2], b_small[2];
      split_b_tf32(r_value, k0, nt * 8, b_big, b_small);
      mma_16x8x8_3xtf32(acc[nt], a_big, a_small, b_big, b_small);
    }
  }
}

// acc (the warp's strip of C) += its rows of L's chunk * R's chunk, 16-bit values.
template <class S, bool kLhsNMajor, bool kRhsNMajor, typename T>
__device__ __forceinline__ void multiply_chunk(const T* stage, float (&acc)[S::kNTiles][4]) {
  const T* l = stage;
  const T* r = stage + S::L::kValues;
  const int m0 = threadIdx.x / 32 * 16;
#pragma unroll
  for (int k0 = 0; k0 < S::kChunk; k0 += 16) {
    uint32_t a[4];
    load_a</*kStoredMK=*/!kLhsNMajor>(l, S::L::kStride, m0, k0, a);
#pragma unroll
    for (int np = 0; np < S::kNTiles / 2; ++np) {
      uint32_t b0[2], b1[2];
      load_b_pair</*kStoredKN=*/kRhsNMajor>(r, S::R::kStride, k0, np * 16, b0, b1);
      mma_16x8x16<T>(acc[2 * np], a, b0);
      mma_16x8x16<T>(acc[2 * np + 1], a, b1);
    }
  }
}

// The entries of the region's blocks, row by row; none for a block outside the matrix (at the
// last regions' edges). Entry offsets fit in 32 bits, as block_ptr holds them.
template <class S>
struct RegionEntries {
  static constexpr int kBlocks = S::kSpan * S::kSpan;
  int32_t begin[kBlocks], end[kBlocks];

  __device__ __forceinline__ RegionEntries(const Params& p, int64_t br0, int64_t bc0) {
#pragma unroll
    for (int d = 0; d < kBlocks; ++d) {
      const int64_t br = br0 + d / S::kSpan, bc = bc0 + d % S::kSpan;
      int64_t e0 = 0, e1 = 0;
      if (br < p.block_rows && bc < p.block_cols) {
        block_range(p.a.block_ptr, br * p.block_cols + bc, p.a.nnz, &e0, &e1);
      }
      begin[d] = static_cast<int32_t>(e0);
      end[d] = static_cast<int32_t>(e1);
    }
  }

  __device__ __forceinline__ bool any() const {
    bool any = false;
#pragma unroll
    for (int d = 0; d < kBlocks; ++d) any |= begin[d] < end[d];
    return any;
  }
};

// kSplit: a cluster of p.cluster thread blocks shares each region: rank r walks the r-th share
// of the chunks of n, and after the walk each rank adds the partial Cs of a share of the
// nonzeros in rank order (a fixed order: the results stay reproducible). A kernel of its own,
// so that the unsplit walk keeps its registers.
template <typename T, class S, bool kLhsNMajor, bool kRhsNMajor, bool kSplit>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) sddmm_tensor_kernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem_c[];
  T* stages = reinterpret_cast<T*>(smem_c);
  float* c_tile = reinterpret_cast<float*>(smem_c);  // after the walk over n
  const int warp = threadIdx.x / 32;
  const int csize = kSplit ? p.cluster : 1, rank = static_cast<int>(blockIdx.x % csize);
  const int64_t chunks = ceil_div(p.a.n, S::kChunk);
  const auto [c_begin, c_end] = even_share(chunks, csize, rank);
  auto stage_of = [&](int64_t c) { return stages + c % 2 * S::kStageValues; };
  for (int64_t r = blockIdx.x / csize; r < p.num_regions; r += gridDim.x / csize) {
    const int64_t br0 = r / p.region_cols * S::kSpan, bc0 = r % p.region_cols * S::kSpan;
    // Loaded once: read again after the walk over n, they cost its latency at short n.
    const RegionEntries<S> entries(p, br0, bc0);
    if (!entries.any()) continue;  // uniform over the cluster
    const int64_t row0 = br0 * S::kBeta, col0 = bc0 * S::kBeta;

    float acc[S::kNTiles][4] = {};
    if (c_begin < c_end) {
      copy_chunk<T, S, kLhsNMajor, kRhsNMajor>(p, row0, col0, c_begin, stage_of(c_begin));
      cp_async_commit();
    }
    for (int64_t c = c_begin; c < c_end; ++c) {
      if (c + 1 < c_end) {
        copy_chunk<T, S, kLhsNMajor, kRhsNMajor>(p, row0, col0, c + 1, stage_of(c + 1));
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const T* stage = stage_of(c);
      if constexpr (S::kTf32) {
        multiply_chunk_3xtf32<S, kLhsNMajor, kRhsNMajor>(stage, acc);
      } else {
        multiply_chunk<S, kLhsNMajor, kRhsNMajor>(stage, acc);
      }
      __syncthreads();  // the stage is rewritten two chunks on, and C overwrites both
    }

#pragma unroll
    for (int nt = 0; nt < S::kNTiles; ++nt) {
      store_accumulator(c_tile + warp * 16 * S::kCStride + nt * 8, S::kCStride, acc[nt]);
    }
    // C of the whole walk at index i of the tiles: this thread block's, or the cluster's sum.
    auto c_at = [&](int i) {
      if constexpr (kSplit) {
        return cluster_sum(c_tile, csize, i);
      } else {
        return c_tile[i];
      }
    };
    sync_cluster_or_block(kSplit);
    T* out = static_cast<T*>(p.a.out);
#pragma unroll
    for (int d = 0; d < entries.kBlocks; ++d) {
      const int c_block = (d / S::kSpan * S::kCStride + d % S::kSpan) * S::kBeta;
      for (int64_t e = entries.begin[d] + rank * S::kThreads + threadIdx.x; e < entries.end[d];
           e += csize * S::kThreads) {
        const uint16_t l = p.a.local[e];
        // Masking keeps a corrupt local index inside the block.
        const int row = local_row(l) & (S::kBeta - 1), col = local_col(l) & (S::kBeta - 1);
        float c = c_at(c_block + row * S::kCStride + col);
        if (!isfinite(c)) {
          const int64_t region_row = d / S::kSpan * S::kBeta, region_col = d % S::kSpan * S::kBeta;
          c = exact_entry<T>(p.a, row0 + region_row + row, col0 + region_col + col);
        }
        out[e] = from_float<T>(c);
      }
    }
    sync_cluster_or_block(kSplit);  // C is the next region's stages, and other ranks read it
  }
}

// Chunks of n that a rank of a cluster walks at least, so that its walk still keeps the next
// chunk in flight while it multiplies one and the cluster's sum of partial Cs stays small
// beside it. A first choice, not tuned: at 4, 512 x 512 at n = 2048 (beta 64, clusters of 8)
// runs 4.2x faster in float32 than unsplit.
constexpr int64_t kMinChunksPerRank = 4;

template <typename T, int kBeta, int kSpan, bool kLhsTransposed, bool kRhsTransposed>
cudaError_t launch(const SddmmArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  // L is n-major when transposed, R when not.
  constexpr bool kLhsNMajor = kLhsTransposed, kRhsNMajor = !kRhsTransposed;
  using S = Shape<T, kBeta, kSpan, kLhsNMajor, kRhsNMajor>;
  constexpr auto kKernel = sddmm_tensor_kernel<T, S, kLhsNMajor, kRhsNMajor, false>;
  constexpr auto kSplitKernel = sddmm_tensor_kernel<T, S, kLhsNMajor, kRhsNMajor, true>;
  auto pieces = [](const void* m, int64_t contiguous) {
    return contiguous % (16 / sizeof(T)) == 0 && reinterpret_cast<uintptr_t>(m) % 16 == 0;
  };
  const int64_t region_cols = ceil_div(a.shape.block_cols(), kSpan);
  Params p{a,
           a.shape.block_rows(),
           a.shape.block_cols(),
           region_cols,
           ceil_div(a.shape.block_rows(), kSpan) * region_cols,
           pieces(a.lhs, kLhsNMajor ? a.shape.rows : a.n),
           pieces(a.rhs, kRhsNMajor ? a.shape.cols : a.n),
           /*cluster=*/1};
  if (S::kSmemBytes > static_cast<size_t>(dev.max_smem_optin)) {
    return cudaErrorInvalidConfiguration;
  }
  cudaError_t err = allow_smem<kKernel>(dev.device, S::kSmemBytes);
  if (err == cudaSuccess) err = allow_smem<kSplitKernel>(dev.device, S::kSmemBytes);
  if (err != cudaSuccess) return err;
  // Clusters split the walk over n of few regions while all their thread blocks still fit in
  // one wave (a region's chunks play the part of a line's positions).
  err = line_cluster(
      0, dev, p.num_regions, ceil_div(a.n, S::kChunk), kMinChunksPerRank,
      [&](int c) { return resident_on_gpu<kSplitKernel>(c, S::kThreads, S::kSmemBytes, dev); },
      &p.cluster);
  if (err != cudaSuccess) return err;
  // A grid-stride loop covers more regions than one launch can have.
  const int64_t grid = std::min<int64_t>(p.num_regions, INT32_MAX / 8);
  return launch_lines(p.cluster > 1 ? kSplitKernel : kKernel, p, grid, p.cluster, 1, S::kThreads,
                      S::kSmemBytes, stream);
}

// Regions of 2 x 2 blocks share each staged row of L and column of R between two blocks, which
// halves the L2 reads per multiply-add. They serve where n spans more than one chunk (at one
// chunk the thread blocks of single blocks hide latency better: 1.1-1.25x faster at n = 64)
// and the regions still number one per multiprocessor. Blocks of 128 are regions of their own.
template <typename T, int kBeta, bool kLhsTransposed, bool kRhsTransposed>
cudaError_t launch_regions(const SddmmArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  if constexpr (kBeta <= 64) {
    const int64_t regions = ceil_div(a.shape.block_rows(), 2) * ceil_div(a.shape.block_cols(), 2);
    constexpr int kChunk = Shape<T, kBeta, 1, false, false>::kChunk;
    if (a.n > kChunk && regions >= dev.num_sms) {
      return launch<T, kBeta, 2, kLhsTransposed, kRhsTransposed>(a, dev, stream);
    }
  }
  return launch<T, kBeta, 1, kLhsTransposed, kRhsTransposed>(a, dev, stream);
}

}  // namespace sddmm_tensor_detail

// The tensor-core SDDMM for value type T and block size kBeta (tensor_sddmm_preferred).
template <typename T, int kBeta>
cudaError_t launch_sddmm_tensor(const SddmmArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  using namespace sddmm_tensor_detail;
  return dispatch_layout(a.lhs_transposed, a.rhs_transposed, [&](auto lt, auto rt) {
    return launch_regions<T, kBeta, decltype(lt)::value, decltype(rt)::value>(a, dev, stream);
  });
}

}  // namespace jaxcsb::cuda
