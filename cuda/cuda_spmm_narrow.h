// CUDA SpMM for a narrow dense operand (small n: inference, small batches).
//
// The wide kernel (cuda_spmm_kernel.h) stages a beta x 128 tile of D per CSB block and
// counting-sorts each block by output row behind a chain of barriers; at small n nothing
// amortises that, and 7/8 of its lanes idle at n = 16. Here every warp works alone on whole
// CSB blocks, with no barrier until the line is done. It first asks L2 for the nonzeros of all
// its blocks (the walks below would otherwise wait on memory at every dependent load); then, per
// block, it
//   1. stages the block's beta x tile slice of D as float32 in its own shared memory, and
//   2. adds the block's products to its own float32 partial sums of the line's output.
// The lanes form slots of tile / kVec lanes (one lane at n <= 16); a lane handles kVec columns
// of n for the nonzero of its slot, so one warp instruction serves up to 32 nonzeros
// (NarrowShape).
//   Forward (output row = stored row): the stored order is sorted by row, so one pass of warp
//   shuffles finds where each row starts; slot s walks the runs of rows s, s + slots, ... and
//   keeps those rows' sums in registers for the whole line.
//   Transposed (output row = stored column): the slots take consecutive stored nonzeros side by
//   side, each adding into its own row of a partial tile in shared memory; nonzeros of one wave
//   that share a column take turns in storage order.
// At n = 1 the forward product is a matrix-vector product and takes a walk of its own
// (cuda_spmm_vector.h), with the lanes over consecutive nonzeros instead of over rows.
// A unit of work is a band of a block's stored rows: the whole block, except in the transposed
// product at beta 128, whose blocks hold four times the nonzeros of those of 64 and are cut
// into four bands (NarrowShape). The warps of a thread block take the line's units in turn; at the
// end their partial tiles are added in warp order and, when a cluster splits the line, in rank
// order through distributed shared memory. Every sum has a fixed order: results are bitwise
// reproducible, with no atomics and no workspace.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_spmm_vector.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace narrow_detail {

namespace cg = cooperative_groups;

// The lane layout of a warp for a tile of kTile columns of n, at block size kBeta.
template <int kBeta_, int kTile_, int kVec_, int kBands_>
struct NarrowShape {
  static constexpr int kBeta = kBeta_;
  static constexpr int kTile = kTile_;
  static constexpr int kVec = kVec_;  // columns of n per lane
  // Units of work per block: bands of kBandRows stored rows.
  static constexpr int kBands = kBands_;
  static constexpr int kBandRows = kBeta / kBands;
  // Row stride, in floats, of a warp's staged slice and partial tile: 16-byte aligned rows,
  // skewed by four banks so that slots reading different rows spread over the banks.
  static constexpr int kStride = kTile + 4;
  static constexpr int kGroup = kTile / kVec;  // lanes per nonzero
  static constexpr int kSlots = 32 / kGroup;   // nonzeros per warp instruction
  // Forward: output rows per slot (rows slot, slot + kSlots, ...), summed in registers.
  static constexpr int kRows = (kBeta + kSlots - 1) / kSlots;
  // Floats of shared memory per warp: the staged slice of all beta input rows (which also
  // takes the partial tile at the end of a forward product) and the row starts (forward), or
  // the slice of the band's input rows and the partial tile (transposed).
  static constexpr int warp_floats(bool transpose) {
    return transpose ? (kBandRows + kBeta) * kStride : kBeta * kStride + (kBeta + 4) / 4 * 4;
  }
  static_assert(kTile == 4 || kTile == 8 || kTile == 16 || kTile == 32, "tiles of 4 to 32");
  static_assert(kVec % 4 == 0 && kTile % kVec == 0, "lanes hold whole float4 pieces of a row");
  static_assert(kBandRows % 4 == 0 && kBandRows * kBands == kBeta, "whole bands of 4k rows");
  static_assert(kRows * kVec <= kNarrowMaxLaneSums,
                "a lane keeps at most kNarrowMaxLaneSums forward sums (narrow_max_tile)");
};

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

// slice[c][j] = D at input index in_base + c and column n0 + j, for c < kRows and j < tile, as
// float32; zero outside the operand. Four values per lane and step, read along the operand's
// contiguous axis (n for row-major D, the features for the batch-leading layout), kBatch steps
// loaded before any is stored so that their latencies overlap.
template <typename T, class S, int kRows, bool kBatchLeading>
__device__ __forceinline__ void stage_slice(const LineParams& p, float* slice, int64_t in_base,
                                            int64_t n0, bool vec) {
  static_assert(kRows % 4 == 0, "the batch-leading layout is read four input indices at a time");
  constexpr int kSteps = kRows * S::kTile / 4, kBatch = 4;
  const T* dense = static_cast<const T*>(p.dense);
  const int lane = threadIdx.x % 32;
  for (int i0 = lane; i0 < kSteps; i0 += 32 * kBatch) {
    float4 v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + 32 * u;
      int64_t gc, gn;
      if (!kBatchLeading) {
        gc = in_base + i / (S::kTile / 4);
        gn = n0 + i % (S::kTile / 4) * 4;
      } else {
        // n fastest over the lanes: the four stores of a lane then hit distinct banks.
        gc = in_base + i / S::kTile * 4;
        gn = n0 + i % S::kTile;
      }
      int valid = 0;
      if (i < kSteps) {
        const int64_t left =
            !kBatchLeading ? (gc < p.in_dim ? p.n - gn : 0) : (gn < p.n ? p.in_dim - gc : 0);
        valid = static_cast<int>(std::min<int64_t>(4, left));
      }
      const int64_t at = valid <= 0 ? 0 : !kBatchLeading ? gc * p.n + gn : gn * p.in_dim + gc;
      v[u] = load4(dense + at, valid, vec);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + 32 * u;
      if (i >= kSteps) break;
      if (!kBatchLeading) {
        float* dst = slice + i / (S::kTile / 4) * S::kStride + i % (S::kTile / 4) * 4;
        *reinterpret_cast<float4*>(dst) = v[u];
      } else {
        float* dst = slice + i / S::kTile * 4 * S::kStride + i % S::kTile;
        dst[0] = v[u].x;
        dst[S::kStride] = v[u].y;
        dst[2 * S::kStride] = v[u].z;
        dst[3 * S::kStride] = v[u].w;
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

// The number of the block's `count` nonzeros whose stored row is below `row`: a search of the
// warp, which narrows the range 32-fold with each load. Unsorted (corrupt) indices still give a
// count in [0, count].
__device__ __forceinline__ int rows_below(const uint16_t* local, int count, int row) {
  const int lane = threadIdx.x % 32;
  int lo = 0, hi = count;  // the answer lies in [lo, hi]
  while (hi > lo) {
    const int step = (hi - lo + 31) / 32, k = lo + lane * step;
    const bool below = k < hi && (__ldg(local + k) >> 8) < row;
    const int probes = __popc(__ballot_sync(0xffffffffu, below));
    if (probes == 0) break;  // the answer is lo
    hi = std::min(hi, lo + probes * step);
    lo += (probes - 1) * step + 1;
  }
  return lo;
}

// Narrows a block's nonzeros [e0, e1) to those of its stored rows [row0, row0 + rows): the
// stored order is sorted by row, so they run from the count of those below row0 to the count of
// those below row0 + rows. An edge of the block needs no search; rows past beta (corrupt) count
// to the last band.
template <int kBeta>
__device__ __forceinline__ void narrow_to_band(const uint16_t* local, int row0, int rows,
                                               int64_t* e0, int64_t* e1) {
  const uint16_t* block = local + *e0;
  const int count = static_cast<int>(*e1 - *e0);
  const int begin = row0 > 0 ? rows_below(block, count, row0) : 0;
  const int end = row0 + rows < kBeta ? rows_below(block, count, row0 + rows) : count;
  *e1 = *e0 + end;
  *e0 += begin;
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

// Forward: adds the products of one CSB block (nonzeros [0, count) of local/values) to the
// lane's rows: acc[i] for row slot + i * kSlots and the lane's kVec columns.
template <typename T, class S>
__device__ __forceinline__ void add_block_forward(const uint16_t* local, const T* values, int count,
                                                  const int* start, const float* slice, int slot,
                                                  int q, float4 (&acc)[S::kRows][S::kVec / 4]) {
  auto clamp = [count](int e) { return std::min(std::max(e, 0), count); };
#pragma unroll
  for (int i = 0; i < S::kRows; ++i) {
    const int r = slot + i * S::kSlots;
    if (r >= S::kBeta) break;
    const int kb = clamp(start[r]), ke = clamp(start[r + 1]);
#pragma unroll 4
    for (int k = kb; k < ke; ++k) {
      const int c = __ldg(local + k) & 0xff;
      if (c >= S::kBeta) continue;  // outside the block: corrupt structure, skipped
      const float v = to_float(__ldg(values + k));
      const float4* d = reinterpret_cast<const float4*>(slice + c * S::kStride + q * S::kVec);
#pragma unroll
      for (int j = 0; j < S::kVec / 4; ++j) acc[i][j] = fma4(v, d[j], acc[i][j]);
    }
  }
}

// Transposed: adds the products of one band of a CSB block (stored rows row0 .., whose slice
// `slice` holds) into the warp's partial tile, in waves of kSlots consecutive nonzeros. Two
// nonzeros of a wave in one stored column (a column repeated across rows, or a repeated position)
// add into one output row: they take turns in storage order, so every output row sums in stored
// (row, col) order.
template <typename T, class S>
__device__ __forceinline__ void add_block_transposed(const uint16_t* local, const T* values,
                                                     int count, const float* slice, int row0,
                                                     float* part, int slot, int q) {
  constexpr int kPieces = S::kVec / 4;
  for (int k0 = 0; k0 < count; k0 += S::kSlots) {
    const int k = k0 + slot;
    int c = -1, r = 0;
    float v = 0.0f;
    if (k < count) {
      const uint16_t loc = __ldg(local + k);
      r = (loc >> 8) - row0;
      c = loc & 0xff;
      v = to_float(__ldg(values + k));
      // Outside the band or the block: corrupt, skipped.
      if (r < 0 || r >= S::kBandRows || c >= S::kBeta) c = -1;
    }
    // Lanes of earlier slots with the same column: the turn of this lane's nonzero.
    const unsigned same = __match_any_sync(0xffffffffu, c >= 0 ? c : 256 + slot);
    const int turn = __popc(same & ((1u << (threadIdx.x % 32)) - 1u)) / S::kGroup;
    const int turns = __reduce_max_sync(0xffffffffu, static_cast<unsigned>(turn));
    const float4* d = reinterpret_cast<const float4*>(slice + r * S::kStride + q * S::kVec);
    float* dst = part + (c >= 0 ? c : 0) * S::kStride + q * S::kVec;
    for (int t = 0; t <= turns; ++t) {
      if (t == turn && c >= 0) {
#pragma unroll
        for (int j = 0; j < kPieces; ++j) add4(dst + 4 * j, fma4(v, d[j], {}));
      }
      __syncwarp();
    }
  }
}

template <typename T, class S, bool kTranspose, bool kBatchLeading>
__global__ void __launch_bounds__(32 * kNarrowMaxWarps) narrow_kernel(const LineParams p) {
  constexpr int kBeta = S::kBeta, kStride = S::kStride, kWarpFloats = S::warp_floats(kTranspose);
  static_assert(kTranspose || S::kBands == 1,
                "a forward walk reads the whole slice for every band, so it takes whole blocks");
  extern __shared__ __align__(16) float smem_f[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int slot = lane / S::kGroup, q = lane % S::kGroup;
  float* slice = smem_f + warp * kWarpFloats;
  // The warp's partial tile: its own region when transposed; the slice's once the forward
  // walk is done.
  float* part = kTranspose ? slice + S::kBandRows * kStride : slice;
  int* start = reinterpret_cast<int*>(slice + kBeta * kStride);

  const auto [line, pos_begin, pos_end] = line_part(p);
  if (line >= p.num_lines) return;  // uniform over the cluster
  const T* values = static_cast<const T*>(p.values);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p.dense);
  const int64_t row_len = kBatchLeading ? p.in_dim : p.n;
  const bool vec = addr % (4 * sizeof(T)) == 0 && row_len % 4 == 0;

  const int64_t unit_begin = pos_begin * S::kBands, unit_end = pos_end * S::kBands;
  if (blockIdx.y == 0) {
    prefetch_blocks(p, values, line, kTranspose, S::kBands, unit_begin + warp, unit_end, warps);
  }

  for (int64_t t = blockIdx.y; t < p.num_tiles; t += gridDim.y) {
    const int64_t n0 = t * S::kTile;
    float4 acc[S::kRows][S::kVec / 4];
#pragma unroll
    for (int i = 0; i < S::kRows; ++i) {
#pragma unroll
      for (int j = 0; j < S::kVec / 4; ++j) acc[i][j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    if (kTranspose) {
      for (int i = lane; i < kBeta * kStride; i += 32) part[i] = 0.0f;
    }
    for (int64_t unit = unit_begin + warp; unit < unit_end; unit += warps) {
      const int64_t pos = unit / S::kBands;
      const int row0 = static_cast<int>(unit % S::kBands) * S::kBandRows;
      int64_t e0, e1;
      block_range(p.block_ptr, line_block(p, line, pos, kTranspose), p.nnz, &e0, &e1);
      if (S::kBands > 1) narrow_to_band<kBeta>(p.local, row0, S::kBandRows, &e0, &e1);
      if (e0 >= e1) continue;
      const int count = static_cast<int>(e1 - e0);
      if constexpr (!kTranspose) {
        stage_slice<T, S, kBeta, kBatchLeading>(p, slice, pos * kBeta, n0, vec);
        find_row_starts<kBeta>(p.local + e0, count, start);
      } else {
        stage_slice<T, S, S::kBandRows, kBatchLeading>(p, slice, pos * kBeta + row0, n0, vec);
      }
      __syncwarp();  // the slice (and the row starts) are read by other lanes
      if constexpr (!kTranspose) {
        add_block_forward<T, S>(p.local + e0, values + e0, count, start, slice, slot, q, acc);
      } else {
        add_block_transposed<T, S>(p.local + e0, values + e0, count, slice, row0, part, slot, q);
      }
      __syncwarp();  // the slice and the row starts are rewritten by the next unit
    }
    if (!kTranspose) {
#pragma unroll
      for (int i = 0; i < S::kRows; ++i) {
        const int r = slot + i * S::kSlots;
        float4* dst = reinterpret_cast<float4*>(part + r * kStride + q * S::kVec);
#pragma unroll
        for (int j = 0; j < S::kVec / 4; ++j) {
          if (r < kBeta) dst[j] = acc[i][j];
        }
      }
    }

    float* sum = part - warp * kWarpFloats;  // warp 0's partial tile
    add_warp_tiles(sum, kWarpFloats, kBeta, S::kTile, kStride);
    write_line_tile<T, kBeta, S::kTile, kStride, kBatchLeading>(p, sum, line, n0);
  }
}

// The tile width for n: the smallest of 4, 8, ..., max_tile that holds it.
inline int narrow_tile(int64_t n, int max_tile) {
  int tile = 4;
  while (tile < n && tile < max_tile) tile *= 2;
  return tile;
}

template <typename T, class S, bool kTranspose, bool kBatchLeading>
cudaError_t launch(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                   const SpmmOptions& options) {
  LineParams p{};
  set_line_params(a, &p);
  // At most narrow_smem_budget bytes per thread block, so that two fit on a multiprocessor
  // (113 KiB on an H100: the transposed walk at beta 128 and tile 16 keeps 8 warps, and ran
  // 1.2x faster than with 7 at 96 KiB).
  constexpr size_t kPerWarp = S::warp_floats(kTranspose) * sizeof(float);
  const int max_warps =
      static_cast<int>(std::clamp<size_t>(narrow_smem_budget(dev) / kPerWarp, 1, kNarrowMaxWarps));
  // Two units per warp, one where a unit is a whole block of 128 (four times the nonzeros of
  // one of 64).
  constexpr int kUnitsPerWarp = S::kBandRows >= 128 ? 1 : 2;
  // Clusters sized by the count without clusters: more thread blocks than fit at once in
  // clusters, but faster here than one wave in clusters (float32 4096^2 at 90%, n = 16: 28.9 us
  // in clusters of 8, past one wave, against 43.1 in clusters of 4).
  const WarpLaunch family{/*tile=*/S::kTile,
                          /*units_per_block=*/S::kBands,
                          /*units_per_warp=*/kUnitsPerWarp,
                          /*max_warps=*/max_warps,
                          /*warp_smem=*/kPerWarp,
                          /*max_carveout=*/false,
                          /*slots=*/SlotCount::kUnclustered};
  return launch_warp_lines<narrow_kernel<T, S, kTranspose, kBatchLeading>>(p, family, dev, stream,
                                                                           options);
}

// Lanes per nonzero: one lane holds up to 16 columns of n. Fewer lanes per nonzero mean more
// nonzeros per instruction (per-nonzero work is most of the cost), at the price of wider
// accumulators and, transposed, more nonzeros of a wave that share a column.
// Bands: a transposed walk stages only its band's rows of the slice, so four bands at beta 128
// give a line four times the units at less shared memory per warp. A forward walk needs the
// whole slice for every band (its columns are the input), and ran slower cut into bands where
// lines have many blocks (docs/performance.md, "Bands of rows").
template <int kBeta, int kTile, bool kTranspose>
using Shape =
    NarrowShape<kBeta, kTile, (kTile < 16 ? kTile : 16), kTranspose && kBeta >= 128 ? 4 : 1>;

template <typename T, int kBeta, bool kTranspose, bool kBatchLeading>
cudaError_t launch_tile(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                        const SpmmOptions& options) {
  constexpr int kMaxTile = narrow_max_tile(kBeta);
  switch (narrow_tile(a.n, kMaxTile)) {
    case 4:
      return launch<T, Shape<kBeta, 4, kTranspose>, kTranspose, kBatchLeading>(a, dev, stream,
                                                                               options);
    case 8:
      return launch<T, Shape<kBeta, 8, kTranspose>, kTranspose, kBatchLeading>(a, dev, stream,
                                                                               options);
    case 16:
      return launch<T, Shape<kBeta, 16, kTranspose>, kTranspose, kBatchLeading>(a, dev, stream,
                                                                                options);
  }
  return launch<T, Shape<kBeta, kMaxTile, kTranspose>, kTranspose, kBatchLeading>(a, dev, stream,
                                                                                  options);
}

}  // namespace narrow_detail

// The narrow-n SpMM for value type T and block size kBeta (at most kNarrowMaxBeta).
template <typename T, int kBeta>
cudaError_t launch_spmm_narrow(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                               const SpmmOptions& options) {
  using namespace narrow_detail;
  if (!a.shape.transpose && a.n == 1) return launch_spmv<T, kBeta>(a, dev, stream, options);
  return dispatch_layout(a.shape.transpose, a.batch_leading, [&](auto tr, auto bl) {
    return launch_tile<T, kBeta, decltype(tr)::value, decltype(bl)::value>(a, dev, stream, options);
  });
}

}  // namespace jaxcsb::cuda
