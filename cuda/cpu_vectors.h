// Float32 vectors of the CPU kernels, written with GCC/Clang vector extensions so that one
// source compiles for AVX-512, AVX2 and plain x86-64 alike.
#pragma once

#include <cstring>

namespace jaxcsb::cpu {

typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec16 __attribute__((vector_size(64)));

template <typename Vec>
constexpr int lanes = sizeof(Vec) / sizeof(float);

// Loads and stores at any float's alignment (memcpy compiles to one unaligned vector move).
template <typename Vec>
__attribute__((always_inline)) inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename Vec>
__attribute__((always_inline)) inline void store(float* p, Vec v) {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace jaxcsb::cpu
