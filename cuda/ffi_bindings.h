// The FFI signatures of the two products: one definition shared by every platform, so that the
// CPU and CUDA targets cannot drift apart. `Context` is the platform's execution context (the
// CPU thread pool, the CUDA stream); Python passes the buffers and attributes in this order.
#pragma once

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace jaxcsb {

namespace ffi = xla::ffi;

template <typename Context>
auto spmm_binding() {
  return ffi::Ffi::Bind()
      .template Ctx<Context>()
      .template Arg<ffi::AnyBuffer>()  // block_ptr
      .template Arg<ffi::AnyBuffer>()  // local
      .template Arg<ffi::AnyBuffer>()  // values
      .template Arg<ffi::AnyBuffer>()  // dense
      .template Ret<ffi::AnyBuffer>()  // out
      .template Attr<int64_t>("rows")
      .template Attr<int64_t>("cols")
      .template Attr<int64_t>("block_size")
      .template Attr<bool>("transpose")
      .template Attr<bool>("batch_leading");
}

template <typename Context>
auto sddmm_binding() {
  return ffi::Ffi::Bind()
      .template Ctx<Context>()
      .template Arg<ffi::AnyBuffer>()  // block_ptr
      .template Arg<ffi::AnyBuffer>()  // local
      .template Arg<ffi::AnyBuffer>()  // lhs
      .template Arg<ffi::AnyBuffer>()  // rhs
      .template Ret<ffi::AnyBuffer>()  // values at the pattern
      .template Attr<int64_t>("rows")
      .template Attr<int64_t>("cols")
      .template Attr<int64_t>("block_size")
      .template Attr<bool>("lhs_transposed")
      .template Attr<bool>("rhs_transposed");
}

}  // namespace jaxcsb
