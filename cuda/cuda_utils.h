// Device helpers shared by the CUDA kernels: value conversions, vector loads, asynchronous
// copies into shared memory. Included only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
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

// Raises the kernel's dynamic shared-memory limit when it needs more than the default 48 KiB,
// once per device: later launches (possibly inside a CUDA-graph capture) make no such call.
// The kernel is a template argument so that every kernel has its own record (their function
// pointer types are all the same).
template <auto kKernel>
cudaError_t allow_smem(int device, size_t smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  static std::atomic<bool> done[64];
  const bool cached = device >= 0 && device < 64;
  if (cached && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err == cudaSuccess && cached) done[device].store(true, std::memory_order_release);
  return err;
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

}  // namespace jaxcsb::cuda
