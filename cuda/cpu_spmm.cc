// CPU SpMM: out = op(S) * D for S in CSB, both directions from the one stored copy.
//
// A work item is one line (a block-row of op(S)) times one tile of the n columns. The line's
// output rows accumulate in a float32 buffer of block_size x tile_width (the output itself
// for float32 row-major output). For each nonempty block of the line the kernel
//   1. points at the block's slice of D as float32 rows of the tile width (float32 row-major D
//      in place; other types and the batch-leading layout are converted/transposed into a
//      staging buffer once per tile, not once per nonzero),
//   2. walks the block's nonzeros grouped by output row: the stored order already is, for the
//      forward direction, and the float32 values are read in place; the transposed direction
//      (and other value types) gets a stably sorted, float32 copy of the positions and values,
//      built once per line for all tiles, and
//   3. for each output row keeps a slice of it in registers (128 columns with AVX-512, 64
//      otherwise) while all of the row's nonzeros add their scaled dense rows, so the
//      accumulator is loaded and stored once per row instead of once per nonzero.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_copy.h"
#include "cpu_kernels.h"
#include "cpu_types.h"
#include "cpu_vectors.h"

namespace jaxcsb::cpu {
namespace {

// Columns per work item. Wider tiles amortise the per-block work (staging, looping over
// segments) over more arithmetic; on one AVX-512 core, 2048 x 512 at 90% sparsity with
// n = 256 ran at 18 GFLOP/s with 64 columns, 26 with 128 and 28 with 256. The accumulator
// then takes block_size KiB (L2). A narrower n gets a tile of its own width (rounded up to 8
// floats): the tile width is the row stride of the accumulator and of the staged slab, which
// holds in_dim rows, so a 256-wide stride for n = 8 would stage 32 times the data.
// When the operand is staged (converted or transposed), the slab of in_dim rows should also
// stay within 1 MiB of L2: a 2048-row slab 256 wide (2 MiB) made x @ A 1.8x slower than x @ A.T.
// Whether the dense operand is staged (converted to float32 or transposed) into a slab per
// tile instead of being read in place.
bool stages_slabs(const SpmmProblem& p) { return p.batch_leading || p.type != ValueType::kF32; }

int64_t tile_width(const SpmmProblem& p) {
  int64_t width = 256;
  if (stages_slabs(p)) {
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

// A block's nonzeros in the order the kernel walks them (grouped by output row), with float32
// values; `slab_offset` is the offset of the block's first input row in the staged slab.
struct BlockEntries {
  const uint16_t* local;
  const float* values;
  int64_t nnz;
  int64_t slab_offset;
};

// Positions of op(S) inside a block: the output row and the input row of a local index.
struct LocalAxes {
  int out_shift;  // local >> out_shift & 0xff is the output row
  int in_shift;   // local >> in_shift & 0xff is the input row

  explicit LocalAxes(bool transpose) : out_shift(transpose ? 0 : 8), in_shift(transpose ? 8 : 0) {}
  int out(uint16_t loc) const { return loc >> out_shift & 0xff; }
};

// The nonzeros of a slice's lines in walking order. Float32 values of the forward direction are
// used where they are; everything else is copied, once per call, into `local` and `values`
// (sized before the first copy, so that the entries' pointers stay valid).
class SliceEntries {
 public:
  template <typename T>
  void build(const SpmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* vals,
             int64_t first_line, int64_t last_line, int64_t stride) {
    const CsbShape& s = p.shape;
    const bool in_place = std::is_same_v<T, float> && !s.transpose;
    if (!in_place) {
      int64_t total = 0;
      for (int64_t line = first_line; line <= last_line; ++line) {
        for (int64_t pos = 0; pos < s.line_length(); ++pos) {
          const int64_t b = s.block_at(line, pos);
          total += int64_t{block_ptr[b + 1]} - block_ptr[b];
        }
      }
      local_.resize(total);
      values_.resize(total);
    }
    lines_.assign(last_line - first_line + 1, {});
    int64_t next = 0;  // first free slot of the copies
    for (int64_t line = first_line; line <= last_line; ++line) {
      auto& blocks = lines_[line - first_line];  // the line's nonempty blocks only
      for (int64_t pos = 0; pos < s.line_length(); ++pos) {
        const int64_t b = s.block_at(line, pos);
        const int64_t e0 = block_ptr[b], nnz = int64_t{block_ptr[b + 1]} - e0;
        if (nnz == 0) continue;
        const int64_t slab_offset = pos * s.block_size * stride;
        if constexpr (std::is_same_v<T, float>) {
          if (in_place) {
            blocks.push_back({local + e0, vals + e0, nnz, slab_offset});
            continue;
          }
        }
        uint16_t* l = local_.data() + next;
        float* v = values_.data() + next;
        next += nnz;
        if (s.transpose) {
          sort_by_column(local + e0, vals + e0, nnz, s.block_size, l, v);
        } else {
          std::copy(local + e0, local + e0 + nnz, l);
          for (int64_t k = 0; k < nnz; ++k) v[k] = to_f32(vals[e0 + k]);
        }
        blocks.push_back({l, v, nnz, slab_offset});
      }
    }
  }

  const std::vector<BlockEntries>& line(int64_t index) const { return lines_[index]; }

 private:
  // Stable counting sort by local column (the output row of the transposed direction).
  template <typename T>
  void sort_by_column(const uint16_t* local, const T* vals, int64_t nnz, int64_t beta,
                      uint16_t* sorted_local, float* sorted_values) {
    count_.assign(beta + 1, 0);
    for (int64_t k = 0; k < nnz; ++k) ++count_[(local[k] & 0xff) + 1];
    for (int64_t c = 0; c < beta; ++c) count_[c + 1] += count_[c];
    for (int64_t k = 0; k < nnz; ++k) {
      const int64_t slot = count_[local[k] & 0xff]++;
      sorted_local[slot] = local[k];
      sorted_values[slot] = to_f32(vals[k]);
    }
  }

  std::vector<std::vector<BlockEntries>> lines_;
  std::vector<uint16_t> local_;
  std::vector<float> values_;
  std::vector<int64_t> count_;
};

// The nonzeros of one output row within a block, and the block's slice of the dense operand
// that they scale: nonzero k adds values[k] times row (local[k] >> in_shift & 0xff) of `rows`.
struct RowRun {
  const float* rows;
  int64_t stride;  // between the rows of `rows`
  const uint16_t* local;
  const float* values;
  int64_t count;
  int in_shift;
};

// acc[j, j + kVecs * lanes) += (or, when `fresh`, =) the run's sum over those columns, with the
// kVecs vectors in registers while all of the run's nonzeros are added.
template <typename Vec, int kVecs>
__attribute__((always_inline)) inline void accumulate_vectors(float* acc, const RowRun& run,
                                                              int64_t j, bool fresh) {
  constexpr int kLanes = lanes<Vec>;
  Vec r[kVecs];
  for (int c = 0; c < kVecs; ++c) r[c] = fresh ? Vec{} : load<Vec>(acc + j + kLanes * c);
  for (int64_t k = 0; k < run.count; ++k) {
    const float v = run.values[k];
    const float* d = run.rows + (run.local[k] >> run.in_shift & 0xff) * run.stride + j;
    for (int c = 0; c < kVecs; ++c) r[c] += v * load<Vec>(d + kLanes * c);
  }
  for (int c = 0; c < kVecs; ++c) store(acc + j + kLanes * c, r[c]);
}

// Columns [j, width) in pieces of kVecs vectors while they fit, then of half as many, down to
// one 8-float vector; returns the first column left (fewer than 8 remain).
template <typename Vec, int kVecs>
__attribute__((always_inline)) inline int64_t accumulate_pieces(float* acc, const RowRun& run,
                                                                int64_t j, int64_t width,
                                                                bool fresh) {
  for (; j + kVecs * lanes<Vec> <= width; j += kVecs * lanes<Vec>) {
    accumulate_vectors<Vec, kVecs>(acc, run, j, fresh);
  }
  if constexpr (kVecs > 1) return accumulate_pieces<Vec, kVecs / 2>(acc, run, j, width, fresh);
  if constexpr (lanes<Vec> > 8) return accumulate_pieces<Vec8, 1>(acc, run, j, width, fresh);
  return j;
}

// acc[0, width) += (or, when `fresh`, =) the run's sum: eight vectors at a time (enough
// independent accumulators to hide the multiply-add latency), then narrower pieces, then the
// last few columns one by one. Written with vector extensions: the plain loop tempted the
// vectoriser into gathers across nonzeros.
template <typename Vec>
__attribute__((always_inline)) inline void accumulate_row_with(float* acc, const RowRun& run,
                                                               int64_t width, bool fresh) {
  const int64_t j = accumulate_pieces<Vec, 8>(acc, run, 0, width, fresh);
  if (j == width) return;
  float r[8];
  const int rest = static_cast<int>(width - j);
  for (int c = 0; c < rest; ++c) r[c] = fresh ? 0.0f : acc[j + c];
  for (int64_t k = 0; k < run.count; ++k) {
    const float v = run.values[k];
    const float* d = run.rows + (run.local[k] >> run.in_shift & 0xff) * run.stride + j;
    for (int c = 0; c < rest; ++c) r[c] += v * d[c];
  }
  for (int c = 0; c < rest; ++c) acc[j + c] = r[c];
}

// One version per instruction set, chosen when the module loads. With AVX-512 the row's
// accumulators are 16-float vectors (128 columns at a time): half the loads and multiply-adds
// of 8-float ones. At 2048 x 512, 90% sparsity, n = 256 on two cores, A @ B went from
// 1.0 to 0.75 ms.
__attribute__((target("arch=x86-64-v4"))) void accumulate_row(float* acc, const RowRun& run,
                                                              int64_t width, bool fresh) {
  accumulate_row_with<Vec16>(acc, run, width, fresh);
}
__attribute__((target("arch=x86-64-v3"))) void accumulate_row(float* acc, const RowRun& run,
                                                              int64_t width, bool fresh) {
  accumulate_row_with<Vec8>(acc, run, width, fresh);
}
__attribute__((target("default"))) void accumulate_row(float* acc, const RowRun& run, int64_t width,
                                                       bool fresh) {
  accumulate_row_with<Vec8>(acc, run, width, fresh);
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
    copy_rows(dense + n0, p.n, slab.data(), tw, in_dim, width);
  } else {
    copy_transposed(dense + n0 * in_dim, in_dim, slab.data(), tw, width, in_dim);
  }
  return slab.data();
}

template <typename T>
void write_tile(const SpmmProblem& p, const float* acc, int64_t out_base, int64_t out_rows,
                int64_t n0, int64_t width, int64_t tw, T* out) {
  if (!p.batch_leading) {
    copy_rows(acc, tw, out + out_base * p.n + n0, p.n, out_rows, width);
  } else {
    const int64_t out_dim = p.shape.out_dim();
    copy_transposed(acc, tw, out + n0 * out_dim + out_base, out_dim, out_rows, width);
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
                                 int64_t num_threads) {
  const int64_t num_slices = slice_count(num_threads, stages_slabs(p));
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
  SliceEntries entries;
  entries.build(p, block_ptr, local, values, first_line, last_line, stride);
  const LocalAxes axes(s.transpose);
  std::vector<float> acc(beta * tw), slab;
  std::vector<uint8_t> touched(beta);
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
      // The first run of an output row stores its sum (no zero-fill and reload); rows that no
      // nonzero reaches are zero-filled at the end.
      std::fill(touched.begin(), touched.end(), 0);
      for (const BlockEntries& block : entries.line(line - first_line)) {
        // One call per output row: the run of nonzeros with the same output row.
        for (int64_t k = 0; k < block.nnz;) {
          const int out = axes.out(block.local[k]);
          int64_t end = k + 1;
          while (end < block.nnz && axes.out(block.local[end]) == out) ++end;
          const RowRun run{tile + block.slab_offset, stride,  block.local + k,
                           block.values + k,         end - k, axes.in_shift};
          accumulate_row(rows + out * row_stride, run, width, !touched[out]);
          touched[out] = 1;
          k = end;
        }
      }
      for (int64_t o = 0; o < out_rows; ++o) {
        if (!touched[o]) std::fill_n(rows + o * row_stride, width, 0.0f);
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
