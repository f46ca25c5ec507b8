// Value types of the CPU kernels and their conversions to and from float32 accumulators.
#pragma once

#include <cstdint>
#include <cstring>

namespace jaxcsb::cpu {

// bfloat16 as its bit pattern: the upper half of a float32.
struct Bf16 {
  uint16_t bits;
};
using F16 = _Float16;

inline float to_f32(float x) { return x; }
inline float to_f32(F16 x) { return static_cast<float>(x); }
inline float to_f32(Bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
T from_f32(float x);
template <>
inline float from_f32<float>(float x) {
  return x;
}
template <>
inline F16 from_f32<F16>(float x) {
  return static_cast<F16>(x);
}
// Round to nearest even, as XLA and ml_dtypes do; NaN stays a (quiet) NaN.
template <>
inline Bf16 from_f32<Bf16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16{static_cast<uint16_t>(u >> 16)};
}

}  // namespace jaxcsb::cpu
