// CUDA SpMM: out = op(S) * D for S in CSB, both directions and both dense layouts from the one
// stored copy.
//
// Decomposition. A thread block computes one line (beta output rows of op(S)) for one tile of
// 32 * kVec columns of n, walking the line's blocks in order. A cluster of C thread blocks
// (C = 1 when lines x n-tiles fill the GPU, up to 8 when they do not, e.g. small n) splits a
// line where the running weight of its blocks (nonzeros plus the staging of a tile) crosses
// each rank's share (cluster_range); the blocks of a cluster add their partial tiles through
// distributed shared memory in rank order. Every output element is therefore written exactly once,
// by a fixed sum order: results are bitwise reproducible, with no atomics on values and no
// workspace. Lines of a single block (a matrix at most beta deep along the product's input axis)
// with many n-tiles run walk_tiles_kernel instead: a thread block walks several n-tiles of its
// line, staging the next tile while the current one is multiplied and written.
//
// Per CSB block. The block's beta x tile slice of D is staged in shared memory with cp.async
// (16-byte copies along n for row-major D; 4-byte copies along the feature axis for the
// batch-leading layout, which is staged n-major with an odd row stride). The block's nonzeros
// are counting-sorted by output row in shared memory, in chunks of kChunk: the row of the
// stored (row, col) order in the forward product, the column in the transposed one, so the
// two directions run the same code and cost the same. The rank of a nonzero inside its output
// row comes from a per-row bitmap of input indices (popc below its own bit), so the sorted
// order is unique and does not depend on thread timing. A position that repeats inside a chunk
// (allowed: repeats are summed) would share its rank; the bitmap update detects it and such a
// chunk is ranked by a slower exact count, stable in storage order.
// Each warp then owns kRows output rows and accumulates them in registers: per nonzero one
// broadcast read of (input index, value) and one read of the staged D row, kVec FMAs per lane.
#pragma once

#include <cooperative_groups.h>

#include <algorithm>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_spmm_narrow.h"
#include "cuda_spmm_tensor.h"
#include "cuda_utils.h"

namespace cg = cooperative_groups;

namespace jaxcsb::cuda {
namespace spmm_detail {

struct SpmmParams : LineParams {
  bool vec_ok;  // dense allows the cp.async staging (alignment and row length)
};

// The shared-memory arrays of the sort (sort_chunk): the sorted entries (input index, value
// bits), the start of each slot's entries among them (RowSlots), the row counts and the per-row
// bitmap of input indices that they come from, and whether the chunk repeats a position.
struct SortArrays {
  int2* ent;
  int* start;
  int* counts;
  uint32_t* mask;
  int* repeats;
};

// The slots by which the sort orders a block's output rows: slot warp * kRows + rr is the
// warp's accumulator rr. Each row is its own slot, or with kDealt the rows are dealt to the warps
// by weight (deal_rows).
template <bool kDealt>
struct RowSlots {
  __device__ int slot_of(int r) const { return r; }
  __device__ int row_of(int s) const { return s; }
};
template <>
struct RowSlots<true> {
  int* slot;  // a row's slot
  int* rows;  // a slot's row
  __device__ int slot_of(int r) const { return slot[r]; }
  __device__ int row_of(int s) const { return rows[s]; }
};

// Shared-memory layout of one thread block, in bytes.
template <typename T, class Cfg, bool kBatchLeading>
struct SpmmSmem {
  // Row stride (in elements) of the staged tile: n-major rows of beta features for the
  // batch-leading layout, padded to an odd number of 32-bit words so that lanes reading one
  // feature of 32 different n hit 32 banks; beta-major rows of kTileN otherwise.
  static constexpr int kTileStride =
      kBatchLeading ? Cfg::kBeta + static_cast<int>(4 / sizeof(T)) : Cfg::kTileN;
  static constexpr int kTileRows = kBatchLeading ? Cfg::kTileN : Cfg::kBeta;
  // Row stride (in floats) of the float32 output tile of the epilogue; odd for the
  // batch-leading write, which reads it along the feature axis.
  static constexpr int kRedStride = Cfg::kTileN + (kBatchLeading ? 1 : 0);

  static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  static constexpr size_t kTileBytes = size_t{kTileRows} * kTileStride * sizeof(T);
  static constexpr size_t kRedBytes = size_t{Cfg::kBeta} * kRedStride * sizeof(float);
  // The output tile reuses the staged tile's memory once the line is done.
  static constexpr size_t kTileOffset = 0;
  static constexpr size_t kEntOffset = align16(kTileBytes > kRedBytes ? kTileBytes : kRedBytes);
  static constexpr size_t kStartOffset = kEntOffset + align16(size_t{Cfg::kChunk} * sizeof(int2));
  static constexpr size_t kCountOffset = kStartOffset + align16((Cfg::kBeta + 1) * sizeof(int));
  static constexpr size_t kMaskOffset = kCountOffset + align16(Cfg::kBeta * sizeof(int));
  static constexpr size_t kRangeOffset =
      kMaskOffset + align16(size_t{Cfg::kBeta} * Cfg::kMaskWords * sizeof(uint32_t));
  static constexpr size_t kRepeatsOffset = kRangeOffset + 2 * sizeof(int);
  static constexpr size_t kBytes = kRangeOffset + 16;
  // walk_tiles_kernel stages the next n-tile into a second tile slot past the rest, and
  // keeps the dealt rows' slots past that.
  static constexpr size_t kWalkTileOffset = kBytes;
  static constexpr size_t kWalkSlotOffset = kWalkTileOffset + kEntOffset;
  static constexpr size_t kWalkRowsOffset = kWalkSlotOffset + align16(Cfg::kBeta * sizeof(int));
  static constexpr size_t kWalkBytes = kWalkRowsOffset + align16(Cfg::kBeta * sizeof(int));

  static __device__ SortArrays sort_arrays(unsigned char* smem) {
    return {reinterpret_cast<int2*>(smem + kEntOffset), reinterpret_cast<int*>(smem + kStartOffset),
            reinterpret_cast<int*>(smem + kCountOffset),
            reinterpret_cast<uint32_t*>(smem + kMaskOffset),
            reinterpret_cast<int*>(smem + kRepeatsOffset)};
  }

  template <bool kDealt>
  static __device__ RowSlots<kDealt> walk_row_slots(unsigned char* smem) {
    if constexpr (kDealt) {
      return {reinterpret_cast<int*>(smem + kWalkSlotOffset),
              reinterpret_cast<int*>(smem + kWalkRowsOffset)};
    } else {
      return {};
    }
  }
};

// The positions [begin, end) of line `line` (of `length` blocks) that rank `rank` of a cluster
// of `csize` thread blocks walks: the line is cut where the running weight of its blocks
// crosses each rank's share of the total, a block weighing its nonzeros plus kBeta for the
// staging of its tile (empty blocks are skipped and weigh nothing). Every rank computes the
// same cuts, so the ranges partition the line. Called by a whole warp, which reads the line's
// block_ptr twice; kept out of line so that it adds no registers to the kernel's main loop,
// and given scalars so that the call copies no kernel parameters to the stack.
template <int kBeta, bool kTranspose>
__device__ __noinline__ void cluster_range(const int32_t* block_ptr, int64_t nnz,
                                           int64_t block_cols, int64_t length, int64_t line,
                                           int rank, int csize, int64_t* begin, int64_t* end) {
  const int lane = threadIdx.x % 32;
  auto weight = [&](int64_t pos) -> int64_t {
    if (pos >= length) return 0;
    int64_t e0, e1;
    block_range(block_ptr, line_block(block_cols, line, pos, kTranspose), nnz, &e0, &e1);
    return e1 > e0 ? e1 - e0 + kBeta : 0;
  };
  int64_t total = 0;
  for (int64_t pos = lane; pos < length; pos += 32) total += weight(pos);
  for (int offset = 16; offset > 0; offset /= 2)
    total += __shfl_xor_sync(0xffffffffu, total, offset);

  // The first positions whose weight up to their middle reaches the rank's lower and upper
  // cuts (or the line's end): rank r's upper cut is rank r + 1's lower one.
  const int64_t lo = total * rank / csize, hi = total * (rank + 1) / csize;
  int64_t first_lo = rank == 0 ? 0 : -1, first_hi = rank == csize - 1 ? length : -1;
  int64_t before = 0;  // weight of the positions ahead of this group of 32
  for (int64_t base = 0; base < length && (first_lo < 0 || first_hi < 0); base += 32) {
    const int64_t w = weight(base + lane);
    const int64_t upto = warp_inclusive_sum(w);  // inclusive prefix over the group
    // Twice the weight up to the middle of this block: a block that straddles a cut goes to
    // the side that holds most of it (cutting just past it gave the first rank half a block
    // more than its share on average, 10% slower at 16 blocks a line).
    const int64_t middle2 = 2 * (before + upto) - w;
    const bool inside = base + lane < length;
    const unsigned at_lo = __ballot_sync(0xffffffffu, inside && middle2 >= 2 * lo);
    const unsigned at_hi = __ballot_sync(0xffffffffu, inside && middle2 >= 2 * hi);
    if (first_lo < 0 && at_lo) first_lo = base + __ffs(at_lo) - 1;
    if (first_hi < 0 && at_hi) first_hi = base + __ffs(at_hi) - 1;
    before += __shfl_sync(0xffffffffu, upto, 31);
  }
  *begin = first_lo < 0 ? length : first_lo;
  *end = first_hi < 0 ? length : first_hi;
}

// Deals the output rows of a block's nonzeros [e0, e1) to the warps' slots (RowSlots) so
// that each warp's share is about even: the rows, heaviest first, go to warps 0, 1, ..., W - 1,
// then W - 1, ..., 0, and so on. A block's multiply ends with a barrier, so it takes as long as
// its busiest warp, and with each warp owning kRows adjacent rows, pruned layers whose heavy
// rows or columns sit side by side gave one warp up to 1.6x the mean. The order depends on the
// counts alone and every row is still summed by one warp in sorted order, so results do not
// change. Ends with a barrier. Kept out of line, as cluster_range, so that it adds no registers
// to the kernel's main loop.
template <class Cfg, bool kTranspose>
__device__ __noinline__ void deal_rows(const uint16_t* local, int64_t e0, int64_t e1, int* counts,
                                       int* slot, int* rows) {
  constexpr int kBeta = Cfg::kBeta;
  for (int r = threadIdx.x; r < kBeta; r += Cfg::kThreads) counts[r] = 0;
  __syncthreads();
  for (int64_t e = e0 + threadIdx.x; e < e1; e += Cfg::kThreads) {
    const uint16_t loc = local[e];
    const int out = kTranspose ? loc & 0xff : loc >> 8;
    if (out < kBeta) atomicAdd(&counts[out], 1);
  }
  __syncthreads();
  for (int r = threadIdx.x; r < kBeta; r += Cfg::kThreads) {
    // The row's place among the rows by count, heaviest first, ties to the lower row.
    const int mine = counts[r];
    int place = 0;
    for (int q = 0; q < kBeta; ++q) {
      const int other = counts[q];
      place += other > mine || (other == mine && q < r);
    }
    const int round = place / Cfg::kWarps, turn = place % Cfg::kWarps;
    const int warp = round % 2 == 0 ? turn : Cfg::kWarps - 1 - turn;
    slot[r] = warp * Cfg::kRows + round;
    rows[warp * Cfg::kRows + round] = r;
  }
  __syncthreads();
}

// Stages the block's slice of D: features [in_base, in_base + beta) x n [n0, n0 + kTileN),
// zero-filled outside the matrix.
template <typename T, class Cfg, bool kBatchLeading>
__device__ __forceinline__ void stage_tile(const SpmmParams& p, T* tile, int64_t in_base,
                                           int64_t n0) {
  using L = SpmmSmem<T, Cfg, kBatchLeading>;
  const T* dense = static_cast<const T*>(p.dense);
  if (!kBatchLeading) {
    // D is (in_dim, n): rows of the tile are contiguous in memory.
    if (p.vec_ok) {
      constexpr int kPerCopy = 16 / sizeof(T);
      constexpr int kCopiesPerRow = Cfg::kTileN / kPerCopy;
      for (int i = threadIdx.x; i < Cfg::kBeta * kCopiesPerRow; i += Cfg::kThreads) {
        const int c = i / kCopiesPerRow, q = i % kCopiesPerRow;
        const int64_t gc = in_base + c, gn = n0 + q * kPerCopy;
        const bool ok = gc < p.in_dim && gn < p.n;
        cp_async_16(tile + c * L::kTileStride + q * kPerCopy, ok ? dense + gc * p.n + gn : dense,
                    ok ? 16 : 0);
      }
    } else {
      for (int i = threadIdx.x; i < Cfg::kBeta * Cfg::kTileN; i += Cfg::kThreads) {
        const int c = i / Cfg::kTileN, q = i % Cfg::kTileN;
        const int64_t gc = in_base + c, gn = n0 + q;
        tile[c * L::kTileStride + q] =
            gc < p.in_dim && gn < p.n ? dense[gc * p.n + gn] : from_float<T>(0.0f);
      }
    }
  } else {
    // D is (n, in_dim): each n holds beta contiguous features of the block.
    if (p.vec_ok) {
      constexpr int kPerCopy = 4 / sizeof(T);
      constexpr int kCopiesPerRow = Cfg::kBeta / kPerCopy;
      for (int i = threadIdx.x; i < Cfg::kTileN * kCopiesPerRow; i += Cfg::kThreads) {
        const int nn = i / kCopiesPerRow, q = i % kCopiesPerRow;
        const int64_t gc = in_base + q * kPerCopy, gn = n0 + nn;
        const bool ok = gc < p.in_dim && gn < p.n;
        cp_async_4(tile + nn * L::kTileStride + q * kPerCopy,
                   ok ? dense + gn * p.in_dim + gc : dense, ok ? 4 : 0);
      }
    } else {
      for (int i = threadIdx.x; i < Cfg::kTileN * Cfg::kBeta; i += Cfg::kThreads) {
        const int nn = i / Cfg::kBeta, c = i % Cfg::kBeta;
        const int64_t gc = in_base + c, gn = n0 + nn;
        tile[nn * L::kTileStride + c] =
            gc < p.in_dim && gn < p.n ? dense[gn * p.in_dim + gc] : from_float<T>(0.0f);
      }
    }
  }
}

// Sorts nonzeros [k0, k0 + count) of one block by the slot of their output row into ent[]
// (input index, value bits), with start[s] .. start[s + 1] the entries of slot s. Nonzeros whose
// local index lies outside a beta x beta block are dropped. Ends without a barrier.
template <typename T, class Cfg, bool kTranspose, bool kDealt>
__device__ __forceinline__ void sort_chunk(const SpmmParams& p, int64_t k0, int count,
                                           const SortArrays& s, const RowSlots<kDealt>& slots) {
  constexpr int kBeta = Cfg::kBeta, kWords = Cfg::kMaskWords;
  int2* ent = s.ent;
  int *start = s.start, *counts = s.counts, *repeats = s.repeats;
  uint32_t* mask = s.mask;
  const T* values = static_cast<const T*>(p.values);
  int key[Cfg::kPerThread], sub[Cfg::kPerThread];
  float val[Cfg::kPerThread];
#pragma unroll
  for (int j = 0; j < Cfg::kPerThread; ++j) {
    const int i = threadIdx.x + j * Cfg::kThreads;
    key[j] = kBeta;  // invalid
    sub[j] = 0;
    val[j] = 0.0f;
    if (i < count) {
      const uint16_t loc = p.local[k0 + i];
      const int row = loc >> 8, col = loc & 0xff;
      const int out = kTranspose ? col : row, in = kTranspose ? row : col;
      val[j] = to_float(values[k0 + i]);
      if (out < kBeta && in < kBeta) {
        key[j] = slots.slot_of(out);
        sub[j] = in;
      }
    }
  }
  for (int i = threadIdx.x; i < kBeta; i += Cfg::kThreads) counts[i] = 0;
  for (int i = threadIdx.x; i < kBeta * kWords; i += Cfg::kThreads) mask[i] = 0;
  if (threadIdx.x == 0) *repeats = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < Cfg::kPerThread; ++j) {
    if (key[j] < kBeta) {
      atomicAdd(&counts[key[j]], 1);
      const uint32_t bit = 1u << (sub[j] % 32);
      if (atomicOr(&mask[key[j] * kWords + sub[j] / 32], bit) & bit) atomicOr(repeats, 1);
    }
  }
  __syncthreads();
  if (threadIdx.x < 32) warp_exclusive_scan<kBeta>(counts, start);
  __syncthreads();
  int rank[Cfg::kPerThread];
  if (!*repeats) {
#pragma unroll
    for (int j = 0; j < Cfg::kPerThread; ++j) {
      if (key[j] < kBeta) {
        const uint32_t* m = mask + key[j] * kWords;
        rank[j] = __popc(m[sub[j] / 32] & ((1u << (sub[j] % 32)) - 1u));
        for (int w = 0; w < sub[j] / 32; ++w) rank[j] += __popc(m[w]);
      }
    }
  } else {
    // Exact stable rank: entries of the same output row before this one in (input index,
    // storage index) order. The packed keys live in ent's memory until every rank is known.
    int* packed = reinterpret_cast<int*>(ent);
#pragma unroll
    for (int j = 0; j < Cfg::kPerThread; ++j) {
      const int i = threadIdx.x + j * Cfg::kThreads;
      if (i < count) packed[i] = key[j] < kBeta ? key[j] << 8 | sub[j] : -1;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < Cfg::kPerThread; ++j) rank[j] = 0;
    for (int i = 0; i < count; ++i) {
      const int other = packed[i];
#pragma unroll
      for (int j = 0; j < Cfg::kPerThread; ++j) {
        const int mine = key[j] << 8 | sub[j];
        const int self = threadIdx.x + j * Cfg::kThreads;
        rank[j] += other >> 8 == key[j] && (other < mine || (other == mine && i < self));
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < Cfg::kPerThread; ++j) {
    if (key[j] < kBeta) ent[start[key[j]] + rank[j]] = make_int2(sub[j], __float_as_int(val[j]));
  }
}

// acc += value * (the lane's kVec columns of the staged D row of the entry's input index).
template <typename T, class Cfg, bool kBatchLeading>
__device__ __forceinline__ void add_entry(const T* tile, int2 en, int lane,
                                          float (&acc)[Cfg::kVec]) {
  using L = SpmmSmem<T, Cfg, kBatchLeading>;
  const int c = en.x & (Cfg::kBeta - 1);
  const float v = __int_as_float(en.y);
  float d[Cfg::kVec];
  if (!kBatchLeading) {
    load_vec<T, Cfg::kVec>(tile + c * L::kTileStride + lane * Cfg::kVec, d);
  } else {
#pragma unroll
    for (int i = 0; i < Cfg::kVec; ++i) d[i] = to_float(tile[(lane + 32 * i) * L::kTileStride + c]);
  }
#pragma unroll
  for (int i = 0; i < Cfg::kVec; ++i) acc[i] = fmaf(v, d[i], acc[i]);
}

// acc += the warp's kRows output rows of a sorted chunk times the staged tile.
template <typename T, class Cfg, bool kBatchLeading>
__device__ __forceinline__ void multiply_chunk(const T* tile, const SortArrays& sorted,
                                               float (&acc)[Cfg::kRows][Cfg::kVec]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int2* ent = sorted.ent;
  const int* start = sorted.start;
#pragma unroll
  for (int rr = 0; rr < Cfg::kRows; ++rr) {
    const int r = warp * Cfg::kRows + rr;
    const int kb = start[r], ke = start[r + 1];
#pragma unroll 4
    for (int k = kb; k < ke; ++k) add_entry<T, Cfg, kBatchLeading>(tile, ent[k], lane, acc[rr]);
  }
}

// acc += the nonzeros [e0, e1) of one CSB block times its staged tile, sorted by output row a
// chunk at a time. With kAwaitTile the tile's asynchronous copies are awaited after each sort,
// which they overlap; without, the caller has awaited them. Ends without a barrier.
template <typename T, class Cfg, bool kTranspose, bool kBatchLeading, bool kAwaitTile, bool kDealt>
__device__ __forceinline__ void multiply_block(const SpmmParams& p, const T* tile, int64_t e0,
                                               int64_t e1, const SortArrays& sorted,
                                               const RowSlots<kDealt>& slots,
                                               float (&acc)[Cfg::kRows][Cfg::kVec]) {
  for (int64_t k0 = e0; k0 < e1; k0 += Cfg::kChunk) {
    if (k0 != e0) __syncthreads();  // every warp is done with the previous chunk
    const int count = static_cast<int>(std::min<int64_t>(Cfg::kChunk, e1 - k0));
    sort_chunk<T, Cfg, kTranspose>(p, k0, count, sorted, slots);
    if (kAwaitTile) cp_async_wait_all();
    __syncthreads();
    multiply_chunk<T, Cfg, kBatchLeading>(tile, sorted, acc);
  }
}

// The end of an n-tile: the float32 tile goes through shared memory (`red`, the staged tile's
// memory, free once every warp is past the barrier), where the blocks of a cluster add their
// partial tiles in rank order and every block writes its share of the rows with accesses
// contiguous along the output's fastest axis.
template <typename T, class Cfg, bool kBatchLeading, bool kDealt>
__device__ __forceinline__ void write_tile(const SpmmParams& p, float* red,
                                           const RowSlots<kDealt>& slots,
                                           const float (&acc)[Cfg::kRows][Cfg::kVec], int64_t line,
                                           int64_t n0) {
  using L = SpmmSmem<T, Cfg, kBatchLeading>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
#pragma unroll
  for (int rr = 0; rr < Cfg::kRows; ++rr) {
    const int slot = warp * Cfg::kRows + rr;
    float* dst = red + slots.row_of(slot) * L::kRedStride;
    if (kBatchLeading) {
#pragma unroll
      for (int i = 0; i < Cfg::kVec; ++i) dst[lane + 32 * i] = acc[rr][i];
    } else {
      store_vec<float, Cfg::kVec>(dst + lane * Cfg::kVec, acc[rr]);
    }
  }
  write_line_tile<T, Cfg::kBeta, Cfg::kTileN, L::kRedStride, kBatchLeading>(p, red, line, n0);
}

// Lines of one CSB block (op(S) at most beta deep along its input axis, such as a transposed
// 64 x 576 convolution weight): a thread block of one tile would stage, sort, multiply and
// write that tile with nothing in flight in between, so here a thread block walks the n-tiles
// blockIdx.y, blockIdx.y + gridDim.y, ... of its line instead, staging the next tile into a
// second slot while the current one is multiplied and written, and sorting the block's
// nonzeros once for every tile when they fit one chunk. In the batch-leading layout the rows
// are dealt to the warps by weight first (deal_rows): its multiply reads D with four shared
// loads per nonzero and lane, so there a warp's excess work costs the most (the transposed
// ResNet-50 64 x 576 layer at 80%, X @ A: 357 -> 282 us), while in the feature-major layout
// the count pass and the indirection cost more than they save (0-5% slower).
template <typename T, class Cfg, bool kTranspose, bool kBatchLeading>
__global__ void __launch_bounds__(Cfg::kThreads) walk_tiles_kernel(const SpmmParams p) {
  using L = SpmmSmem<T, Cfg, kBatchLeading>;
  constexpr bool kDealt = kBatchLeading;
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t line = blockIdx.x;
  if (line >= p.num_lines) return;
  T* const slot0 = reinterpret_cast<T*>(smem + L::kTileOffset);
  T* const slot1 = reinterpret_cast<T*>(smem + L::kWalkTileOffset);
  const SortArrays sorted = L::sort_arrays(smem);
  const RowSlots<kDealt> slots = L::template walk_row_slots<kDealt>(smem);

  int64_t t = blockIdx.y;
  if (t < p.num_tiles) stage_tile<T, Cfg, kBatchLeading>(p, slot0, 0, t * Cfg::kTileN);
  cp_async_commit();
  int64_t e0, e1;
  block_range(p.block_ptr, line_block(p, line, 0, kTranspose), p.nnz, &e0, &e1);
  if constexpr (kDealt) {
    deal_rows<Cfg, kTranspose>(p.local, e0, e1, sorted.counts, slots.slot, slots.rows);
  }
  const bool sorted_once = e1 - e0 <= Cfg::kChunk;
  if (sorted_once) {
    sort_chunk<T, Cfg, kTranspose>(p, e0, static_cast<int>(e1 - e0), sorted, slots);
  }
  for (int i = 0; t < p.num_tiles; ++i, t += gridDim.y) {
    T* const tile = i % 2 ? slot1 : slot0;
    // The other slot held the previous tile, whose epilogue ended with a barrier.
    const int64_t next = t + gridDim.y;
    if (next < p.num_tiles) {
      stage_tile<T, Cfg, kBatchLeading>(p, i % 2 ? slot0 : slot1, 0, next * Cfg::kTileN);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this tile's copies, not the next one's
    __syncthreads();
    float acc[Cfg::kRows][Cfg::kVec] = {};
    if (sorted_once) {
      multiply_chunk<T, Cfg, kBatchLeading>(tile, sorted, acc);
    } else {
      multiply_block<T, Cfg, kTranspose, kBatchLeading, false>(p, tile, e0, e1, sorted, slots, acc);
    }
    write_tile<T, Cfg, kBatchLeading>(p, reinterpret_cast<float*>(tile), slots, acc, line,
                                      t * Cfg::kTileN);
  }
}

template <typename T, class Cfg, bool kTranspose, bool kBatchLeading>
__global__ void __launch_bounds__(Cfg::kThreads) spmm_kernel(const SpmmParams p) {
  using L = SpmmSmem<T, Cfg, kBatchLeading>;
  constexpr int kBeta = Cfg::kBeta;
  extern __shared__ __align__(16) unsigned char smem[];
  T* tile = reinterpret_cast<T*>(smem + L::kTileOffset);
  float* red = reinterpret_cast<float*>(smem + L::kTileOffset);
  const SortArrays sorted = L::sort_arrays(smem);
  const RowSlots<false> slots{};
  int* range = reinterpret_cast<int*>(smem + L::kRangeOffset);  // [begin, end) of positions

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int csize = p.cluster;
  const int rank = static_cast<int>(blockIdx.x % csize);
  const int64_t line = blockIdx.x / csize;
  if (line >= p.num_lines) return;  // uniform over the cluster

  // The positions of the line this block walks: all of them, or the rank's share.
  int64_t pos_begin = 0, pos_end = p.line_length;
  if (csize > 1) {
    if (warp == 0) {
      int64_t b, e;
      cluster_range<kBeta, kTranspose>(p.block_ptr, p.nnz, p.block_cols, p.line_length, line, rank,
                                       csize, &b, &e);
      if (lane == 0) {
        range[0] = static_cast<int>(b);
        range[1] = static_cast<int>(e);
      }
    }
    __syncthreads();
    pos_begin = range[0];
    pos_end = range[1];
  }

  for (int64_t t = blockIdx.y; t < p.num_tiles; t += gridDim.y) {
    const int64_t n0 = t * Cfg::kTileN;
    float acc[Cfg::kRows][Cfg::kVec] = {};

    for (int64_t pos = pos_begin; pos < pos_end; ++pos) {
      int64_t e0, e1;
      block_range(p.block_ptr, line_block(p, line, pos, kTranspose), p.nnz, &e0, &e1);
      if (e0 >= e1) continue;
      __syncthreads();  // the previous block's compute is done with the tile and the sorted arrays
      stage_tile<T, Cfg, kBatchLeading>(p, tile, pos * kBeta, n0);
      multiply_block<T, Cfg, kTranspose, kBatchLeading, true>(p, tile, e0, e1, sorted, slots, acc);
    }
    write_tile<T, Cfg, kBatchLeading>(p, red, slots, acc, line, n0);
  }
}

// The grid's extent along n when the thread blocks walk the n-tiles of lines of one block
// (walk_tiles_kernel), or 0 when one thread block per tile serves better. `slots` and `walk_slots`:
// the thread blocks that the GPU holds at once with one tile slot and with two. The walk runs
// in one wave (lines x extent at most walk_slots), so it pays where every thread block gets at
// least two tiles and the most tiles of a block stay within an eighth of the one-tile launch's
// waves (the walk saves more than that per tile).
inline int64_t walk_extent(int64_t lines, int64_t tiles, int64_t slots, int64_t walk_slots) {
  const int64_t extent = std::min(tiles, walk_slots / lines);
  if (extent < 1 || 2 * extent > tiles) return 0;
  const int64_t walk_cost = ceil_div(tiles, extent), tile_waves = ceil_div(lines * tiles, slots);
  return 8 * walk_cost <= 9 * tile_waves ? extent : 0;
}

// Thread blocks per cluster past the one-wave size `csize` (line_cluster) where that ends
// sooner: `blocks` (lines x n-tiles) at cluster c take ceil(blocks c / slots(c)) waves of 1/c
// of a line's work each, so where few lines leave much of one wave empty a larger cluster pays
// even over several waves (256 line tiles at beta 32 fill 512 of 792 slots at cluster 2, half
// a line each, and three waves of an eighth at cluster 8). Shorter pieces also share out the
// heaviest lines, whose weight the host does not know: a Transformer layer's block-columns
// reach 1.9x the mean. Every thread block keeps kMinPositions positions and, on average over
// lines of `line_nnz` nonzeros, kMinNonzeros nonzeros, so that the cluster's reduction (a tile
// per block) stays small beside the staging (a tile per position) and the multiply-adds.
// Where no cluster pays so and halves of the lines balance the multiprocessors (halves_balance),
// lines go in halves of at least `min_half` positions each.
template <class Slots>
int wide_cluster(int csize, int64_t blocks, int64_t line_length, int64_t line_nnz, Slots slots,
                 int num_sms, int min_half) {
  constexpr int64_t kMinPositions = 8, kMinNonzeros = 2048;
  int best = csize;
  int64_t best_waves = ceil_div(blocks * csize, std::max<int64_t>(slots(csize), 1));
  for (int c = 2 * csize;
       c <= 8 && c * kMinPositions <= line_length && c * kMinNonzeros <= line_nnz; c *= 2) {
    const int64_t room = slots(c);
    if (room <= 0) break;
    const int64_t waves = ceil_div(blocks * c, room);
    if (waves * best < best_waves * c) {  // waves / c < best_waves / best
      best = c;
      best_waves = waves;
    }
  }
  if (best == 1 && halves_balance(blocks, num_sms) && line_length >= 2 * min_half) return 2;
  return best;
}

template <typename T, class Cfg, bool kTranspose, bool kBatchLeading>
cudaError_t launch(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                   const SpmmOptions& options) {
  using L = SpmmSmem<T, Cfg, kBatchLeading>;
  SpmmParams p{};
  set_line_params(a, &p);
  p.num_tiles = ceil_div(a.n, Cfg::kTileN);
  const auto addr = reinterpret_cast<uintptr_t>(a.dense);
  p.vec_ok = kBatchLeading ? (p.in_dim * sizeof(T)) % 4 == 0 && addr % 4 == 0
                           : (p.n * sizeof(T)) % 16 == 0 && addr % 16 == 0;

  constexpr auto kKernel = spmm_kernel<T, Cfg, kTranspose, kBatchLeading>;
  constexpr auto kWalkKernel = walk_tiles_kernel<T, Cfg, kTranspose, kBatchLeading>;
  const size_t smem = L::kBytes;
  if (smem > static_cast<size_t>(dev.max_smem_optin)) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem<kKernel>(dev.device, smem);
  if (err != cudaSuccess) return err;
  auto slots = [&](int c) { return resident_on_gpu<kKernel>(c, Cfg::kThreads, smem, dev); };
  // Split lines when lines x n-tiles leave the GPU underused, and never into more pieces than
  // a line has positions.
  const int64_t tiles_y = std::min<int64_t>(p.num_tiles, 65535);
  err = line_cluster(options.cluster, dev, p.num_lines * tiles_y, p.line_length, 1, slots,
                     &p.cluster);
  if (err != cudaSuccess) return err;
  if (options.cluster <= 0 && dev.cluster_launch) {
    // Halves keep 4 positions each, so that the cluster's reduction stays small beside the
    // staging of their tiles, and 8 in the batch-leading layout, which loses in halves of 4
    // blocks, and not to its reduction's reads (four values at a time ran as slow): the rn50
    // projection layer transposed (4 lines of 8 blocks at beta 128, 196 line tiles) took
    // 0.139 -> 0.122 ms in halves feature-major, but 0.166 -> 0.176 ms batch-leading; on lines
    // of 16 blocks (8 lines, 160 line tiles) 0.263 -> 0.216 and 0.318 -> 0.287 ms.
    constexpr int kMinHalf = kBatchLeading ? 8 : 4;
    p.cluster =
        wide_cluster(p.cluster, p.num_lines * tiles_y, p.line_length,
                     a.nnz / std::max<int64_t>(p.num_lines, 1), slots, dev.num_sms, kMinHalf);
  }

  const size_t walk_smem = L::kWalkBytes;
  const bool can_walk =
      p.line_length == 1 && p.cluster == 1 && walk_smem <= static_cast<size_t>(dev.max_smem_optin);
  if (options.tiles_per_block > 1 && !can_walk) return cudaErrorInvalidValue;
  if (can_walk && options.tiles_per_block != 1) {
    err = allow_smem<kWalkKernel>(dev.device, walk_smem);
    if (err != cudaSuccess) return err;
    const int64_t walk_slots = resident_on_gpu<kWalkKernel>(1, Cfg::kThreads, walk_smem, dev);
    // Batch-leading blocks over several sort chunks (30% dense at beta 64) walked 10% slower
    // than one tile per thread block: they sort every chunk for every tile either way.
    const bool chunked = kBatchLeading && a.nnz > p.num_lines * Cfg::kChunk;
    int64_t extent = 0;
    if (options.tiles_per_block > 1) {
      extent = ceil_div(p.num_tiles, options.tiles_per_block);
    } else if (!chunked) {
      extent = walk_extent(p.num_lines, p.num_tiles, slots(1), walk_slots);
    }
    if (extent > 0) {
      return launch_lines(kWalkKernel, p, p.num_lines, 1, extent, Cfg::kThreads, walk_smem, stream);
    }
  }
  return launch_lines(kKernel, p, p.num_lines, p.cluster, tiles_y, Cfg::kThreads, smem, stream);
}

template <typename T, class Cfg>
cudaError_t launch_layout(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                          const SpmmOptions& options) {
  return dispatch_layout(a.shape.transpose, a.batch_leading, [&](auto tr, auto bl) {
    return launch<T, Cfg, decltype(tr)::value, decltype(bl)::value>(a, dev, stream, options);
  });
}

}  // namespace spmm_detail

// SpMM for value type T, every block size, in kernel family `kernel` (spmm_kernel_to_run; the
// slab family runs from launch_spmm); instantiated once per type in cuda_spmm_<type>.cu so that
// the kernels compile in parallel.
template <typename T>
cudaError_t launch_spmm_typed(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                              const SpmmOptions& options, SpmmKernel kernel) {
  return dispatch_beta(a.shape.block_size, [&](auto beta) {
    constexpr int kBeta = decltype(beta)::value;
    constexpr bool kHalf = !std::is_same_v<T, float>;
    if (kernel == SpmmKernel::kSlab || !spmm_kernel_serves(kernel, kBeta, !kHalf)) {
      return cudaErrorInvalidValue;
    }
    if (kernel == SpmmKernel::kTensor || kernel == SpmmKernel::kTensorSplitN) {
      if constexpr (tensor_cores_serve(kBeta)) {
        return launch_spmm_tensor<T, kBeta>(a, dev, stream, options,
                                            kernel == SpmmKernel::kTensorSplitN);
      }
    }
    if (kernel == SpmmKernel::kNarrow) {
      if constexpr (narrow_n_supported(kBeta)) {
        return launch_spmm_narrow<T, kBeta>(a, dev, stream, options);
      }
    }
    using Cfg = typename SelectSpmm<kBeta>::type;
    return spmm_detail::launch_layout<T, Cfg>(a, dev, stream, options);
  });
}

}  // namespace jaxcsb::cuda
