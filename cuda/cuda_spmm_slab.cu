// Float32 SpMM where lines hold few nonzeros and n is long (cuda_config.h: slab_preferred), in
// both layouts, in two kernels.
//
// Why. The wide kernel stages a beta x 128 tile of D for every CSB block of every line, and
// sorts the block's nonzeros by output row for every tile of n: at 95-98% sparsity each staged
// value feeds one or two multiply-adds, and the sorts and barriers of a block take longer than
// its multiply-adds.
//
// The input axis goes in parts of at most kSlabPartRows rows (whole blocks), the rows of D that
// fit in shared memory for 32 columns of n.
//
// sort_lines_kernel, a cluster of thread blocks per (line, part) (sort_cluster), counting-sorts
// its nonzeros by output row once per product into the workspace (SlabWorkspace): each warp
// counts the rows of its own chunks of 32 nonzeros, a scan over (row, thread block, warp) gives
// each warp its place in each row, and the warp's second pass over the same chunks puts every
// nonzero there, ranked among equal rows of its chunk with __match_any_sync. The order of a row's
// nonzeros depends on the matrix alone, so every sum has a fixed order. It also ranks the line's
// rows by their counts: the multiply deals rows of like counts to the groups of lanes of a
// warp, which step together as long as the longest of their rows (magnitude pruning leaves rows of
// very unequal counts: the warps of a DLMC layer stepped 1.2-2.0x the mean of their rows,
// and 1.01-1.09x ranked).
//
// slab_kernel, a thread block per tile of kTile columns of n (and group of output rows), keeps a
// slab of D, a part of its input axis x the tile, in shared memory, and walks the sorted rows
// against it with no barrier, then the next part's slab: D is read once per thread block, not
// once per line, and each part adds its sums to the output that the parts before it wrote. A
// group of 4 lanes (or 8: Groups) takes one row at a time, each lane 8 columns (two 16-byte
// reads of the slab: a warp's eight groups read eight whole 128-byte slab rows), so that no sum
// crosses lanes and a row costs few instructions beyond its multiply-adds. It launches as the
// sort's programmatic dependent: its thread blocks start, and stage their first slab, while the
// sort still runs. The slab and the walk are the same in both layouts; in the batch-leading one
// the staging reads D down the slab's columns, and the sums gather in shared memory and go out
// along the output's rows once the last part is walked (OutTile).
#include <algorithm>
#include <cstdint>

#include "cuda_config.h"
#include "cuda_kernels.h"
#include "cuda_spmm_slab.h"
#include "cuda_utils.h"

namespace jaxcsb::cuda {
namespace {

constexpr int kWarps = 32;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 32;  // columns of n per thread block
constexpr int kSlabRowBytes = kTile * sizeof(float);
constexpr int kInFlight = 4;  // chunks a warp of the sort loads at once
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
// sorted by output row, and a slot for each output row of each (line, part), the line's rows
// in the order of their ranks: (begin, end, output row, unused), one 16-byte load. The nonzeros
// of a (line, part) follow those of the lines before it and of its line's parts before it,
// counted from block_ptr; those that a block drops (their local index outside it) leave a gap
// at the end that no row's range covers.
struct SlabWorkspace {
  int2* ent;
  int4* slots;  // [part][line][rank]
  static size_t ent_bytes(int64_t nnz) { return (static_cast<size_t>(nnz) * 8 + 15) / 16 * 16; }
  static size_t bytes(int64_t nnz, int64_t rows, int64_t parts) {
    return ent_bytes(nnz) + static_cast<size_t>(rows * parts) * sizeof(int4);
  }
  static SlabWorkspace at(void* base, int64_t nnz) {
    auto* slots = reinterpret_cast<int4*>(static_cast<unsigned char*>(base) + ent_bytes(nnz));
    return {static_cast<int2*>(base), slots};
  }
};

struct SlabParams : LineParams {
  SlabWorkspace ws;
  int64_t parts;        // parts of the input axis
  int64_t part_length;  // positions of a line in a part
  int beta;
  bool vec_ok;  // 16-byte accesses of D and the output (launch_spmm_slab)
  // Output rows, each with a slot in every part: lines x beta.
  __host__ __device__ int64_t rows() const { return num_lines * beta; }
  // Slab rows of a part: the rows of the input axis that its positions cover.
  __host__ __device__ int64_t part_rows() const { return part_length * beta; }
  __device__ int4& slot(int64_t part, int64_t index) const {
    return ws.slots[part * rows() + index];
  }
};

// Bytes of the slab of a part and the zero row after it.
__host__ __device__ inline size_t slab_bytes(const SlabParams& p) {
  return static_cast<size_t>(p.part_rows() + 1) * kSlabRowBytes;
}

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
  auto first = [&](int64_t block) {
    int64_t start = 0, end = 0;
    block_range(p.block_ptr, block, p.nnz, &start, &end);
    return start;
  };
  int64_t offset = 0;
  if constexpr (!kTranspose) {
    offset = first(line * p.block_cols + pos0) - first(0);
  } else {
    int64_t before = 0;
    for (int64_t i = threadIdx.x; i < p.line_length; i += kThreads) {
      int64_t start = 0, end = 0;
      block_range(p.block_ptr, i * p.block_cols + line, p.nnz, &start, &end);
      before += start - first(i * p.block_cols) + (i < pos0 ? end - start : 0);
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
  int counted[kBeta];  // this thread block's count of each row, which its cluster reads
  int before[kBeta];   // the counts of the cluster's thread blocks of lower rank
  int key[kBeta];      // a row's count, -1 past the matrix: ranked by descending key, then row
  int block_start[kMaxPositions + 1];  // each non-empty block's offset among the part's nonzeros
  int block_entry[kMaxPositions];      // its first nonzero
  int block_pos[kMaxPositions];        // its position in the part
  int blocks;
  int64_t scratch[kWarps];
};

// Thread block (x, y): rank x % p.cluster of the cluster that sorts line x / p.cluster, part y.
// The cluster's warps take the part's chunks of 32 nonzeros in turn; its thread blocks add up
// each other's counts of a row through distributed shared memory.
template <int kBeta, bool kTranspose>
__global__ void __launch_bounds__(kThreads, 1) sort_lines_kernel(const SlabParams p) {
  __shared__ SortSmem<kBeta> s;
  // The multiply may launch now: it stages its first slab while the sort runs.
  cudaTriggerProgrammaticLaunchCompletion();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1u;
  const int csize = p.cluster, rank = static_cast<int>(blockIdx.x % csize);
  const bool clustered = csize > 1;
  const int first_chunk = rank * kWarps + warp, chunk_step = csize * kWarps;
  const int64_t line = blockIdx.x / csize, part = blockIdx.y, pos0 = part * p.part_length;
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
  // A warp's chunks in both passes, kInFlight of them loaded at once.
  const int chunks = (count + 31) / 32;
  int out[kInFlight], in[kInFlight];
  float value[kInFlight];
  for (int c0 = first_chunk; c0 < chunks; c0 += chunk_step * kInFlight) {
    for (int u = 0; u < kInFlight; ++u) load(c0 + u * chunk_step, &out[u], &in[u], &value[u]);
    for (int u = 0; u < kInFlight; ++u) {
      if (out[u] < kBeta) atomicAdd(&s.place[warp][out[u]], 1);
    }
  }
  __syncthreads();
  for (int r = threadIdx.x; r < kBeta; r += kThreads) {
    int counted = 0;
    for (int w = 0; w < kWarps; ++w) counted += s.place[w][r];
    s.counted[r] = counted;
  }
  sync_cluster_or_block(clustered);
  // Row totals over the cluster and keys, the totals' exclusive scan, then each warp's place in
  // each row.
  for (int r = threadIdx.x; r < kBeta; r += kThreads) {
    int total = 0, before = 0;
    for (int q = 0; q < csize; ++q) {
      const int counted = clustered
                              ? cooperative_groups::this_cluster().map_shared_rank(s.counted, q)[r]
                              : s.counted[r];
      total += counted;
      before += q < rank ? counted : 0;
    }
    s.start[r] = total;
    s.before[r] = before;
    s.key[r] = line * kBeta + r < p.out_dim ? total : -1;
  }
  // Also keeps every thread block until the others have read its counts.
  sync_cluster_or_block(clustered);
  if (warp == 0) warp_exclusive_scan<kBeta>(s.start, s.start);
  __syncthreads();
  // Each row's rank, counted by kLanes lanes over a share of the line's rows, in the thread
  // block that writes the slots (the cluster's first).
  constexpr int kLanes = std::min(32, kThreads / kBeta);
  if (threadIdx.x < kBeta * kLanes) {
    const int r = threadIdx.x / kLanes, key = s.key[r];
    int row_rank = 0;
    if (rank == 0) {
      for (int q = threadIdx.x % kLanes; q < kBeta; q += kLanes) {
        row_rank += s.key[q] > key || (s.key[q] == key && q < r);
      }
      for (int d = kLanes / 2; d > 0; d /= 2) {
        row_rank += __shfl_xor_sync(kFull, row_rank, d, kLanes);
      }
    }
    if (threadIdx.x % kLanes == 0) {
      int run = s.start[r] + s.before[r];
      for (int w = 0; w < kWarps; ++w) {
        const int here = s.place[w][r];
        s.place[w][r] = run;
        run += here;
      }
      // A corrupt block_ptr can promise more nonzeros than there are: clamp to the workspace.
      const int begin = static_cast<int>(min(base + s.start[r], p.nnz));
      const int end = static_cast<int>(min(base + s.start[r + 1], p.nnz));
      if (rank == 0) {
        p.slot(part, line * kBeta + row_rank) =
            make_int4(begin, end, static_cast<int>(line * kBeta + r), 0);
      }
    }
  }
  __syncthreads();
  for (int c0 = first_chunk; c0 < chunks; c0 += chunk_step * kInFlight) {
    for (int u = 0; u < kInFlight; ++u) load(c0 + u * chunk_step, &out[u], &in[u], &value[u]);
    for (int u = 0; u < kInFlight; ++u) {
      const unsigned peers = __match_any_sync(kFull, out[u]);
      const int at = out[u] < kBeta ? s.place[warp][out[u]] + __popc(peers & below) : 0;
      __syncwarp();
      if (out[u] < kBeta) {
        if (base + at < p.nnz) p.ws.ent[base + at] = make_int2(in[u], __float_as_int(value[u]));
        if (lane == 31 - __clz(peers)) s.place[warp][out[u]] += __popc(peers);
      }
      __syncwarp();
    }
  }
}

// Stages D's rows [row0, row0 + part_rows) x columns [n0, n0 + kTile) into the slab, zero
// outside D. Feature-major, a slab row is 128 contiguous bytes of D, copied asynchronously.
// Batch-leading, D is (n, in_dim) and a slab column is contiguous in D: lane j of a warp reads
// kRun consecutive input rows of column n0 + j (a 32-byte sector) and stores them down slab
// column j, so that the warp's stores of a slab row fall in 32 distinct banks.
template <bool kBatchLeading>
__device__ void stage_slab(const SlabParams& p, float* slab, int64_t row0, int64_t n0) {
  const float* dense = static_cast<const float*>(p.dense);
  const int rows = static_cast<int>(p.part_rows());  // at most kSlabPartRows, whole blocks
  if constexpr (kBatchLeading) {
    constexpr int kRun = 8;  // divides every block size, so a run stays inside the part
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t col = n0 + lane;
    for (int r = warp * kRun; r < rows; r += kWarps * kRun) {
      const int64_t row = row0 + r;
      const float* src = dense + col * p.in_dim + row;
      float v[kRun / 4][4];
      if (p.vec_ok && col < p.n && row + kRun <= p.in_dim) {
#pragma unroll
        for (int h = 0; h < kRun / 4; ++h) load_vec<float, 4>(src + 4 * h, v[h]);
      } else {
#pragma unroll
        for (int i = 0; i < kRun; ++i) {
          v[i / 4][i % 4] = col < p.n && row + i < p.in_dim ? src[i] : 0.0f;
        }
      }
#pragma unroll
      for (int i = 0; i < kRun; ++i) slab[(r + i) * kTile + lane] = v[i / 4][i % 4];
    }
  } else {
    constexpr int kCopies = kTile / 4;
    for (int i = threadIdx.x; i < rows * kCopies; i += kThreads) {
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
  }
  __syncthreads();
}

// How the multiply's lanes share rows: a group of kLanes lanes takes a row, each lane
// kTile / kLanes of its columns, read as kVecs 16-byte pieces of a slab row a nonzero, and holds
// kPerLane of the row's next kChunk nonzeros, which it shuffles to the group one at a time.
// Eight lanes a row spend two shuffles on 4 columns' multiply-adds, four lanes on 8: shuffles
// take the shared-memory pipe's cycles, which holds the walk at 90% sparsity. But a warp then
// steps as long as the longest of 8 rows, not 4 (launch_multiply).
template <int kLanes>
struct Groups {
  static constexpr int kVecs = kTile / 4 / kLanes;
  static constexpr int kRows = kThreads / kLanes;  // rows a thread block takes at once
  // 4 spill at 8 columns a lane, past the 64 registers a thread of 1024 may have.
  static constexpr int kPerLane = kVecs == 1 ? 4 : 2;
  static constexpr int kChunk = kPerLane * kLanes;
  using Entries = int2[kPerLane];
};

// A group's next kChunk nonzeros, from `at` of [at, end): lane l of the group holds those at
// at + l + kLanes i in e[i]; past the end, padding: slab row -1 (read as the zero row), value 0.
template <int kLanes>
__device__ __forceinline__ void load_entries(const SlabParams& p, int at, int end,
                                             typename Groups<kLanes>::Entries& e) {
  const int sub = threadIdx.x % kLanes;
#pragma unroll
  for (int i = 0; i < Groups<kLanes>::kPerLane; ++i) {
    const int k = at + sub + i * kLanes;
    e[i] = k < end ? p.ws.ent[k] : make_int2(-1, 0);
  }
}

// The sum of each group's row of a part, its nonzeros [begin, end) against the slab at shared
// address `slab`, whose row part_rows is zero: a lane's kVecs x 4 columns, the 4 of piece q
// from piece[q] x 16 bytes into a slab row. `head` holds the row's first kChunk nonzeros
// (load_entries), and each chunk's successor loads while it is multiplied. The warp takes as
// many steps as its longest row, rounded up to 4: the steps past a row's end multiply its
// padding.
template <int kLanes, typename G = Groups<kLanes>>
__device__ __forceinline__ void row_sums(const SlabParams& p, uint32_t slab,
                                         const int (&piece)[G::kVecs], int begin, int end,
                                         const typename G::Entries& head,
                                         float (&acc)[G::kVecs][4]) {
  const unsigned zero_row = static_cast<unsigned>(p.part_rows());
  const int most = __reduce_max_sync(kFull, end - begin);
  typename G::Entries e;
#pragma unroll
  for (int i = 0; i < G::kPerLane; ++i) e[i] = head[i];
  for (int c0 = 0; c0 < most; c0 += G::kChunk) {
    typename G::Entries next;
    if (c0 + G::kChunk < most) load_entries<kLanes>(p, begin + c0 + G::kChunk, end, next);
    const int left = most - c0;
#pragma unroll
    for (int j = 0; j < G::kChunk; ++j) {
      if (j % 4 == 0 && j >= left) break;
      const int2 mine = e[j / kLanes];
      const unsigned in = __shfl_sync(kFull, mine.x, j % kLanes, kLanes);
      const float v = __int_as_float(__shfl_sync(kFull, mine.y, j % kLanes, kLanes));
      // Padding, and a slab row that a corrupt structure left unwritten, read the zero row.
      const uint32_t row = slab + min(in, zero_row) * kSlabRowBytes;
#pragma unroll
      for (int q = 0; q < G::kVecs; ++q) {
        float d[4];
        load_shared_vec4(row + piece[q] * 16, d);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[q][i] = fmaf(v, d[i], acc[q][i]);
      }
    }
#pragma unroll
    for (int i = 0; i < G::kPerLane; ++i) e[i] = next[i];
  }
}

// A lane's 4 output columns from c on (feature-major), of which those below n: one 16-byte
// access where vec_ok.
__device__ __forceinline__ void load_out(const SlabParams& p, const float* src, int64_t c,
                                         float (&v)[4]) {
  if (p.vec_ok) {
    load_vec<float, 4>(src, v);
  } else {
    for (int i = 0; i < 4 && c + i < p.n; ++i) v[i] = src[i];
  }
}
__device__ __forceinline__ void store_out(const SlabParams& p, float* dst, int64_t c,
                                          const float (&v)[4]) {
  if (p.vec_ok) {
    store_vec<float, 4>(dst, v);
  } else {
    for (int i = 0; i < 4 && c + i < p.n; ++i) dst[i] = v[i];
  }
}

// The batch-leading output, (n, out_dim), goes out through shared memory: stored straight from
// the walk, each sum of a ranked row takes a 32-byte sector of its own, and at 95-98% sparsity
// those stores took longer than the walk (4096 x 1024 at density 0.02, n = 4096: 0.288 against
// 0.108 ms feature-major). A thread block's slots of step k of its walk are whole lines (kRows
// is a multiple of every block size): output rows [row0, row0 + kRows). The thread block keeps
// the sums of every step of its walk in shared memory, a row of kTile columns each, adds each
// part's sums to them, and writes them out once, after its last part, 32 rows of a column at a
// time (128 bytes along out_dim). Its row groups are as many as that needs (walk_plan).
template <int kLanes>
struct OutTile {
  static constexpr int kRows = Groups<kLanes>::kRows;
  static constexpr int kStride = kTile + 1;  // padded: 32 rows of a column fall in 32 banks
  static constexpr size_t kStepBytes = size_t{kRows} * kStride * sizeof(float);
};

// The output tile `tile` into the output at columns n0 on, by the whole thread block after the
// walk's last barrier: `steps` steps of kRows rows, the first from row `base`, `stride` rows
// apart.
template <int kLanes, typename T = OutTile<kLanes>>
__device__ void write_out_tile(const SlabParams& p, const float* tile, int64_t base, int64_t stride,
                               int64_t steps, int64_t n0) {
  constexpr int kPer = T::kRows / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t at = warp; at < steps * kTile; at += kWarps) {
    const int64_t k = at / kTile, row0 = base + k * stride;
    const int c = static_cast<int>(at % kTile);
    if (n0 + c >= p.n) continue;
    const float* src = tile + k * T::kRows * T::kStride + c;
    float* const dst = static_cast<float*>(p.out) + (n0 + c) * p.out_dim + row0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int r = lane + 32 * i;
      if (row0 + r < p.out_dim) dst[r] = src[r * T::kStride];
    }
  }
}

// A group's slots of one part, first, first + stride, ... (the k-th of them ranked from the
// other end of its line where k is odd, so that no warp takes the longest rows of every line),
// their sums stored on the first part and added to the output on the others (batch-leading: to
// the thread block's output tile). The slots of
// kLanes rows arrive in one load, a lane each, and a row's first nonzeros are loaded while the
// row before it is multiplied: the walk would otherwise wait on two dependent loads from memory
// every row. The lane's columns: 4 from each of n0 + piece[q] x 4.
template <int kLanes, bool kBatchLeading, typename G = Groups<kLanes>>
__device__ void walk_rows(const SlabParams& p, uint32_t slab, float* out_tile,
                          const int (&piece)[G::kVecs], int64_t n0, int64_t part, int64_t first,
                          int64_t stride) {
  const int sub = threadIdx.x % kLanes;
  const bool adds = part > 0;
  const int64_t mine = first < p.rows() ? ceil_div(p.rows() - first, stride) : 0;
  const int64_t steps = __shfl_sync(kFull, mine, 0);  // the warp's first group has the most
  for (int64_t k0 = 0; k0 < steps; k0 += kLanes) {
    int4 my_slot = make_int4(0, 0, 0, 0);
    if (const int64_t k = k0 + sub; k < mine) {
      my_slot = p.slot(part, (first + k * stride) ^ (k % 2 ? p.beta - 1 : 0));
    }
    int begin = __shfl_sync(kFull, my_slot.x, 0, kLanes);
    int end = __shfl_sync(kFull, my_slot.y, 0, kLanes);
    int row = __shfl_sync(kFull, my_slot.z, 0, kLanes);
    typename G::Entries head, next_head;
    load_entries<kLanes>(p, begin, end, head);
    const int batch = static_cast<int>(min(int64_t{kLanes}, steps - k0));
    for (int j = 0; j < batch; ++j) {
      const int next = (j + 1) % kLanes;
      const int next_begin = __shfl_sync(kFull, my_slot.x, next, kLanes);
      const int next_end = __shfl_sync(kFull, my_slot.y, next, kLanes);
      const int next_row = __shfl_sync(kFull, my_slot.z, next, kLanes);
      if (j + 1 < batch) load_entries<kLanes>(p, next_begin, next_end, next_head);
      const int64_t k = k0 + j;
      float acc[G::kVecs][4] = {};
      if constexpr (kBatchLeading) {
        row_sums<kLanes>(p, slab, piece, begin, end, head, acc);
        // The row's place in the tile: step k's rows begin at first + k stride - group.
        if (k < mine) {
          const int64_t at = k * G::kRows + row - (first + k * stride) + threadIdx.x / kLanes;
          float* const sums = out_tile + at * OutTile<kLanes>::kStride;
#pragma unroll
          for (int q = 0; q < G::kVecs; ++q) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              float& sum = sums[piece[q] * 4 + i];
              sum = adds ? sum + acc[q][i] : acc[q][i];
            }
          }
        }
      } else {
        // Where this group has a row of the matrix; a part adds nothing to a row without
        // nonzeros in it.
        const bool writes = k < mine && row < p.out_dim && (!adds || begin < end);
        float* const dst = static_cast<float*>(p.out) + int64_t{row} * p.n + n0;
#pragma unroll
        for (int q = 0; q < G::kVecs; ++q) {
          const int64_t c = n0 + piece[q] * 4;
          if (adds && writes && c < p.n) load_out(p, dst + piece[q] * 4, c, acc[q]);
        }
        row_sums<kLanes>(p, slab, piece, begin, end, head, acc);
#pragma unroll
        for (int q = 0; q < G::kVecs; ++q) {
          const int64_t c = n0 + piece[q] * 4;
          if (writes && c < p.n) store_out(p, dst + piece[q] * 4, c, acc[q]);
        }
      }
      begin = next_begin;
      end = next_end;
      row = next_row;
#pragma unroll
      for (int i = 0; i < G::kPerLane; ++i) head[i] = next_head[i];
    }
  }
}

// Thread block (x, y): n-tile x of the slots y * kRows + g, stepping by gridDim.y * kRows, group
// of lanes g taking each, for every part of the input axis in turn.
template <int kLanes, bool kBatchLeading>
__global__ void __launch_bounds__(kThreads, 1) slab_kernel(const SlabParams p) {
  using G = Groups<kLanes>;
  extern __shared__ __align__(16) unsigned char smem[];
  float* const slab = reinterpret_cast<float*>(smem);
  // A lane's 16-byte pieces of a slab row, kLanes apart; odd groups take them in the other
  // order, so that the two groups of a quarter warp read different banks.
  const int sub = threadIdx.x % kLanes, group = threadIdx.x / kLanes;
  int piece[G::kVecs];
#pragma unroll
  for (int q = 0; q < G::kVecs; ++q) piece[q] = sub + kLanes * ((q + group) % G::kVecs);
  const int64_t n0 = int64_t{blockIdx.x} * kTile;
  const int64_t first = int64_t{blockIdx.y} * G::kRows + group;
  const int64_t stride = int64_t{gridDim.y} * G::kRows;
  // The batch-leading output's tile follows the slab and its zero row, which padding reads; the
  // staging's barrier publishes the zero row.
  float* const out_tile = reinterpret_cast<float*>(smem + slab_bytes(p));
  if (threadIdx.x < kTile) slab[p.part_rows() * kTile + threadIdx.x] = 0.0f;
  for (int64_t part = 0; part < p.parts; ++part) {
    if (part > 0) __syncthreads();  // every warp is done with the slab before it is restaged
    stage_slab<kBatchLeading>(p, slab, part * p.part_rows(), n0);
    // The sort, launched before this kernel, has finished and its workspace is visible.
    if (part == 0) cudaGridDependencySynchronize();
    walk_rows<kLanes, kBatchLeading>(p, shared_address(slab), out_tile, piece, n0, part, first,
                                     stride);
  }
  if constexpr (kBatchLeading) {
    __syncthreads();
    const int64_t base = first - group;
    const int64_t steps = base < p.rows() ? ceil_div(p.rows() - base, stride) : 0;
    write_out_tile<kLanes>(p, out_tile, base, stride, steps, n0);
  }
}

// Row groups per n-tile, at least `fewest`, for thread blocks that take `block_rows` slots at
// once: the grid takes ceil(tiles * groups / slots) waves of rows / groups slots each; the
// fewest groups within 5% of the best, each restaging the slabs, with a slot for every group of
// lanes.
int64_t row_groups(int64_t tiles, int64_t rows, int64_t slots, int64_t block_rows, int64_t fewest) {
  auto cost = [&](int64_t g) {
    return static_cast<double>(ceil_div(tiles * g, slots)) * ceil_div(rows, g);
  };
  int64_t best = fewest;
  for (int64_t g = fewest + 1; g <= std::min<int64_t>(rows / block_rows, 65535); ++g) {
    if (cost(g) < 0.95 * cost(best)) best = g;
  }
  return best;
}

// The grid of the walk in groups of kLanes lanes: row groups, the steps of a thread block's walk
// and its shared memory (none: the output's tile does not fit).
struct WalkPlan {
  int64_t groups = 0, steps = 0;
  size_t smem = 0;
};
template <int kLanes, bool kBatchLeading>
WalkPlan walk_plan(const SlabParams& p, const DeviceInfo& dev, int64_t tiles, int64_t slots) {
  constexpr int64_t kRows = Groups<kLanes>::kRows;
  const size_t slab = slab_bytes(p), most = static_cast<size_t>(dev.max_smem_optin);
  if (slab > most) return {};
  int64_t fewest = 1;  // batch-leading: as many as leave a thread block's steps room
  if constexpr (kBatchLeading) {
    const auto most_steps = static_cast<int64_t>((most - slab) / OutTile<kLanes>::kStepBytes);
    if (most_steps < 1) return {};
    fewest = ceil_div(p.rows(), most_steps * kRows);
  }
  WalkPlan plan;
  plan.groups = row_groups(tiles, p.rows(), slots, kRows, fewest);
  plan.steps = ceil_div(p.rows(), plan.groups * kRows);
  plan.smem = slab + (kBatchLeading ? plan.steps * OutTile<kLanes>::kStepBytes : 0);
  return plan.groups <= 65535 ? plan : WalkPlan{};
}

template <int kLanes, bool kBatchLeading>
cudaError_t launch_walk(const SlabParams& p, const DeviceInfo& dev, cudaStream_t stream,
                        int64_t tiles, const WalkPlan& plan) {
  if (plan.groups == 0) return cudaErrorInvalidValue;
  constexpr auto kKernel = slab_kernel<kLanes, kBatchLeading>;
  // Raised once to the most any slab needs, for every later launch.
  cudaError_t err = allow_smem<kKernel>(dev.device, dev.max_smem_optin);
  if (err != cudaSuccess) return err;
  // Thread block (n-tile, row group), as the sort's programmatic dependent (slab_kernel waits
  // for it after staging).
  return launch_lines(kKernel, p, tiles, 1, plan.groups, kThreads, plan.smem, stream,
                      /*programmatic=*/true);
}

// Four lanes a row where each group walks at least two rows; else eight. A group that walks
// one row takes as long as that row, and the warps that drew a line's longest rows hold their
// thread block: with 8 rows a warp, 1.1-1.2x longer than with 4 on magnitude-pruned layers.
// With two, it takes a long row and a short one (walk_rows).
template <bool kBatchLeading>
cudaError_t launch_multiply(const SlabParams& p, const DeviceInfo& dev, cudaStream_t stream) {
  const int64_t tiles = ceil_div(p.n, kTile);
  if (tiles > INT32_MAX) return cudaErrorInvalidValue;
  // Both walks keep one thread block a multiprocessor.
  const int64_t slots =
      resident_on_gpu<slab_kernel<4, kBatchLeading>>(1, kThreads, slab_bytes(p), dev);
  const WalkPlan four = walk_plan<4, kBatchLeading>(p, dev, tiles, slots);
  if (four.steps >= 2) return launch_walk<4, kBatchLeading>(p, dev, stream, tiles, four);
  return launch_walk<8, kBatchLeading>(p, dev, stream, tiles,
                                       walk_plan<8, kBatchLeading>(p, dev, tiles, slots));
}

}  // namespace

size_t spmm_slab_workspace_bytes(const SpmmArgs& a) {
  const int beta = a.shape.block_size;
  const SlabParts parts = slab_parts(a.shape.line_length(), beta);
  return SlabWorkspace::bytes(a.nnz, a.shape.num_lines() * beta, parts.parts);
}

// Thread blocks that sort one (line, part): `requested` (1 to 8) when given, else enough to
// fill the multiprocessors, up to a portable cluster of 8, and no more than give each warp a
// chunk of 32 nonzeros. The sort of a small matrix otherwise runs on a few multiprocessors: 4
// thread blocks took 13 us on a 512 x 512 layer at 95% sparsity, as long as its multiply.
int sort_cluster(int requested, const DeviceInfo& dev, int64_t nnz, int64_t line_parts) {
  if (requested > 0)
    return requested <= 8 && (requested == 1 || dev.cluster_launch) ? requested : 0;
  if (!dev.cluster_launch) return 1;
  const int64_t fill = ceil_div(dev.num_sms, line_parts);
  const int64_t chunks = ceil_div(nnz, line_parts * 32 * kWarps);
  return static_cast<int>(std::clamp<int64_t>(std::min(fill, chunks), 1, 8));
}

cudaError_t launch_spmm_slab(const SpmmArgs& a, const DeviceInfo& dev, cudaStream_t stream,
                             int cluster) {
  const int beta = a.shape.block_size;
  SlabParams p{};
  set_line_params(a, &p);
  if (!slab_serves(beta, a.dtype == DType::kF32) || a.workspace == nullptr || a.nnz > INT32_MAX ||
      p.num_lines > INT32_MAX || p.line_length == 0) {
    return cudaErrorInvalidValue;
  }
  const SlabParts parts = slab_parts(p.line_length, beta);
  if (parts.parts > 65535) return cudaErrorInvalidValue;  // the sort's grid
  p.parts = parts.parts;
  p.part_length = parts.length;
  p.beta = beta;
  p.cluster = sort_cluster(cluster, dev, a.nnz, p.num_lines * p.parts);
  if (p.cluster == 0) return cudaErrorInvalidValue;
  p.ws = SlabWorkspace::at(a.workspace, a.nnz);
  // 16-byte accesses of D along n, and of the output, feature-major; of D along the input axis
  // batch-leading (the output goes out through shared memory).
  const bool dense_aligned = reinterpret_cast<uintptr_t>(a.dense) % 16 == 0;
  p.vec_ok = a.batch_leading
                 ? p.in_dim % 4 == 0 && dense_aligned
                 : a.n % 4 == 0 && dense_aligned && reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  cudaError_t err = dispatch_beta(beta, [&](auto b) -> cudaError_t {
    constexpr int kBeta = decltype(b)::value;
    if constexpr (kBeta > kSlabMaxBeta) {
      return cudaErrorInvalidValue;
    } else {
      return dispatch_layout(a.shape.transpose, false, [&](auto tr, auto) {
        return launch_lines(sort_lines_kernel<kBeta, decltype(tr)::value>, p, p.num_lines,
                            p.cluster, p.parts, kThreads, 0, stream);
      });
    }
  });
  if (err != cudaSuccess) return err;
  return a.batch_leading ? launch_multiply<true>(p, dev, stream)
                         : launch_multiply<false>(p, dev, stream);
}

}  // namespace jaxcsb::cuda
