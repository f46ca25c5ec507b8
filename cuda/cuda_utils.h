// Device helpers shared by the CUDA kernels: value conversions, vector loads, asynchronous
// copies into shared memory. Included only from .cu files.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_kernels.h"

namespace jaxcsb::cuda {

// Launches `kernel` with `config` and returns the launch's own error. A failed launch also
// sets CUDA's per-thread last error, which is cleared here: it is reported by this call, and a
// later call that checks cudaGetLastError must not see it as its own.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(const cudaLaunchConfig_t& config, void (*kernel)(Params...),
                          Args&&... args) {
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) cudaGetLastError();
  return err;
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What every SpMM kernel needs to walk the lines of a product: the CSB arrays, the operands,
// the sizes, and the launch's n-tiles and cluster size.
struct LineParams {
  const int32_t* block_ptr;
  const uint16_t* local;
  const void* values;
  const void* dense;
  void* out;
  int64_t nnz;
  int64_t n;
  int64_t in_dim;
  int64_t out_dim;
  int64_t num_lines;
  int64_t line_length;
  int64_t block_cols;
  int64_t num_tiles;
  int cluster;  // thread blocks that split one line
};

inline void set_line_params(const SpmmArgs& a, LineParams* p) {
  p->block_ptr = a.block_ptr;
  p->local = a.local;
  p->values = a.values;
  p->dense = a.dense;
  p->out = a.out;
  p->nnz = a.nnz;
  p->n = a.n;
  p->in_dim = a.shape.in_dim();
  p->out_dim = a.shape.out_dim();
  p->num_lines = a.shape.num_lines();
  p->line_length = a.shape.line_length();
  p->block_cols = a.shape.block_cols();
}

// The most positions of a line of `line_length` that one thread block of a cluster of
// `cluster` walks (line_part).
inline int64_t rank_positions(int64_t line_length, int cluster) {
  return ceil_div(line_length, cluster);
}

// The smallest cluster that a launch of lines takes: `requested` when given, else `smallest`
// where the device launches clusters, else 1. line_cluster's own choice starts there.
inline int smallest_line_cluster(int requested, const DeviceInfo& dev, int smallest) {
  if (requested > 0) return requested;
  return dev.cluster_launch ? smallest : 1;
}

// Thread blocks per cluster that split one line of a product: `requested` when given (1, 2, 4
// or 8), else the largest power of two from `smallest` up to 8 with which `blocks` (lines x
// n-tiles) thread blocks still run in one wave (slots(c): how many of them the GPU holds at once
// at cluster size c), with at least `min_positions` of the line's positions each. A second wave
// would take as long as the first with half the positions each, and add the cluster's reduction
// of partial tiles.
template <class Slots>
cudaError_t line_cluster(int requested, const DeviceInfo& dev, int64_t blocks, int64_t line_length,
                         int64_t min_positions, Slots slots, int* csize, int smallest = 1) {
  if (requested > 1 && !dev.cluster_launch) return cudaErrorNotSupported;
  int c = smallest_line_cluster(requested, dev, smallest);
  if (requested <= 0) {
    while (dev.cluster_launch && c < 8 && c * 2 * min_positions <= line_length &&
           blocks * c * 2 <= slots(c * 2)) {
      c *= 2;
    }
  }
  if (c != 1 && c != 2 && c != 4 && c != 8) return cudaErrorInvalidValue;
  *csize = c;
  return cudaSuccess;
}

// The launch attribute that groups thread blocks along x in clusters of `csize`.
inline cudaLaunchAttribute cluster_attribute(int csize) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(csize);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  return attr;
}

// The launch attribute that lets a kernel start while the kernel ahead of it in the stream
// still runs, once every thread block of that one has called
// cudaTriggerProgrammaticLaunchCompletion; it calls cudaGridDependencySynchronize before it
// reads what that one writes.
inline cudaLaunchAttribute programmatic_attribute() {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  return attr;
}

// Launches kernel(params) on lines * csize x tiles thread blocks, in clusters of csize blocks
// along x (one cluster per line); `programmatic`: as the programmatic dependent of the kernel
// ahead of it in the stream (programmatic_attribute).
template <typename Params>
cudaError_t launch_lines(void (*kernel)(Params), const Params& params, int64_t lines, int csize,
                         int64_t tiles, int threads, size_t smem, cudaStream_t stream,
                         bool programmatic = false) {
  if (lines * csize > INT32_MAX) return cudaErrorInvalidConfiguration;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(lines * csize), static_cast<unsigned>(tiles), 1);
  config.blockDim = dim3(threads, 1, 1);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned count = 0;
  if (csize > 1) attrs[count++] = cluster_attribute(csize);
  if (programmatic) attrs[count++] = programmatic_attribute();
  config.attrs = attrs;
  config.numAttrs = count;
  return launch_kernel(config, kernel, params);
}

// Raises the kernel's dynamic shared-memory limit when it needs more than the default 48 KiB,
// once per device: later launches (possibly inside a CUDA-graph capture) make no such call.
// With max_carveout the multiprocessors also give shared memory all the space that L1 can
// spare, for kernels whose occupancy is bound by shared memory. The kernel is a template
// argument so that every kernel has its own record (their function pointer types are all the
// same).
template <auto kKernel>
cudaError_t allow_smem(int device, size_t smem, bool max_carveout = false) {
  if (smem <= 48 * 1024) return cudaSuccess;
  static std::atomic<bool> done[64];
  const bool cached = device >= 0 && device < 64;
  if (cached && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err == cudaSuccess && max_carveout) {
    err = cudaFuncSetAttribute(kKernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
  }
  if (err == cudaSuccess && cached) done[device].store(true, std::memory_order_release);
  return err;
}

// Thread blocks of kKernel that the whole GPU holds at once when launched in clusters of
// `csize` (1: without clusters), with `threads` threads and `smem` bytes of dynamic shared
// memory each, after allow_smem (whose carveout the count takes into account). A cluster's
// blocks share one GPC and a launch with clusters holds fewer blocks per multiprocessor than
// one without (the H100 keeps 8 instead of 12 of the 64-thread SpMM blocks), so for clusters
// the runtime counts whole clusters. The count only guides the launch shape: without clusters
// at least one block per multiprocessor, with clusters 0 when the runtime cannot tell. Asked
// once per device and shape, since launches would otherwise pay microseconds of host time.
template <auto kKernel>
int64_t resident_on_gpu(int csize, int threads, size_t smem, const DeviceInfo& dev) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, size_t>, int64_t> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(dev.device, csize, threads, smem);
  if (auto it = known.find(key); it != known.end()) return it->second;

  int64_t blocks = 0;
  if (csize <= 1) {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, threads, smem) !=
        cudaSuccess) {
      cudaGetLastError();
    }
    blocks = int64_t{dev.num_sms} * std::max(per_sm, 1);
  } else {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>(csize), 1, 1);
    config.blockDim = dim3(static_cast<unsigned>(threads), 1, 1);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr = cluster_attribute(csize);
    config.attrs = &attr;
    config.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kKernel, &config) != cudaSuccess) {
      cudaGetLastError();
    }
    blocks = int64_t{clusters} * csize;
  }
  known.emplace(key, blocks);
  return blocks;
}

// How a launch counts the thread blocks that the GPU holds at once when it sizes its cluster
// (line_cluster).
enum class SlotCount {
  kUnclustered,  // as if launched without clusters: more than fit at once in clusters
  kClustered,    // as a launch in clusters holds them (resident_on_gpu)
  kOnePerSm,     // one per multiprocessor first, else unclustered (one_per_sm_cluster)
};

// The launch shape of a kernel family whose warps each own whole units of a line's CSB blocks
// and add their partial results at the end (narrow n, tensor cores, the n = 1 walk).
struct WarpLaunch {
  int64_t tile;         // n in tiles of this many columns
  int units_per_block;  // units of a CSB block: the block itself, or bands of its rows
  int units_per_warp;   // about this many units per warp
  int max_warps;        // at most this many warps per thread block
  size_t warp_smem;     // bytes of dynamic shared memory per warp
  bool max_carveout;    // shared memory bounds the occupancy: the largest carveout (allow_smem)
  SlotCount slots;
  bool all_warps = false;  // every thread block has max_warps warps, whatever its line's length
  // On lines of one CSB block, a thread block walks several tiles of n (the grid one wave deep),
  // expanding its block once.
  bool walk_one_block_lines = false;
  int smallest_cluster = 1;  // the smallest cluster that the launch's own choice takes
};

// Whether `blocks` thread blocks, a line (tile) each, outnumber the multiprocessors by less than
// half: some multiprocessors then walk two lines and the rest one, while halves of the lines
// (clusters of two) give each at most three halves, 1.5 lines of work against 2. A rule of one
// wave sees one wave either way.
inline bool halves_balance(int64_t blocks, int num_sms) {
  return blocks > num_sms && 2 * blocks < 3 * int64_t{num_sms};
}

// The cluster that SlotCount::kOnePerSm takes for `blocks` thread blocks (lines x n-tiles) of
// lines of `line_length` positions, before any count of resident blocks: the largest that keeps
// one thread block per multiprocessor where that allows clusters of two or more; 2 where halves
// balance the multiprocessors (halves_balance); else 0, and the unclustered count decides.
inline int one_per_sm_cluster(const DeviceInfo& dev, int64_t blocks, int64_t line_length) {
  int c = 0;
  if (2 * blocks <= dev.num_sms) {
    line_cluster(0, dev, blocks, line_length, 2, [&](int) { return int64_t{dev.num_sms}; }, &c);
  } else if (halves_balance(blocks, dev.num_sms) && line_length >= 4 && dev.cluster_launch) {
    c = 2;
  }
  return c > 1 ? c : 0;
}

// Allows kKernel the shared memory of `family` at its most warps (allow_smem).
template <auto kKernel>
cudaError_t allow_family_smem(const WarpLaunch& family, const DeviceInfo& dev) {
  const size_t max_smem = family.max_warps * family.warp_smem;
  if (max_smem > static_cast<size_t>(dev.max_smem_optin)) return cudaErrorInvalidConfiguration;
  return allow_smem<kKernel>(dev.device, max_smem, family.max_carveout);
}

// Waves that `blocks` thread blocks of kKernel take, launched as `family` at its most warps and
// without clusters; INT64_MAX where the kernel cannot run.
template <auto kKernel>
int64_t family_waves(const WarpLaunch& family, int64_t blocks, const DeviceInfo& dev) {
  if (allow_family_smem<kKernel>(family, dev) != cudaSuccess) return INT64_MAX;
  const int w = family.max_warps;
  return ceil_div(blocks, resident_on_gpu<kKernel>(1, 32 * w, w * family.warp_smem, dev));
}

// Launches a kernel of the warp families as `family` describes, with a cluster that splits the
// line when there are few lines (line_cluster).
template <auto kKernel>
cudaError_t launch_warp_lines(LineParams p, const WarpLaunch& family, const DeviceInfo& dev,
                              cudaStream_t stream, const SpmmOptions& options) {
  cudaError_t err = allow_family_smem<kKernel>(family, dev);
  if (err != cudaSuccess) return err;
  auto warps = [&](int cluster) {
    if (family.all_warps) return family.max_warps;
    const int64_t units = rank_positions(p.line_length, cluster) * family.units_per_block;
    return static_cast<int>(
        std::clamp<int64_t>(units / family.units_per_warp, 1, family.max_warps));
  };
  p.num_tiles = ceil_div(p.n, family.tile);
  const int64_t tiles_y = std::min<int64_t>(p.num_tiles, 65535);
  const int64_t blocks = p.num_lines * tiles_y;
  auto slots = [&](int cluster) -> int64_t {
    const int w = warps(cluster);
    const int csize = family.slots == SlotCount::kClustered ? cluster : 1;
    return resident_on_gpu<kKernel>(csize, 32 * w, w * family.warp_smem, dev);
  };
  int requested = options.cluster;
  if (requested <= 0 && family.slots == SlotCount::kOnePerSm) {
    requested = one_per_sm_cluster(dev, blocks, p.line_length);
  }
  err = line_cluster(requested, dev, blocks, p.line_length, 2, slots, &p.cluster,
                     family.smallest_cluster);
  if (err != cudaSuccess) return err;
  int64_t extent = tiles_y;
  if (family.walk_one_block_lines && p.line_length == 1 && p.cluster == 1) {
    extent = std::clamp<int64_t>(slots(1) / p.num_lines, 1, tiles_y);
  }
  const int w = warps(p.cluster);
  return launch_lines(kKernel, p, p.num_lines, p.cluster, extent, 32 * w, w * family.warp_smem,
                      stream);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
// Round to nearest even, as XLA does.
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

template <int kBytes>
struct VecStorage;
template <>
struct VecStorage<2> {
  using type = uint16_t;
};
template <>
struct VecStorage<4> {
  using type = uint32_t;
};
template <>
struct VecStorage<8> {
  using type = uint2;
};
template <>
struct VecStorage<16> {
  using type = uint4;
};

// Loads kVec consecutive values with one aligned vector access and widens them to float.
template <typename T, int kVec>
__device__ __forceinline__ void load_vec(const T* src, float (&dst)[kVec]) {
  using V = typename VecStorage<sizeof(T) * kVec>::type;
  union {
    V raw;
    T elems[kVec];
  } u;
  u.raw = *reinterpret_cast<const V*>(src);
#pragma unroll
  for (int i = 0; i < kVec; ++i) dst[i] = to_float(u.elems[i]);
}

// Narrows kVec float32 values to T and stores them with one aligned vector access.
template <typename T, int kVec>
__device__ __forceinline__ void store_vec(T* dst, const float (&src)[kVec]) {
  using V = typename VecStorage<sizeof(T) * kVec>::type;
  union {
    V raw;
    T elems[kVec];
  } u;
#pragma unroll
  for (int i = 0; i < kVec; ++i) u.elems[i] = from_float<T>(src[i]);
  *reinterpret_cast<V*>(dst) = u.raw;
}

// The 32-bit shared-memory address of `smem`, for load_shared_vec4.
__device__ __forceinline__ uint32_t shared_address(const void* smem) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(smem));
}
// Loads 4 floats from a 16-byte aligned shared-memory address: one instruction, where a generic
// pointer would have the compiler rebuild the shared window's base at every load.
__device__ __forceinline__ void load_shared_vec4(uint32_t address, float (&dst)[4]) {
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(dst[0]), "=f"(dst[1]), "=f"(dst[2]), "=f"(dst[3])
               : "r"(address));
}

// Asynchronous copy of 16 (or 4) bytes from global to shared memory; with `src_bytes` smaller
// than the copy the rest is zero-filled, and with 0 nothing is read.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}
// Closes the thread's group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of the thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// The nonzero range [begin, end) of block b, clamped to [0, nnz] so that a corrupt block_ptr
// never leads outside the local and value arrays.
__device__ __forceinline__ void block_range(const int32_t* block_ptr, int64_t b, int64_t nnz,
                                            int64_t* begin, int64_t* end) {
  int64_t e0 = block_ptr[b], e1 = block_ptr[b + 1];
  e0 = e0 < 0 ? 0 : (e0 > nnz ? nnz : e0);
  e1 = e1 < e0 ? e0 : (e1 > nnz ? nnz : e1);
  *begin = e0;
  *end = e1;
}
__device__ __forceinline__ void block_range(const int32_t* block_ptr, int64_t b, int64_t nnz,
                                            int* begin, int* end) {
  int64_t e0 = 0, e1 = 0;
  block_range(block_ptr, b, nnz, &e0, &e1);
  *begin = static_cast<int>(e0);  // within [0, nnz], and nnz fits block_ptr's 32 bits
  *end = static_cast<int>(e1);
}

// The sum of `value` over lanes 0 .. this one of a full warp.
template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T value) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const T other = __shfl_up_sync(0xffffffffu, value, d);
    if (lane >= d) value += other;
  }
  return value;
}

// start[i] = counts[0] + ... + counts[i - 1] for i = 0 .. kN (start[kN]: the total), by one
// warp; start may be counts itself.
template <int kN>
__device__ __forceinline__ void warp_exclusive_scan(const int* counts, int* start) {
  constexpr int kPer = (kN + 31) / 32;  // lane l sums kPer consecutive counts
  const int lane = threadIdx.x % 32;
  int c[kPer], sum = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int r = lane * kPer + i;
    c[i] = r < kN ? counts[r] : 0;
    sum += c[i];
  }
  const int incl = warp_inclusive_sum(sum);
  int run = incl - sum;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int r = lane * kPer + i;
    if (r < kN) start[r] = run;
    run += c[i];
  }
  if (lane == 31) start[kN] = incl;
}

// Rank `rank`'s even share [begin, end) of `count` units split over the `parts` thread blocks
// of a cluster (a line's positions, a tile's rows, the chunks of n).
template <typename I>
struct Share {
  I begin, end;
};
template <typename I>
__device__ __forceinline__ Share<I> even_share(I count, int parts, int rank) {
  return {rank * count / parts, (rank + 1) * count / parts};
}

// A barrier over the cluster where its thread blocks share the work, else over the thread block
// alone (which costs less).
__device__ __forceinline__ void sync_cluster_or_block(bool clustered) {
  if (clustered) {
    cooperative_groups::this_cluster().sync();
  } else {
    __syncthreads();
  }
}

// The sum over the `csize` thread blocks of a cluster of element i of each one's `part` (shared
// memory), in rank order: a fixed order, so the result is reproducible.
__device__ __forceinline__ float cluster_sum(const float* part, int csize, int i) {
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  float sum = 0.0f;
  for (int q = 0; q < csize; ++q) sum += cluster.map_shared_rank(part, q)[i];
  return sum;
}

// The part of a line that a thread block of the narrow family walks: the cluster's line, and
// the block's even share [pos_begin, pos_end) of the line's positions.
struct LinePart {
  int64_t line, pos_begin, pos_end;
};
__device__ __forceinline__ LinePart line_part(const LineParams& p) {
  const int csize = p.cluster, rank = static_cast<int>(blockIdx.x % csize);
  const Share<int64_t> positions = even_share(p.line_length, csize, rank);
  return {blockIdx.x / csize, positions.begin, positions.end};
}

// The index of the block at position `pos` of a line of a matrix with `block_cols` block
// columns: along a block-row of S, or down a block-column when the product is transposed.
__device__ __forceinline__ int64_t line_block(int64_t block_cols, int64_t line, int64_t pos,
                                              bool transpose) {
  return transpose ? pos * block_cols + line : line * block_cols + pos;
}
__device__ __forceinline__ int64_t line_block(const LineParams& p, int64_t line, int64_t pos,
                                              bool transpose) {
  return line_block(p.block_cols, line, pos, transpose);
}

// Asks L2 for the nonzeros (local indices and values) of a warp's units of a line after its
// first one, which the warp loads at once: those numbered first + step, first + 2 step, ...
// below end, with `parts` units to a block (each taken as that share of the block's nonzeros),
// split over the lanes. A walk over them would otherwise wait on memory at every dependent load.
template <typename T>
__device__ __forceinline__ void prefetch_blocks(const LineParams& p, const T* values, int64_t line,
                                                bool transpose, int parts, int64_t first,
                                                int64_t end, int64_t step) {
  const int lane = threadIdx.x % 32;
  for (int64_t unit = first + step; unit < end; unit += step) {
    int64_t b0, b1;
    block_range(p.block_ptr, line_block(p, line, unit / parts, transpose), p.nnz, &b0, &b1);
    const int64_t part = unit % parts;
    const int64_t e0 = b0 + (b1 - b0) * part / parts, e1 = b0 + (b1 - b0) * (part + 1) / parts;
    const int64_t share = (e1 - e0 + 31) / 32;
    const int64_t lo = e0 + lane * share, hi = std::min(e1, lo + share);
    for (int64_t e = lo; e < hi; e += 128 / sizeof(T)) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(values + e));
    }
    for (int64_t e = lo; e < hi; e += 64) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p.local + e));
    }
  }
}

// Calls f(std::integral_constant<int, beta>{}) for the supported block sizes.
template <typename F>
cudaError_t dispatch_beta(int beta, F&& f) {
  switch (beta) {
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    case 256:
      return f(std::integral_constant<int, 256>{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(std::bool_constant<first>{}, std::bool_constant<second>{}): two layout flags as
// compile-time constants (an SpMM's direction and dense layout, an SDDMM's operand layouts).
template <typename F>
cudaError_t dispatch_layout(bool first, bool second, F&& f) {
  using N = std::false_type;
  using Y = std::true_type;
  if (!first) return second ? f(N{}, Y{}) : f(N{}, N{});
  return second ? f(Y{}, Y{}) : f(Y{}, N{});
}

// Calls f(type tag) with the value type of `dtype`.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      return f(float{});
    case DType::kBF16:
      return f(__nv_bfloat16{});
    case DType::kF16:
      return f(__half{});
  }
  return cudaErrorInvalidValue;
}

// Adds the warps' partial tiles of a thread block, in warp order, into warp 0's: warp w's
// element (r, c) is at tiles[w * warp_stride + r * stride + c], for r < rows and c < width.
// Called by every thread of the block once each warp has written its tile.
__device__ __forceinline__ void add_warp_tiles(float* tiles, int warp_stride, int rows, int width,
                                               int stride) {
  const int warps = blockDim.x / 32;
  __syncthreads();
  for (int i = threadIdx.x; i < rows * width; i += blockDim.x) {
    const int o = i / width * stride + i % width;
    float s = tiles[o];
    for (int w = 1; w < warps; ++w) s += tiles[w * warp_stride + o];
    tiles[o] = s;
  }
}

// The end of a line's n-tile, called by every thread of every block of the line's cluster once
// each block holds its float32 partial tile `red` (beta rows of kWidth columns, row stride
// kStride): the blocks add the cluster's tiles in rank order and each writes its share of the
// rows, with consecutive threads along the output's contiguous axis, four values per thread and
// access where that axis is n and the output's rows allow it. Every output element is written
// once, by a fixed sum order. The tile's sizes are compile-time constants so that the
// per-element index arithmetic is shifts and masks: where a line holds a single CSB block, the
// epilogue is as large a part of a thread block's work as the multiply-adds. A block without a
// cluster has a loop of its own, which reads its tile as shared memory and divides by no
// run-time share of the rows.
template <typename T, int kBeta, int kWidth, int kStride, bool kBatchLeading>
__device__ __forceinline__ void write_line_tile(const LineParams& p, const float* red, int64_t line,
                                                int64_t n0) {
  namespace cg = cooperative_groups;
  const int csize = p.cluster, rank = static_cast<int>(blockIdx.x % csize);
  sync_cluster_or_block(csize > 1);
  const int64_t out_base = line * kBeta;
  const int out_rows = static_cast<int>(std::min<int64_t>(kBeta, p.out_dim - out_base));
  const int n_valid = static_cast<int>(std::min<int64_t>(kWidth, p.n - n0));
  // The tile's element (r, c) goes to out[r * row_step + c * col_step] past its origin.
  T* origin =
      static_cast<T*>(p.out) + (kBatchLeading ? n0 * p.out_dim + out_base : out_base * p.n + n0);
  const int64_t row_step = kBatchLeading ? 1 : p.n, col_step = kBatchLeading ? p.out_dim : 1;
  // Groups of four values along n, where the tile's rows and the output's rows allow them.
  constexpr bool kBy4 = !kBatchLeading && kWidth % 4 == 0 && kStride % 4 == 0;
  constexpr int kGroups = kBy4 ? kWidth / 4 : 1;
  const bool by4 =
      kBy4 && p.n % 4 == 0 && reinterpret_cast<uintptr_t>(p.out) % (4 * sizeof(T)) == 0;

  if (csize == 1) {
    if (by4) {
      for (int i = threadIdx.x; i < kBeta * kGroups; i += blockDim.x) {
        const int r = i / kGroups, c = i % kGroups * 4;
        if (r < out_rows && c < n_valid) {
          float v[4];
          load_vec<float, 4>(red + r * kStride + c, v);
          store_vec<T, 4>(origin + r * row_step + c, v);
        }
      }
    } else {
      for (int i = threadIdx.x; i < kBeta * kWidth; i += blockDim.x) {
        const int r = kBatchLeading ? i % kBeta : i / kWidth;
        const int c = kBatchLeading ? i / kBeta : i % kWidth;
        if (r < out_rows && c < n_valid) {
          origin[r * row_step + c * col_step] = from_float<T>(red[r * kStride + c]);
        }
      }
    }
    __syncthreads();
    return;
  }

  const cg::cluster_group cluster = cg::this_cluster();
  const Share<int> rows = even_share(kBeta, csize, rank);
  const int r_lo = rows.begin, share = rows.end - rows.begin;
  if (by4) {
    for (int i = threadIdx.x; i < share * kGroups; i += blockDim.x) {
      const int r = r_lo + i / kGroups, c = i % kGroups * 4;
      if (r >= out_rows || c >= n_valid) continue;
      float sum[4] = {}, v[4];
      for (int q = 0; q < csize; ++q) {
        load_vec<float, 4>(cluster.map_shared_rank(red, q) + r * kStride + c, v);
#pragma unroll
        for (int j = 0; j < 4; ++j) sum[j] += v[j];
      }
      store_vec<T, 4>(origin + r * row_step + c, sum);
    }
  } else {
    for (int i = threadIdx.x; i < share * kWidth; i += blockDim.x) {
      const int r = r_lo + (kBatchLeading ? i % share : i / kWidth);
      const int c = kBatchLeading ? i / share : i % kWidth;
      if (r >= out_rows || c >= n_valid) continue;
      origin[r * row_step + c * col_step] = from_float<T>(cluster_sum(red, csize, r * kStride + c));
    }
  }
  cluster.sync();  // no block reuses or leaves its tile while others read it
}

}  // namespace jaxcsb::cuda
