// CUDA SpMM for a narrow dense operand (small n: inference, small batches).
//
// The wide kernel (cuda_spmm_kernel.h) stages a beta x 128 tile of D per CSB block and
// counting-sorts each block by output row behind a chain of barriers; at small n nothing
// amortises that, and 7/8 of its lanes idle at n = 16. Here every warp works alone on whole
// CSB blocks, with no barrier until the line is done. It first asks L2 for the nonzeros of all
// its blocks (the walks below would otherwise wait on memory at every dependent load); then, per
// block, it
//   1. stages the block's beta x tile slice of D as float32 in its own shared memory, and
//   2. adds the block's products into its own float32 partial tile of the line's output.
// The lanes form slots of tile / 4 lanes; a lane handles four columns of n for the nonzero of
// its slot, so one warp instruction serves 128 / tile nonzeros.
//   Forward (output row = stored row): the stored order is sorted by row, so one pass of warp
//   shuffles finds where each row starts; slot s walks the runs of rows s, s + slots, ... with
//   the sum in registers and adds each run to the partial tile once.
//   Transposed (output row = stored column): the slots take consecutive stored nonzeros side by
//   side, each adding into its own output row; nonzeros of one wave that share a column take
//   turns in storage order.
// The warps of a thread block take the line's positions in turn; at the end their partial
// tiles are added in warp order and, when a cluster splits the line, in rank order through
// distributed shared memory. Every sum has a fixed order: results are bitwise reproducible,
// with no atomics and no workspace.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace narrow_detail {

namespace cg = cooperative_groups;

struct NarrowParams : LineParams {
  int tile;  // columns of n per thread block: 4, 8, 16, 32 or 64
};

// Row stride, in floats, of a warp's staged slice and partial tile: 16-byte aligned rows,
// skewed by four banks so that slots reading different rows spread over the banks.
__host__ __device__ constexpr int row_stride(int tile) { return tile + 4; }

// Floats of shared memory per warp: the staged slice, the partial tile, the row starts.
template <int kBeta>
__host__ __device__ constexpr int warp_floats(int tile) {
  return 2 * kBeta * row_stride(tile) + (kBeta + 4) / 4 * 4;
}

// Four consecutive values of the dense operand as float32, zero outside [0, valid).
template <typename T>
__device__ __forceinline__ float4 load4(const T* src, int valid, bool vec) {
  float v[4];
  if (vec && valid >= 4) {
    load_vec<T, 4>(src, v);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = i < valid ? to_float(src[i]) : 0.0f;
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}

// slice[c][j] = D at input index in_base + c and column n0 + j, for c < beta and j < tile, as
// float32; zero outside the operand. Four values per lane and step, read along the operand's
// contiguous axis (n for row-major D, the features for the batch-leading layout), kBatch steps
// loaded before any is stored so that their latencies overlap.
template <typename T, int kBeta, bool kBatchLeading>
__device__ __forceinline__ void stage_slice(const NarrowParams& p, float* slice, int64_t in_base,
                                            int64_t n0, bool vec) {
  constexpr int kBatch = 4;
  const T* dense = static_cast<const T*>(p.dense);
  const int lane = threadIdx.x % 32, tile = p.tile, stride = row_stride(tile);
  const int steps = kBeta * tile / 4;
  for (int i0 = lane; i0 < steps; i0 += 32 * kBatch) {
    float4 v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + 32 * u;
      int64_t gc, gn;
      if (!kBatchLeading) {
        gc = in_base + i / (tile / 4);
        gn = n0 + i % (tile / 4) * 4;
      } else {
        // n fastest over the lanes: the four stores of a lane then hit distinct banks.
        gc = in_base + i / tile * 4;
        gn = n0 + i % tile;
      }
      int valid = 0;
      if (i < steps) {
        valid = !kBatchLeading
                    ? (gc < p.in_dim ? static_cast<int>(std::min<int64_t>(4, p.n - gn)) : 0)
                    : (gn < p.n ? static_cast<int>(std::min<int64_t>(4, p.in_dim - gc)) : 0);
      }
      const int64_t at = valid <= 0 ? 0 : !kBatchLeading ? gc * p.n + gn : gn * p.in_dim + gc;
      v[u] = load4(dense + at, valid, vec);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + 32 * u;
      if (i >= steps) break;
      if (!kBatchLeading) {
        *reinterpret_cast<float4*>(slice + i / (tile / 4) * stride + i % (tile / 4) * 4) = v[u];
      } else {
        float* dst = slice + i / tile * 4 * stride + i % tile;
        dst[0] = v[u].x;
        dst[stride] = v[u].y;
        dst[2 * stride] = v[u].z;
        dst[3 * stride] = v[u].w;
      }
    }
  }
}

// start[r] = the number of the block's nonzeros whose stored row is below r, for r in
// [0, beta]: one pass over the block's local indices, 32 at a time. A stored row outside the
// block counts as beta. Unsorted (corrupt) indices leave some entries unwritten; the walks
// clamp every range to [0, count], so they still read inside the block.
template <int kBeta>
__device__ __forceinline__ void find_row_starts(const uint16_t* local, int count, int* start) {
  constexpr int kBatch = 8;  // passes whose loads are issued together
  const int lane = threadIdx.x % 32;
  int last = -1;  // stored row of the nonzero before this pass's first
  for (int base = 0; base <= count; base += 32 * kBatch) {
    int rows[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = base + 32 * u + lane;
      rows[u] = i < count ? std::min(__ldg(local + i) >> 8, kBeta) : kBeta;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = base + 32 * u + lane;
      int before = __shfl_up_sync(0xffffffffu, rows[u], 1);
      if (lane == 0) before = last;
      if (i <= count) {
        for (int r = before + 1; r <= rows[u]; ++r) start[r] = i;
      }
      last = __shfl_sync(0xffffffffu, rows[u], 31);
    }
  }
  __syncwarp();
}

// Brings the nonzeros of a warp's blocks into L2 ahead of use: the walks that follow would
// otherwise wait on memory once per dependent load.
template <typename T>
__device__ __forceinline__ void prefetch_range(const uint16_t* local, const T* values, int64_t e0,
                                               int64_t e1) {
  for (int64_t e = e0; e < e1; e += 128 / sizeof(T)) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(values + e));
  }
  for (int64_t e = e0; e < e1; e += 64) asm volatile("prefetch.global.L2 [%0];" ::"l"(local + e));
}

__device__ __forceinline__ void add4(float* dst, float4 v) {
  float4* d = reinterpret_cast<float4*>(dst);
  const float4 o = *d;
  *d = make_float4(o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w);
}

__device__ __forceinline__ float4 fma4(float v, float4 d, float4 acc) {
  return make_float4(fmaf(v, d.x, acc.x), fmaf(v, d.y, acc.y), fmaf(v, d.z, acc.z),
                     fmaf(v, d.w, acc.w));
}

// Adds the products of one CSB block (nonzeros [0, count) of local/values) into the warp's
// partial tile. slot and q: the lane's slot and its four columns (q * 4 ..).
template <typename T, int kBeta, bool kTranspose>
__device__ __forceinline__ void add_block(const uint16_t* local, const T* values, int count,
                                          const int* start, const float* slice, float* part,
                                          int stride, int slot, int slots, int q) {
  auto clamp = [count](int e) { return std::min(std::max(e, 0), count); };
  if (!kTranspose) {
    for (int r = slot; r < kBeta; r += slots) {
      const int kb = clamp(start[r]), ke = clamp(start[r + 1]);
      if (kb >= ke) continue;
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
      for (int k = kb; k < ke; ++k) {
        const int c = __ldg(local + k) & 0xff;
        if (c >= kBeta) continue;  // outside the block: corrupt structure, skipped
        const float4 d = *reinterpret_cast<const float4*>(slice + c * stride + q * 4);
        acc = fma4(to_float(__ldg(values + k)), d, acc);
      }
      add4(part + r * stride + q * 4, acc);
    }
  } else {
    // Waves of `slots` consecutive nonzeros. Two nonzeros of a wave in one stored column (a
    // column repeated across rows, or a repeated position) add into one output row: they take
    // turns in storage order, so every output row sums in stored (row, col) order.
    const int group = 32 / slots;
    for (int k0 = 0; k0 < count; k0 += slots) {
      const int k = k0 + slot;
      int c = -1;
      float v = 0.0f;
      float4 d = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (k < count) {
        const uint16_t loc = __ldg(local + k);
        const int r = loc >> 8;
        c = loc & 0xff;
        v = to_float(__ldg(values + k));
        if (r < kBeta && c < kBeta) {
          d = *reinterpret_cast<const float4*>(slice + r * stride + q * 4);
        } else {
          c = -1;  // outside the block: corrupt structure, skipped
        }
      }
      // Lanes of earlier slots with the same column: the turn of this lane's nonzero.
      const unsigned same = __match_any_sync(0xffffffffu, c >= 0 ? c : 256 + slot);
      const int turn = __popc(same & ((1u << (threadIdx.x % 32)) - 1u)) / group;
      const int turns = __reduce_max_sync(0xffffffffu, static_cast<unsigned>(turn));
      for (int t = 0; t <= turns; ++t) {
        if (t == turn && c >= 0) add4(part + c * stride + q * 4, fma4(v, d, {}));
        __syncwarp();
      }
    }
  }
}

template <typename T, int kBeta, bool kTranspose, bool kBatchLeading>
__global__ void __launch_bounds__(32 * kNarrowMaxWarps) narrow_kernel(const NarrowParams p) {
  extern __shared__ __align__(16) float smem_f[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int tile = p.tile, stride = row_stride(tile), group = tile / 4, slots = 32 / group;
  const int slot = lane / group, q = lane % group;
  float* slice = smem_f + warp * warp_floats<kBeta>(tile);
  float* part = slice + kBeta * stride;
  int* start = reinterpret_cast<int*>(part + kBeta * stride);

  const int csize = p.cluster;
  const int rank = static_cast<int>(blockIdx.x % csize);
  const int64_t line = blockIdx.x / csize;
  if (line >= p.num_lines) return;  // uniform over the cluster
  const int64_t pos_begin = rank * p.line_length / csize;
  const int64_t pos_end = (rank + 1) * p.line_length / csize;
  const T* values = static_cast<const T*>(p.values);
  const T* dense = static_cast<const T*>(p.dense);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(dense);
  const int64_t row_len = kBatchLeading ? p.in_dim : p.n;
  const bool vec = addr % (4 * sizeof(T)) == 0 && row_len % 4 == 0;

  for (int64_t pos = pos_begin + warp; pos < pos_end && blockIdx.y == 0; pos += warps) {
    const int64_t b = kTranspose ? pos * p.block_cols + line : line * p.block_cols + pos;
    int64_t e0, e1;
    block_range(p.block_ptr, b, p.nnz, &e0, &e1);
    const int64_t span = e1 - e0, share = (span + 31) / 32;
    prefetch_range(p.local, values, e0 + lane * share, std::min(e1, e0 + (lane + 1) * share));
  }

  for (int64_t t = blockIdx.y; t < p.num_tiles; t += gridDim.y) {
    const int64_t n0 = t * tile;
    for (int i = lane; i < kBeta * stride; i += 32) part[i] = 0.0f;
    for (int64_t pos = pos_begin + warp; pos < pos_end; pos += warps) {
      const int64_t b = kTranspose ? pos * p.block_cols + line : line * p.block_cols + pos;
      int64_t e0, e1;
      block_range(p.block_ptr, b, p.nnz, &e0, &e1);
      if (e0 >= e1) continue;
      const int count = static_cast<int>(e1 - e0);
      stage_slice<T, kBeta, kBatchLeading>(p, slice, pos * kBeta, n0, vec);
      if (!kTranspose) find_row_starts<kBeta>(p.local + e0, count, start);
      __syncwarp();  // the slice (and the row starts) are read by other lanes
      add_block<T, kBeta, kTranspose>(p.local + e0, values + e0, count, start, slice, part, stride,
                                      slot, slots, q);
      __syncwarp();  // the slice and the row starts are rewritten by the next block
    }

    // The warps' partial tiles, added in warp order into warp 0's.
    __syncthreads();
    float* sum = smem_f + kBeta * stride;  // warp 0's partial tile
    for (int i = threadIdx.x; i < kBeta * tile; i += blockDim.x) {
      const int o = i / tile * stride + i % tile;
      float s = sum[o];
      for (int w = 1; w < warps; ++w)
        s += smem_f[w * warp_floats<kBeta>(tile) + kBeta * stride + o];
      sum[o] = s;
    }
    write_line_tile<T, kBeta, kBatchLeading>(p, sum, stride, tile, line, n0);
  }
}

// The tile width for n: the smallest of 4, 8, ..., kNarrowMaxTile that holds it.
inline int narrow_tile(int64_t n) {
  int tile = 4;
  while (tile < n && tile < kNarrowMaxTile) tile *= 2;
  return tile;
}

template <typename T, int kBeta, bool kTranspose, bool kBatchLeading>
cudaError_t launch(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                   const SpmmOptions& options) {
  auto kernel = narrow_kernel<T, kBeta, kTranspose, kBatchLeading>;
  NarrowParams p{};
  set_line_params(a, &p);
  p.tile = narrow_tile(a.n);
  p.num_tiles = (a.n + p.tile - 1) / p.tile;

  // Parallelism: about two CSB blocks per warp, and at least two thread blocks per
  // multiprocessor when the lines allow it (a cluster splits a line when there are few lines).
  const int64_t tiles_y = std::min<int64_t>(p.num_tiles, 65535);
  cudaError_t err =
      line_cluster(options.cluster, dev, p.num_lines * tiles_y, p.line_length, 2, &p.cluster);
  if (err != cudaSuccess) return err;
  const size_t per_warp = static_cast<size_t>(warp_floats<kBeta>(p.tile)) * sizeof(float);
  const int64_t positions = (p.line_length + p.cluster - 1) / p.cluster;
  int warps = static_cast<int>(std::clamp<int64_t>(positions / 2, 1, kNarrowMaxWarps));
  while (warps > 1 && warps * per_warp > kNarrowSmemBudget) --warps;
  // One limit for every tile width: allow_smem raises it once per kernel and device.
  if (kNarrowSmemBudget > static_cast<size_t>(dev.max_smem_optin)) {
    return cudaErrorInvalidConfiguration;
  }
  err =
      allow_smem<narrow_kernel<T, kBeta, kTranspose, kBatchLeading>>(dev.device, kNarrowSmemBudget);
  if (err != cudaSuccess) return err;
  return launch_lines(kernel, p, p.num_lines, p.cluster, tiles_y, 32 * warps, warps * per_warp,
                      stream);
}

}  // namespace narrow_detail

// The narrow-n SpMM for value type T and block size kBeta (at most kNarrowMaxBeta).
template <typename T, int kBeta>
cudaError_t launch_spmm_narrow(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                               const SpmmOptions& options) {
  const bool tr = a.shape.transpose, bl = a.batch_leading;
  using namespace narrow_detail;
  if (!tr && !bl) return launch<T, kBeta, false, false>(a, dev, stream, options);
  if (!tr && bl) return launch<T, kBeta, false, true>(a, dev, stream, options);
  if (tr && !bl) return launch<T, kBeta, true, false>(a, dev, stream, options);
  return launch<T, kBeta, true, true>(a, dev, stream, options);
}

}  // namespace jaxcsb::cuda
