// Tile configurations of the CUDA kernels: one type per kernel family, the constraints as
// static_asserts, and one place (the Select* templates at the end) that picks a configuration
// for a problem, with the reason next to each choice.
#pragma once

#include <algorithm>
#include <cstddef>

#include "cuda_kernels.h"

namespace jaxcsb::cuda {

// SpMM: a thread block computes one line (kBeta output rows of op(S)) times one tile of
// kTileN columns of n, or a part of that line when a cluster of blocks splits it.
template <int kBeta_,   // block size beta of the CSB matrix (the kernel is specialised per beta)
          int kWarps_,  // warps per thread block; warp w owns output rows [w * kRows, ...)
          int kRows_,   // output rows per warp, each accumulated in kVec registers per lane
          int kVec_>    // n columns per lane: the n-tile is 32 * kVec columns wide
struct SpmmConfig {
  static constexpr int kBeta = kBeta_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kRows = kRows_;
  static constexpr int kVec = kVec_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileN = 32 * kVec;
  // Nonzeros sorted by output row per pass, held 4 per thread in registers while sorting.
  static constexpr int kPerThread = 4;
  static constexpr int kChunk = kPerThread * kThreads;
  // Words of the per-output-row bitmap of input indices used to rank nonzeros while sorting.
  static constexpr int kMaskWords = kBeta / 32 > 0 ? kBeta / 32 : 1;

  static_assert(kBeta >= 16 && kBeta <= 256 && (kBeta & (kBeta - 1)) == 0,
                "beta must be a power of two in 16..256");
  static_assert(kWarps * kRows == kBeta, "the warps' rows must cover the block's rows exactly");
  static_assert(kVec == 1 || kVec == 2 || kVec == 4, "a lane reads 1, 2 or 4 n columns at once");
  static_assert(kThreads <= 1024, "at most 1024 threads per block");
  static_assert(kRows * kVec <= 64, "accumulators beyond 64 registers per thread would spill");
};

// SDDMM: a thread block owns a kRegion x kRegion square of S (whole CSB blocks) and walks n
// (or its share of n, when a cluster of blocks splits the walk) in tiles of kTileN, staging the
// region's rows of lhs and columns of rhs in shared memory as float32 rows of kTileN values. Its
// nonzeros are cut into units of kPer consecutive stored nonzeros of one block, one unit per thread
// per pass, each nonzero with its own float32 accumulator in a register.
template <int kRegion_, int kPer_ = 8>
struct SddmmConfig {
  static constexpr int kRegion = kRegion_;
  // Two threads per staged line: each moves 16 values of each operand per tile.
  static constexpr int kThreads = 2 * kRegion;
  // 128 registers per thread (the whole register file at 512 threads per multiprocessor).
  static constexpr int kMinBlocks = 512 / kThreads;
  // Nonzeros per unit: 8 share the loads of a row of L among more multiply-adds, 4 keep twice
  // the threads busy in a sparse region (the kernel's speed follows its busy threads).
  static constexpr int kPer = kPer_;
  // A staged row of 32 float32 values spans the 32 banks exactly, in 8 groups of 16 bytes;
  // the kernel's staggered walk over the groups relies on both numbers.
  static constexpr int kTileN = 32;
  static constexpr int kGroups = kTileN / 4;
  // CSB blocks in a region, at the smallest beta (16).
  static constexpr int kMaxBlocks = (kRegion / 16) * (kRegion / 16);
  static constexpr size_t kTileFloats = size_t{kRegion} * kTileN;
  // Two staged tiles, then per block its first and last nonzero and its units' prefix sum, then
  // the threads' partial sums that the blocks of a cluster add (kPer each).
  static constexpr size_t kPartOffset = 2 * kTileFloats * sizeof(float) + 3 * kMaxBlocks * 4;
  static constexpr size_t kSmemBytes = kPartOffset + size_t{kThreads} * kPer * sizeof(float);
  // A cluster splits a region's walk over n only if each of its blocks keeps this many tiles.
  static constexpr int kMinTilesPerBlock = 4;

  static_assert(kRegion == 64 || kRegion == 128 || kRegion == 256,
                "regions of 64, 128 or 256 rows and columns");
  static_assert(kPer == 4 || kPer == 8, "units of 4 or 8 nonzeros");
  static_assert(kGroups == 8 && (kRegion / 4) * kGroups == kThreads,
                "the staging gives every thread four groups, or one 4 x 4 piece, per operand");
};

// Narrow-n SpMM (cuda_spmm_narrow.h): warps that each own whole CSB blocks (or bands of their
// rows), at block sizes up to kNarrowMaxBeta, in tiles of n up to narrow_max_tile(beta) wide (a
// warp stages its block's beta x tile slice of D, and a transposed product keeps a beta x tile
// partial tile too: 18 KiB at beta 64 and tile 32).
// At most kNarrowMaxWarps warps and narrow_smem_budget bytes per thread block, so that two
// thread blocks fit on a multiprocessor.
constexpr int kNarrowMaxBeta = 128;
constexpr int kNarrowMaxTile = 32;
// A forward walk keeps a warp's beta x tile sums in registers, at most kNarrowMaxLaneSums per
// lane: tiles of 32 up to beta 64, of 16 at beta 128 (wider n runs in more tiles).
constexpr int kNarrowMaxLaneSums = 64;
constexpr int narrow_max_tile(int beta) {
  return std::min(kNarrowMaxLaneSums * 32 / beta, kNarrowMaxTile);
}
constexpr int kNarrowMaxWarps = 8;
inline size_t narrow_smem_budget(const DeviceInfo& dev) {
  return static_cast<size_t>(std::max(dev.smem_per_sm / 2 - dev.smem_reserved, 0));
}

// Warps per thread block of the narrow family's matrix-vector walk (n = 1, cuda_spmm_vector.h),
// which needs no shared memory beyond a column of partial sums per warp.
constexpr int kVectorMaxWarps = 16;

// Whether the narrow kernel serves block size beta (at any n: wider n runs in tiles).
constexpr bool narrow_n_supported(int beta) { return beta <= kNarrowMaxBeta; }

// Whether the heuristic picks the narrow kernel, from where it was faster than the wide one on
// an H100 (kernel_check bench and the gpu-targets benchmark, beta 64). Its cost per nonzero
// grows with n, while the wide kernel's per-block costs shrink per nonzero as blocks fill up, so
// the rule bounds n and n x density:
//   bfloat16 4096 x 4096 and 11008 x 4096, 80-90%: forward 3-10x faster for n = 1-16, 2.2x at
//     n = 32 (density 0.1) and 1.2-1.4x at n = 64 (density 0.1 and 0.2); transposed 1.9-6x
//     faster for n = 1-16, 1.3x faster at n = 32 and 1.6-2.4x slower at n = 64;
//   float32 1000 x 2048 (DLMC rn50 final_dense and uniform): forward 1.14-1.16x slower at
//     density 0.2 (n = 32 and 64: its 16 lines keep few warps busy), as fast at density 0.1 and
//     n = 64; transposed at n = 32 1.6x faster at density 0.05, 1.3x slower at 0.1 and
//     1.6-1.9x slower at 0.2.
// Forward: n <= 64 at density <= 0.11 (about 90% sparsity and sparser), else n x density <= 4.
// Transposed: n <= 16 at n x density <= 4, n <= 32 at n x density <= 2.
// From n = 8 on, the walk's warps each own whole blocks (or bands of their rows), so a product of
// fewer than kNarrowMinBlocks CSB blocks keeps too few of them busy, and in the feature-major
// layout the wide kernel takes it: float32 1000 x 2048 at beta 128 (128 blocks), densities 0.05
// and 0.1, n = 8-64, took 0.95-1.41x the wide kernel's time forward (0.030 against 0.022 ms at
// density 0.1, n = 16-32) and 1.0-1.41x transposed; on 256 blocks (4096 x 1024 and 1024 x 4096)
// 0.57-1.05x. The wide kernel's batch-leading walk is slower: there the narrow one took 0.82-1.16x
// its time on 128 blocks (1.14-1.22x on rn50's final dense layer at 95%, n = 32, in the wide one).
constexpr long long kNarrowMinBlocks = 192;
constexpr bool narrow_n_preferred(long long n, int beta, double density, bool transpose,
                                  bool batch_leading, long long blocks) {
  if (!narrow_n_supported(beta)) return false;
  if (!batch_leading && n >= 8 && blocks < kNarrowMinBlocks) return false;
  if (transpose) return n <= 16 ? n * density <= 4.0 : n <= 32 && n * density <= 2.0;
  return n <= 64 && (density <= 0.11 || n * density <= 4.0);
}

// Tensor-core SpMM (cuda_spmm_tensor.h): a warp per CSB block expanded into a dense tile, at
// block sizes up to kTensorMaxBeta; at most kTensorMaxWarps warps (12-18 KiB of shared memory
// each at beta 64 for 16-bit values, 27 KiB for float32) per thread block.
constexpr int kTensorMaxBeta = 64;
constexpr int kTensorMaxWarps = 4;

constexpr bool tensor_cores_serve(int beta) { return beta <= kTensorMaxBeta; }

// Whether the tensor cores take a product that they serve (tensor_cores_preferred, below): every
// one with n > 1, and for float32, whose tensor cores take three TF32 products per multiply-add
// at any density, every one that holds at least kTensorMinDensityF32 of its positions (the default
// block size is 64 or less from there up). At n = 1 a 16-column tile wastes 15/16 of the work, and
// the narrow family's vector walk reads the weights once at near copy speed (forward); 16-bit
// values still gain on the transposed walk there; float32 keeps the narrow walk (its tensor cores
// take 0.7-1.4x its time on 4096^2 and 11008 x 4096 at densities 0.1-0.3). Float32 on an H100
// (kernel_check bench, feature-major / batch-leading): 4096^2, beta 64, density 0.2, n = 16 and
// 64: 1.2-2.4x and 1.8-3.1x faster than the best CUDA-core kernel; 4096 x 1024, n = 4096: beta 64,
// density 0.2, 1.05-1.2x; beta 32, density 0.3, 1.0-1.5x; beta 16, density 0.5, 0.84-1.5x (the
// feature-major layout loses up to 1.19x there, the batch-leading one gains). Below 1/8 the
// CUDA-core kernels follow the nonzeros down in the feature-major layout: beta 64 at density 0.1, n
// = 4096, 0.61 against 0.72-0.82 ms; the DLMC ResNet-50 64 x 576 layer at 90% and 95% (beta 64, n =
// 100352) 1.3-1.8x faster than the kernel whose warps split a line's blocks, 0.92-1.32x the time of
// split n. The batch-leading layout has a lower line (kTensorMinDensityF32BatchLeading).
constexpr double kTensorMinDensityF32 = 0.125;

// Whether the tensor cores' warps split n, sharing each expanded block (split_n_kernel), rather
// than the line's blocks: where n gives every warp of a thread block its tile several times over
// and the lines are short enough that one thread block walks a whole line without waiting at
// its barriers (three a block, where the warps that split a line run free of each other). On an
// H100 (kernel_check bench, both layouts; beta 64 unless said): float32 0.62-0.80x the time at
// n = 512 to 100352 on lines of 1 to 64 blocks (4096 x 1024 at density 0.2, n = 4096: 0.61-0.66
// against 0.78-0.91 ms; 256 x 2304 transposed, n = 6272: 0.62-0.69x), 1.17-1.23x at n = 128;
// beta 16 on lines of 128 blocks 1.34-1.4x in the feature-major layout. bfloat16 on lines of
// 4-16 blocks 0.58-0.79x, on lines of 32 (2048 x 512 transposed, n = 2048) 1.08-1.36x, of 64
// 1.2-1.4x.
constexpr long long kSplitNMinN = 512;
constexpr bool tensor_split_n_preferred(long long n, long long line_length, bool half_precision) {
  return n >= kSplitNMinN && line_length <= (half_precision ? 16 : 64);
}

// Float32 in the batch-leading layout takes the tensor cores, on the split-n kernel where it
// serves, from a lower density than kTensorMinDensityF32 where the slab kernels do not take it
// (slab_preferred): the wide kernel's walk reads D with a scalar shared load per multiply-add
// (1.2-1.4x the feature-major walk's time). On an H100 (kernel_check bench, beta 64, split-n over
// the wide kernel's time, A @ B / A.T @ B): density 0.1 0.74-0.90 (4096 x 1024, n = 4096; 4096^2, n
// = 512; 1024^2, n = 16384) and 0.75-0.94 on the DLMC layers at 90% (the rn50 64 x 576 layer, n =
// 100352: 0.142 / 0.161 against 0.168 / 0.214 ms); 0.06 0.93-1.005; 0.05 0.84-1.07 (DLMC at 95%,
// 8192 x 2048); 0.04 0.91-1.10; 0.02 1.12-1.16.
constexpr double kTensorMinDensityF32BatchLeading = 0.045;

// line_length: the positions of a line of the product's direction.
constexpr bool tensor_cores_preferred(long long n, int beta, double density, bool transpose,
                                      bool half_precision, bool batch_leading,
                                      long long line_length) {
  if (!tensor_cores_serve(beta)) return false;
  if (half_precision) return n > 1 || transpose;
  if (n > 1 && density >= kTensorMinDensityF32) return true;
  return batch_leading && density >= kTensorMinDensityF32BatchLeading &&
         tensor_split_n_preferred(n, line_length, false);
}

// Thread blocks a multiprocessor that split_n_kernel's registers must allow: the three that its
// shared memory holds (72 KiB each for float32 at block size 64), which cap a thread at 168
// registers, but two for float32 at block size 64 where a thread block walks more than
// kSplitNLongLine blocks of a line. On an H100 (kernel_check bench, float32 on wgmma, whole lines
// of 64 blocks, three thread blocks against two): feature-major 1.09-1.11x the time (1024 x
// 4096 forward at density 0.3, n = 4096: 0.669 against 0.613 ms; 4096^2 at 0.2, n = 1024),
// batch-leading 1.04-1.14x but at 4096^2, n = 4096, 0.86x. Halves of such lines in clusters
// (split_n_smallest_cluster) beat both.
constexpr long long kSplitNLongLine = 48;
constexpr bool split_n_has_two_block_kernel(bool float32, int beta) {
  return float32 && beta == 64;
}
// positions: the most that one thread block of the line's cluster walks (rank_positions).
constexpr int split_n_min_blocks(bool float32, int beta, long long positions) {
  return split_n_has_two_block_kernel(float32, beta) && positions > kSplitNLongLine ? 2 : 3;
}

// Shared memory of an H100's multiprocessor, which its thread blocks share, and the part of it
// that the runtime reserves for each thread block.
constexpr size_t kSmemPerSm = 228 * 1024, kSmemReservedPerBlock = 1024;
// Thread blocks a multiprocessor that split n's kernel for lines of one block (two regions of
// shared memory, `bytes` a thread block) is built for: as many as the shared memory holds, at
// most the three that the registers allow. Float32 at block size 64 takes 112 KiB, so two.
constexpr int split_n_one_block_min_blocks(size_t bytes) {
  return static_cast<int>(std::min<size_t>(3, kSmemPerSm / (bytes + kSmemReservedPerBlock)));
}

// The smallest cluster that float32 split n at block size 64 takes where the caller asks for
// none: lines of more than kSplitNLongLine blocks in clusters of two or more, whose thread blocks
// each walk half the line or less on the kernel of three thread blocks a multiprocessor
// (split_n_min_blocks), the cluster adding their partial tiles. On an H100 (kernel_check bench,
// float32 on wgmma, lines of 64 blocks; clusters of two against whole lines on the kernel of
// two, ms): feature-major 1024 x 4096 forward at density 0.3, n = 4096, 0.535 against 0.613,
// 4096^2 at 0.3 2.06 against 2.34-2.45, at 0.2 and n = 1024 0.51 against 0.55-0.57;
// batch-leading 1024 x 4096 forward 0.623 against 0.690, 4096 x 1024 transposed 0.651 against
// 0.678, 4096^2 at 0.3 2.23-2.29 against 2.49-2.55, at 0.2 and n = 1024 0.56-0.59 against
// 0.61-0.62. Lines of 16 blocks lose in halves (1.05-1.3x), so they stay whole.
constexpr int split_n_smallest_cluster(bool float32, int beta, long long line_length) {
  return split_n_has_two_block_kernel(float32, beta) && line_length > kSplitNLongLine ? 2 : 1;
}

// SDDMM on tensor cores (cuda_sddmm_tensor.h): a thread block per CSB block (or 2 x 2 of them)
// computing their dense product over all of n, whatever the sparsity. 16-bit values at the
// tensor-core block sizes: 2-4.5x faster than the CUDA-core kernel from n = 16 to 4096. Float32
// in three TF32 products at block sizes up to 128, from kTensorMinDensityF32: the CUDA-core
// kernel's time follows the nonzeros, the tensor cores' does not, and they cross at densities
// of 0.1-0.12 (4096 x 1024, n = 4096, feature-major: 0.52, 0.94 and 1.01 ms at densities 0.1,
// 0.15 and 0.2 on CUDA cores, 0.69 ms on tensor cores). A forced cluster size asks for the
// CUDA-core kernel, whose clusters split n.
constexpr int tensor_sddmm_max_beta(bool half_precision) {
  return half_precision ? kTensorMaxBeta : 128;
}
constexpr bool tensor_sddmm_preferred(int beta, bool half_precision, double density, int cluster) {
  return cluster <= 0 && beta <= tensor_sddmm_max_beta(half_precision) &&
         (half_precision || density >= kTensorMinDensityF32);
}

// Float32 SpMM from a slab of the dense operand (cuda_spmm_slab.cu): the nonzeros sorted by
// (part of the input axis, output row) once into a workspace, then thread blocks that each keep
// kSlabPartRows rows of the input axis x 32 columns of n in shared memory (128 KiB) and walk
// every output row against them, one part after another, in both layouts, at block sizes up to
// kSlabMaxBeta. Tiles of 16 and 8 columns over a whole input axis of 2048 or 4096
// ran 1.0-1.6x slower than the wide kernel (bank conflicts of 16 slab rows a read, and the
// sorted nonzeros read again for every tile): a longer axis goes in parts instead.
constexpr int kSlabMaxBeta = 128;
constexpr long long kSlabPartRows = 1024;
constexpr bool slab_serves(int beta, bool float32) { return float32 && beta <= kSlabMaxBeta; }

// Whether the slab kernels take a float32 product: where lines hold so few nonzeros that the
// wide kernel's staging of the dense operand for every block of every line, and its sort of
// every block for every tile of n, outweigh their multiply-adds; not on input axes shorter than
// kSlabMinInRows (a thread block stages a slab of few rows for each tile of n, and the staging,
// not overlapped with the walk, holds a product that is bound by its output's bytes) or outputs
// of fewer than kSlabMinOutRows rows (idle groups of lanes). On an H100 (kernel_check bench,
// beta 128, ms, slab / wide), uniform random: 4096 x 1024, n = 4096, at density 0.02 0.105 /
// 0.260, 0.10 0.400 / 0.529, transposed 0.126 / 0.259 and 0.427 / 0.554; 11008 x 4096, n = 1024,
// at 0.10 1.114 / 1.532; 512 x 512, n = 1024, at 0.02 0.0135 / 0.0152, 0.10 0.0193 / 0.0239; 256
// x 1024, n = 4096, at 0.05 0.0265 / 0.0297, transposed (256 input rows) 0.0280 / 0.0284; 256 x
// 256, n = 8192, at 0.05 0.0201 / 0.0156. The DLMC layers at 90-98% (N as in the benchmark of the
// targets): 0.71-1.01x the wide kernel's time forward and 0.75-1.08x transposed, but 1.24-1.34x
// on an input axis of 64 or 128 rows (rn50 64 x 576 and 128 x 512 transposed, N = 25088 and
// 100352) and on 64 output rows. (These are times of the walk in groups of eight lanes; four,
// where each group walks two rows or more, run 1.05-1.11x faster: 4096 x 1024 at 0.10 0.364 /
// 0.529.) On 256 input rows, with four lanes, feature-major / batch-leading: the rn50 256 x 2304
// layer transposed (N = 6272) at 90% 0.115 / 0.124 against 0.133 / 0.164 ms, at 95% 0.078 /
// 0.088 against 0.095 / 0.124; uniform 256 x 4096 transposed and 4096 x 256 (n = 4096) 0.70-0.84x
// and 0.60-0.79x the rule's pick before; 256 x 1024 transposed at 0.05 1.10x feature-major
// (0.0315 against 0.0286 ms) and 0.87x batch-leading. On 128 rows 0.99-1.46x.
//
// The batch-leading layout takes them before the tensor cores' line of
// kTensorMinDensityF32BatchLeading (preferred_spmm_kernel): beta 64, n = 4096, 4096 x 1024 at
// density 0.1 0.416 / 0.420 ms against 0.591 / 0.648 ms on split n (A @ B / A.T @ B), at 0.05
// 0.259 / 0.258 against 0.586 / 0.636; the rn50 1024 x 512 layer at 90% (N = 6272) 0.099 / 0.111
// against 0.122 / 0.121; the Transformer's 1024 x 4096 layer at 90% (N = 2048) 0.069 / 0.083
// against 0.087 / 0.098.
constexpr double kSlabMaxDensity = 0.12;
constexpr long long kSlabMinN = 1024;
constexpr long long kSlabMinInRows = 256;
constexpr long long kSlabMinOutRows = 128;
constexpr bool slab_preferred(long long n, int beta, double density, long long out_rows,
                              long long in_rows) {
  return slab_serves(beta, true) && n >= kSlabMinN && density <= kSlabMaxDensity &&
         in_rows >= kSlabMinInRows && out_rows >= kSlabMinOutRows;
}

// Whether kernel family `kernel` can run a product of block size beta and value type, in either
// layout (kAuto and the wide family run every one).
constexpr bool spmm_kernel_serves(SpmmKernel kernel, int beta, bool float32) {
  switch (kernel) {
    case SpmmKernel::kSlab:
      return slab_serves(beta, float32);
    case SpmmKernel::kNarrow:
      return narrow_n_supported(beta);
    case SpmmKernel::kTensor:
    case SpmmKernel::kTensorSplitN:
      return tensor_cores_serve(beta);
    default:
      return true;
  }
}

// The kernel family that serves a product by default (line_length: the positions of a line of
// the product's direction; out_rows: its output rows; blocks: the CSB blocks of the matrix).
constexpr SpmmKernel preferred_spmm_kernel(long long n, int beta, double density, bool transpose,
                                           bool half_precision, bool batch_leading,
                                           long long line_length, long long out_rows,
                                           long long blocks) {
  // The slab first: of the other families' rules only the tensor cores' batch-leading line
  // takes float32 products at the densities of the slab, and the slab runs them faster.
  if (!half_precision && slab_preferred(n, beta, density, out_rows, line_length * beta)) {
    return SpmmKernel::kSlab;
  }
  if (tensor_cores_preferred(n, beta, density, transpose, half_precision, batch_leading,
                             line_length)) {
    return tensor_split_n_preferred(n, line_length, half_precision) ? SpmmKernel::kTensorSplitN
                                                                    : SpmmKernel::kTensor;
  }
  if (narrow_n_preferred(n, beta, density, transpose, batch_leading, blocks)) {
    return SpmmKernel::kNarrow;
  }
  return SpmmKernel::kWide;
}

// The family that a product asks for: the one `options` force, else the heuristic's pick.
inline SpmmKernel spmm_kernel_for(const SpmmArgs& a, const SpmmOptions& options) {
  if (options.kernel != SpmmKernel::kAuto) return options.kernel;
  return preferred_spmm_kernel(a.n, a.shape.block_size, density(a.shape, a.nnz), a.shape.transpose,
                               a.dtype != DType::kF32, a.batch_leading, a.shape.line_length(),
                               a.shape.out_dim(), a.shape.num_blocks());
}

// The family that runs it with the workspace that `a` holds: the heuristic's slab pick needs
// one, and without it the wide kernel runs.
inline SpmmKernel spmm_kernel_to_run(const SpmmArgs& a, const SpmmOptions& options) {
  const SpmmKernel kernel = spmm_kernel_for(a, options);
  const bool fallback =
      kernel == SpmmKernel::kSlab && a.workspace == nullptr && options.kernel == SpmmKernel::kAuto;
  return fallback ? SpmmKernel::kWide : kernel;
}

// The configurations in use. Both kernel families are specialised per beta because the
// accumulators are register arrays whose sizes must be compile-time constants.
//
// SpMM: a warp owns 8 output rows (16 for beta 256) and 4 n columns per lane (a 16-byte load of
// float32), so a thread keeps 32 accumulators; the staged tile of the dense operand is
// beta x 128 values (32 KiB of float32 at beta 64) and beta 128 / 256 use 16 warps so that a
// block still covers all rows of its line. Beta 256 halves the tile width to keep the staged
// tile at 64 KiB (two blocks per multiprocessor). Half-precision types use the same shapes:
// their loads are 8 bytes wide and the tile takes half the memory.
template <int kBeta>
struct SelectSpmm;
template <>
struct SelectSpmm<16> {
  using type = SpmmConfig<16, 2, 8, 4>;
};
template <>
struct SelectSpmm<32> {
  using type = SpmmConfig<32, 4, 8, 4>;
};
template <>
struct SelectSpmm<64> {
  using type = SpmmConfig<64, 8, 8, 4>;
};
template <>
struct SelectSpmm<128> {
  using type = SpmmConfig<128, 16, 8, 4>;
};
template <>
struct SelectSpmm<256> {
  using type = SpmmConfig<256, 16, 16, 2>;
};

}  // namespace jaxcsb::cuda
