// CPU SpMM: out = op(S) * D for S in CSB, both directions from the one stored copy.
//
// A work item is one line (a block-row of op(S)) times one tile of the n columns. The line's
// output rows accumulate in a float32 buffer of block_size x tile_width. For each nonempty
// block of the line the kernel
//   1. points at the block's slice of D as float32 rows of the tile width (float32 row-major D
//      in place; other types and the batch-leading layout are converted/transposed into a
//      staging buffer once per block, not once per nonzero),
//   2. groups the block's nonzeros by output row (the stored order already does this for the
//      forward direction; the transposed direction sorts them stably by local column, O(nnz)
//      against O(nnz * width) arithmetic), and
//   3. for each output row keeps a 64-wide slice of it in registers while all of the row's
//      nonzeros add their scaled dense rows, so the accumulator is loaded and stored once per
//      row instead of once per nonzero.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_types.h"

namespace jaxcsb::cpu {
namespace {

// Columns kept in registers per output row: 8 AVX2 (4 AVX-512) registers, enough independent
// accumulators to hide the fused multiply-add latency.
constexpr int64_t kChunk = 64;

// Columns per work item. Wider tiles amortise the per-block work (staging, looping over
// segments) over more arithmetic; on one AVX-512 core, 2048 x 512 at 90% sparsity with
// n = 256 ran at 18 GFLOP/s with 64 columns, 26 with 128 and 28 with 256. The accumulator
// then takes block_size KiB (L2). A narrower n gets a tile of its own width (rounded up to 8
// floats): the tile width is the row stride of the accumulator and of the staged slab, which
// holds in_dim rows, so a 256-wide stride for n = 8 would stage 32 times the data.
// When the operand is staged (converted or transposed), the slab of in_dim rows should also
// stay within 1 MiB of L2: a 2048-row slab 256 wide (2 MiB) made x @ A 1.8x slower than x @ A.T.
int64_t tile_width(const SpmmProblem& p) {
  int64_t width = 256;
  if (p.batch_leading || p.type != ValueType::kF32) {
    const int64_t fit = (int64_t{1} << 18) / std::max<int64_t>(1, p.shape.in_dim());
    width = std::clamp<int64_t>(fit / 64 * 64, 64, 256);
  }
  return std::min<int64_t>(width, std::max<int64_t>(8, (p.n + 7) / 8 * 8));
}

int64_t num_tiles(const SpmmProblem& p) {
  int64_t w = tile_width(p);
  return (p.n + w - 1) / w;
}

int64_t line_nnz(const CsbShape& s, const int32_t* block_ptr, int64_t line) {
  if (!s.transpose) {
    return int64_t{block_ptr[(line + 1) * s.block_cols()]} - block_ptr[line * s.block_cols()];
  }
  int64_t total = 0;
  for (int64_t p = 0; p < s.line_length(); ++p) {
    int64_t b = s.block_at(line, p);
    total += int64_t{block_ptr[b + 1]} - block_ptr[b];
  }
  return total;
}

// One output row's nonzeros of a block: input-row offsets into the tile and values, stored
// contiguously from `begin` to `end` in the block's grouped arrays.
struct RowSegment {
  int32_t out;
  int32_t begin;
  int32_t end;
};

// The nonzeros of one block grouped by output row, as float32 values and tile row offsets.
struct GroupedBlock {
  std::vector<RowSegment> segments;
  std::vector<int64_t> offsets;  // of each nonzero's input row in the slab
  std::vector<float> values;

  // `base` is the offset of the block's first input row in the slab; `scratch` is sorting
  // space shared by the blocks of a slice.
  template <typename T>
  void build(const SpmmProblem& p, const uint16_t* local, const T* vals, int64_t e0, int64_t e1,
             int64_t base, int64_t stride, std::vector<int32_t>& scratch) {
    const int64_t nnz = e1 - e0, beta = p.shape.block_size;
    const bool transpose = p.shape.transpose;
    offsets.resize(nnz);
    values.resize(nnz);
    segments.clear();
    // Appends nonzero k of the block at `slot` of the grouped order (slots in rising order).
    auto place = [&](int32_t slot, int64_t k) {
      const uint16_t loc = local[e0 + k];
      offsets[slot] = base + local_in(loc, transpose) * stride;
      values[slot] = to_f32(vals[e0 + k]);
      const int32_t out = local_out(loc, transpose);
      if (segments.empty() || segments.back().out != out) segments.push_back({out, slot, slot});
      segments.back().end = slot + 1;
    };
    if (!transpose) {  // stored order is already by row
      for (int64_t k = 0; k < nnz; ++k) place(static_cast<int32_t>(k), k);
      return;
    }
    // By local column, stable (keeps the stored order within a column). A counting sort costs
    // O(beta + nnz); a block of a hypersparse matrix with a handful of nonzeros would pay
    // mostly for the beta counters, so up to sqrt(4 beta) nonzeros an insertion sort (O(nnz^2))
    // produces the same order.
    scratch.resize(nnz + beta + 1);
    int32_t* order = scratch.data();
    if (nnz * nnz <= 4 * beta) {
      for (int64_t k = 0; k < nnz; ++k) {
        const int out = local_out(local[e0 + k], true);
        int64_t i = k;
        for (; i > 0 && local_out(local[e0 + order[i - 1]], true) > out; --i) {
          order[i] = order[i - 1];
        }
        order[i] = static_cast<int32_t>(k);
      }
      for (int64_t slot = 0; slot < nnz; ++slot) place(static_cast<int32_t>(slot), order[slot]);
      return;
    }
    int32_t* count = order + nnz;
    std::fill(count, count + beta + 1, 0);
    for (int64_t k = 0; k < nnz; ++k) ++count[local_out(local[e0 + k], true) + 1];
    for (int64_t o = 0; o < beta; ++o) count[o + 1] += count[o];
    for (int64_t k = 0; k < nnz; ++k) order[count[local_out(local[e0 + k], true)]++] = k;
    for (int64_t slot = 0; slot < nnz; ++slot) place(static_cast<int32_t>(slot), order[slot]);
  }
};

// Eight floats; aligned(4) makes loads and stores through it unaligned-safe.
typedef float Vec8 __attribute__((vector_size(32), aligned(4)));
constexpr int kVecs = kChunk / 8;

// acc[0, width) += sum_k values[k] * tile[offsets[k] + (0, width)]. Written with vector
// extensions so that each clone keeps the 64 accumulators in registers (the plain loop
// tempted the vectoriser into gathers across nonzeros).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void accumulate_row(
    float* acc, const float* tile, const int64_t* offsets, const float* values, int64_t count,
    int64_t width) {
  int64_t j = 0;
  for (; j + kChunk <= width; j += kChunk) {
    Vec8 r[kVecs];
    for (int c = 0; c < kVecs; ++c) r[c] = *reinterpret_cast<const Vec8*>(acc + j + 8 * c);
    for (int64_t k = 0; k < count; ++k) {
      const float v = values[k];
      const float* d = tile + offsets[k] + j;
      for (int c = 0; c < kVecs; ++c) r[c] += v * *reinterpret_cast<const Vec8*>(d + 8 * c);
    }
    for (int c = 0; c < kVecs; ++c) *reinterpret_cast<Vec8*>(acc + j + 8 * c) = r[c];
  }
  for (int64_t k = 0; k < count; ++k) {
    const float v = values[k];
    const float* d = tile + offsets[k];
    for (int64_t c = j; c < width; ++c) acc[c] += v * d[c];
  }
}

// Returns columns n0 .. n0 + width of D as float32 rows (in_dim of them) of stride
// slab_stride. Float32 row-major D is used in place; anything else is converted (and, for the
// batch-leading layout, transposed in 8 x 8 tiles) into `slab` once per tile, so every line
// of the slice reuses it.
template <typename T>
const float* stage_slab(const SpmmProblem& p, const T* dense, int64_t n0, int64_t width, int64_t tw,
                        std::vector<float>& slab) {
  const int64_t in_dim = p.shape.in_dim();
  if (!p.batch_leading) {
    if constexpr (std::is_same_v<T, float>) {
      return dense + n0;
    }
  }
  slab.resize(in_dim * tw);
  if (!p.batch_leading) {
    for (int64_t i = 0; i < in_dim; ++i) {
      const T* src = dense + i * p.n + n0;
      for (int64_t k = 0; k < width; ++k) slab[i * tw + k] = to_f32(src[k]);
    }
    return slab.data();
  }
  for (int64_t k0 = 0; k0 < width; k0 += 8) {
    const int64_t k1 = std::min(width, k0 + 8);
    for (int64_t i0 = 0; i0 < in_dim; i0 += 8) {
      const int64_t i1 = std::min(in_dim, i0 + 8);
      for (int64_t k = k0; k < k1; ++k) {
        const T* src = dense + (n0 + k) * in_dim;
        for (int64_t i = i0; i < i1; ++i) slab[i * tw + k] = to_f32(src[i]);
      }
    }
  }
  return slab.data();
}

template <typename T>
void write_tile(const SpmmProblem& p, const float* acc, int64_t out_base, int64_t out_rows,
                int64_t n0, int64_t width, int64_t tw, T* out) {
  if (!p.batch_leading) {
    for (int64_t o = 0; o < out_rows; ++o) {
      T* dst = out + (out_base + o) * p.n + n0;
      for (int64_t k = 0; k < width; ++k) dst[k] = from_f32<T>(acc[o * tw + k]);
    }
    return;
  }
  const int64_t out_dim = p.shape.out_dim();
  for (int64_t k0 = 0; k0 < width; k0 += 8) {
    const int64_t k1 = std::min(width, k0 + 8);
    for (int64_t o0 = 0; o0 < out_rows; o0 += 8) {
      const int64_t o1 = std::min(out_rows, o0 + 8);
      for (int64_t k = k0; k < k1; ++k) {
        T* dst = out + (n0 + k) * out_dim + out_base;
        for (int64_t o = o0; o < o1; ++o) dst[o] = from_f32<T>(acc[o * tw + k]);
      }
    }
  }
}

}  // namespace

std::vector<int64_t> balanced_split(const std::vector<int64_t>& cost_prefix, int64_t num_slices) {
  const int64_t items = static_cast<int64_t>(cost_prefix.size()) - 1;
  num_slices = std::max<int64_t>(1, std::min(num_slices, items));
  std::vector<int64_t> bounds(num_slices + 1, items);
  bounds[0] = 0;
  const int64_t total = cost_prefix.back();
  for (int64_t s = 1; s < num_slices; ++s) {
    int64_t target = total / num_slices * s + total % num_slices * s / num_slices;
    auto it = std::lower_bound(cost_prefix.begin(), cost_prefix.end(), target);
    bounds[s] = std::max(bounds[s - 1], static_cast<int64_t>(it - cost_prefix.begin()));
  }
  return bounds;
}

std::vector<int64_t> spmm_slices(const SpmmProblem& p, const int32_t* block_ptr,
                                 int64_t num_slices) {
  const int64_t tiles = num_tiles(p), w = tile_width(p);
  const int64_t lines = p.shape.num_lines();
  std::vector<int64_t> prefix(lines * tiles + 1, 0);
  for (int64_t line = 0; line < lines; ++line) {
    // Zeroing and writing the tile costs about block_size rows of work even for empty lines.
    int64_t cost = (line_nnz(p.shape, block_ptr, line) + p.shape.block_size) * w;
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t item = line * tiles + t;
      prefix[item + 1] = prefix[item] + cost;
    }
  }
  return balanced_split(prefix, num_slices);
}

// The stride between rows of the slabs that stage_slab returns: fixed for the whole call.
template <typename T>
int64_t slab_stride(const SpmmProblem& p) {
  return std::is_same_v<T, float> && !p.batch_leading ? p.n : tile_width(p);
}

// Items [item_begin, item_end) cover whole lines except perhaps the first and the last. They
// run tile by tile (so a staged slab serves every line of the slice) and line by line within a
// tile, with each line's grouped blocks built once for all tiles.
template <typename T>
void spmm(const SpmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* values,
          const T* dense, T* out, int64_t item_begin, int64_t item_end) {
  if (item_begin >= item_end) return;
  const CsbShape& s = p.shape;
  const int64_t beta = s.block_size, tw = tile_width(p), tiles = num_tiles(p);
  const int64_t stride = slab_stride<T>(p);
  const int64_t first_line = item_begin / tiles, last_line = (item_end - 1) / tiles;
  std::vector<std::vector<GroupedBlock>> grouped(last_line - first_line + 1);
  std::vector<int32_t> scratch;
  for (int64_t line = first_line; line <= last_line; ++line) {
    auto& blocks = grouped[line - first_line];  // the line's nonempty blocks only
    for (int64_t pos = 0; pos < s.line_length(); ++pos) {
      const int64_t b = s.block_at(line, pos);
      if (block_ptr[b] == block_ptr[b + 1]) continue;
      blocks.emplace_back().build(p, local, values, block_ptr[b], block_ptr[b + 1],
                                  pos * beta * stride, stride, scratch);
    }
  }
  std::vector<float> acc(beta * tw), slab;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n0 = t * tw, width = std::min(tw, p.n - n0);
    const float* tile = nullptr;
    for (int64_t line = first_line; line <= last_line; ++line) {
      const int64_t item = line * tiles + t;
      if (item < item_begin || item >= item_end) continue;
      if (!tile) tile = stage_slab(p, dense, n0, width, tw, slab);
      const int64_t out_base = line * beta, out_rows = std::min(beta, s.out_dim() - out_base);
      // Float32 row-major output accumulates in place; anything else goes through `acc`.
      float* rows = acc.data();
      int64_t row_stride = tw;
      if constexpr (std::is_same_v<T, float>) {
        if (!p.batch_leading) {
          rows = out + out_base * p.n + n0;
          row_stride = p.n;
        }
      }
      for (int64_t o = 0; o < out_rows; ++o) std::fill_n(rows + o * row_stride, width, 0.0f);
      for (const GroupedBlock& block : grouped[line - first_line]) {
        for (const RowSegment& seg : block.segments) {
          accumulate_row(rows + seg.out * row_stride, tile, block.offsets.data() + seg.begin,
                         block.values.data() + seg.begin, seg.end - seg.begin, width);
        }
      }
      if (rows == acc.data()) write_tile(p, acc.data(), out_base, out_rows, n0, width, tw, out);
    }
  }
}

template void spmm<float>(const SpmmProblem&, const int32_t*, const uint16_t*, const float*,
                          const float*, float*, int64_t, int64_t);
template void spmm<Bf16>(const SpmmProblem&, const int32_t*, const uint16_t*, const Bf16*,
                         const Bf16*, Bf16*, int64_t, int64_t);
template void spmm<F16>(const SpmmProblem&, const int32_t*, const uint16_t*, const F16*, const F16*,
                        F16*, int64_t, int64_t);

}  // namespace jaxcsb::cpu
