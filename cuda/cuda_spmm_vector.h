// CUDA SpMM for n = 1 in the forward direction: a matrix-vector product (single-token
// inference), a member of the narrow family (cuda_spmm_narrow.h).
//
// At n = 1 the narrow walk spends nearly all of its work per nonzero (its lane's row bounds, the
// staged slice, the loop over a row) on one multiply-add. Here the lanes of a warp take a block's
// stored nonzeros side by side, eight consecutive ones each (one 16-byte load of local indices
// and 16-byte loads of values), multiply them by the vector's entries (the block's slice of the
// vector, staged as float32 in shared memory), and add up each output row's products
// with a segmented scan: the stored order is sorted by row, so a row's products are
// consecutive, first within a lane and then across lanes. The lane that holds a row's last
// product of a chunk adds the row's sum to the warp's partial column in shared memory. Warps,
// clusters and the end of a line are those of the narrow kernel: every sum has a fixed order,
// results are bitwise reproducible, and there are no atomics.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace vector_detail {

constexpr int kPerLane = 8;            // consecutive nonzeros per lane
constexpr int kChunk = 32 * kPerLane;  // nonzeros per warp step
constexpr unsigned kFull = 0xffffffffu;

// A lane's share of a chunk: local indices and float32 values of consecutive nonzeros.
struct LaneShare {
  uint16_t local[kPerLane];
  float value[kPerLane];
};

// A block's nonzeros as the walk sees them: the arrays from the last multiple of kPerLane at
// or before the block's first nonzero, so that offsets are 32-bit and lanes' shares are aligned.
template <typename T>
struct BlockSpan {
  // Values per 16-byte load.
  static constexpr int kPiece = 16 / sizeof(T);
  static_assert(kPerLane * sizeof(uint16_t) == 16 && kPerLane % kPiece == 0,
                "a lane's share is one 16-byte load of local indices and whole loads of values");

  const uint16_t* local;
  const T* values;
  int lo, hi;    // the block's nonzeros are [lo, hi)
  int readable;  // entries [0, readable) lie inside the arrays

  __device__ BlockSpan(const uint16_t* all_local, const T* all_values, int64_t e0, int64_t e1,
                       int64_t nnz) {
    const int64_t a0 = e0 / kPerLane * kPerLane;
    local = all_local + a0;
    values = all_values + a0;
    lo = static_cast<int>(e0 - a0);
    hi = static_cast<int>(e1 - a0);
    readable = static_cast<int>(std::min<int64_t>(nnz - a0, INT32_MAX));
  }

  // The nonzeros [at, at + kPerLane) of the block; the others get local index 0xffff (a row
  // outside every block) and value 0. 16-byte loads where the whole share is readable and the
  // arrays are aligned (`vec`); no load where none of the share is the block's.
  __device__ __forceinline__ LaneShare share(int at, bool vec) const {
    LaneShare q;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      q.local[i] = 0xffff;
      q.value[i] = 0.0f;
    }
    if (at >= hi || at + kPerLane <= lo) return q;
    if (vec && at + kPerLane <= readable) {
      union {
        uint4 raw;
        uint16_t elems[kPerLane];
      } u;
      u.raw = __ldg(reinterpret_cast<const uint4*>(local + at));
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) q.local[i] = u.elems[i];
#pragma unroll
      for (int i = 0; i < kPerLane; i += kPiece) {
        float piece[kPiece];
        load_vec<T, kPiece>(values + at + i, piece);
#pragma unroll
        for (int j = 0; j < kPiece; ++j) q.value[i + j] = piece[j];
      }
    } else {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        if (at + i < readable) {
          q.local[i] = __ldg(local + at + i);
          q.value[i] = to_float(values[at + i]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      // Outside [lo, hi): the neighbouring blocks' nonzeros.
      if (static_cast<unsigned>(at + i - lo) >= static_cast<unsigned>(hi - lo)) {
        q.local[i] = 0xffff;
      }
    }
    return q;
  }
};

// Adds a chunk's products into `part` (the warp's partial column, kBeta rows): `slice` is the
// block's slice of the vector as float32. Every row that the chunk reaches is added to once, by
// the lane that holds its last product, so the lanes never write one row at the same time.
template <int kBeta>
__device__ __forceinline__ void add_chunk(const LaneShare& q, const float* slice, float* part) {
  const int lane = threadIdx.x % 32;
  int row[kPerLane];
  float sum[kPerLane];  // sum[i]: products of row[i] from the lane's first up to i
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    // A row outside the block marks padding (or a corrupt index, skipped); a column outside
    // it (corrupt) wraps around inside the slice.
    const int r = q.local[i] >> 8, c = q.local[i] & (kBeta - 1);
    row[i] = r < kBeta ? r : -1;
    sum[i] = r < kBeta ? q.value[i] * slice[c] : 0.0f;
    if (i > 0 && row[i] == row[i - 1]) sum[i] += sum[i - 1];
  }
  // Across lanes, the sum of the row that ends the lane (its "tail") over this and earlier lanes:
  // total[L] = sum[L] + (link[L] ? total[L - 1] : 0), where a lane links to the one before when
  // all of its products are of one row and that lane's tail is the same row. Scanned with the
  // composition (a, m) after (b, n) = (a + m b, m n).
  const int tail_before = __shfl_up_sync(kFull, row[kPerLane - 1], 1);
  float total = sum[kPerLane - 1];
  bool link = lane > 0 && row[0] == row[kPerLane - 1] && tail_before == row[0];
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const float total_up = __shfl_up_sync(kFull, total, d);
    const bool link_up = __shfl_up_sync(kFull, static_cast<int>(link), d);
    if (lane >= d) {
      if (link) total += total_up;
      link = link && link_up;
    }
  }
  // What the lanes before add to this lane's first row; then each row's sum where it ends.
  const float total_before = __shfl_up_sync(kFull, total, 1);
  const float carry = lane > 0 && tail_before == row[0] ? total_before : 0.0f;
  const int head_after = __shfl_down_sync(kFull, row[0], 1);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const bool ends = i + 1 < kPerLane ? row[i + 1] != row[i] : lane == 31 || head_after != row[i];
    if (ends && row[i] >= 0) part[row[i]] += sum[i] + (row[i] == row[0] ? carry : 0.0f);
  }
  __syncwarp();  // the next chunk's lanes add to the rows these wrote
}

template <typename T, int kBeta>
__global__ void __launch_bounds__(32 * kVectorMaxWarps) vector_kernel(const LineParams p) {
  __shared__ float parts[kVectorMaxWarps][kBeta];   // the warps' partial columns
  __shared__ float slices[kVectorMaxWarps][kBeta];  // each warp's slice of the vector
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* part = parts[warp];
  float* slice = slices[warp];
  for (int i = lane; i < kBeta; i += 32) part[i] = 0.0f;
  __syncwarp();

  const auto [line, pos_begin, pos_end] = line_part(p);
  if (line >= p.num_lines) return;  // uniform over the cluster
  const T* values = static_cast<const T*>(p.values);
  const T* vector = static_cast<const T*>(p.dense);
  const bool vec = reinterpret_cast<uintptr_t>(p.local) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(values) % 16 == 0;
  prefetch_blocks(p, values, line, false, /*parts=*/1, pos_begin + warp, pos_end, warps);

  for (int64_t pos = pos_begin + warp; pos < pos_end; pos += warps) {
    int64_t e0, e1;
    block_range(p.block_ptr, line_block(p, line, pos, false), p.nnz, &e0, &e1);
    const BlockSpan<T> block(p.local, values, e0, e1, p.nnz);
    LaneShare q = block.share(lane * kPerLane, vec);
    // The block's slice of the vector, zero past its end.
    const int64_t in_base = pos * kBeta;
    __syncwarp();  // the previous block's chunks have read the slice
    for (int i = lane; i < kBeta; i += 32) {
      slice[i] = in_base + i < p.in_dim ? to_float(__ldg(vector + in_base + i)) : 0.0f;
    }
    __syncwarp();
    // Each chunk's loads are issued before the previous chunk's arithmetic.
    for (int base = 0; base < block.hi; base += kChunk) {
      const LaneShare next = block.share(base + kChunk + lane * kPerLane, vec);
      add_chunk<kBeta>(q, slice, part);
      q = next;
    }
  }

  add_warp_tiles(parts[0], kBeta, kBeta, 1, 1);
  // At n = 1 both layouts of the vector and of the output are the same array.
  write_line_tile<T, kBeta, 1, 1, false>(p, parts[0], line, 0);
}

}  // namespace vector_detail

// out = S * x for a vector x (n = 1, forward), block size kBeta (at most kNarrowMaxBeta).
template <typename T, int kBeta>
cudaError_t launch_spmv(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                        const SpmmOptions& options) {
  LineParams p{};
  set_line_params(a, &p);
  // As the narrow kernel, but a warp per CSB block: a warp's walk is a chain of dependent loads,
  // so the more warps walk at once, the more of the memory's latency is hidden. Its shared
  // memory is static (a column of partial sums per warp). Clusters spread for one thread block
  // per multiprocessor where they can: this walk ran up to 22% faster so than with the two to
  // four per multiprocessor of the narrow family's rule (bfloat16 4096^2 at 90%: 10.5 against
  // 12.5 us; "n5d" in docs/performance.md). Clusters of two where the lines outnumber the
  // multiprocessors by less than half: bfloat16 11008 x 4096 (172 lines) at 90% took 20.0 us
  // so, 22.3 in one thread block a line.
  constexpr WarpLaunch kFamily{/*tile=*/1,
                               /*units_per_block=*/1,
                               /*units_per_warp=*/1,
                               /*max_warps=*/kVectorMaxWarps,
                               /*warp_smem=*/0,
                               /*max_carveout=*/false,
                               /*slots=*/SlotCount::kOnePerSm};
  return launch_warp_lines<vector_detail::vector_kernel<T, kBeta>>(p, kFamily, dev, stream,
                                                                   options);
}

}  // namespace jaxcsb::cuda
