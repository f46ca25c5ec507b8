// CUDA SpMM on tensor cores, any n: 16-bit values (bfloat16, float16) in mma.m16n8k16, float32
// in three TF32 products of mma.m16n8k8 each (3xTF32, about float32 accuracy).
//
// The CUDA-core kernels (cuda_spmm_kernel.h, cuda_spmm_narrow.h) spend a shared-memory read of
// a dense row and several instructions on every nonzero; 16-bit tensor cores multiply a whole
// 64 x 64 block by a 64 x 32 slice of D in 64 instructions. So here each warp owns whole CSB
// blocks and, per block,
//   1. copies the block's beta x tile slice of D into its shared memory (cp.async, as stored),
//   2. expands the block's nonzeros into a dense beta x beta tile of T in shared memory, with
//      the roles of the local row and column swapped for the transposed product (so both
//      directions cost the same), and
//   3. multiplies the two on tensor cores (float32 accumulators in registers).
// The slice is copied while the tile is expanded, so its latency hides behind the expansion.
// At 90% sparsity the tensor cores do 10x the useful multiply-adds, at ~15x the CUDA-core rate,
// and the per-nonzero work is one load and one store. Float32 pays three products for each, so
// its tensor cores win only where the blocks are fuller (tensor_cores_preferred).
//
// Structural zeros must contribute nothing, even where D holds Inf or NaN (a dense product
// would give 0 * Inf = NaN there). Where every value is finite a structural zero adds an exact
// 0, so a warp whose sums are all finite keeps them; a warp with any non-finite sum recomputes
// its part of the tile over the stored nonzeros alone (a slow path that finite data never
// takes).
//
// The warps of a thread block take the line's positions in turn and add their partial tiles in
// warp order, and the blocks of a cluster in rank order (as the narrow family): every sum has a
// fixed order, with no atomics and no workspace. Where n is long and lines short, the warps
// split n instead (split_n_kernel): the thread block expands each block once for all of its
// warps, each multiplies it by its own slice of D, and no warp adds another's tile. There, float32
// blocks of 64 are expanded already split into their TF32 parts, and the four warps multiply
// them together as a warpgroup on wgmma (multiply_split_block; mma.sync where the kernels are
// built without sm_90a).
// Repeated positions (allowed, summed) are added in float32 in storage order and rounded once
// to T in the tile.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_mma.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace tensor_detail {

// Shared-memory layout of one warp for value type T, block size kBeta and a tile of kTile
// columns of n. Row strides are padded so that the rows read by one fragment load fall into
// distinct banks: by 16 bytes for the 8 rows of an ldmatrix phase (16-bit values); for float32,
// whose fragments are read value by value (lane 4 g + t reads row g, column t of a piece, or row
// t, column g), by 4 values where rows advance with g and 8 where they advance with t.
template <typename T, int kBeta_, int kTile_, bool kBatchLeading>
struct TensorShape {
  using Value = T;
  static constexpr int kBeta = kBeta_;
  static constexpr int kTile = kTile_;
  static constexpr bool kTf32 = std::is_same_v<T, float>;
  static constexpr int kStrips = kBeta / 16;  // 16-row strips of output
  static constexpr int kNTiles = kTile / 8;   // 8-column pieces of an mma's output
  static constexpr int kPadG = kTf32 ? 4 : 8, kPadT = 8;
  // The expanded block, [out][in] in T.
  static constexpr int kAStride = kBeta + kPadG;
  static constexpr size_t kABytes = size_t{kBeta} * kAStride * sizeof(T);
  // The slice of D as stored: [in][n] for row-major D, [n][in] for the batch-leading layout.
  static constexpr int kBStride = kBatchLeading ? kBeta + kPadG : kTile + kPadT;
  static constexpr int kBRows = kBatchLeading ? kTile : kBeta;
  // The warp's float32 partial tile at the end, [out][n], kPartWidth columns at a time (a lane
  // per column in the exact path); it reuses the expanded block's space.
  static constexpr int kPartWidth = std::min(kTile, 32);
  static constexpr int kParts = kTile / kPartWidth;
  static constexpr int kPartStride = kPartWidth + 4;
  static constexpr size_t kTileBytes = std::max<size_t>(kABytes, size_t{kBeta} * kPartStride * 4);
  static constexpr size_t kSliceBytes = size_t{kBRows} * kBStride * sizeof(T);
  // The expanded block (or the partial tile), then the slice of D.
  static constexpr size_t kWarpBytes = kTileBytes + kSliceBytes;
  // Thread blocks per multiprocessor that the registers must allow (4 warps each): the most
  // that the shared memory holds, but 2 for 64 columns, whose accumulators alone take 128
  // registers a thread (3 would spill), and 2 for float32 at beta 64 (27 KiB a warp).
  static constexpr int kMinBlocks = kTile == 64 || (kTf32 && kBeta == 64) ? 2 : kTile == 32 ? 3 : 4;

  static_assert(kBeta == 16 || kBeta == 32 || kBeta == 64, "block sizes 16, 32 and 64");
  static_assert(kTile == 16 || kTile == 32 || kTile == 64, "tiles of 16, 32 or 64 columns");
  static_assert(kTileBytes % 16 == 0 && kWarpBytes % 16 == 0, "16-byte aligned regions");
};

// Starts copying the block's slice of D (input indices in_base.., columns n0..) into `slice`,
// as stored, zero outside the operand (copy_tile; `vec`: aligned rows of whole 16-byte pieces).
template <typename T, class S, bool kBatchLeading>
__device__ __forceinline__ void copy_slice(const LineParams& p, T* slice, int64_t in_base,
                                           int64_t n0, bool vec) {
  // Along a stored row: n for row-major D, the input index for the batch-leading layout.
  constexpr int kRowLen = kBatchLeading ? S::kBeta : S::kTile;
  const int64_t row0 = kBatchLeading ? n0 : in_base, rows = kBatchLeading ? p.n : p.in_dim;
  const int64_t col0 = kBatchLeading ? in_base : n0, cols = kBatchLeading ? p.in_dim : p.n;
  copy_tile<T, S::kBRows, kRowLen, S::kBStride, 32>(slice, static_cast<const T*>(p.dense), rows,
                                                    cols, row0, col0, vec, threadIdx.x % 32);
}

// A value's bits: the expansion stores them without converting.
template <typename T>
using ValueBits = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;

// Eight consecutive positions of the local and value arrays, as 16-byte loads bring them: the
// local indices two to a word (the lower one first), the values' bits two to a word for 16-bit
// types and one for float32.
template <typename T>
struct Piece {
  static constexpr int kValueWords = 2 * sizeof(T);
  uint32_t local[4];
  uint32_t values[kValueWords];
};

// Entry i (0..7) of four words of 16-bit entries.
__device__ __forceinline__ unsigned entry(const uint32_t (&words)[4], int i) {
  return i % 2 ? words[i / 2] >> 16 : words[i / 2] & 0xffffu;
}

// The bits of value i (0..7) of a piece.
template <typename T>
__device__ __forceinline__ ValueBits<T> value_bits(const Piece<T>& piece, int i) {
  if constexpr (sizeof(T) == 4) {
    return piece.values[i];
  } else {
    return static_cast<ValueBits<T>>(entry(piece.values, i));
  }
}

// The bits of a value of type T.
template <typename T>
__device__ __forceinline__ ValueBits<T> bits_of(T v) {
  ValueBits<T> bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

// Where the expansion stores a block's values in shared memory. RowMajorTile: as T, [out][in]
// with row stride S::kAStride, as the multiplies of 16-bit values and of mma.sync read it.
template <typename T, class S>
struct RowMajorTile {
  static constexpr size_t kBytes = S::kABytes;
  __device__ static void store(T* a, int out, int in, ValueBits<T> bits) {
    reinterpret_cast<ValueBits<T>*>(a)[out * S::kAStride + in] = bits;
  }
  __device__ static void publish() {}
};

// SplitTile: float32 values split into their TF32 parts (split_tf32) as wgmma reads its B
// operand, K-major without swizzle: the big parts, then the small ones, each [out][in] in core
// matrices of 8 rows of out by 4 values of in (16 bytes, stored contiguously), kLeadBytes apart
// along in and kStrideBytes apart along out. A zeroed tile holds zero parts.
template <int kBeta>
struct SplitTile {
  static constexpr int kValues = kBeta * kBeta;  // in each part
  static constexpr size_t kBytes = 2 * size_t{kValues} * sizeof(float);
  static constexpr unsigned kLeadBytes = 128, kStrideBytes = kBeta / 4 * kLeadBytes;
  // The index of value (out, in) in a part.
  __device__ static int offset(int out, int in) {
    return out / 8 * (kStrideBytes / 4) + in / 4 * (kLeadBytes / 4) + out % 8 * 4 + in % 4;
  }
  __device__ static void store(float* a, int out, int in, uint32_t bits) {
    uint32_t* parts = reinterpret_cast<uint32_t*>(a) + offset(out, in);
    split_tf32(__uint_as_float(bits), parts[0], parts[kValues]);
  }
  // Makes the thread's stores visible to wgmma, which reads the tile after a barrier.
  __device__ static void publish() { fence_async_shared(); }
};

// Whether a local index lies inside a block of kBeta x kBeta: both of its bytes below kBeta.
template <int kBeta>
__device__ __forceinline__ bool in_block(unsigned local) {
  constexpr unsigned kOutside = 0xffffu & ~((kBeta - 1) * 0x0101u);
  return (local & kOutside) == 0;
}

// The four words of a 16-byte load, in order.
__device__ __forceinline__ void unpack(uint4 w, uint32_t* words) {
  words[0] = w.x;
  words[1] = w.y;
  words[2] = w.z;
  words[3] = w.w;
}

// Loads the piece at position c: 16-byte loads of each array when `vec` (both arrays 16-byte
// aligned) and the piece lies inside the arrays, else entry by entry (zero past the arrays).
template <typename T>
__device__ __forceinline__ Piece<T> load_piece(const uint16_t* local, const T* values, int c,
                                               int64_t nnz, bool vec) {
  Piece<T> piece;
  if (vec && int64_t{c} + 8 <= nnz) {
    unpack(__ldg(reinterpret_cast<const uint4*>(local + c)), piece.local);
    const uint4* v = reinterpret_cast<const uint4*>(values + c);
#pragma unroll
    for (int j = 0; j < Piece<T>::kValueWords / 4; ++j) unpack(__ldg(v + j), piece.values + 4 * j);
  } else {
    const ValueBits<T>* raw_values = reinterpret_cast<const ValueBits<T>*>(values);
    constexpr int kPerWord = 4 / sizeof(ValueBits<T>);  // values to a word
#pragma unroll
    for (int j = 0; j < 4; ++j) piece.local[j] = 0;
#pragma unroll
    for (int j = 0; j < Piece<T>::kValueWords; ++j) piece.values[j] = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t e = int64_t{c} + i;
      if (e < nnz) {
        piece.local[i / 2] |= uint32_t{__ldg(local + e)} << (16 * (i % 2));
        piece.values[i / kPerWord] |= uint32_t{__ldg(raw_values + e)}
                                      << (8 * sizeof(ValueBits<T>) * (i % kPerWord));
      }
    }
  }
  return piece;
}

// The threads that expand a block together: a warp, for itself, or the whole thread block, for
// warps that share the block (split_n_kernel). sync_any is a barrier that also tells whether
// any thread's flag is set.
struct WarpGroup {
  __device__ static int rank() { return threadIdx.x % 32; }
  __device__ static int size() { return 32; }
  __device__ static void sync() { __syncwarp(); }
  __device__ static bool sync_any(bool x) {
    __syncwarp();  // the vote alone orders no memory
    return __any_sync(0xffffffffu, x);
  }
};
struct BlockGroup {
  __device__ static int rank() { return threadIdx.x; }
  __device__ static int size() { return blockDim.x; }
  __device__ static void sync() { __syncthreads(); }
  __device__ static bool sync_any(bool x) { return __syncthreads_or(x); }
};

// Zeroes the expanded block `a` (kBytes), the threads of group G in turn.
template <typename T, class S, class G, size_t kBytes = S::kABytes>
__device__ __forceinline__ void zero_block(T* a) {
  constexpr int kPieces = kBytes / 16;
  uint4* a4 = reinterpret_cast<uint4*>(a);
  for (int i = G::rank(); i < kPieces; i += G::size()) a4[i] = make_uint4(0, 0, 0, 0);
}

// Stores the block's nonzeros (positions [e0, e1) of local/values) into the zeroed tile `a`
// (stored as Tile says), by the threads of group G; returns whether this thread met repeated
// positions, which it left to sum_repeats. Thread r of the group takes the pieces at positions
// first + 8 (size u + r) (first: e0 rounded down to a multiple of 8, so that the pieces are
// 16-byte loads) and stores the entries of each that lie in [e0, e1). Positions are 32-bit:
// block_ptr is, so every position fits.
template <typename T, class S, bool kTranspose, class G, class Tile = RowMajorTile<T, S>>
__device__ __forceinline__ bool scatter_block(const uint16_t* local, const T* values, int e0,
                                              int e1, int64_t nnz, bool vec, T* a) {
  constexpr int kPasses = 2;  // 16 positions per thread per round of loads
  const int rank = G::rank(), size = G::size();
  bool repeats = false;
  for (int first = e0 / 8 * 8; first < e1; first += 8 * size * kPasses) {
    Piece<T> pieces[kPasses];
    // The entry after each piece, for the repeat test of its last entry where that lies in
    // [e0, e1).
    uint16_t beyond[kPasses];
#pragma unroll
    for (int u = 0; u < kPasses; ++u) {
      const int c = first + 8 * (size * u + rank);
      if (c < e1) pieces[u] = load_piece(local, values, c, nnz, vec);
      beyond[u] = c + 8 < e1 ? __ldg(local + c + 8) : 0;
    }
#pragma unroll
    for (int u = 0; u < kPasses; ++u) {
      const int c = first + 8 * (size * u + rank);
      if (c >= e1) break;
      // Entry i of the piece is a nonzero of the block when lo <= i < hi.
      const int lo = e0 - c, hi = e1 - c;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const unsigned l = entry(pieces[u].local, i);
        const unsigned next = i < 7 ? entry(pieces[u].local, i + 1) : beyond[u];
        const bool inside = i >= lo && i < hi && in_block<S::kBeta>(l);
        // The last of a run of repeated positions stores; the runs are summed by sum_repeats.
        const bool repeated = inside && i + 1 < hi && next == l;
        repeats |= repeated;
        if (inside && !repeated) {
          Tile::store(a, local_out(l, kTranspose), local_in(l, kTranspose),
                      value_bits(pieces[u], i));
        }
      }
    }
  }
  Tile::publish();
  return repeats;
}

// Stores each run of repeated positions of [e0, e1) into a as its sum, added in float32 in
// storage order (one thread).
template <typename T, class S, bool kTranspose, class Tile>
__device__ __forceinline__ void sum_repeats(const uint16_t* local, const T* values, int e0, int e1,
                                            T* a) {
  float sum = 0.0f;
  for (int k = e0; k < e1; ++k) {
    const uint16_t l = __ldg(local + k);
    sum += to_float(values[k]);
    if (k + 1 < e1 && __ldg(local + k + 1) == l) continue;
    if (in_block<S::kBeta>(l)) {
      Tile::store(a, local_out(l, kTranspose), local_in(l, kTranspose),
                  bits_of(from_float<T>(sum)));
    }
    sum = 0.0f;
  }
  Tile::publish();
}

// The end of scatter_block: a barrier of group G, after which the tile is complete (with the
// repeated positions summed where any thread met them).
template <typename T, class S, bool kTranspose, class G, class Tile = RowMajorTile<T, S>>
__device__ __forceinline__ void finish_block(bool repeats, const uint16_t* local, const T* values,
                                             int e0, int e1, T* a) {
  if (G::sync_any(repeats)) {
    if (G::rank() == 0) sum_repeats<T, S, kTranspose, Tile>(local, values, e0, e1, a);
    G::sync();
  }
}

// Expands the block's nonzeros (positions [e0, e1) of local/values) into the dense tile
// a[out][in], by the warp alone: zero, scatter, finish.
template <typename T, class S, bool kTranspose>
__device__ __forceinline__ void expand_block(const uint16_t* local, const T* values, int e0, int e1,
                                             int64_t nnz, bool vec, T* a) {
  zero_block<T, S, WarpGroup>(a);
  __syncwarp();
  const bool repeats =
      scatter_block<T, S, kTranspose, WarpGroup>(local, values, e0, e1, nnz, vec, a);
  finish_block<T, S, kTranspose, WarpGroup>(repeats, local, values, e0, e1, a);
}

// Asks L1 for the nonzeros [e0, e1) (local indices and values), which group G expands next.
template <typename T, class G = WarpGroup>
__device__ __forceinline__ void prefetch_nonzeros(const uint16_t* local, const T* values,
                                                  int64_t e0, int64_t e1) {
  for (int64_t e = e0 / 64 * 64 + 64 * G::rank(); e < e1; e += 64 * G::size()) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(local + e));
    asm volatile("prefetch.global.L1 [%0];" ::"l"(values + e));
  }
}

// acc += a (beta x beta, the expanded block) * slice (beta x tile), 16-bit values.
template <typename T, class S, bool kBatchLeading>
__device__ __forceinline__ void multiply_block(const T* a, const T* slice,
                                               float (&acc)[S::kStrips][S::kNTiles][4]) {
#pragma unroll
  for (int ks = 0; ks < S::kStrips; ++ks) {
    uint32_t b[S::kNTiles][2];
#pragma unroll
    for (int np = 0; np < S::kNTiles / 2; ++np) {
      // The slice is [in][n] for row-major D, [n][in] for the batch-leading layout.
      load_b_pair<!kBatchLeading>(slice, S::kBStride, ks * 16, np * 16, b[2 * np], b[2 * np + 1]);
    }
#pragma unroll
    for (int s = 0; s < S::kStrips; ++s) {
      uint32_t frag[4];
      load_a</*kStoredMK=*/true>(a, S::kAStride, s * 16, ks * 16, frag);
#pragma unroll
      for (int nt = 0; nt < S::kNTiles; ++nt) mma_16x8x16<T>(acc[s][nt], frag, b[nt]);
    }
  }
}

// acc += a (beta x beta, the expanded block) * slice (beta x tile), float32 values in three TF32
// products (split_tf32, mma_16x8x8_3xtf32). Each value is split once: a warp reads its tile
// and its slice once per block.
template <class S, bool kBatchLeading>
__device__ __forceinline__ void multiply_block_3xtf32(const float* a, const float* slice,
                                                      float (&acc)[S::kStrips][S::kNTiles][4]) {
  // The slice is [in][n] for row-major D, [n][in] for the batch-leading layout.
  auto slice_value = [&](int k, int n) {
    return kBatchLeading ? slice[n * S::kBStride + k] : slice[k * S::kBStride + n];
  };
  auto block_value = [&](int m, int k) { return a[m * S::kAStride + k]; };
#pragma unroll
  for (int k0 = 0; k0 < S::kBeta; k0 += 8) {
    uint32_t b_big[S::kNTiles][2], b_small[S::kNTiles][2];
#pragma unroll
    for (int nt = 0; nt < S::kNTiles; ++nt) {
      split_b_tf32(slice_value, k0, nt * 8, b_big[nt], b_small[nt]);
    }
#pragma unroll
    for (int s = 0; s < S::kStrips; ++s) {
      uint32_t a_big[4], a_small[4];
      split_a_tf32(block_value, s * 16, k0, a_big, a_small);
#pragma unroll
      for (int nt = 0; nt < S::kNTiles; ++nt) {
        mma_16x8x8_3xtf32(acc[s][nt], a_big, a_small, b_big[nt], b_small[nt]);
      }
    }
  }
}

// acc += a * slice, by the product of value type T.
template <typename T, class S, bool kBatchLeading>
__device__ __forceinline__ void multiply_tile(const T* a, const T* slice,
                                              float (&acc)[S::kStrips][S::kNTiles][4]) {
  if constexpr (S::kTf32) {
    multiply_block_3xtf32<S, kBatchLeading>(a, slice, acc);
  } else {
    multiply_block<T, S, kBatchLeading>(a, slice, acc);
  }
}

// acc += the block (a SplitTile at `tile`) times the warp's slice of D, float32 in three TF32
// products, computed transposed: the slice's transpose (n x in) times the block's (in x out). So
// the slice, split in registers, is the A operand, and the block, split once for all the warps
// as it is expanded, the B operand, which wgmma reads from shared memory only K-major for TF32:
// the block's [out][in] is, D's [in][n] is not. The thread block's four warps are wgmma's
// warpgroup; its M-tile j is columns 16 j..16 j + 15 of each warp's slice. The accumulators hold
// the tile transposed (sum_position). A warp past n (`active` false) multiplies zeros with the
// others. Built without wgmma, the same products run on mma.sync.
template <class S, bool kBatchLeading>
__device__ __forceinline__ void multiply_split_block(const float* tile, const float* slice,
                                                     bool active,
                                                     float (&acc)[S::kStrips][S::kNTiles][4]) {
  using Tile = SplitTile<S::kBeta>;
  static_assert(S::kBeta == 64 && S::kTile == 32 && kTensorMaxWarps == 4,
                "a warpgroup's 64 x 64 products over 32 columns of each warp");
  constexpr int kMTiles = S::kTile / 16;
  // The slice is [in][n] for row-major D, [n][in] for the batch-leading layout.
  // A warp past n masks its slice's bits (a branch there would make wgmma wait for each product).
  const uint32_t mask = active ? ~0u : 0u;
  auto slice_value = [&](int n, int k) {
    const float v = kBatchLeading ? slice[n * S::kBStride + k] : slice[k * S::kBStride + n];
    return __uint_as_float(__float_as_uint(v) & mask);
  };
  // The A fragments of every M-tile for the step of k at k0, split.
  auto split_slice = [&](int k0, uint32_t (&big)[kMTiles][4], uint32_t (&small)[kMTiles][4]) {
#pragma unroll
    for (int j = 0; j < kMTiles; ++j) split_a_tf32(slice_value, 16 * j, k0, big[j], small[j]);
  };
#if defined(JAXCSB_WGMMA)
  const unsigned big = smem_addr(tile), small = big + Tile::kBytes / 2;
  auto m_tile_sums = [&](int j) -> float (&)[32] {
    return reinterpret_cast<float (&)[32]>(acc[2 * j]);  // M-tile j's 32 accumulators a thread
  };
#pragma unroll
  for (int j = 0; j < kMTiles; ++j) wgmma_fence_operand(m_tile_sums(j));
#pragma unroll
  for (int k0 = 0; k0 < S::kBeta; k0 += 8) {
    uint32_t a_big[kMTiles][4], a_small[kMTiles][4];
    split_slice(k0, a_big, a_small);
    const unsigned step = k0 / 4 * Tile::kLeadBytes;
    const uint64_t b_big = wgmma_descriptor(big + step, Tile::kLeadBytes, Tile::kStrideBytes);
    const uint64_t b_small = wgmma_descriptor(small + step, Tile::kLeadBytes, Tile::kStrideBytes);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kMTiles; ++j) {
      float (&sums)[32] = m_tile_sums(j);
      wgmma_64x64x8_tf32(sums, a_big[j], b_small);  // the small terms first, as mma_16x8x8_3xtf32
      wgmma_64x64x8_tf32(sums, a_small[j], b_big);
      wgmma_64x64x8_tf32(sums, a_big[j], b_big);
    }
    wgmma_commit();
    // The fragments of one step in flight while the next are split: two steps' registers.
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
#pragma unroll
  for (int j = 0; j < kMTiles; ++j) wgmma_fence_operand(m_tile_sums(j));
#else
  const uint32_t* parts = reinterpret_cast<const uint32_t*>(tile);
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int k0 = 0; k0 < S::kBeta; k0 += 8) {
    uint32_t a_big[kMTiles][4], a_small[kMTiles][4];
    split_slice(k0, a_big, a_small);
#pragma unroll
    for (int q = 0; q < S::kBeta / 8; ++q) {  // 8 output rows of the block at a time
      uint32_t b_big[2], b_small[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int at = Tile::offset(8 * q + g, k0 + t + 4 * h);
        b_big[h] = parts[at];
        b_small[h] = parts[at + Tile::kValues];
      }
#pragma unroll
      for (int j = 0; j < kMTiles; ++j) {
        mma_16x8x8_3xtf32(acc[2 * j + q / 4][q % 4], a_big[j], a_small[j], b_big, b_small);
      }
    }
  }
#endif
}

// Where sum i (0..3) of accumulator [s][nt] of a warp lies in its tile: output row `out` of the
// line's block, column n of the warp's kTile. As mma.m16n8 leaves them: strip s of 16 rows,
// piece nt of 8 columns; with kTransposed, as multiply_split_block does: M-tile s / 2 of 16
// columns, pieces (s % 2) * 4 + nt of 8 rows. The sums i and i + 1 (i even) are neighbours
// along n, or with kTransposed along out.
struct SumPosition {
  int out, n;
};
template <bool kTransposed>
__device__ __forceinline__ SumPosition sum_position(int s, int nt, int i) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  if constexpr (kTransposed) {
    return {8 * (s % 2 * 4 + nt) + 2 * t + i % 2, 16 * (s / 2) + g + 8 * (i / 2)};
  } else {
    return {16 * s + g + 8 * (i / 2), 8 * nt + 2 * t + i % 2};
  }
}

// Stores the warp's sums (sum_position) into part[out][n] (row stride `stride`).
template <class S, bool kTransposed>
__device__ __forceinline__ void store_warp_sums(const float (&acc)[S::kStrips][S::kNTiles][4],
                                                float* part, int stride) {
#pragma unroll
  for (int s = 0; s < S::kStrips; ++s) {
#pragma unroll
    for (int nt = 0; nt < S::kNTiles; ++nt) {
      if constexpr (kTransposed) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const SumPosition at = sum_position<true>(s, nt, i);
          part[at.out * stride + at.n] = acc[s][nt][i];
        }
      } else {
        store_accumulator(part + s * 16 * stride + nt * 8, stride, acc[s][nt]);
      }
    }
  }
}

// Whether every sum of the warp's tile is finite (the same answer in every lane).
template <class S>
__device__ __forceinline__ bool warp_sums_finite(const float (&acc)[S::kStrips][S::kNTiles][4]) {
  bool finite = true;
#pragma unroll
  for (int s = 0; s < S::kStrips; ++s) {
#pragma unroll
    for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) finite &= isfinite(acc[s][nt][i]);
    }
  }
  return __all_sync(0xffffffffu, finite);
}

// Whether 16-byte loads may read D's rows (copy_slice) and the nonzeros (load_piece).
struct VectorLoads {
  bool dense, nonzeros;
};
template <typename T, bool kBatchLeading>
__device__ __forceinline__ VectorLoads vector_loads(const LineParams& p) {
  const int64_t row_len = kBatchLeading ? p.in_dim : p.n;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return {aligned(p.dense) && row_len % (16 / sizeof(T)) == 0,
          aligned(p.local) && aligned(p.values)};
}

// The slow path for non-finite sums: part[out][n] += the block's products over its stored
// nonzeros only, a lane per column of n, in storage order.
template <typename T, class S, bool kTranspose, bool kBatchLeading>
__device__ __forceinline__ void add_block_exact(const uint16_t* local, const T* values, int count,
                                                const T* slice, int col0, float* part) {
  const int lane = threadIdx.x % 32, col = col0 + lane;
  if (lane >= S::kPartWidth) return;
  for (int i = 0; i < count; ++i) {
    const uint16_t l = __ldg(local + i);
    const int o = local_out(l, kTranspose), in = local_in(l, kTranspose);
    if (o >= S::kBeta || in >= S::kBeta) continue;
    const T d = kBatchLeading ? slice[col * S::kBStride + in] : slice[in * S::kBStride + col];
    part[o * S::kPartStride + lane] += to_float(values[i]) * to_float(d);
  }
}

template <typename T, class S, bool kTranspose, bool kBatchLeading>
__global__ void __launch_bounds__(32 * kTensorMaxWarps, S::kMinBlocks)
    tensor_kernel(const LineParams p) {
  constexpr int kBeta = S::kBeta;
  extern __shared__ __align__(16) unsigned char smem_b[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  unsigned char* mine = smem_b + warp * S::kWarpBytes;
  T* a = reinterpret_cast<T*>(mine);
  float* part = reinterpret_cast<float*>(mine);  // after the last block's multiply
  T* slice = reinterpret_cast<T*>(mine + S::kTileBytes);

  const auto [line, pos_begin, pos_end] = line_part(p);
  if (line >= p.num_lines) return;  // uniform over the cluster
  const T* values = static_cast<const T*>(p.values);
  const auto [vec, vec_nonzeros] = vector_loads<T, kBatchLeading>(p);

  if (blockIdx.y == 0) {
    prefetch_blocks(p, values, line, kTranspose, /*parts=*/1, pos_begin + warp, pos_end, warps);
  }

  for (int64_t t = blockIdx.y; t < p.num_tiles; t += gridDim.y) {
    const int64_t n0 = t * S::kTile;
    float acc[S::kStrips][S::kNTiles][4] = {};
    // The warp's blocks in turn. The block's slice of D is copied while its nonzeros are
    // expanded, and the next block's nonzeros are asked into L1 meanwhile.
    int64_t e0 = 0, e1 = 0;
    if (pos_begin + warp < pos_end) {
      block_range(p.block_ptr, line_block(p, line, pos_begin + warp, kTranspose), p.nnz, &e0, &e1);
    }
    for (int64_t pos = pos_begin + warp; pos < pos_end; pos += warps) {
      int64_t f0 = 0, f1 = 0;
      if (pos + warps < pos_end) {
        block_range(p.block_ptr, line_block(p, line, pos + warps, kTranspose), p.nnz, &f0, &f1);
        prefetch_nonzeros(p.local, values, f0, f1);
      }
      if (e0 < e1) {
        copy_slice<T, S, kBatchLeading>(p, slice, pos * kBeta, n0, vec);
        // block_ptr is int32, so the positions fit.
        expand_block<T, S, kTranspose>(p.local, values, static_cast<int>(e0), static_cast<int>(e1),
                                       p.nnz, vec_nonzeros, a);
        cp_async_wait_all();
        __syncwarp();
        multiply_tile<T, S, kBatchLeading>(a, slice, acc);
        __syncwarp();  // the tile and the slice are rewritten by the next block
      }
      e0 = f0;
      e1 = f1;
    }

    const bool all_finite = warp_sums_finite<S>(acc);
    // The tile's columns kPartWidth at a time through the warp's partial tile.
#pragma unroll
    for (int h = 0; h < S::kParts; ++h) {
      const int col0 = h * S::kPartWidth;
      if (all_finite) {
        constexpr int kPieces = S::kPartWidth / 8;
#pragma unroll
        for (int s = 0; s < S::kStrips; ++s) {
#pragma unroll
          for (int j = 0; j < kPieces; ++j) {
            store_accumulator(part + s * 16 * S::kPartStride + j * 8, S::kPartStride,
                              acc[s][h * kPieces + j]);
          }
        }
      } else {
        for (int i = lane; i < kBeta * S::kPartStride; i += 32) part[i] = 0.0f;
        for (int64_t pos = pos_begin + warp; pos < pos_end; pos += warps) {
          int64_t e0, e1;
          block_range(p.block_ptr, line_block(p, line, pos, kTranspose), p.nnz, &e0, &e1);
          if (e0 >= e1) continue;
          __syncwarp();
          copy_slice<T, S, kBatchLeading>(p, slice, pos * kBeta, n0, vec);
          cp_async_wait_all();
          __syncwarp();
          add_block_exact<T, S, kTranspose, kBatchLeading>(
              p.local + e0, values + e0, static_cast<int>(e1 - e0), slice, col0, part);
        }
      }

      float* sum = reinterpret_cast<float*>(smem_b);  // warp 0's partial tile
      add_warp_tiles(sum, S::kWarpBytes / 4, kBeta, S::kPartWidth, S::kPartStride);
      write_line_tile<T, kBeta, S::kPartWidth, S::kPartStride, kBatchLeading>(p, sum, line,
                                                                              n0 + col0);
    }
  }
}

// Warps that split n instead of the line's blocks (split_n_kernel): the thread block's
// kTensorMaxWarps warps share each expanded block, each warp with its own kTile columns of n, so
// a block is expanded once for all of them and no warp adds another's partial tile. Shared
// memory: the expanded block, then kBuffers regions, each holding the warps' slices of D or
// (reusing their space once a tile's last multiply is done) the thread block's float32 partial
// tile, kWidth columns wide. The block outlives the tile, so a thread block on a line of one CSB
// block expands it once for all the tiles of n that it walks; with two regions, it copies each
// tile's slices while it multiplies and writes the tile before (split_n_one_block_tiles).
template <class S, int kBuffers_ = 1>
struct SplitNShape {
  static constexpr int kWarps = kTensorMaxWarps;
  static constexpr int kBuffers = kBuffers_;
  static constexpr int kWidth = kWarps * S::kTile;
  static constexpr int kPartStride = kWidth + 4;
  // Float32 blocks of 64 are expanded split into TF32 parts, for multiply_split_block; the others
  // as T, for multiply_tile.
  static constexpr bool kSplitTile = S::kTf32 && S::kBeta == 64;
  using Tile =
      std::conditional_t<kSplitTile, SplitTile<S::kBeta>, RowMajorTile<typename S::Value, S>>;
  static constexpr size_t kTileBytes = Tile::kBytes;
  static constexpr size_t kSlicesBytes = size_t{kWarps} * S::kSliceBytes;
  static constexpr size_t kPartBytes = size_t{S::kBeta} * kPartStride * 4;
  static constexpr size_t kRegionBytes = std::max(kPartBytes, kSlicesBytes);
  static constexpr size_t kBytes = kTileBytes + kBuffers * kRegionBytes;

  static_assert(kBuffers == 1 || kBuffers == 2, "one region, or two that alternate");
  static_assert(S::kTile == S::kPartWidth, "a lane per column of the tile in the exact path");
  static_assert(kTileBytes % 16 == 0 && kRegionBytes % 16 == 0 && S::kSliceBytes % 16 == 0,
                "16-byte aligned regions");
};

// The slow path for non-finite sums of split_n_kernel: the warp's columns [n0, n0 + kTile) of
// part[out][n] (row stride `stride`) over the stored nonzeros of the thread block's positions
// alone, a lane per column, D read from global memory.
template <typename T, class S, bool kTranspose, bool kBatchLeading>
__device__ __forceinline__ void split_n_exact(const LineParams& p, int64_t line, int64_t pos_begin,
                                              int64_t pos_end, int64_t n0, float* part,
                                              int stride) {
  const int lane = threadIdx.x % 32;
  const int64_t col = n0 + lane;
  for (int r = 0; r < S::kBeta; ++r) part[r * stride + lane] = 0.0f;
  if (col >= p.n) return;
  const T* values = static_cast<const T*>(p.values);
  const T* dense = static_cast<const T*>(p.dense);
  for (int64_t pos = pos_begin; pos < pos_end; ++pos) {
    int64_t e0, e1;
    block_range(p.block_ptr, line_block(p, line, pos, kTranspose), p.nnz, &e0, &e1);
    for (int64_t e = e0; e < e1; ++e) {
      const uint16_t l = __ldg(p.local + e);
      const int o = local_out(l, kTranspose);
      const int64_t in = pos * S::kBeta + local_in(l, kTranspose);
      if (o >= S::kBeta || in >= p.in_dim) continue;
      const T d = kBatchLeading ? dense[col * p.in_dim + in] : dense[in * p.n + col];
      part[o * stride + lane] += to_float(values[e]) * to_float(d);
    }
  }
}

// Writes the warp's sums (its output rows of the line, columns n0..n0 + kTile) through its own
// slice space, free once the tile's last multiply is done: the warp stages them as T in the
// slice's layout (the output tile has the slice's shape, [out][n] or [n][out]), then writes
// rows of 16-byte pieces, so that every store fills whole sectors whatever T is. No other warp
// takes part, so no barrier of the thread block.
template <typename T, class S, bool kBatchLeading, bool kTransposed>
__device__ __forceinline__ void write_warp_tile(const LineParams& p,
                                                const float (&acc)[S::kStrips][S::kNTiles][4],
                                                T* tile, int64_t line, int64_t n0) {
  static_assert(S::kBStride * sizeof(T) % 16 == 0, "staged rows start on 16-byte boundaries");
  const int lane = threadIdx.x % 32;
  // The staged tile is [out][n], or [n][out] in the batch-leading layout.
  const auto staged = [](int out, int n) {
    return kBatchLeading ? n * S::kBStride + out : out * S::kBStride + n;
  };
#pragma unroll
  for (int s = 0; s < S::kStrips; ++s) {
#pragma unroll
    for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const SumPosition at = sum_position<kTransposed>(s, nt, 2 * h);
        const float v[2] = {acc[s][nt][2 * h], acc[s][nt][2 * h + 1]};
        if constexpr (kBatchLeading == kTransposed) {  // the pair lies along a staged row
          store_vec<T, 2>(tile + staged(at.out, at.n), v);
        } else {
#pragma unroll
          for (int b = 0; b < 2; ++b) {
            tile[staged(at.out + (kTransposed ? b : 0), at.n + (kTransposed ? 0 : b))] =
                from_float<T>(v[b]);
          }
        }
      }
    }
  }
  __syncwarp();
  constexpr int kRowLen = kBatchLeading ? S::kBeta : S::kTile, kPer = 16 / sizeof(T);
  const int64_t row0 = kBatchLeading ? n0 : line * S::kBeta;
  const int64_t col0 = kBatchLeading ? line * S::kBeta : n0;
  const int64_t rows = kBatchLeading ? p.n : p.out_dim, cols = kBatchLeading ? p.out_dim : p.n;
  T* out = static_cast<T*>(p.out);
  if (cols % kPer == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    // col0 is a multiple of kPer too, so a piece lies wholly inside the output or outside.
    for (int i = lane; i < S::kBRows * kRowLen / kPer; i += 32) {
      const int r = i / (kRowLen / kPer), c = i % (kRowLen / kPer) * kPer;
      if (row0 + r < rows && col0 + c < cols) {
        *reinterpret_cast<uint4*>(out + (row0 + r) * cols + col0 + c) =
            *reinterpret_cast<const uint4*>(tile + r * S::kBStride + c);
      }
    }
  } else {
    for (int i = lane; i < S::kBRows * kRowLen; i += 32) {
      const int r = i / kRowLen, c = i % kRowLen;
      if (row0 + r < rows && col0 + c < cols) {
        out[(row0 + r) * cols + col0 + c] = tile[r * S::kBStride + c];
      }
    }
  }
  __syncwarp();  // the next tile's slice overwrites the staged sums
}

// acc += the expanded block times the warp's slice of D (a warp past n, `active` false,
// multiplies nothing, but takes part in the split tile's warpgroup products).
template <typename T, class N, bool kBatchLeading, class S>
__device__ __forceinline__ void multiply_split_n(const T* a, const T* slice, bool active,
                                                 float (&acc)[S::kStrips][S::kNTiles][4]) {
  if constexpr (N::kSplitTile) {
    multiply_split_block<S, kBatchLeading>(a, slice, active, acc);
  } else if (active) {
    multiply_tile<T, S, kBatchLeading>(a, slice, acc);
  }
}

// The end of split_n_kernel's tile of n at group0, the thread block's positions [pos_begin,
// pos_end) of the line multiplied: alone on its line, with finite sums everywhere, each warp
// writes its own sums through its `slice` and goes on at once; else the thread block adds them
// (or, where any is not finite, their exact sums) in the partial tile at `part`, which reuses
// the space of the tile's slices.
template <typename T, class S, class N, bool kTranspose, bool kBatchLeading>
__device__ __forceinline__ void finish_split_n_tile(const LineParams& p,
                                                    const float (&acc)[S::kStrips][S::kNTiles][4],
                                                    T* slice, float* part, int64_t line,
                                                    int64_t pos_begin, int64_t pos_end,
                                                    int64_t group0) {
  const int warp = threadIdx.x / 32;
  const int64_t n0 = group0 + warp * S::kTile;
  const bool finite = warp_sums_finite<S>(acc);
  const bool all_finite = !__syncthreads_or(!finite);
  if (p.cluster == 1 && all_finite) {
    write_warp_tile<T, S, kBatchLeading, N::kSplitTile>(p, acc, slice, line, n0);
    return;
  }
  float* mine = part + warp * S::kTile;
  if (finite) {
    store_warp_sums<S, N::kSplitTile>(acc, mine, N::kPartStride);
  } else {
    split_n_exact<T, S, kTranspose, kBatchLeading>(p, line, pos_begin, pos_end, n0, mine,
                                                   N::kPartStride);
  }
  write_line_tile<T, S::kBeta, N::kWidth, N::kPartStride, kBatchLeading>(p, part, line, group0);
}

// Expands the line's block at position `pos` (nonzeros [e0, e1)) into `a`, by the thread block.
template <typename T, class S, class N, bool kTranspose>
__device__ __forceinline__ void expand_split_n_block(const LineParams& p, int e0, int e1,
                                                     bool vec_nonzeros, T* a) {
  using Tile = typename N::Tile;
  const T* values = static_cast<const T*>(p.values);
  zero_block<T, S, BlockGroup, N::kTileBytes>(a);
  __syncthreads();
  const bool repeats = scatter_block<T, S, kTranspose, BlockGroup, Tile>(p.local, values, e0, e1,
                                                                         p.nnz, vec_nonzeros, a);
  finish_block<T, S, kTranspose, BlockGroup, Tile>(repeats, p.local, values, e0, e1, a);
}

// split_n_kernel's tiles of n over the thread block's positions [pos_begin, pos_end) of the
// line, one region of shared memory: each position's slices are copied while its block is
// expanded. A block that is the thread block's only position stays expanded from its first tile
// on.
template <typename T, class S, class N, bool kTranspose, bool kBatchLeading>
__device__ __forceinline__ void split_n_line_tiles(const LineParams& p, unsigned char* smem,
                                                   int64_t line, int64_t pos_begin, int64_t pos_end,
                                                   VectorLoads vec) {
  const int warp = threadIdx.x / 32;
  T* a = reinterpret_cast<T*>(smem);
  T* slice = reinterpret_cast<T*>(smem + N::kTileBytes + warp * S::kSliceBytes);
  float* part = reinterpret_cast<float*>(smem + N::kTileBytes);
  const T* values = static_cast<const T*>(p.values);
  const bool one_block = pos_end - pos_begin == 1;
  for (int64_t t = blockIdx.y; t < p.num_tiles; t += gridDim.y) {
    const bool expand = !one_block || t == blockIdx.y;
    const int64_t group0 = t * N::kWidth, n0 = group0 + warp * S::kTile;
    const bool active = n0 < p.n;  // warps past n expand with the others but multiply nothing
    float acc[S::kStrips][S::kNTiles][4] = {};
    int e0 = 0, e1 = 0;  // 32-bit positions, as block_ptr's
    if (pos_begin < pos_end) {
      block_range(p.block_ptr, line_block(p, line, pos_begin, kTranspose), p.nnz, &e0, &e1);
    }
    for (int pos = static_cast<int>(pos_begin); pos < pos_end; ++pos) {
      int f0 = 0, f1 = 0;
      if (pos + 1 < pos_end) {
        block_range(p.block_ptr, line_block(p, line, pos + 1, kTranspose), p.nnz, &f0, &f1);
        prefetch_nonzeros<T, BlockGroup>(p.local, values, f0, f1);
      }
      if (e0 < e1) {  // uniform over the thread block
        if (active) {
          copy_slice<T, S, kBatchLeading>(p, slice, int64_t{pos} * S::kBeta, n0, vec.dense);
        }
        if (expand) expand_split_n_block<T, S, N, kTranspose>(p, e0, e1, vec.nonzeros, a);
        cp_async_wait_all();
        __syncwarp();
        multiply_split_n<T, N, kBatchLeading, S>(a, slice, active, acc);
        // The next position rewrites the block and the slices; after the last one, the barrier
        // of finish_split_n_tile frees them.
        if (pos + 1 < pos_end) __syncthreads();
      }
      e0 = f0;
      e1 = f1;
    }
    finish_split_n_tile<T, S, N, kTranspose, kBatchLeading>(p, acc, slice, part, line, pos_begin,
                                                            pos_end, group0);
  }
}

// split_n_kernel's tiles of n on a line of one block (at `pos`, the thread block's only
// position), two regions of shared memory: the block is expanded once, and each tile's slices
// are copied into one region while the tile before is multiplied and written from the other.
// Where the block is all the work there is to hide the copies behind, a thread block with one
// region waits on each tile's copy and then on its multiply, in turn: rn50's 64 x 576 layer at
// density 0.2, transposed, N = 100352, float32, took 150 us with DRAM at 47% of its peak, and
// takes 129 us at 54% with two regions, though they leave two thread blocks a multiprocessor
// instead of three.
template <typename T, class S, class N, bool kTranspose, bool kBatchLeading>
__device__ __forceinline__ void split_n_one_block_tiles(const LineParams& p, unsigned char* smem,
                                                        int64_t line, int64_t pos, int64_t pos_end,
                                                        VectorLoads vec) {
  static_assert(N::kBuffers == 2, "a region for the copies, one for the multiply");
  const int warp = threadIdx.x / 32;
  T* a = reinterpret_cast<T*>(smem);
  unsigned char* regions = smem + N::kTileBytes;
  auto slice = [&](int b) {
    return reinterpret_cast<T*>(regions + b * N::kRegionBytes + warp * S::kSliceBytes);
  };
  // Every call commits a group of copies, empty past n, so that waiting for all but the newest
  // group waits for the tile about to be multiplied.
  auto copy = [&](int64_t t, int b) {
    const int64_t n0 = t * N::kWidth + warp * S::kTile;
    if (t < p.num_tiles && n0 < p.n) {
      copy_slice<T, S, kBatchLeading>(p, slice(b), pos * S::kBeta, n0, vec.dense);
    }
    cp_async_commit();
  };
  copy(blockIdx.y, 0);
  int e0 = 0, e1 = 0;  // none where the cluster gives this thread block no position
  if (pos < pos_end) {
    block_range(p.block_ptr, line_block(p, line, pos, kTranspose), p.nnz, &e0, &e1);
  }
  if (e0 < e1) expand_split_n_block<T, S, N, kTranspose>(p, e0, e1, vec.nonzeros, a);
  int b = 0;
  for (int64_t t = blockIdx.y; t < p.num_tiles; t += gridDim.y, b ^= 1) {
    copy(t + gridDim.y, b ^ 1);
    cp_async_wait<1>();
    __syncwarp();
    const int64_t group0 = t * N::kWidth;
    float acc[S::kStrips][S::kNTiles][4] = {};
    if (e0 < e1) {
      multiply_split_n<T, N, kBatchLeading, S>(a, slice(b), group0 + warp * S::kTile < p.n, acc);
    }
    finish_split_n_tile<T, S, N, kTranspose, kBatchLeading>(
        p, acc, slice(b), reinterpret_cast<float*>(regions + b * N::kRegionBytes), line, pos,
        pos_end, group0);
  }
}

template <typename T, class S, bool kTranspose, bool kBatchLeading, int kMinBlocks, int kBuffers>
__global__ void __launch_bounds__(32 * kTensorMaxWarps, kMinBlocks)
    split_n_kernel(const LineParams p) {
  using N = SplitNShape<S, kBuffers>;
  extern __shared__ __align__(16) unsigned char smem_b[];
  const auto [line, pos_begin, pos_end] = line_part(p);
  if (line >= p.num_lines) return;  // uniform over the cluster
  const VectorLoads vec = vector_loads<T, kBatchLeading>(p);
  if (blockIdx.y == 0) {
    const int warp = threadIdx.x / 32;
    prefetch_blocks(p, static_cast<const T*>(p.values), line, kTranspose, /*parts=*/1,
                    pos_begin + warp, pos_end, N::kWarps);
  }
  if constexpr (kBuffers == 2) {
    split_n_one_block_tiles<T, S, N, kTranspose, kBatchLeading>(p, smem_b, line, pos_begin, pos_end,
                                                                vec);
  } else {
    split_n_line_tiles<T, S, N, kTranspose, kBatchLeading>(p, smem_b, line, pos_begin, pos_end,
                                                           vec);
  }
}

// The launch shape of the kernel of shape S. The largest carveout: shared memory bounds the warps
// in flight (S::kMinBlocks). Clusters are sized to keep every thread block in one wave as
// launched in clusters: bfloat16 4096^2 at 90%, n = 16, takes 512 thread blocks in clusters of 8,
// of which 496 fit at once (21.8 us), and in clusters of 4 one wave (19.0 us).
template <class S>
constexpr WarpLaunch family() {
  return {/*tile=*/S::kTile,
          /*units_per_block=*/1,
          /*units_per_warp=*/2,
          /*max_warps=*/kTensorMaxWarps,
          /*warp_smem=*/S::kWarpBytes,
          /*max_carveout=*/true,
          /*slots=*/SlotCount::kClustered};
}

// The launch shape of split_n_kernel of shape N (a SplitNShape): every thread block has all its
// warps, and a tile of n as wide as they are together.
template <class N>
constexpr WarpLaunch split_n_family() {
  return {/*tile=*/N::kWidth,
          /*units_per_block=*/1,
          /*units_per_warp=*/1,
          /*max_warps=*/N::kWarps,
          /*warp_smem=*/N::kBytes / N::kWarps,
          /*max_carveout=*/true,
          /*slots=*/SlotCount::kClustered,
          /*all_warps=*/true,
          /*walk_one_block_lines=*/true};
}

template <typename T, int kBeta, bool kTranspose, bool kBatchLeading>
cudaError_t launch_split_n(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                           const SpmmOptions& options) {
  using S = TensorShape<T, kBeta, 32, kBatchLeading>;
  constexpr bool kFloat32 = std::is_same_v<T, float>;
  LineParams p{};
  set_line_params(a, &p);
  const auto run = [&](auto min_blocks, auto buffers, WarpLaunch family) {
    constexpr int kMinBlocks = decltype(min_blocks)::value, kBuffers = decltype(buffers)::value;
    return launch_warp_lines<split_n_kernel<T, S, kTranspose, kBatchLeading, kMinBlocks, kBuffers>>(
        p, family, dev, stream, options);
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Three = std::integral_constant<int, 3>;
  // Lines of one block, each thread block alone on its line: two regions of shared memory.
  if (p.line_length == 1 && options.cluster <= 1) {
    using N = SplitNShape<S, 2>;
    using MinBlocks = std::integral_constant<int, split_n_one_block_min_blocks(N::kBytes)>;
    return run(MinBlocks{}, Two{}, split_n_family<N>());
  }
  WarpLaunch family = split_n_family<SplitNShape<S>>();
  family.smallest_cluster = split_n_smallest_cluster(kFloat32, kBeta, p.line_length);
  // The kernel for two thread blocks a multiprocessor is built only where the rule can ask for it.
  if constexpr (split_n_has_two_block_kernel(kFloat32, kBeta)) {
    // The most positions that a thread block walks: a larger cluster of the launch's own choice
    // gives it fewer.
    const int cluster = smallest_line_cluster(options.cluster, dev, family.smallest_cluster);
    const int64_t positions = rank_positions(p.line_length, cluster);
    if (split_n_min_blocks(kFloat32, kBeta, positions) == 2) return run(Two{}, One{}, family);
  }
  return run(Three{}, One{}, family);
}

template <typename T, int kBeta, int kTile, bool kTranspose, bool kBatchLeading>
cudaError_t launch(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                   const SpmmOptions& options) {
  using S = TensorShape<T, kBeta, kTile, kBatchLeading>;
  LineParams p{};
  set_line_params(a, &p);
  return launch_warp_lines<tensor_kernel<T, S, kTranspose, kBatchLeading>>(p, family<S>(), dev,
                                                                           stream, options);
}

// Waves of thread blocks that the kTile-column kernel takes without clusters (a thread block per
// line and tile); INT64_MAX where it cannot run.
template <typename T, int kBeta, int kTile, bool kTranspose, bool kBatchLeading>
int64_t waves(const SpmmArgs& a, const DeviceInfo& dev) {
  using S = TensorShape<T, kBeta, kTile, kBatchLeading>;
  return family_waves<tensor_kernel<T, S, kTranspose, kBatchLeading>>(
      family<S>(), a.shape.num_lines() * ceil_div(a.n, int64_t{kTile}), dev);
}

template <typename T, int kBeta, bool kTranspose, bool kBatchLeading>
cudaError_t launch_tile(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                        const SpmmOptions& options) {
  if (a.n <= 16) return launch<T, kBeta, 16, kTranspose, kBatchLeading>(a, dev, stream, options);
  // A 64-column tile expands each block once for twice the columns, in about 1.5x the time of a
  // 32-column one, but its 128 accumulator registers a thread hold two thread blocks per
  // multiprocessor instead of three. So it pays only where it takes fewer waves: bfloat16 4096^2
  // at 90%, n = 256 (one wave against two) 0.71-0.77x the time, n = 1024 0.86-0.94x; at as many
  // waves 1.1-1.3x (n = 64, 192, 320, 384). Float32 keeps 32 columns: at 64 its accumulators
  // and split fragments would not fit in the registers.
  if constexpr (sizeof(T) == 2) {
    if (waves<T, kBeta, 64, kTranspose, kBatchLeading>(a, dev) <
        waves<T, kBeta, 32, kTranspose, kBatchLeading>(a, dev)) {
      return launch<T, kBeta, 64, kTranspose, kBatchLeading>(a, dev, stream, options);
    }
  }
  return launch<T, kBeta, 32, kTranspose, kBatchLeading>(a, dev, stream, options);
}

}  // namespace tensor_detail

// The tensor-core SpMM for value type T and block size kBeta (tensor_cores_serve), with warps
// that split the line's blocks or, with split_n, n (tensor_split_n_preferred).
template <typename T, int kBeta>
cudaError_t launch_spmm_tensor(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                               const SpmmOptions& options, bool split_n) {
  using namespace tensor_detail;
  return dispatch_layout(a.shape.transpose, a.batch_leading, [&](auto tr, auto bl) {
    constexpr bool kTranspose = decltype(tr)::value, kBatchLeading = decltype(bl)::value;
    if (split_n) {
      return launch_split_n<T, kBeta, kTranspose, kBatchLeading>(a, dev, stream, options);
    }
    return launch_tile<T, kBeta, kTranspose, kBatchLeading>(a, dev, stream, options);
  });
}

}  // namespace jaxcsb::cuda
