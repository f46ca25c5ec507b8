// An 8 x 8 transpose of float32 tiles in registers, for the CPU kernels' staging of
// n-major operands and their batch-leading outputs.
#include <cstdint>

#include "cpu_copy.h"
#include "cpu_vectors.h"

namespace jaxcsb::cpu {
namespace {

typedef int Int8 __attribute__((vector_size(32)));

}  // namespace

// The unpack / shuffle / lane-swap sequence of an AVX transpose, written as vector shuffles.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void transpose_8x8(
    const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  Vec8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = load<Vec8>(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], Int8{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], Int8{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], Int8{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], Int8{2, 3, 10, 11, 6, 7, 14, 15});
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], Int8{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], Int8{2, 3, 10, 11, 6, 7, 14, 15});
  }
  for (int i = 0; i < 4; ++i) {
    store(dst + i * dst_stride, __builtin_shuffle(u[i], u[i + 4], Int8{0, 1, 2, 3, 8, 9, 10, 11}));
    store(dst + (i + 4) * dst_stride,
          __builtin_shuffle(u[i], u[i + 4], Int8{4, 5, 6, 7, 12, 13, 14, 15}));
  }
}

}  // namespace jaxcsb::cpu
