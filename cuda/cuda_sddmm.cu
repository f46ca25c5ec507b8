// CUDA SDDMM: out[e] = sum_n L[i_e, n] * R[n, j_e] at the nonzeros (i_e, j_e) of S. Where
// tensor_sddmm_preferred says so (16-bit values at block sizes up to 64, float32 up to 128 from
// a density of 1/8) it runs on tensor cores (cuda_sddmm_tensor.h); this file's kernel serves
// the rest.
//
// A thread block owns a square region of S, kRegion x kRegion (whole CSB blocks), and walks n
// in tiles of 32. Per tile it stages the region's rows of L and columns of R in shared memory
// as float32, k-contiguous: staged row r holds the tile's 32 values of row r (128 bytes),
// whatever the operand's layout in global memory (n-major operands are transposed on the way,
// 4 x 4 values at a time in registers). A staged row of L serves every nonzero of that row of
// the region and a staged column of R every nonzero of that column: in a 128 x 128 region at
// 90% sparsity each staged value is read by about 13 nonzeros, which is what keeps the staging
// traffic (global and shared) small beside the multiply-adds.
//
// When the regions are too few to fill the GPU and n is long (a small weight matrix and a large
// batch), a cluster of thread blocks shares each region: block r of the cluster walks the r-th
// share of the tiles of n, and the blocks add their partial sums through distributed shared
// memory in rank order, so the results stay bitwise reproducible.
//
// The region's nonzeros are cut into units of kPer consecutive stored nonzeros of one block;
// a thread takes one unit per pass (more passes when the region has more units than threads)
// and keeps its kPer float32 sums in registers for the whole walk over n. The kernel's speed
// follows the share of threads that hold a unit, so kPer is 4 where the units then still take
// one pass, else 8 (launch_region). Inside a block the nonzeros are sorted by (row, col), so
// the nonzeros of a unit mostly share their row: a 16-byte group of that row of L is loaded
// once for all of them.
//
// Bank conflicts: lane l reads 16-byte group (g + l) mod 8 of its rows at step g, so the 8 lanes
// of a shared-memory phase hit 8 different bank groups whatever rows they read. The order of
// the sum over n thus depends on the lane, which is fixed for a given problem: results are
// bitwise reproducible.
#include <algorithm>
#include <cstdint>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_sddmm_tensor.h"
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
  int64_t block_rows;
  int64_t block_cols;
  int beta;
  int64_t region_cols;  // regions per row of the grid of regions
  int64_t num_regions;
  bool lhs_transposed;
  bool rhs_transposed;
  bool lhs_vec;  // every 4-value group of lhs staging is aligned for one vector load
  bool rhs_vec;
  int cluster;  // thread blocks that split the walk over n of one region
};

// Four values of T as loaded. They are widened to float32 only when stored (store_tile): a
// conversion right after the load would wait for it there, and the tile loaded ahead would no
// longer overlap the current tile's multiply-adds (bfloat16 ran 1.6x slower than float32).
template <typename T>
union Raw4 {
  typename VecStorage<4 * sizeof(T)>::type vec;
  T elems[4];
};

// Loads src[0 .. min(valid, 4)), zero past `valid`; one vector access when `vec` and all four
// are inside.
template <typename T>
__device__ __forceinline__ void load4(const T* src, int64_t valid, bool vec, Raw4<T>& v) {
  if (vec && valid >= 4) {
    v.vec = *reinterpret_cast<const decltype(v.vec)*>(src);
    return;
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) v.elems[q] = q < valid ? src[q] : from_float<T>(0.0f);
}

template <typename T>
__device__ __forceinline__ void store4(float* dst, T a, T b, T c, T d) {
  *reinterpret_cast<float4*>(dst) = make_float4(to_float(a), to_float(b), to_float(c), to_float(d));
}

// Staging of one operand's tile: lines [base, base + kRegion) of a matrix M indexed
// (line, n), for n in [n0, n0 + 32), go to dst[line * 32 + k] as float32, zero outside M. M is
// (total, n) row-major when `k_contiguous`, else (n, total). Every thread moves 16 values, which
// it loads into registers (load_tile) one tile ahead, while the current tile is multiplied,
// and stores once that tile's reads are done (store_tile).
//
// k-contiguous: item q of a thread is one 4-value group of one line; eight consecutive threads
// read a line's 128 contiguous bytes and store its 8 groups. n-major: a thread reads 4 lines at
// 4 consecutive n (contiguous along the lines) and stores them transposed, 4 groups; eight
// consecutive threads cover one group of lines at all 8 groups of n. Either way the 8 lanes of a
// store phase hit 8 different bank groups.
template <typename T>
using Staged = Raw4<T>[4];

template <typename T, class Cfg>
__device__ __forceinline__ void load_tile(Staged<T>& v, const T* m, bool k_contiguous, bool vec,
                                          int64_t total, int64_t n, int64_t base, int64_t n0) {
  constexpr int kGroups = Cfg::kGroups;
  if (k_contiguous) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int i = threadIdx.x + q * Cfg::kThreads, line = i / kGroups, g = i % kGroups;
      const int64_t gl = base + line, gk = n0 + 4 * g;
      load4(m + gl * n + gk, gl < total ? n - gk : 0, vec, v[q]);
    }
  } else {
    const int l4 = threadIdx.x / kGroups, g = threadIdx.x % kGroups;
    const int64_t gl = base + 4 * l4;
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // v[q][p]: n0 + 4 g + q, line gl + p
      const int64_t gk = n0 + 4 * g + q;
      load4(m + gk * total + gl, gk < n ? total - gl : 0, vec, v[q]);
    }
  }
}

template <typename T, class Cfg>
__device__ __forceinline__ void store_tile(float* dst, const Staged<T>& v, bool k_contiguous) {
  constexpr int kGroups = Cfg::kGroups, kTileN = Cfg::kTileN;
  if (k_contiguous) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int i = threadIdx.x + q * Cfg::kThreads, line = i / kGroups, g = i % kGroups;
      store4(dst + line * kTileN + 4 * g, v[q].elems[0], v[q].elems[1], v[q].elems[2],
             v[q].elems[3]);
    }
  } else {
    const int l4 = threadIdx.x / kGroups, g = threadIdx.x % kGroups;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      store4(dst + (4 * l4 + p) * kTileN + 4 * g, v[0].elems[p], v[1].elems[p], v[2].elems[p],
             v[3].elems[p]);
    }
  }
}

// kSplit: a cluster of blocks shares each region (p.cluster > 1). A kernel of its own, so
// that the unsplit walk keeps its registers for the sums.
template <typename T, class Cfg, bool kSplit>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    sddmm_kernel(const SddmmParams p) {
  constexpr int kPer = Cfg::kPer, kTileN = Cfg::kTileN, kGroups = Cfg::kGroups;
  extern __shared__ __align__(16) unsigned char smem[];
  float* ls = reinterpret_cast<float*>(smem);
  float* rs = ls + Cfg::kTileFloats;
  int* first = reinterpret_cast<int*>(rs + Cfg::kTileFloats);  // per block of the region
  int* last = first + Cfg::kMaxBlocks;
  int* units_end = last + Cfg::kMaxBlocks;  // inclusive prefix sum of the blocks' units
  float* part = reinterpret_cast<float*>(smem + Cfg::kPartOffset);  // [thread][kPer]
  const T* lhs = static_cast<const T*>(p.lhs);
  const T* rhs = static_cast<const T*>(p.rhs);
  T* out = static_cast<T*>(p.out);
  const int lane = threadIdx.x % 32;
  const int span = Cfg::kRegion / p.beta;  // blocks per side of a region
  const int num_blocks = span * span;

  // This block's share of the tiles of n: all of them, or the rank-th of the cluster's shares.
  const int csize = kSplit ? p.cluster : 1, rank = static_cast<int>(blockIdx.x % csize);
  const int64_t tiles = ceil_div(p.n, kTileN);
  const Share<int64_t> my_tiles = even_share(tiles, csize, rank);
  const int64_t n_begin = my_tiles.begin * kTileN, n_end = std::min(p.n, my_tiles.end * kTileN);

  for (int64_t region = blockIdx.x / csize; region < p.num_regions; region += gridDim.x / csize) {
    const int64_t rr = region / p.region_cols, rc = region % p.region_cols;
    __syncthreads();  // the previous region's tables are no longer read
    for (int j = threadIdx.x; j < num_blocks; j += Cfg::kThreads) {
      const int64_t bi = rr * span + j / span, bj = rc * span + j % span;
      int64_t e0 = 0, e1 = 0;
      if (bi < p.block_rows && bj < p.block_cols) {
        block_range(p.block_ptr, bi * p.block_cols + bj, p.nnz, &e0, &e1);
      }
      first[j] = static_cast<int>(e0);
      last[j] = static_cast<int>(e1);
      units_end[j] = static_cast<int>((e1 - e0 + kPer - 1) / kPer);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int j = 1; j < num_blocks; ++j) units_end[j] += units_end[j - 1];
    }
    __syncthreads();
    const int units = units_end[num_blocks - 1];

    for (int u0 = 0; u0 < units; u0 += Cfg::kThreads) {
      const int u = u0 + threadIdx.x;
      const bool active = u < units;
      // This thread's nonzeros [e_begin, e_begin + count) and their staged rows (offsets).
      int64_t e_begin = 0;
      int count = 0;
      // Offsets of each nonzero's staged row of L (low 16 bits) and of R (high 16 bits).
      uint32_t off[kPer];
      unsigned reload = 1;  // bit s: nonzero s starts a new row of L
      if (active) {
        int j = 0;
        while (units_end[j] <= u) ++j;
        e_begin = first[j] + int64_t{u - (j ? units_end[j - 1] : 0)} * kPer;
        count = static_cast<int>(min(int64_t{kPer}, last[j] - e_begin));
        const int row0 = j / span * p.beta, col0 = j % span * p.beta;
#pragma unroll
        for (int s = 0; s < kPer; ++s) {
          const uint16_t loc = p.local[e_begin + min(s, count - 1)];
          // Masking keeps a corrupt local index inside the staged tiles.
          const uint32_t lo = (row0 + (local_row(loc) & (p.beta - 1))) * kTileN;
          const uint32_t ro = (col0 + (local_col(loc) & (p.beta - 1))) * kTileN;
          off[s] = lo | ro << 16;
          if (s > 0 && (off[s] ^ off[s - 1]) & 0xffffu) reload |= 1u << s;
        }
      } else {
#pragma unroll
        for (int s = 0; s < kPer; ++s) off[s] = 0;
      }
      float acc[kPer];
#pragma unroll
      for (int s = 0; s < kPer; ++s) acc[s] = 0.0f;

      const bool lhs_k = !p.lhs_transposed, rhs_k = p.rhs_transposed;
      const int64_t lhs_base = rr * Cfg::kRegion, rhs_base = rc * Cfg::kRegion;
      Staged<T> lv, rv;
      load_tile<T, Cfg>(lv, lhs, lhs_k, p.lhs_vec, p.rows, p.n, lhs_base, n_begin);
      load_tile<T, Cfg>(rv, rhs, rhs_k, p.rhs_vec, p.cols, p.n, rhs_base, n_begin);
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kTileN) {
        __syncthreads();  // the previous tile's reads are done
        store_tile<T, Cfg>(ls, lv, lhs_k);
        store_tile<T, Cfg>(rs, rv, rhs_k);
        __syncthreads();
        if (n0 + kTileN < n_end) {  // the next tile's loads overlap this tile's multiply-adds
          load_tile<T, Cfg>(lv, lhs, lhs_k, p.lhs_vec, p.rows, p.n, lhs_base, n0 + kTileN);
          load_tile<T, Cfg>(rv, rhs, rhs_k, p.rhs_vec, p.cols, p.n, rhs_base, n0 + kTileN);
        }
        if (!active) continue;
#pragma unroll 4
        for (int step = 0; step < kGroups; ++step) {
          const int g = 4 * ((step + lane) % kGroups);
          float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
          for (int s = 0; s < kPer; ++s) {
            if (reload >> s & 1u) x = *reinterpret_cast<const float4*>(ls + (off[s] & 0xffffu) + g);
            const float4 y = *reinterpret_cast<const float4*>(rs + (off[s] >> 16) + g);
            float a = acc[s];
            a = fmaf(x.x, y.x, a);
            a = fmaf(x.y, y.y, a);
            a = fmaf(x.z, y.z, a);
            a = fmaf(x.w, y.w, a);
            acc[s] = a;
          }
        }
      }
      if constexpr (!kSplit) {
#pragma unroll
        for (int s = 0; s < kPer; ++s) {
          if (s < count) out[e_begin + s] = from_float<T>(acc[s]);
        }
        continue;
      }
      // Thread t of every block of the cluster holds the same unit: block r adds the partial
      // sums of nonzeros r, r + csize, ... of it in rank order and writes them.
      namespace cg = cooperative_groups;
      const cg::cluster_group cluster = cg::this_cluster();
#pragma unroll
      for (int s = 0; s < kPer; ++s) part[threadIdx.x * kPer + s] = acc[s];
      cluster.sync();
      for (int s = rank; s < count; s += csize) {
        out[e_begin + s] = from_float<T>(cluster_sum(part, csize, threadIdx.x * kPer + s));
      }
      cluster.sync();  // the partial sums are written again by the next pass
    }
  }
}

// The grid of square regions of `region` x `region` (whole blocks) that covers S.
struct RegionGrid {
  int64_t span;  // blocks per side of a region
  int64_t rows;
  int64_t cols;
  int64_t count() const { return rows * cols; }
};

RegionGrid region_grid(const CsbShape& shape, int region) {
  const int64_t span = region / shape.block_size;
  return {span, ceil_div(shape.block_rows(), span), ceil_div(shape.block_cols(), span)};
}

// Whether every 4-value group that `stage` reads from M can be one aligned vector load: the
// groups start at multiples of 4 values along M's contiguous axis, of length `contiguous`.
template <typename T>
bool vector_groups(const void* m, int64_t contiguous) {
  return contiguous % 4 == 0 && reinterpret_cast<uintptr_t>(m) % (4 * sizeof(T)) == 0;
}

// `grid` is region_grid(a.shape, Cfg::kRegion).
template <typename T, class Cfg>
cudaError_t launch(const SddmmArgs& a, const RegionGrid& grid, const DeviceInfo& dev,
                   cudaStream_t stream, const SddmmOptions& options) {
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
  p.block_rows = a.shape.block_rows();
  p.block_cols = a.shape.block_cols();
  p.beta = a.shape.block_size;
  p.region_cols = grid.cols;
  p.num_regions = grid.count();
  p.lhs_transposed = a.lhs_transposed;
  p.rhs_transposed = a.rhs_transposed;
  p.lhs_vec = vector_groups<T>(a.lhs, a.lhs_transposed ? p.rows : p.n);
  p.rhs_vec = vector_groups<T>(a.rhs, a.rhs_transposed ? p.n : p.cols);

  constexpr size_t smem = Cfg::kSmemBytes;
  if (smem > static_cast<size_t>(dev.max_smem_optin)) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem<sddmm_kernel<T, Cfg, false>>(dev.device, smem);
  if (err == cudaSuccess) err = allow_smem<sddmm_kernel<T, Cfg, true>>(dev.device, smem);
  if (err != cudaSuccess) return err;
  // A cluster splits each region's walk over n while all its blocks still fit in one wave
  // (a region's tiles of n play the part of a line's positions).
  const int64_t slots = resident_on_gpu<sddmm_kernel<T, Cfg, true>>(1, Cfg::kThreads, smem, dev);
  const int64_t tiles = ceil_div(p.n, Cfg::kTileN);
  err = line_cluster(
      options.cluster, dev, p.num_regions, tiles, Cfg::kMinTilesPerBlock,
      [slots](int) { return slots; }, &p.cluster);
  if (err != cudaSuccess) return err;
  // A grid-stride loop covers more regions than one launch can have blocks.
  const int64_t grid_regions = std::min<int64_t>(p.num_regions, INT32_MAX / 8);
  auto kernel = p.cluster > 1 ? sddmm_kernel<T, Cfg, true> : sddmm_kernel<T, Cfg, false>;
  return launch_lines(kernel, p, grid_regions, p.cluster, 1, Cfg::kThreads, smem, stream);
}

// Units of 4 nonzeros keep twice the threads of a sparse region busy (1.2-1.6x faster than
// units of 8 in 64 x 64 regions at 90-95% sparsity), where they fit in one pass of the threads
// with a tenth to spare; otherwise they would take two passes over n (1.2-1.4x slower at 80%).
// `grid` is region_grid(a.shape, kRegion).
template <typename T, int kRegion>
cudaError_t launch_region(const SddmmArgs& a, const RegionGrid& grid, const DeviceInfo& dev,
                          cudaStream_t stream, const SddmmOptions& options) {
  using Fine = SddmmConfig<kRegion, 4>;
  // Mean units of a region: its nonzeros over kPer, plus half a unit per block.
  const int64_t blocks = grid.span * grid.span;
  const int64_t units = a.nnz / (grid.count() * Fine::kPer) + (blocks + 1) / 2;
  if (10 * units <= 9 * Fine::kThreads) return launch<T, Fine>(a, grid, dev, stream, options);
  return launch<T, SddmmConfig<kRegion>>(a, grid, dev, stream, options);
}

// Regions of 128 x 128 share each staged value among twice the nonzeros of 64 x 64 ones, and
// at 90% sparsity they keep 80% of their threads busy against 40% (a 64 x 64 region has about
// 52 units of 8 for 128 threads): 4096 x 1024 at 90% (256 regions of 128 on 132
// multiprocessors) runs 1.5x faster than in 64 x 64 regions. With fewer 128 x 128 regions than
// multiprocessors, beta <= 64 takes 64 x 64 regions, which fill the GPU. Larger blocks are their
// own region.
template <typename T>
cudaError_t launch_for_beta(const SddmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                            const SddmmOptions& options) {
  const int beta = a.shape.block_size;
  if (beta == 256) return launch_region<T, 256>(a, region_grid(a.shape, 256), dev, stream, options);
  const RegionGrid grid128 = region_grid(a.shape, 128);
  if (beta == 128 || grid128.count() >= dev.num_sms) {
    return launch_region<T, 128>(a, grid128, dev, stream, options);
  }
  return launch_region<T, 64>(a, region_grid(a.shape, 64), dev, stream, options);
}

}  // namespace

cudaError_t launch_sddmm(const SddmmArgs& args, const DeviceInfo& dev, cudaStream_t stream,
                         const SddmmOptions& options) {
  if (args.nnz == 0) return cudaSuccess;
  if (args.n == 0 || args.shape.num_blocks() == 0) {
    // An empty sum: zeros (all-zero bits in every supported type).
    const int64_t bytes = args.nnz * (args.dtype == DType::kF32 ? 4 : 2);
    return cudaMemsetAsync(args.out, 0, static_cast<size_t>(bytes), stream);
  }
  const int beta = args.shape.block_size;
  if (beta < 16 || beta > 256 || (beta & (beta - 1)) != 0) return cudaErrorInvalidValue;
  return dispatch_dtype(args.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr bool kHalf = sizeof(T) == 2;
    if (tensor_sddmm_preferred(beta, kHalf, density(args.shape, args.nnz), options.cluster)) {
      return dispatch_beta(beta, [&](auto b) -> cudaError_t {
        constexpr int kBeta = decltype(b)::value;
        if constexpr (kBeta <= tensor_sddmm_max_beta(kHalf)) {
          return launch_sddmm_tensor<T, kBeta>(args, dev, stream);
        } else {
          return cudaErrorInvalidValue;  // tensor_sddmm_preferred excludes larger blocks
        }
      });
    }
    return launch_for_beta<T>(args, dev, stream, options);
  });
}

}  // namespace jaxcsb::cuda
