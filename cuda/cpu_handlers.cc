// XLA FFI handlers of the CPU kernels: validate, split the work into slices of similar cost,
// and run the slices on XLA's intra-op thread pool, completing a future when all are done.
#include "cpu_handlers.h"

#include <cstdint>
#include <memory>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_types.h"
#include "ffi_bindings.h"

namespace jaxcsb::cpu {
namespace {

ffi::Future ready(ffi::Error error = ffi::Error::Success()) {
  ffi::Promise promise;
  ffi::Future future(promise);
  if (error.success()) {
    promise.SetAvailable();
  } else {
    promise.SetError(std::move(error));
  }
  return future;
}

// Runs body(begin, end) for every slice [bounds[i], bounds[i + 1]) on the thread pool.
template <typename Body>
ffi::Future run_slices(ffi::ThreadPool& pool, const std::vector<int64_t>& bounds, Body body) {
  const int64_t slices = static_cast<int64_t>(bounds.size()) - 1;
  if (slices <= 0) return ready();
  if (pool.num_threads() == 0 || slices == 1) {
    for (int64_t i = 0; i < slices; ++i) body(bounds[i], bounds[i + 1]);
    return ready();
  }
  ffi::CountDownPromise done(slices);
  ffi::Future future(done);
  for (int64_t i = 0; i < slices; ++i) {
    pool.Schedule([done, body, begin = bounds[i], end = bounds[i + 1]]() mutable {
      body(begin, end);
      done.CountDown();
    });
  }
  return future;
}

template <typename T>
ffi::Future spmm_typed(ffi::ThreadPool& pool, const SpmmProblem& p, ffi::AnyBuffer block_ptr,
                       ffi::AnyBuffer local, ffi::AnyBuffer values, ffi::AnyBuffer dense,
                       ffi::AnyBuffer out) {
  const auto* bp = static_cast<const int32_t*>(block_ptr.untyped_data());
  const auto* loc = static_cast<const uint16_t*>(local.untyped_data());
  const auto* val = static_cast<const T*>(values.untyped_data());
  const auto* d = static_cast<const T*>(dense.untyped_data());
  auto* o = static_cast<T*>(out.untyped_data());
  return run_slices(pool, spmm_slices(p, bp, pool.num_threads()), [=](int64_t begin, int64_t end) {
    spmm<T>(p, bp, loc, val, d, o, begin, end);
  });
}

template <typename T>
ffi::Future sddmm_typed(ffi::ThreadPool& pool, const SddmmProblem& p, ffi::AnyBuffer block_ptr,
                        ffi::AnyBuffer local, ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                        ffi::AnyBuffer out) {
  const auto* bp = static_cast<const int32_t*>(block_ptr.untyped_data());
  const auto* loc = static_cast<const uint16_t*>(local.untyped_data());
  const auto* l = static_cast<const T*>(lhs.untyped_data());
  const auto* r = static_cast<const T*>(rhs.untyped_data());
  auto* o = static_cast<T*>(out.untyped_data());
  return run_slices(pool, sddmm_slices(p, bp, pool.num_threads()),
                    [=](int64_t begin, int64_t end) { sddmm<T>(p, bp, loc, l, r, o, begin, end); });
}

ffi::Future Spmm(ffi::ThreadPool pool, ffi::AnyBuffer block_ptr, ffi::AnyBuffer local,
                 ffi::AnyBuffer values, ffi::AnyBuffer dense, ffi::Result<ffi::AnyBuffer> out,
                 int64_t rows, int64_t cols, int64_t block_size, bool transpose,
                 bool batch_leading) {
  auto problem = check_spmm(block_ptr, local, values, dense, *out, rows, cols, block_size,
                            transpose, batch_leading);
  if (problem.has_error()) return ready(problem.error());
  const SpmmProblem& p = problem.value();
  if (out->element_count() == 0) return ready();
  auto structure =
      check_structure_contents(p.shape, static_cast<const int32_t*>(block_ptr.untyped_data()),
                               static_cast<const uint16_t*>(local.untyped_data()), p.nnz);
  if (structure.failure()) return ready(structure);
  switch (p.type) {
    case ValueType::kF32:
      return spmm_typed<float>(pool, p, block_ptr, local, values, dense, *out);
    case ValueType::kBF16:
      return spmm_typed<Bf16>(pool, p, block_ptr, local, values, dense, *out);
    case ValueType::kF16:
      return spmm_typed<F16>(pool, p, block_ptr, local, values, dense, *out);
  }
  return ready(ffi::Error::Internal("jaxcsb: unhandled value type"));
}

ffi::Future Sddmm(ffi::ThreadPool pool, ffi::AnyBuffer block_ptr, ffi::AnyBuffer local,
                  ffi::AnyBuffer lhs, ffi::AnyBuffer rhs, ffi::Result<ffi::AnyBuffer> out,
                  int64_t rows, int64_t cols, int64_t block_size, bool lhs_transposed,
                  bool rhs_transposed) {
  auto problem = check_sddmm(block_ptr, local, lhs, rhs, *out, rows, cols, block_size,
                             lhs_transposed, rhs_transposed);
  if (problem.has_error()) return ready(problem.error());
  const SddmmProblem& p = problem.value();
  if (out->element_count() == 0) return ready();
  auto structure =
      check_structure_contents(p.shape, static_cast<const int32_t*>(block_ptr.untyped_data()),
                               static_cast<const uint16_t*>(local.untyped_data()), p.nnz);
  if (structure.failure()) return ready(structure);
  switch (p.type) {
    case ValueType::kF32:
      return sddmm_typed<float>(pool, p, block_ptr, local, lhs, rhs, *out);
    case ValueType::kBF16:
      return sddmm_typed<Bf16>(pool, p, block_ptr, local, lhs, rhs, *out);
    case ValueType::kF16:
      return sddmm_typed<F16>(pool, p, block_ptr, local, lhs, rhs, *out);
  }
  return ready(ffi::Error::Internal("jaxcsb: unhandled value type"));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kSpmm, Spmm, spmm_binding<ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kSddmm, Sddmm, sddmm_binding<ffi::ThreadPool>());

}  // namespace jaxcsb::cpu
