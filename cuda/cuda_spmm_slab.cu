// Float32 SpMM where lines hold few nonzeros and n is long (cuda_config.h: slab_preferred), in
// the feature-major layout, in two kernels.
//
// Why. The wide kernel stages a beta x 128 tile of D for every CSB block of every line, and
// sorts the block's nonzeros by output row for every tile of n: at 95-98% sparsity each staged
// value feeds one or two multiply-adds, and the sorts and barriers of a block take longer than
// its multiply-adds.
//
// sort_lines_kernel, a thread block per line, counting-sorts the line's nonzeros by output row
// once per product into the workspace (SlabWorkspace): each warp counts the rows of its own
// chunks of 32 nonzeros, a scan over (row, warp) gives each warp its place in each row, and the
// warp's second pass over the same chunks puts every nonzero there, ranked among equal rows of
// its chunk with __match_any_sync. The order of a row's nonzeros depends on the matrix alone,
// so every sum has a fixed order.
//
// slab_kernel, a thread block per tile of kTile columns of n (and group of output rows), keeps a
// slab of D, its whole input axis x the tile, in shared memory, and walks the sorted rows
// against it with no barrier: D is read once per thread block, not once per line. A warp takes
// one row at a time: its four groups of 8 lanes take every fourth nonzero of the row, each lane
// 4 columns (one 16-byte read of the slab: the four groups read four whole 128-byte slab rows),
// and the groups add their sums with shuffles.
#include <cstdint>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_spmm_slab.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace {

constexpr int kWarps = 32;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 32;                     // columns of n per thread block
constexpr int kLanesPerEntry = kTile / 4;     // a lane multiplies 4 columns
constexpr int kGroups = 32 / kLanesPerEntry;  // nonzeros a warp takes at once
// Blocks of a line: all of them at the smallest block size and the longest input axis.
constexpr int kMaxPositions = kSlabMaxRows / 16;

// The workspace: every line's nonzeros as (slab row, value bits) sorted by output row, and where
// each output row's nonzeros begin and end. A line's nonzeros follow those of the lines before
// it, counted from block_ptr; those that a block drops (their local index outside it) leave a
// gap at the line's end that no row's range covers.
struct SlabWorkspace {
  int2* ent;
  int* row_begin;
  int* row_end;
  static size_t ent_bytes(int64_t nnz) { return (static_cast<size_t>(nnz) * 8 + 15) / 16 * 16; }
  static size_t bytes(int64_t nnz, int64_t rows) {
    return ent_bytes(nnz) + 2 * static_cast<size_t>(rows) * sizeof(int);
  }
  static SlabWorkspace at(void* base, int64_t nnz, int64_t rows) {
    auto* bytes = static_cast<unsigned char*>(base) + ent_bytes(nnz);
    auto* begin = reinterpret_cast<int*>(bytes);
    return {static_cast<int2*>(base), begin, begin + rows};
  }
};

struct SlabParams : LineParams {
  SlabWorkspace ws;
  int64_t rows;       // out lines x beta: the rows that row_begin and row_end cover
  int64_t slab_rows;  // line_length x beta: every input index a block can name
  bool vec_ok;        // D and the output allow 16-byte accesses along n
};

// The sum over the thread block of each thread's `value` (every thread gets it).
__device__ int64_t block_sum(int64_t value, int64_t* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int d = 16; d > 0; d /= 2) value += __shfl_xor_sync(0xffffffffu, value, d);
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  int64_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// The shared arrays of sort_lines_kernel.
template <int kBeta>
struct SortSmem {
  int place[kWarps][kBeta];  // each warp's count of a row, then its next place in the row
  int start[kBeta + 1];
  int block_start[kMaxPositions + 1];  // each non-empty block's offset among the line's nonzeros
  int block_entry[kMaxPositions];      // its first nonzero
  int block_pos[kMaxPositions];        // its position in the line
  int blocks;
  int64_t scratch[kWarps];
};

template <int kBeta, bool kTranspose>
__global__ void __launch_bounds__(kThreads, 1) sort_lines_kernel(const SlabParams p) {
  __shared__ SortSmem<kBeta> s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1u;
  const int64_t line = blockIdx.x;
  auto count_of = [&](int64_t l, int64_t pos) {
    int e0, e1;
    block_range(p.block_ptr, line_block(p, l, pos, kTranspose), p.nnz, &e0, &e1);
    return e1 - e0;
  };
  // Where the line's nonzeros go: after those of the lines before it.
  int64_t before = 0;
  for (int64_t k = threadIdx.x; k < line * p.line_length; k += kThreads) {
    before += count_of(k / p.line_length, k % p.line_length);
  }
  const int64_t base = block_sum(before, s.scratch);

  for (int i = threadIdx.x; i < kWarps * kBeta; i += kThreads) (&s.place[0][0])[i] = 0;
  if (warp == 0) {
    // The line's non-empty blocks and their offsets.
    int blocks = 0, taken = 0;
    for (int q0 = 0; q0 < p.line_length; q0 += 32) {
      const int q = q0 + lane;
      int e0 = 0, e1 = 0;
      if (q < p.line_length)
        block_range(p.block_ptr, line_block(p, line, q, kTranspose), p.nnz, &e0, &e1);
      const int count = e1 - e0;
      const unsigned nonempty = __ballot_sync(0xffffffffu, count > 0);
      int upto = count;
      for (int d = 1; d < 32; d *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, upto, d);
        if (lane >= d) upto += other;
      }
      if (count > 0) {
        const int index = blocks + __popc(nonempty & below);
        s.block_start[index] = taken + upto - count;
        s.block_entry[index] = e0;
        s.block_pos[index] = q;
      }
      blocks += __popc(nonempty);
      taken += __shfl_sync(0xffffffffu, upto, 31);
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
    p.ws.row_begin[line * kBeta + r] = static_cast<int>(min(base + s.start[r], p.nnz));
    p.ws.row_end[line * kBeta + r] = static_cast<int>(min(base + s.start[r + 1], p.nnz));
  }
  __syncthreads();
  for (int c = warp; c < chunks; c += kWarps) {
    int out, in;
    float value;
    load(c, &out, &in, &value);
    const unsigned peers = __match_any_sync(0xffffffffu, out);
    const int at = out < kBeta ? s.place[warp][out] + __popc(peers & below) : 0;
    __syncwarp();
    if (out < kBeta) {
      if (base + at < p.nnz) p.ws.ent[base + at] = make_int2(in, __float_as_int(value));
      if (lane == 31 - __clz(peers)) s.place[warp][out] += __popc(peers);
    }
    __syncwarp();
  }
}

// Stages D's rows [0, slab_rows) x columns [n0, n0 + kTile) into the slab, zero outside D.
__device__ void stage_slab(const SlabParams& p, float* slab, int64_t n0) {
  const float* dense = static_cast<const float*>(p.dense);
  constexpr int kCopies = kTile / 4;
  const int64_t total = p.slab_rows * kCopies;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t row = i / kCopies, col = n0 + i % kCopies * 4;
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

// Thread block (x, y): n-tile x of the output rows y * kWarps + w, stepping by gridDim.y *
// kWarps, warp w taking each.
__global__ void __launch_bounds__(kThreads, 1) slab_kernel(const SlabParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* const slab = reinterpret_cast<float*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / kLanesPerEntry, col = lane % kLanesPerEntry * 4;
  const int64_t n0 = int64_t{blockIdx.x} * kTile;
  stage_slab(p, slab, n0);
  const int64_t rows = min(p.rows, p.out_dim);
  float* const out = static_cast<float*>(p.out);
  for (int64_t row = int64_t{blockIdx.y} * kWarps + warp; row < rows;
       row += int64_t{gridDim.y} * kWarps) {
    const int begin = p.ws.row_begin[row], end = p.ws.row_end[row];
    float acc[4] = {};
    for (int c0 = begin; c0 < end; c0 += 32) {
      const int len = min(end - c0, 32);
      const int2 mine = lane < len ? p.ws.ent[c0 + lane] : make_int2(0, 0);
      for (int k = 0; k < len; k += kGroups) {
        const int src = k + group;
        const int in = __shfl_sync(0xffffffffu, mine.x, src);
        const float v = __int_as_float(__shfl_sync(0xffffffffu, mine.y, src));
        if (src < len) {
          float d[4];
          load_vec<float, 4>(slab + in * kTile + col, d);
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[j] = fmaf(v, d[j], acc[j]);
        }
      }
    }
    // The groups' sums in a fixed order, the same in every lane.
#pragma unroll
    for (int d = kLanesPerEntry; d < 32; d *= 2) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], d);
    }
    const int64_t c = n0 + col;
    if (group != 0 || c >= p.n) continue;
    float* const dst = out + row * p.n + c;
    if (p.vec_ok) {
      store_vec<float, 4>(dst, acc);
    } else {
      for (int j = 0; j < 4 && c + j < p.n; ++j) dst[j] = acc[j];
    }
  }
}

// Row groups per n-tile: the grid takes ceil(tiles * groups / slots) waves of rows / groups rows
// each; the fewest groups within 5% of the best, each restaging the slab, with at least 4 rows
// per warp.
int64_t row_groups(int64_t tiles, int64_t rows, int64_t slots) {
  auto cost = [&](int64_t g) {
    return static_cast<double>(ceil_div(tiles * g, slots)) * ceil_div(rows, g);
  };
  int64_t best = 1;
  for (int64_t g = 2; g <= std::min<int64_t>(rows / (4 * kWarps), 65535); ++g) {
    if (cost(g) < 0.95 * cost(best)) best = g;
  }
  return best;
}

cudaError_t launch_multiply(const SlabParams& p, const DeviceInfo& dev, cudaStream_t stream) {
  constexpr auto kKernel = slab_kernel;
  const size_t smem = static_cast<size_t>(p.slab_rows) * kTile * sizeof(float);
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
  return SlabWorkspace::bytes(a.nnz, a.shape.num_lines() * a.shape.block_size);
}

cudaError_t launch_spmm_slab(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream) {
  const int beta = a.shape.block_size;
  SlabParams p{};
  set_line_params(a, &p);
  p.rows = p.num_lines * beta;
  p.slab_rows = p.line_length * beta;
  if (!slab_serves(beta, a.dtype == DType::kF32, a.batch_leading, p.slab_rows) ||
      a.workspace == nullptr || a.nnz > INT32_MAX || p.num_lines > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  p.ws = SlabWorkspace::at(a.workspace, a.nnz, p.rows);
  p.vec_ok = a.n % 4 == 0 && reinterpret_cast<uintptr_t>(a.dense) % 16 == 0 &&
             reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  cudaError_t err = dispatch_beta(beta, [&](auto b) -> cudaError_t {
    constexpr int kBeta = decltype(b)::value;
    if constexpr (kBeta > kSlabMaxBeta) {
      return cudaErrorInvalidValue;
    } else {
      return dispatch_layout(a.shape.transpose, false, [&](auto tr, auto) {
        cudaLaunchConfig_t config{};
        config.gridDim = dim3(static_cast<unsigned>(p.num_lines), 1, 1);
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
