// Validation of what an FFI handler receives, shared by the CPU and CUDA handlers.
//
// Python validates every call before it reaches native code; these checks are the second line:
// a call that bypasses Python (or a bug there) gets an ffi::Error naming the argument, the
// expected and the actual value, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <string>

#include "csb_format.h"
#include "xla/ffi/api/ffi.h"

namespace jaxcsb {

namespace ffi = xla::ffi;

enum class ValueType { kF32, kBF16, kF16 };

// Wraps an error for a function that returns ffi::ErrorOr.
using Fail = ffi::Unexpected<ffi::Error>;

// Problem of one SpMM call: out = op(S) * D, with D and out either (features, n) or, when
// batch_leading, (n, features).
struct SpmmProblem {
  CsbShape shape;
  int64_t n = 0;  // columns of D (or rows, when batch_leading)
  int64_t nnz = 0;
  bool batch_leading = false;
  ValueType type = ValueType::kF32;
};

// Problem of one SDDMM call: out[e] = sum_n L[i_e, n] * R[n, j_e] at the nonzeros (i_e, j_e)
// of S, with L given as (rows, n) or, when lhs_transposed, (n, rows), and R given as (n, cols)
// or, when rhs_transposed, (cols, n).
struct SddmmProblem {
  CsbShape shape;
  int64_t n = 0;
  int64_t nnz = 0;
  bool lhs_transposed = false;
  bool rhs_transposed = false;
  ValueType type = ValueType::kF32;
};

namespace detail {

// "(a, b)" or "(a,)" like a numpy shape. Plain string appends: these messages are built inside
// XLA's execution of a call, where iostreams have been seen to crash the CUDA module.
template <typename Dims>
std::string shape_string(const Dims& dims) {
  std::string s = "(";
  size_t i = 0;
  for (int64_t d : dims) s += (i++ ? ", " : "") + std::to_string(d);
  return s + (i == 1 ? ",)" : ")");
}

inline std::string dims_string(ffi::AnyBuffer::Dimensions dims) { return shape_string(dims); }

// The numpy name of an element type, for messages.
inline std::string type_name(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::PRED:
      return "bool";
    case ffi::DataType::S8:
      return "int8";
    case ffi::DataType::S16:
      return "int16";
    case ffi::DataType::S32:
      return "int32";
    case ffi::DataType::S64:
      return "int64";
    case ffi::DataType::U8:
      return "uint8";
    case ffi::DataType::U16:
      return "uint16";
    case ffi::DataType::U32:
      return "uint32";
    case ffi::DataType::U64:
      return "uint64";
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::F64:
      return "float64";
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::C64:
      return "complex64";
    case ffi::DataType::C128:
      return "complex128";
    default:
      return "element type " + std::to_string(static_cast<int>(type));
  }
}

inline ffi::Error invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("jaxcsb: " + what);
}

inline ffi::Error check_dims(const char* name, ffi::AnyBuffer buf,
                             std::initializer_list<int64_t> want) {
  auto dims = buf.dimensions();
  bool ok = dims.size() == want.size();
  size_t i = 0;
  for (int64_t w : want) ok = ok && i < dims.size() && dims[i++] == w;
  if (ok) return ffi::Error::Success();
  return invalid(std::string(name) + " has shape " + dims_string(dims) + ", expected " +
                 shape_string(want));
}

inline ffi::Error check_type(const char* name, ffi::AnyBuffer buf, ffi::DataType want,
                             const char* want_name) {
  if (buf.element_type() == want) return ffi::Error::Success();
  return invalid(std::string(name) + " has element type " + type_name(buf.element_type()) +
                 ", expected " + want_name);
}

inline ffi::ErrorOr<ValueType> value_type(const char* name, ffi::AnyBuffer buf) {
  switch (buf.element_type()) {
    case ffi::DataType::F32:
      return ValueType::kF32;
    case ffi::DataType::BF16:
      return ValueType::kBF16;
    case ffi::DataType::F16:
      return ValueType::kF16;
    default:
      return Fail(invalid(std::string(name) + " has unsupported element type " +
                          type_name(buf.element_type()) +
                          ": expected float32, bfloat16 or float16"));
  }
}

inline ffi::ErrorOr<CsbShape> check_shape(int64_t rows, int64_t cols, int64_t block_size,
                                          bool transpose) {
  if (rows < 0 || cols < 0) {
    return Fail(invalid("matrix shape (" + std::to_string(rows) + ", " + std::to_string(cols) +
                        ") has a negative dimension"));
  }
  // Coordinates are int32 in Python and on the GPU; the bound also keeps num_blocks() far from
  // int64 overflow.
  if (rows > INT32_MAX || cols > INT32_MAX) {
    return Fail(invalid("matrix shape (" + std::to_string(rows) + ", " + std::to_string(cols) +
                        ") has a dimension above 2^31 - 1"));
  }
  bool pow2 = block_size > 0 && (block_size & (block_size - 1)) == 0;
  if (!pow2 || block_size < 16 || block_size > 256) {
    return Fail(
        invalid("block_size must be a power of two in 16..256, got " + std::to_string(block_size)));
  }
  CsbShape shape{rows, cols, static_cast<int32_t>(block_size), transpose};
  if (shape.num_blocks() >= INT32_MAX) {
    return Fail(invalid("the matrix has " + std::to_string(shape.num_blocks()) +
                        " blocks; at most 2^31 - 2 fit the int32 block_ptr"));
  }
  return shape;
}

// Checks block_ptr and local, the index arrays common to both products.
inline ffi::Error check_structure(const CsbShape& shape, ffi::AnyBuffer block_ptr,
                                  ffi::AnyBuffer local, int64_t nnz) {
  if (auto e = check_type("block_ptr", block_ptr, ffi::DataType::S32, "int32"); e.failure())
    return e;
  if (auto e = check_dims("block_ptr", block_ptr, {shape.num_blocks() + 1}); e.failure()) return e;
  if (auto e = check_type("local", local, ffi::DataType::U16, "uint16"); e.failure()) return e;
  return check_dims("local", local, {nnz});
}

}  // namespace detail

inline ffi::ErrorOr<SpmmProblem> check_spmm(ffi::AnyBuffer block_ptr, ffi::AnyBuffer local,
                                            ffi::AnyBuffer values, ffi::AnyBuffer dense,
                                            ffi::AnyBuffer out, int64_t rows, int64_t cols,
                                            int64_t block_size, bool transpose,
                                            bool batch_leading) {
  using namespace detail;
  SpmmProblem p;
  auto shape = check_shape(rows, cols, block_size, transpose);
  if (shape.has_error()) return Fail(shape.error());
  p.shape = shape.value();
  p.batch_leading = batch_leading;
  if (values.dimensions().size() != 1) return Fail(invalid("values must have rank 1"));
  p.nnz = values.dimensions()[0];
  auto type = value_type("values", values);
  if (type.has_error()) return Fail(type.error());
  p.type = type.value();
  if (auto e = check_structure(p.shape, block_ptr, local, p.nnz); e.failure()) return Fail(e);
  if (dense.element_type() != values.element_type()) {
    return Fail(invalid("dense operand and values have different element types (" +
                        type_name(dense.element_type()) + " and " +
                        type_name(values.element_type()) + ")"));
  }
  if (out.element_type() != values.element_type()) {
    return Fail(invalid("output and values have different element types (" +
                        type_name(out.element_type()) + " and " + type_name(values.element_type()) +
                        ")"));
  }
  if (dense.dimensions().size() != 2) {
    return Fail(
        invalid("dense operand must have rank 2, got shape " + dims_string(dense.dimensions())));
  }
  int64_t in_dim = p.shape.in_dim(), out_dim = p.shape.out_dim();
  p.n = batch_leading ? dense.dimensions()[0] : dense.dimensions()[1];
  if (batch_leading) {
    if (auto e = check_dims("dense operand", dense, {p.n, in_dim}); e.failure()) return Fail(e);
    if (auto e = check_dims("output", out, {p.n, out_dim}); e.failure()) return Fail(e);
  } else {
    if (auto e = check_dims("dense operand", dense, {in_dim, p.n}); e.failure()) return Fail(e);
    if (auto e = check_dims("output", out, {out_dim, p.n}); e.failure()) return Fail(e);
  }
  return p;
}

inline ffi::ErrorOr<SddmmProblem> check_sddmm(ffi::AnyBuffer block_ptr, ffi::AnyBuffer local,
                                              ffi::AnyBuffer lhs, ffi::AnyBuffer rhs,
                                              ffi::AnyBuffer out, int64_t rows, int64_t cols,
                                              int64_t block_size, bool lhs_transposed,
                                              bool rhs_transposed) {
  using namespace detail;
  SddmmProblem p;
  auto shape = check_shape(rows, cols, block_size, /*transpose=*/false);
  if (shape.has_error()) return Fail(shape.error());
  p.shape = shape.value();
  p.lhs_transposed = lhs_transposed;
  p.rhs_transposed = rhs_transposed;
  if (out.dimensions().size() != 1) return Fail(invalid("output values must have rank 1"));
  p.nnz = out.dimensions()[0];
  auto type = value_type("output values", out);
  if (type.has_error()) return Fail(type.error());
  p.type = type.value();
  if (auto e = check_structure(p.shape, block_ptr, local, p.nnz); e.failure()) return Fail(e);
  if (lhs.element_type() != out.element_type() || rhs.element_type() != out.element_type()) {
    return Fail(invalid("lhs, rhs and output values must share one element type, got " +
                        type_name(lhs.element_type()) + ", " + type_name(rhs.element_type()) +
                        " and " + type_name(out.element_type())));
  }
  if (lhs.dimensions().size() != 2 || rhs.dimensions().size() != 2) {
    return Fail(invalid("lhs and rhs must have rank 2, got shapes " +
                        dims_string(lhs.dimensions()) + " and " + dims_string(rhs.dimensions())));
  }
  p.n = lhs_transposed ? lhs.dimensions()[0] : lhs.dimensions()[1];
  if (lhs_transposed) {
    if (auto e = check_dims("lhs", lhs, {p.n, p.shape.rows}); e.failure()) return Fail(e);
  } else {
    if (auto e = check_dims("lhs", lhs, {p.shape.rows, p.n}); e.failure()) return Fail(e);
  }
  if (rhs_transposed) {
    if (auto e = check_dims("rhs", rhs, {p.shape.cols, p.n}); e.failure()) return Fail(e);
  } else {
    if (auto e = check_dims("rhs", rhs, {p.n, p.shape.cols}); e.failure()) return Fail(e);
  }
  return p;
}

}  // namespace jaxcsb
