// Float32 SpMM where lines hold few nonzeros and n is long (cuda_config.h: slab_preferred), in
// the feature-major layout, in two kernels.
//
// Why. The wide kernel stages a beta x 128 tile of D for every CSB block of every line, and
// sorts the block's nonzeros by output row for every tile of n: at 95-98% sparsity each staged
// value feeds one or two multiply-adds, and the sorts and barriers of a block take longer than
// its multiply-adds.
//
// The input axis goes in parts of at most kSlabPartRows rows (whole blocks), the rows of D that
// fit in shared memory for 32 columns of n.
//
// sort_lines_kernel, a thread block per (line, part), counting-sorts its nonzeros by output row
// once per product into the workspace (SlabWorkspace): each warp counts the rows of its own
// chunks of 32 nonzeros, a scan over (row, warp) gives each warp its place in each row, and the
// warp's second pass over the same chunks puts every nonzero there, ranked among equal rows of
// its chunk with __match_any_sync. The order of a row's nonzeros depends on the matrix alone,
// so every sum has a fixed order.
//
// slab_kernel, a thread block per tile of kTile columns of n (and group of output rows), keeps a
// slab of D, a part of its input axis x the tile, in shared memory, and walks the sorted rows
// against it with no barrier, then the next part's slab: D is read once per thread block, not
// once per line, and each part adds its sums to the output that the parts before it wrote. A
// group of 8 lanes takes one row at a time, each lane 4 columns (one 16-byte read of the slab:
// a warp's four groups read four whole 128-byte slab rows), so that no sum crosses lanes and a
// row costs few instructions beyond its multiply-adds.
#include <cstdint>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_spmm_slab.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace {

constexpr int kWarps = 32;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 32;                       // columns of n per thread block
constexpr int kLanesPerRow = kTile / 4;         // a lane multiplies 4 columns of a row
constexpr int kRows = kThreads / kLanesPerRow;  // rows a thread block takes at once
constexpr int kChunk = 32;                      // nonzeros a group loads at once
constexpr unsigned kFull = 0xffffffffu;
// Blocks of a part of a line: all of them at the smallest block size.
constexpr int kMaxPositions = kSlabPartRows / 16;

// How a line's positions split into parts: `parts` runs of `length` positions (the last one
// shorter), each at most kSlabPartRows rows of the input axis.
struct SlabParts {
  int64_t parts, length;
};
SlabParts slab_parts(int64_t line_length, int beta) {
  const int64_t most = kSlabPartRows / beta;
  const int64_t length = ceil_div(line_length, ceil_div(line_length, most));
  return {ceil_div(line_length, length), length};
}

// The workspace: the nonzeros of every (line, part) as (slab row within the part, value bits)
// sorted by output row, and where each output row's nonzeros of each part begin and end. The
// nonzeros of a (line, part) follow those of the lines before it and of its line's parts before
// it, counted from block_ptr; those that a block drops (their local index outside it) leave a
// gap at the end that no row's range covers.
struct SlabWorkspace {
  int2* ent;
  int* row_begin;  // [part][row]
  int* row_end;
  int64_t rows;  // output rows of a part: lines x beta
  static size_t ent_bytes(int64_t nnz) { return (static_cast<size_t>(nnz) * 8 + 15) / 16 * 16; }
  static size_t bytes(int64_t nnz, int64_t rows, int64_t parts) {
    return ent_bytes(nnz) + 2 * static_cast<size_t>(rows * parts) * sizeof(int);
  }
  static SlabWorkspace at(void* base, int64_t nnz, int64_t rows, int64_t parts) {
    auto* bytes = static_cast<unsigned char*>(base) + ent_bytes(nnz);
    auto* begin = reinterpret_cast<int*>(bytes);
    return {static_cast<int2*>(base), begin, begin + rows * parts, rows};
  }
  __device__ int64_t range(int64_t part, int64_t row) const { return part * rows + row; }
};

struct SlabParams : LineParams {
  SlabWorkspace ws;
  int64_t parts;        // parts of the input axis
  int64_t part_length;  // positions of a line in a part
  int64_t part_rows;    // part_length x beta: the slab rows of a part
  bool vec_ok;          // D and the output allow 16-byte accesses along n
};

// The sum over the thread block of each thread's `value` (every thread gets it).
__device__ int64_t block_sum(int64_t value, int64_t* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int d = 16; d > 0; d /= 2) value += __shfl_xor_sync(kFull, value, d);
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  int64_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Where the sorted nonzeros of (line, the part from position pos0) begin in the workspace:
// after those of every earlier line and of the line's earlier parts. Forward, a line is a
// block-row and its blocks are stored in order: the offset of its block at pos0. Transposed, a
// line is a block-column: the sum over block-rows of the blocks left of it, plus its own blocks
// above pos0. Every thread gets it; clamped to the workspace, which a corrupt block_ptr could
// leave.
template <bool kTranspose>
__device__ int64_t part_offset(const SlabParams& p, int64_t line, int64_t pos0, int64_t* scratch) {
  auto range = [&](int64_t block, int64_t* e0, int64_t* e1) {
    block_range(p.block_ptr, block, p.nnz, e0, e1);
  };
  int64_t offset = 0, e1 = 0, first = 0;
  range(0, &first, &e1);
  if constexpr (!kTranspose) {
    range(line * p.block_cols + pos0, &offset, &e1);
    offset -= first;
  } else {
    int64_t before = 0;
    for (int64_t i = threadIdx.x; i < p.line_length; i += kThreads) {
      int64_t row_start = 0, start = 0, end = 0;
      range(i * p.block_cols, &row_start, &e1);
      range(i * p.block_cols + line, &start, &end);
      before += start - row_start + (i < pos0 ? end - start : 0);
    }
    offset = block_sum(before, scratch);
  }
  return min(max(offset, int64_t{0}), p.nnz);
}

// The shared arrays of sort_lines_kernel.
template <int kBeta>
struct SortSmem {
  int place[kWarps][kBeta];  // each warp's count of a row, then its next place in the row
  int start[kBeta + 1];
  int block_start[kMaxPositions + 1];  // each non-empty block's offset among the part's nonzeros
  int block_entry[kMaxPositions];      // its first nonzero
  int block_pos[kMaxPositions];        // its position in the part
  int blocks;
  int64_t scratch[kWarps];
};

// Thread block (x, y): line x, part y.
template <int kBeta, bool kTranspose>
__global__ void __launch_bounds__(kThreads, 1) sort_lines_kernel(const SlabParams p) {
  __shared__ SortSmem<kBeta> s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1u;
  const int64_t line = blockIdx.x, part = blockIdx.y, pos0 = part * p.part_length;
  const int positions = static_cast<int>(min(p.part_length, p.line_length - pos0));
  const int64_t base = part_offset<kTranspose>(p, line, pos0, s.scratch);

  for (int i = threadIdx.x; i < kWarps * kBeta; i += kThreads) (&s.place[0][0])[i] = 0;
  if (warp == 0) {
    // The part's non-empty blocks and their offsets.
    int blocks = 0, taken = 0;
    for (int q0 = 0; q0 < positions; q0 += 32) {
      const int q = q0 + lane;
      int e0 = 0, e1 = 0;
      if (q < positions) {
        block_range(p.block_ptr, line_block(p, line, pos0 + q, kTranspose), p.nnz, &e0, &e1);
      }
      const int count = e1 - e0;
      const unsigned nonempty = __ballot_sync(kFull, count > 0);
      const int upto = warp_inclusive_sum(count);
      if (count > 0) {
        const int index = blocks + __popc(nonempty & below);
        s.block_start[index] = taken + upto - count;
        s.block_entry[index] = e0;
        s.block_pos[index] = q;
      }
      blocks += __popc(nonempty);
      taken += __shfl_sync(kFull, upto, 31);
    }
    if (lane == 0) {
      s.block_start[blocks] = taken;
      s.blocks = blocks;
    }
  }
  __syncthreads();
  const int blocks = s.blocks, count = s.block_start[blocks];
  const float* values = static_cast<const float*>(p.values);
  // The nonzero of this lane in chunk c: its output row (kBeta if dropped: outside its block),
  // slab row and value.
  auto load = [&](int c, int* out, int* in, float* value) {
    const int i = c * 32 + lane;
    *out = kBeta;
    if (i >= count) return;
    int lo = 0, hi = blocks - 1;  // the last block whose offset is at most i
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (s.block_start[mid] <= i) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int e = s.block_entry[lo] + i - s.block_start[lo];
    const uint16_t loc = p.local[e];
    const int o = local_out(loc, kTranspose), i_local = local_in(loc, kTranspose);
    if (o < kBeta && i_local < kBeta) {
      *out = o;
      *in = s.block_pos[lo] * kBeta + i_local;
      *value = values[e];
    }
  };
  const int chunks = (count + 31) / 32;
  for (int c = warp; c < chunks; c += kWarps) {
    int out, in;
    float value;
    load(c, &out, &in, &value);
    if (out < kBeta) atomicAdd(&s.place[warp][out], 1);
  }
  __syncthreads();
  // Row totals, their exclusive scan, then each warp's place in each row.
  for (int r = threadIdx.x; r < kBeta; r += kThreads) {
    int total = 0;
    for (int w = 0; w < kWarps; ++w) total += s.place[w][r];
    s.start[r] = total;
  }
  __syncthreads();
  if (warp == 0) warp_exclusive_scan<kBeta>(s.start, s.start);
  __syncthreads();
  for (int r = threadIdx.x; r < kBeta; r += kThreads) {
    int run = s.start[r];
    for (int w = 0; w < kWarps; ++w) {
      const int here = s.place[w][r];
      s.place[w][r] = run;
      run += here;
    }
    // A corrupt block_ptr can promise more nonzeros than there are: clamp to the workspace.
    const int64_t at = p.ws.range(part, line * kBeta + r);
    p.ws.row_begin[at] = static_cast<int>(min(base + s.start[r], p.nnz));
    p.ws.row_end[at] = static_cast<int>(min(base + s.start[r + 1], p.nnz));
  }
  __syncthreads();
  for (int c = warp; c < chunks; c += kWarps) {
    int out, in;
    float value;
    load(c, &out, &in, &value);
    const unsigned peers = __match_any_sync(kFull, out);
    const int at = out < kBeta ? s.place[warp][out] + __popc(peers & below) : 0;
    __syncwarp();
    if (out < kBeta) {
      if (base + at < p.nnz) p.ws.ent[base + at] = make_int2(in, __float_as_int(value));
      if (lane == 31 - __clz(peers)) s.place[warp][out] += __popc(peers);
    }
    __syncwarp();
  }
}

// Stages D's rows [row0, row0 + part_rows) x columns [n0, n0 + kTile) into the slab, zero
// outside D.
__device__ void stage_slab(const SlabParams& p, float* slab, int64_t row0, int64_t n0) {
  const float* dense = static_cast<const float*>(p.dense);
  constexpr int kCopies = kTile / 4;
  const int64_t total = p.part_rows * kCopies;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t row = row0 + i / kCopies, col = n0 + i % kCopies * 4;
    float* dst = slab + i * 4;
    if (p.vec_ok) {
      const bool ok = row < p.in_dim && col < p.n;
      cp_async_16(dst, ok ? dense + row * p.n + col : dense, ok ? 16 : 0);
    } else {
      for (int j = 0; j < 4; ++j) {
        dst[j] = row < p.in_dim && col + j < p.n ? dense[row * p.n + col + j] : 0.0f;
      }
    }
  }
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
}

// A group's next 32 nonzeros, from `at` of [at, end): lane l of the group holds those at
// at + l + 8 i in e[i]; past the end, a slab row that no part has (skipped).
using Entries = int2[kChunk / kLanesPerRow];
__device__ __forceinline__ void load_entries(const SlabParams& p, int at, int end, Entries& e) {
  const int sub = threadIdx.x % kLanesPerRow;
#pragma unroll
  for (int i = 0; i < kChunk / kLanesPerRow; ++i) {
    const int k = at + sub + i * kLanesPerRow;
    e[i] = k < end ? p.ws.ent[k] : make_int2(-1, 0);
  }
}

// The sum of each group's row of a part, its nonzeros [begin, end) against the slab: a lane's 4
// columns. `head` holds the row's first kChunk nonzeros (load_entries). The warp takes as many
// steps as its longest row.
__device__ __forceinline__ void row_sums(const SlabParams& p, const float* slab, int begin, int end,
                                         const Entries& head, float (&acc)[4]) {
  const float* const slab_cols = slab + threadIdx.x % kLanesPerRow * 4;  // this lane's columns
  const int most = __reduce_max_sync(kFull, end - begin);
  Entries e;
#pragma unroll
  for (int i = 0; i < kChunk / kLanesPerRow; ++i) e[i] = head[i];
  for (int c0 = 0; c0 < most; c0 += kChunk) {
    if (c0 > 0) load_entries(p, begin + c0, end, e);
    const int left = most - c0;
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (j >= left) break;
      const int2 mine = e[j / kLanesPerRow];
      const int src = j % kLanesPerRow;
      const int in = __shfl_sync(kFull, mine.x, src, kLanesPerRow);
      const float v = __int_as_float(__shfl_sync(kFull, mine.y, src, kLanesPerRow));
      // Past the row's end, and where a corrupt structure left an entry unwritten: skipped.
      if (static_cast<unsigned>(in) < static_cast<unsigned>(p.part_rows)) {
        float d[4];
        load_vec<float, 4>(slab_cols + in * kTile, d);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i] = fmaf(v, d[i], acc[i]);
      }
    }
  }
}

// A group's rows of one part, first, first + stride, ...: their sums stored on the first part
// and added to the output on the others. The ranges of 8 rows arrive in one load, a lane each,
// and a row's first nonzeros are loaded while the row before it is multiplied: the walk would
// otherwise wait on two dependent loads from memory every row.
__device__ void walk_rows(const SlabParams& p, const float* slab, int64_t part, int64_t first,
                          int64_t stride, int64_t n0) {
  const int sub = threadIdx.x % kLanesPerRow;
  const int64_t c = n0 + sub * 4;
  const bool adds = part > 0;
  float* const out = static_cast<float*>(p.out);
  const int64_t mine = first < p.out_dim ? ceil_div(p.out_dim - first, stride) : 0;
  const int64_t steps = __shfl_sync(kFull, mine, 0);  // the warp's first group has the most
  for (int64_t k0 = 0; k0 < steps; k0 += kLanesPerRow) {
    int my_begin = 0, my_end = 0;
    if (k0 + sub < mine) {
      const int64_t at = p.ws.range(part, first + (k0 + sub) * stride);
      my_begin = p.ws.row_begin[at];
      my_end = p.ws.row_end[at];
    }
    int begin = __shfl_sync(kFull, my_begin, 0, kLanesPerRow);
    int end = __shfl_sync(kFull, my_end, 0, kLanesPerRow);
    Entries head, next_head;
    load_entries(p, begin, end, head);
    const int batch = static_cast<int>(min(int64_t{kLanesPerRow}, steps - k0));
    for (int j = 0; j < batch; ++j) {
      const int next = (j + 1) % kLanesPerRow;
      const int next_begin = __shfl_sync(kFull, my_begin, next, kLanesPerRow);
      const int next_end = __shfl_sync(kFull, my_end, next, kLanesPerRow);
      if (j + 1 < batch) load_entries(p, next_begin, next_end, next_head);
      // Where this group has a row; a part adds nothing to a row without nonzeros in it.
      const bool writes = k0 + j < mine && c < p.n && (!adds || begin < end);
      float* const dst = out + (first + (k0 + j) * stride) * p.n + c;
      float before[4] = {};
      if (adds && writes) {
        if (p.vec_ok) {
          load_vec<float, 4>(dst, before);
        } else {
          for (int i = 0; i < 4 && c + i < p.n; ++i) before[i] = dst[i];
        }
      }
      float acc[4] = {};
      row_sums(p, slab, begin, end, head, acc);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += before[i];
      if (writes && p.vec_ok) {
        store_vec<float, 4>(dst, acc);
      } else if (writes) {
        for (int i = 0; i < 4 && c + i < p.n; ++i) dst[i] = acc[i];
      }
      begin = next_begin;
      end = next_end;
#pragma unroll
      for (int i = 0; i < kChunk / kLanesPerRow; ++i) head[i] = next_head[i];
    }
  }
}

// Thread block (x, y): n-tile x of the output rows y * kRows + g, stepping by gridDim.y * kRows,
// group of lanes g taking each, for every part of the input axis in turn.
__global__ void __launch_bounds__(kThreads, 1) slab_kernel(const SlabParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* const slab = reinterpret_cast<float*>(smem);
  const int64_t n0 = int64_t{blockIdx.x} * kTile;
  const int64_t first = int64_t{blockIdx.y} * kRows + threadIdx.x / kLanesPerRow;
  const int64_t stride = int64_t{gridDim.y} * kRows;
  for (int64_t part = 0; part < p.parts; ++part) {
    if (part > 0) __syncthreads();  // every warp is done with the slab before it is restaged
    stage_slab(p, slab, part * p.part_rows, n0);
    walk_rows(p, slab, part, first, stride, n0);
  }
}

// Row groups per n-tile: the grid takes ceil(tiles * groups / slots) waves of rows / groups rows
// each; the fewest groups within 5% of the best, each restaging the slabs, with a row for every
// group of lanes.
int64_t row_groups(int64_t tiles, int64_t rows, int64_t slots) {
  auto cost = [&](int64_t g) {
    return static_cast<double>(ceil_div(tiles * g, slots)) * ceil_div(rows, g);
  };
  int64_t best = 1;
  for (int64_t g = 2; g <= std::min<int64_t>(rows / kRows, 65535); ++g) {
    if (cost(g) < 0.95 * cost(best)) best = g;
  }
  return best;
}

cudaError_t launch_multiply(const SlabParams& p, const DeviceInfo& dev, cudaStream_t stream) {
  constexpr auto kKernel = slab_kernel;
  const size_t smem = static_cast<size_t>(p.part_rows) * kTile * sizeof(float);
  if (smem > static_cast<size_t>(dev.max_smem_optin)) return cudaErrorInvalidValue;
  // Raised once to the most any slab needs, for every later launch.
  cudaError_t err = allow_smem<kKernel>(dev.device, dev.max_smem_optin);
  if (err != cudaSuccess) return err;
  const int64_t tiles = ceil_div(p.n, kTile);
  if (tiles > INT32_MAX) return cudaErrorInvalidValue;
  const int64_t slots = resident_on_gpu<kKernel>(1, kThreads, smem, dev);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(tiles),
                        static_cast<unsigned>(row_groups(tiles, p.out_dim, slots)), 1);
  config.blockDim = dim3(kThreads, 1, 1);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  return launch_kernel(config, kKernel, p);
}

}  // namespace

size_t spmm_slab_workspace_bytes(const SpmmArgs& a) {
  const int beta = a.shape.block_size;
  const SlabParts parts = slab_parts(a.shape.line_length(), beta);
  return SlabWorkspace::bytes(a.nnz, a.shape.num_lines() * beta, parts.parts);
}

cudaError_t launch_spmm_slab(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  const int beta = a.shape.block_size;
  SlabParams p{};
  set_line_params(a, &p);
  if (!slab_serves(beta, a.dtype == DType::kF32, a.batch_leading) || a.workspace == nullptr ||
      a.nnz > INT32_MAX || p.num_lines > INT32_MAX || p.line_length == 0) {
    return cudaErrorInvalidValue;
  }
  const SlabParts parts = slab_parts(p.line_length, beta);
  if (parts.parts > 65535) return cudaErrorInvalidValue;  // the sort's grid
  p.parts = parts.parts;
  p.part_length = parts.length;
  p.part_rows = parts.length * beta;
  p.ws = SlabWorkspace::at(a.workspace, a.nnz, p.num_lines * beta, p.parts);
  p.vec_ok = a.n % 4 == 0 && reinterpret_cast<uintptr_t>(a.dense) % 16 == 0 &&
             reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  cudaError_t err = dispatch_beta(beta, [&](auto b) -> cudaError_t {
    constexpr int kBeta = decltype(b)::value;
    if constexpr (kBeta > kSlabMaxBeta) {
      return cudaErrorInvalidValue;
    } else {
      return dispatch_layout(a.shape.transpose, false, [&](auto tr, auto) {
        cudaLaunchConfig_t config{};
        config.gridDim =
            dim3(static_cast<unsigned>(p.num_lines), static_cast<unsigned>(p.parts), 1);
        config.blockDim = dim3(kThreads, 1, 1);
        config.stream = stream;
        return launch_kernel(config, sort_lines_kernel<kBeta, decltype(tr)::value>, p);
      });
    }
  });
  if (err != cudaSuccess) return err;
  return launch_multiply(p, dev, stream);
}

}  // namespace jaxcsb::cuda
