// CPU SpMM: out = op(S) * D for S in CSB, both directions from the one stored copy.
//
// A work item is one line (a block-row of op(S)) times one tile of the n columns. Its output
// rows accumulate in a float32 buffer of block_size x tile_width; each nonempty block of the
// line stages its slice of D as float32 rows (converting and, for the batch-leading layout,
// transposing once per block rather than once per nonzero) and every nonzero of the block adds
// a scaled staged row to its output row: an axpy over the tile that the compiler vectorises.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_types.h"

namespace jaxcsb::cpu {
namespace {

// Keeps the accumulator and the staged tile at 64 KiB each, so both stay in L2.
int64_t tile_width(int32_t block_size) { return std::max<int64_t>(16, 16384 / block_size); }

int64_t num_tiles(const SpmmProblem& p) {
  int64_t w = tile_width(p.shape.block_size);
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

// Points `tile` at rows [0, in_rows) of the block's slice of D, as float32 with row stride
// `stride`, columns n0 .. n0 + width. Float32 row-major D is used in place; anything else is
// converted into `stage`.
template <typename T>
const float* stage_tile(const SpmmProblem& p, const T* dense, int64_t in_base, int64_t in_rows,
                        int64_t n0, int64_t width, int64_t tw, float* stage, int64_t* stride) {
  const int64_t in_dim = p.shape.in_dim();
  if (!p.batch_leading) {
    if constexpr (std::is_same_v<T, float>) {
      *stride = p.n;
      return dense + in_base * p.n + n0;
    }
    for (int64_t i = 0; i < in_rows; ++i) {
      const T* src = dense + (in_base + i) * p.n + n0;
      for (int64_t k = 0; k < width; ++k) stage[i * tw + k] = to_f32(src[k]);
    }
  } else {
    for (int64_t k = 0; k < width; ++k) {
      const T* src = dense + (n0 + k) * in_dim + in_base;
      for (int64_t i = 0; i < in_rows; ++i) stage[i * tw + k] = to_f32(src[i]);
    }
  }
  *stride = tw;
  return stage;
}

template <typename T>
void write_tile(const SpmmProblem& p, const float* acc, int64_t out_base, int64_t out_rows,
                int64_t n0, int64_t width, int64_t tw, T* out) {
  const int64_t out_dim = p.shape.out_dim();
  if (!p.batch_leading) {
    for (int64_t o = 0; o < out_rows; ++o) {
      T* dst = out + (out_base + o) * p.n + n0;
      for (int64_t k = 0; k < width; ++k) dst[k] = from_f32<T>(acc[o * tw + k]);
    }
  } else {
    for (int64_t k = 0; k < width; ++k) {
      T* dst = out + (n0 + k) * out_dim + out_base;
      for (int64_t o = 0; o < out_rows; ++o) dst[o] = from_f32<T>(acc[o * tw + k]);
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
  const int64_t tiles = num_tiles(p), w = tile_width(p.shape.block_size);
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

template <typename T>
void spmm(const SpmmProblem& p, const int32_t* block_ptr, const uint16_t* local, const T* values,
          const T* dense, T* out, int64_t item_begin, int64_t item_end) {
  const CsbShape& s = p.shape;
  const int64_t beta = s.block_size, tw = tile_width(s.block_size), tiles = num_tiles(p);
  std::vector<float> acc(beta * tw), stage(beta * tw);
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t line = item / tiles, n0 = (item % tiles) * tw;
    const int64_t width = std::min(tw, p.n - n0);
    const int64_t out_base = line * beta, out_rows = std::min(beta, s.out_dim() - out_base);
    std::fill(acc.begin(), acc.begin() + out_rows * tw, 0.0f);
    for (int64_t pos = 0; pos < s.line_length(); ++pos) {
      const int64_t b = s.block_at(line, pos);
      const int64_t e0 = block_ptr[b], e1 = block_ptr[b + 1];
      if (e0 == e1) continue;
      const int64_t in_base = pos * beta, in_rows = std::min(beta, s.in_dim() - in_base);
      int64_t stride;
      const float* tile =
          stage_tile(p, dense, in_base, in_rows, n0, width, tw, stage.data(), &stride);
      for (int64_t e = e0; e < e1; ++e) {
        const float v = to_f32(values[e]);
        float* a = acc.data() + local_out(local[e], s.transpose) * tw;
        const float* d = tile + local_in(local[e], s.transpose) * stride;
        for (int64_t k = 0; k < width; ++k) a[k] += v * d[k];
      }
    }
    write_tile(p, acc.data(), out_base, out_rows, n0, width, tw, out);
  }
}

template void spmm<float>(const SpmmProblem&, const int32_t*, const uint16_t*, const float*,
                          const float*, float*, int64_t, int64_t);
template void spmm<Bf16>(const SpmmProblem&, const int32_t*, const uint16_t*, const Bf16*,
                         const Bf16*, Bf16*, int64_t, int64_t);
template void spmm<F16>(const SpmmProblem&, const int32_t*, const uint16_t*, const F16*, const F16*,
                        F16*, int64_t, int64_t);

}  // namespace jaxcsb::cpu
