// Standalone check and benchmark of the CUDA kernels, without Python.
//
//   kernel_check check [quick|tiny]  every kernel variant (types, block sizes, directions,
//                                layouts, cluster sizes) on awkward random problems against a
//                                float64 host reference; outputs poisoned before each run; each
//                                run twice and compared bitwise. `quick` and `tiny` keep the
//                                problems small for compute-sanitizer (tiny for its slow tools).
//                                KERNEL_CHECK_ONLY=<family> (wide, narrow, tensor, tensor-n,
//                                slab) keeps the SpMM cases forced to that family alone.
//   kernel_check bench [beta rows cols density n dtype cluster tiles_per_block]
//                                default 4096 x 1024 at 90% sparsity, n = 4096, float32: both
//                                directions and layouts (at narrow n both kernel families) and
//                                SDDMM, median of repeats with CUDA events, plus a 3-run
//                                bitwise determinism check. `cluster` forces the thread blocks
//                                per line (SpMM) and per region (SDDMM), `tiles_per_block` the
//                                n-tiles per thread block of the wide kernel on lines of one
//                                block; default 0: the heuristic's choice.
//   kernel_check bench-smtx file.smtx [beta n]
//                                the same on a DLMC pattern with random float32 values
//                                (default beta 128, n = 2048).
//
// Exit status 0 only when every case passed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_config.h"
#include "cuda_kernels.h"

using namespace jaxcsb;
using namespace jaxcsb::cuda;

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

namespace {

const char* dtype_name(DType t) {
  return t == DType::kF32 ? "f32" : t == DType::kBF16 ? "bf16" : "f16";
}
size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

// Rounds x to the value type and returns it as float (host).
float round_to(DType t, float x) {
  if (t == DType::kF32) return x;
  if (t == DType::kBF16) return __bfloat162float(__float2bfloat16_rn(x));
  return __half2float(__float2half_rn(x));
}

// Encodes float values (already representable) into the type's bytes.
std::vector<uint8_t> encode(DType t, const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * dtype_size(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[4 * i], &v[i], 4);
    } else if (t == DType::kBF16) {
      __nv_bfloat16 h = __float2bfloat16_rn(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    } else {
      __half h = __float2half_rn(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

std::vector<float> decode(DType t, const std::vector<uint8_t>& b) {
  std::vector<float> out(b.size() / dtype_size(t));
  for (size_t i = 0; i < out.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[i], &b[4 * i], 4);
    } else if (t == DType::kBF16) {
      __nv_bfloat16 h;
      std::memcpy(&h, &b[2 * i], 2);
      out[i] = __bfloat162float(h);
    } else {
      __half h;
      std::memcpy(&h, &b[2 * i], 2);
      out[i] = __half2float(h);
    }
  }
  return out;
}

struct HostCsb {
  CsbShape shape;
  std::vector<int32_t> block_ptr;
  std::vector<uint16_t> local;
  std::vector<float> values;
  // Coordinates of each nonzero in the stored matrix.
  std::vector<int64_t> row, col;

  // Appends the nonzero (r, c) = v to the block being filled; end_block closes that block.
  void add(int64_t r, int64_t c, float v) {
    const int beta = shape.block_size;
    local.push_back(static_cast<uint16_t>(r % beta << 8 | c % beta));
    values.push_back(v);
    row.push_back(r);
    col.push_back(c);
  }
  void end_block() { block_ptr.push_back(static_cast<int32_t>(local.size())); }
};

// A random CSB matrix with the given density; row `empty_row` and block `empty_block` (when
// in range) are left empty on purpose.
HostCsb random_csb(int64_t rows, int64_t cols, int beta, double density, DType t, std::mt19937& rng,
                   int64_t empty_row = 3, int64_t empty_block = 1) {
  HostCsb m;
  m.shape = CsbShape{rows, cols, beta, false};
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  std::bernoulli_distribution keep(density);
  const int64_t nbc = m.shape.block_cols();
  m.block_ptr.push_back(0);
  for (int64_t b = 0; b < m.shape.num_blocks(); ++b) {
    const int64_t r0 = b / nbc * beta, c0 = b % nbc * beta;
    for (int64_t r = r0; r < std::min<int64_t>(rows, r0 + beta); ++r) {
      for (int64_t c = c0; c < std::min<int64_t>(cols, c0 + beta); ++c) {
        if (r == empty_row || b == empty_block || !keep(rng)) continue;
        float v = round_to(t, val(rng));
        if (v == 0.0f) v = 0.5f;
        m.add(r, c, v);
      }
    }
    m.end_block();
  }
  return m;
}

// A DLMC pattern (.smtx: "rows, cols, nnz", then the CSR row offsets and column indices) in CSB
// at block size beta, with random values; exits on a file it cannot read.
HostCsb read_smtx(const char* path, int beta, DType t, std::mt19937& rng) {
  FILE* f = std::fopen(path, "r");
  long rows = 0, cols = 0, nnz = 0;
  if (f == nullptr || std::fscanf(f, "%ld , %ld , %ld", &rows, &cols, &nnz) != 3 || rows < 0 ||
      cols < 0 || nnz < 0) {
    std::fprintf(stderr, "cannot read the header of %s\n", path);
    std::exit(2);
  }
  std::vector<long> offsets(rows + 1), columns(nnz);
  bool ok = true;
  for (long& x : offsets) ok = ok && std::fscanf(f, "%ld", &x) == 1;
  for (long& x : columns) ok = ok && std::fscanf(f, "%ld", &x) == 1;
  std::fclose(f);
  // Row offsets from 0 to nnz that never decrease, column indices in [0, cols).
  ok = ok && offsets[0] == 0 && offsets[rows] == nnz;
  for (long r = 0; ok && r < rows; ++r) ok = offsets[r] <= offsets[r + 1];
  for (long e = 0; ok && e < nnz; ++e) ok = columns[e] >= 0 && columns[e] < cols;
  if (!ok) {
    std::fprintf(stderr,
                 "malformed %s: expected %ld row offsets rising from 0 to %ld and %ld column "
                 "indices below %ld\n",
                 path, rows + 1, nnz, nnz, cols);
    std::exit(2);
  }
  HostCsb m;
  m.shape = CsbShape{rows, cols, beta, false};
  // Each block's nonzeros in the order of the file: by row, then column.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> blocks(m.shape.num_blocks());
  for (long r = 0; r < rows; ++r) {
    for (long e = offsets[r]; e < offsets[r + 1]; ++e) {
      blocks[r / beta * m.shape.block_cols() + columns[e] / beta].push_back({r, columns[e]});
    }
  }
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  m.block_ptr.push_back(0);
  for (const auto& block : blocks) {
    for (const auto& [r, c] : block) m.add(r, c, round_to(t, val(rng)));
    m.end_block();
  }
  return m;
}

// The same matrix with every third nonzero stored twice, next to itself: a repeated position,
// which the kernels must sum.
HostCsb with_repeats(const HostCsb& m) {
  HostCsb r;
  r.shape = m.shape;
  r.block_ptr.push_back(0);
  for (size_t b = 0; b + 1 < m.block_ptr.size(); ++b) {
    for (int32_t e = m.block_ptr[b]; e < m.block_ptr[b + 1]; ++e) {
      for (int copy = 0; copy < (e % 3 == 0 ? 2 : 1); ++copy)
        r.add(m.row[e], m.col[e], m.values[e]);
    }
    r.end_block();
  }
  return r;
}

template <typename V>
V* to_device(const std::vector<V>& h) {
  V* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(1, h.size() * sizeof(V))));
  if (!h.empty()) CHECK_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(V), cudaMemcpyHostToDevice));
  return d;
}

// The CSB arrays on the device; with `shift`, local and values start that many entries past
// their allocations, as in a view into larger arrays (1: not 16-byte aligned).
struct DeviceCsb {
  int32_t* block_ptr = nullptr;
  uint16_t* local = nullptr;
  uint8_t* values = nullptr;
  DeviceCsb(const HostCsb& m, DType t, int shift = 0) {
    block_ptr = to_device(m.block_ptr);
    std::vector<uint16_t> l(shift, 0);
    l.insert(l.end(), m.local.begin(), m.local.end());
    std::vector<uint8_t> v(shift * dtype_size(t), 0), encoded = encode(t, m.values);
    v.insert(v.end(), encoded.begin(), encoded.end());
    local_base_ = to_device(l);
    values_base_ = to_device(v);
    local = local_base_ + shift;
    values = values_base_ + shift * dtype_size(t);
  }
  DeviceCsb(const DeviceCsb&) = delete;
  DeviceCsb& operator=(const DeviceCsb&) = delete;
  ~DeviceCsb() {
    cudaFree(block_ptr);
    cudaFree(local_base_);
    cudaFree(values_base_);
  }

 private:
  uint16_t* local_base_ = nullptr;
  uint8_t* values_base_ = nullptr;
};

std::vector<float> random_dense(size_t count, DType t, std::mt19937& rng) {
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (auto& x : v) x = round_to(t, val(rng));
  return v;
}

double tolerance(DType t) { return t == DType::kF32 ? 1e-5 : 1e-2; }

// Frobenius error relative to the products' magnitudes (scale[i] = the sum of |a| |b| over the
// products that make output i), so that a sum that cancels to near zero is not held to a
// relative tolerance that its rounding cannot meet; infinite when any output is not finite (an
// unwritten poisoned element, or a NaN).
double rel_error(const std::vector<float>& got, const std::vector<double>& ref,
                 const std::vector<double>& scale) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += scale[i] * scale[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

int failures = 0, cases = 0;

// Records one case; a launch error fails it with the error's name (and the run goes on).
void report(const std::string& name, double err, double tol, bool deterministic,
            cudaError_t launch_error) {
  ++cases;
  const bool ok = launch_error == cudaSuccess && err <= tol && deterministic;
  if (!ok) ++failures;
  if (!ok || std::getenv("KERNEL_CHECK_VERBOSE")) {
    if (launch_error != cudaSuccess) {
      std::printf("FAIL %-70s launch: %s\n", name.c_str(), cudaGetErrorString(launch_error));
    } else {
      std::printf("%s %-70s err=%.3g%s\n", ok ? "ok  " : "FAIL", name.c_str(), err,
                  deterministic ? "" : " NOT DETERMINISTIC");
    }
  }
}

// Runs `launch` `runs` times, each into a freshly poisoned output, and returns the first
// result's bytes; sets *same when every run agrees with the first bitwise and *launch_error
// to the launch's error, if any.
template <typename F>
std::vector<uint8_t> run_repeatedly(void* out, size_t bytes, F launch, int runs, bool* same,
                                    cudaError_t* launch_error) {
  std::vector<uint8_t> first(bytes), again(bytes);
  *same = true;
  for (int rep = 0; rep < runs; ++rep) {
    CHECK_CUDA(cudaMemset(out, 0xff, std::max<size_t>(bytes, 1)));
    *launch_error = launch();
    if (*launch_error != cudaSuccess) {
      cudaGetLastError();  // clear it: the next case starts clean
      *same = false;
      return first;
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    if (bytes)
      CHECK_CUDA(cudaMemcpy(rep ? again.data() : first.data(), out, bytes, cudaMemcpyDeviceToHost));
    if (rep) *same = *same && first == again;
  }
  return first;
}

// The arguments of one SpMM of m (uploaded as dm) with an n-column dense operand.
SpmmArgs spmm_args(const HostCsb& m, const DeviceCsb& dm, DType t, int64_t n, bool transpose,
                   bool batch_leading, const void* dense, void* out) {
  SpmmArgs a;
  a.shape = m.shape;
  a.shape.transpose = transpose;
  a.n = n;
  a.nnz = static_cast<int64_t>(m.values.size());
  a.batch_leading = batch_leading;
  a.dtype = t;
  a.block_ptr = dm.block_ptr;
  a.local = dm.local;
  a.values = dm.values;
  a.dense = dense;
  a.out = out;
  return a;
}

// The arguments of one SDDMM at the pattern of m (uploaded as dm) over n.
SddmmArgs sddmm_args(const HostCsb& m, const DeviceCsb& dm, DType t, int64_t n, bool lhs_t,
                     bool rhs_t, const void* lhs, const void* rhs, void* out) {
  SddmmArgs a;
  a.shape = m.shape;
  a.n = n;
  a.nnz = static_cast<int64_t>(m.values.size());
  a.lhs_transposed = lhs_t;
  a.rhs_transposed = rhs_t;
  a.dtype = t;
  a.block_ptr = dm.block_ptr;
  a.local = dm.local;
  a.lhs = lhs;
  a.rhs = rhs;
  a.out = out;
  return a;
}

// The workspace that launch_spmm can use for a, as the FFI handler allocates it (null: none).
void* alloc_workspace(const SpmmArgs& a, const SpmmOptions& opt) {
  void* ws = nullptr;
  if (const size_t bytes = spmm_workspace_bytes(a, opt); bytes > 0) {
    CHECK_CUDA(cudaMalloc(&ws, bytes));
  }
  return ws;
}

const char* kernel_name(SpmmKernel k) {
  switch (k) {
    case SpmmKernel::kWide:
      return "wide";
    case SpmmKernel::kNarrow:
      return "narrow";
    case SpmmKernel::kTensor:
      return "tensor";
    case SpmmKernel::kTensorSplitN:
      return "tensor-n";
    case SpmmKernel::kSlab:
      return "slab";
    default:
      return "auto";
  }
}

// Every SpMM family that a test or benchmark can force.
constexpr SpmmKernel kFamilies[] = {SpmmKernel::kWide, SpmmKernel::kNarrow, SpmmKernel::kTensor,
                                    SpmmKernel::kTensorSplitN, SpmmKernel::kSlab};

// Whether family k can run a product of m in value type t.
bool serves(SpmmKernel k, const HostCsb& m, DType t) {
  return spmm_kernel_serves(k, m.shape.block_size, t == DType::kF32);
}

// The families that can run a product of m (direction and layout given): the one the heuristic
// picks (kAuto) and every other.
std::vector<SpmmKernel> kernels_for(const HostCsb& m, DType t, int64_t n, bool transpose,
                                    bool batch_leading) {
  CsbShape s = m.shape;
  s.transpose = transpose;
  const double dens = density(s, static_cast<int64_t>(m.values.size()));
  const SpmmKernel preferred =
      preferred_spmm_kernel(n, s.block_size, dens, transpose, t != DType::kF32, batch_leading,
                            s.line_length(), s.out_dim(), s.num_blocks());
  std::vector<SpmmKernel> kernels{SpmmKernel::kAuto};
  for (SpmmKernel k : kFamilies) {
    if (k != preferred && serves(k, m, t)) kernels.push_back(k);
  }
  return kernels;
}

// The family that KERNEL_CHECK_ONLY names, or null: every case runs.
const char* only_family() {
  static const char* only = std::getenv("KERNEL_CHECK_ONLY");
  return only;
}

void check_spmm(const HostCsb& m, DType t, int64_t n, bool transpose, bool batch_leading,
                const SpmmOptions& opt, std::mt19937& rng, const DeviceInfo& dev, int shift = 0,
                bool with_workspace = true) {
  if (only_family() && std::strcmp(only_family(), kernel_name(opt.kernel)) != 0) return;
  CsbShape s = m.shape;
  s.transpose = transpose;
  const int64_t in_dim = s.in_dim(), out_dim = s.out_dim();
  std::vector<float> dense = random_dense(in_dim * n, t, rng);
  // Reference in float64: out[o, k] = sum_i op(S)[o, i] * D[i, k].
  std::vector<double> ref(out_dim * n, 0.0), scale(out_dim * n, 0.0);
  for (size_t e = 0; e < m.values.size(); ++e) {
    const int64_t o = transpose ? m.col[e] : m.row[e], i = transpose ? m.row[e] : m.col[e];
    for (int64_t k = 0; k < n; ++k) {
      const double prod =
          double{m.values[e]} * (batch_leading ? dense[k * in_dim + i] : dense[i * n + k]);
      const int64_t at = batch_leading ? k * out_dim + o : o * n + k;
      ref[at] += prod;
      scale[at] += std::abs(prod);
    }
  }
  DeviceCsb dm(m, t, shift);
  uint8_t* dd = to_device(encode(t, dense));
  const size_t out_bytes = out_dim * n * dtype_size(t);
  uint8_t* dout = nullptr;
  CHECK_CUDA(cudaMalloc(&dout, std::max<size_t>(out_bytes, 1)));
  SpmmArgs a = spmm_args(m, dm, t, n, transpose, batch_leading, dd, dout);
  if (with_workspace) a.workspace = alloc_workspace(a, opt);
  bool same = false;
  cudaError_t launch_error = cudaSuccess;
  auto bytes = run_repeatedly(
      dout, out_bytes, [&] { return launch_spmm(a, dev, nullptr, opt); }, 2, &same, &launch_error);
  const double err = rel_error(decode(t, bytes), ref, scale);
  char name[256];
  std::snprintf(name, sizeof name,
                "spmm %s %ldx%ld beta=%d nnz=%zu n=%ld %s %s cluster=%d %s tiles_per_block=%d "
                "shift=%d",
                dtype_name(t), long(m.shape.rows), long(m.shape.cols), m.shape.block_size,
                m.values.size(), long(n), transpose ? "T" : "N", batch_leading ? "batch" : "feat",
                opt.cluster, kernel_name(opt.kernel), opt.tiles_per_block, shift);
  report(name, err, tolerance(t), same, launch_error);
  cudaFree(dd);
  cudaFree(dout);
  cudaFree(a.workspace);
}

void check_sddmm(const HostCsb& m, DType t, int64_t n, bool lt, bool rt, std::mt19937& rng,
                 const DeviceInfo& dev, const SddmmOptions& opt = {}, int shift = 0) {
  if (only_family()) return;
  const int64_t rows = m.shape.rows, cols = m.shape.cols;
  std::vector<float> lhs = random_dense(rows * n, t, rng), rhs = random_dense(cols * n, t, rng);
  std::vector<double> ref(m.values.size(), 0.0), scale(m.values.size(), 0.0);
  for (size_t e = 0; e < m.values.size(); ++e) {
    for (int64_t k = 0; k < n; ++k) {
      const double l = lt ? lhs[k * rows + m.row[e]] : lhs[m.row[e] * n + k];
      const double r = rt ? rhs[m.col[e] * n + k] : rhs[k * cols + m.col[e]];
      ref[e] += l * r;
      scale[e] += std::abs(l * r);
    }
  }
  DeviceCsb dm(m, t, shift);
  uint8_t* dl = to_device(encode(t, lhs));
  uint8_t* dr = to_device(encode(t, rhs));
  const size_t out_bytes = m.values.size() * dtype_size(t);
  uint8_t* dout = nullptr;
  CHECK_CUDA(cudaMalloc(&dout, std::max<size_t>(out_bytes, 1)));
  const SddmmArgs a = sddmm_args(m, dm, t, n, lt, rt, dl, dr, dout);
  bool same = false;
  cudaError_t launch_error = cudaSuccess;
  auto bytes = run_repeatedly(
      dout, out_bytes, [&] { return launch_sddmm(a, dev, nullptr, opt); }, 2, &same, &launch_error);
  const double err = rel_error(decode(t, bytes), ref, scale);
  char name[256];
  std::snprintf(name, sizeof name,
                "sddmm %s %ldx%ld beta=%d nnz=%zu n=%ld lhs_t=%d rhs_t=%d cluster=%d shift=%d",
                dtype_name(t), long(rows), long(cols), m.shape.block_size, m.values.size(), long(n),
                lt, rt, opt.cluster, shift);
  report(name, err, tolerance(t), same, launch_error);
  cudaFree(dl);
  cudaFree(dr);
  cudaFree(dout);
}

int run_check(int level, const DeviceInfo& dev) {
  const bool quick = level > 0, tiny = level > 1;
  std::mt19937 rng(1234);
  struct Problem {
    int64_t rows, cols;
    double density;
  };
  // Awkward shapes: not multiples of beta, single rows/columns, a tiny matrix.
  const std::vector<Problem> problems =
      tiny    ? std::vector<Problem>{{70, 150, 0.3}}
      : quick ? std::vector<Problem>{{37, 300, 0.2}, {300, 45, 0.3}}
              : std::vector<Problem>{{37, 300, 0.2}, {300, 45, 0.3}, {520, 390, 0.1},
                                     {1, 77, 0.5},   {90, 1, 0.5},   {5, 3, 1.0}};
  const std::vector<int64_t> ns =
      quick ? std::vector<int64_t>{1, 133} : std::vector<int64_t>{1, 4, 37, 130, 300};
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16};
  const int betas[] = {16, 32, 64, 128, 256};
  for (const auto& pr : problems) {
    for (int beta : betas) {
      for (DType t : types) {
        HostCsb m = random_csb(pr.rows, pr.cols, beta, pr.density, t, rng);
        for (int64_t n : ns) {
          for (int tr = 0; tr < 2; ++tr) {
            for (int bl = 0; bl < 2; ++bl) {
              for (SpmmKernel kernel : kernels_for(m, t, n, tr, bl)) {
                for (int cluster : {0, 1, 2, 8}) {
                  if ((quick && cluster == 1) || (tiny && cluster == 8)) continue;
                  if (cluster > 1 && !dev.cluster_launch) continue;  // not on this device
                  check_spmm(m, t, n, tr, bl, {cluster, kernel}, rng, dev);
                }
              }
            }
          }
          for (int lt = 0; lt < 2; ++lt) {
            for (int rt = 0; rt < 2; ++rt) check_sddmm(m, t, n, lt, rt, rng, dev);
          }
        }
      }
    }
  }
  // nnz = 0, and a matrix whose blocks are dense (several sort chunks per block).
  for (DType t : types) {
    HostCsb empty = random_csb(70, 50, 16, 0.0, t, rng);
    for (int tr = 0; tr < 2; ++tr) check_spmm(empty, t, 9, tr, false, {}, rng, dev);
    check_sddmm(empty, t, 9, false, false, rng, dev);
    HostCsb full = random_csb(quick ? 130 : 300, quick ? 70 : 260, 64, 1.0, t, rng, -1, -1);
    for (int tr = 0; tr < 2; ++tr) {
      for (int bl = 0; bl < 2; ++bl) {
        for (int64_t n : {1, 70}) {
          check_spmm(full, t, n, tr, bl, {}, rng, dev);
          check_spmm(full, t, n, tr, bl, {0, SpmmKernel::kNarrow}, rng, dev);
          check_spmm(full, t, n, tr, bl, {0, SpmmKernel::kTensor}, rng, dev);
          check_spmm(full, t, n, tr, bl, {0, SpmmKernel::kTensorSplitN}, rng, dev);
          if (serves(SpmmKernel::kSlab, full, t)) {
            check_spmm(full, t, n, tr, bl, {0, SpmmKernel::kSlab}, rng, dev);
          }
        }
      }
    }
    check_sddmm(full, t, 70, true, false, rng, dev);
    // Sparse regions of each size, in units of 4 nonzeros.
    for (int beta : {32, 128, 256}) {
      HostCsb sparse = random_csb(quick ? 130 : 300, 260, beta, 0.02, t, rng);
      check_sddmm(sparse, t, 37, false, true, rng, dev);
    }
    // Enough blocks at an n past one chunk for the tensor-core SDDMM's regions of 2 x 2 blocks,
    // cut short at the last block row and column (dense enough for float32 to take them).
    for (int beta : tiny ? std::vector<int>{16} : std::vector<int>{16, 32, 64}) {
      HostCsb many = random_csb(26 * beta - 5, 26 * beta + 7, beta, 0.2, t, rng);
      for (int lt = 0; lt < 2; ++lt) check_sddmm(many, t, 130, lt, !lt, rng, dev);
    }
    HostCsb full256 = random_csb(quick ? 40 : 260, 300, 256, 0.9, t, rng, -1, -1);
    for (int tr = 0; tr < 2; ++tr) check_spmm(full256, t, 33, tr, true, {}, rng, dev);
    check_sddmm(full256, t, 33, false, true, rng, dev);
    // Few regions and a long n: clusters split the walk over n (the heuristic's and forced
    // sizes, down to shares of less than a tile).
    if (dev.cluster_launch) {
      HostCsb small = random_csb(90, 140, 32, 0.3, t, rng);
      for (int cluster : tiny ? std::vector<int>{2} : std::vector<int>{0, 2, 8}) {
        for (int lt = 0; lt < (tiny ? 1 : 2); ++lt) {
          check_sddmm(small, t, tiny ? 200 : 1100, lt, !lt, rng, dev, {cluster});
        }
      }
      check_sddmm(small, t, 40, false, false, rng, dev, {8});
      // On tensor cores (the heuristic's cluster): float32 in 19 chunks of n (4 ranks),
      // 16-bit values in 10 (2 ranks).
      for (int lt = 0; lt < 2; ++lt) check_sddmm(small, t, 600, lt, !lt, rng, dev);
    }
    // Lines of one CSB block and a long n: thread blocks walk several n-tiles, forced (over
    // sparse blocks, an empty one, full blocks of several sort chunks and repeated positions)
    // and by the heuristic at an n that is long enough for it.
    for (int beta : tiny ? std::vector<int>{64} : std::vector<int>{16, 64, 256}) {
      for (int tr = 0; tr < 2; ++tr) {
        // rows x cols with lines of one block in direction tr: at most beta deep along in_dim.
        auto walked = [&](double dens, int64_t empty_row) {
          const int64_t depth = beta - 5, width = 3 * beta - 20;
          return random_csb(tr ? depth : width, tr ? width : depth, beta, dens, t, rng, empty_row,
                            1);
        };
        const HostCsb walked_cases[] = {walked(0.3, 3), walked(1.0, -1),
                                        with_repeats(walked(0.3, 3))};
        for (const HostCsb& m : walked_cases) {
          for (int bl = 0; bl < 2; ++bl) {
            for (int64_t n : tiny ? std::vector<int64_t>{300} : std::vector<int64_t>{1000, 997}) {
              check_spmm(m, t, n, tr, bl, {0, SpmmKernel::kWide, 3}, rng, dev);
            }
          }
        }
        if (!quick && beta == 64) {
          check_spmm(walked_cases[0], t, 40000, tr, false, {0, SpmmKernel::kWide}, rng, dev);
        }
        // The tensor cores' thread blocks walk several tiles of n on such lines where the lines
        // times the tiles overfill one wave, expanding their block once and copying each tile's
        // slices while they multiply the tile before; in clusters of two (forced), they do not.
        if (beta == 64) {
          for (int i : {0, 2}) {
            for (int bl = 0; bl < 2; ++bl) {
              for (int cluster : {0, 2}) {
                if (cluster > 1 && (tiny || !dev.cluster_launch)) continue;
                check_spmm(walked_cases[i], t, 40000, tr, bl, {cluster, SpmmKernel::kTensorSplitN},
                           rng, dev);
              }
            }
          }
        }
      }
    }
    // Line tiles that outnumber the multiprocessors by less than half: the wide kernel's
    // heuristic splits its lines of 16 positions in halves (4 lines x 49 tiles of n at beta 128,
    // transposed, in both layouts).
    if (!quick && dev.cluster_launch) {
      HostCsb halves = random_csb(2048, 500, 128, 0.02, t, rng);
      for (int bl = 0; bl < 2; ++bl) {
        check_spmm(halves, t, 6272, true, bl, {0, SpmmKernel::kWide}, rng, dev);
      }
    }
    // Split n on lines longer than kSplitNLongLine, which float32 at beta 64 runs in a kernel of
    // its own (split_n_min_blocks) or in halves over clusters of two (split_n_smallest_cluster;
    // a cluster of one forced keeps the whole line), ragged at the line's end and at n's.
    if (!tiny) {
      HostCsb long_lines = random_csb(70, 64 * (kSplitNLongLine + 2) + 13, 64, 0.2, t, rng);
      for (int bl = 0; bl < 2; ++bl) {
        for (int cluster : {0, 1}) {
          check_spmm(long_lines, t, 300, false, bl, {cluster, SpmmKernel::kTensorSplitN}, rng, dev);
        }
      }
    }
    // The slab kernels (float32) on lines of many nonzeros, in both layouts: an input axis of
    // one part, and of several parts whose last one is short and ragged at the axis' end (of an
    // odd length forward, which the batch-leading staging reads a value at a time), at the
    // smallest and largest block sizes; ragged at n's end and at the last line; sorted by
    // clusters of 1, 3 and 8 thread blocks and the heuristic's. The walk takes four lanes a row
    // on these, and eight on an output of 120 rows (a row a group of lanes). Where the
    // heuristic picks them, also without a workspace (the wide kernel runs). The tiny level
    // (the sanitizers') keeps the input axis of several parts at the smallest block size.
    if (t == DType::kF32) {
      const std::vector<int> sorters = tiny                 ? std::vector<int>{0}
                                       : dev.cluster_launch ? std::vector<int>{0, 1, 3, 8}
                                                            : std::vector<int>{0, 1};
      for (int beta : tiny ? std::vector<int>{16} : std::vector<int>{16, 128}) {
        HostCsb parts = random_csb(300, 2501, beta, 0.2, t, rng);
        HostCsb one_part = random_csb(300, 1000, beta, 0.3, t, rng);
        HostCsb short_out = random_csb(120, 2500, beta, 0.2, t, rng);
        for (int tr = 0; tr < 2; ++tr) {
          for (int bl = 0; bl < 2; ++bl) {
            for (int sorter : sorters) {
              check_spmm(parts, t, 37, tr, bl, {sorter, SpmmKernel::kSlab}, rng, dev);
              if (!tiny) check_spmm(one_part, t, 37, tr, bl, {sorter, SpmmKernel::kSlab}, rng, dev);
            }
          }
        }
        for (int bl = 0; bl < 2 && !tiny; ++bl) {
          check_spmm(short_out, t, 37, false, bl, {0, SpmmKernel::kSlab}, rng, dev);
        }
      }
      HostCsb sparse = random_csb(4100, 1700, 64, 0.03, t, rng);
      for (int bl = 0; bl < 2 && !tiny; ++bl) {
        for (int64_t n : {1024, 1030}) check_spmm(sparse, t, n, false, bl, {}, rng, dev);
        check_spmm(sparse, t, 1024, false, bl, {}, rng, dev, 0, /*with_workspace=*/false);
        check_spmm(sparse, t, 1030, true, bl, {0, SpmmKernel::kSlab}, rng, dev);
      }
    }
    // Repeated positions; at beta 128 (past the tiny level) also blocks of thousands of
    // nonzeros, which the transposed narrow walk cuts into bands of rows.
    for (int beta : tiny ? std::vector<int>{32} : std::vector<int>{32, 128}) {
      HostCsb repeats = with_repeats(random_csb(150, 140, beta, 0.3, t, rng));
      for (int64_t n : {1, 16}) {
        for (int tr = 0; tr < 2; ++tr) {
          for (int bl = 0; bl < 2; ++bl) {
            check_spmm(repeats, t, n, tr, bl, {0, SpmmKernel::kAuto}, rng, dev);
            for (SpmmKernel k : kFamilies) {
              if (serves(k, repeats, t)) {
                check_spmm(repeats, t, n, tr, bl, {0, k}, rng, dev);
              }
            }
          }
        }
      }
    }
    // Local indices and values that are not 16-byte aligned: the kernels' 16-byte loads of
    // them give way to loads of single entries. Forward in the feature-major layout, transposed
    // in the batch-leading one.
    for (int beta : tiny ? std::vector<int>{64} : std::vector<int>{32, 64, 128}) {
      HostCsb m = random_csb(150, 140, beta, 0.3, t, rng);
      check_sddmm(m, t, 33, false, true, rng, dev, {}, /*shift=*/1);
      for (int64_t n : {1, 16}) {
        for (int tr = 0; tr < 2; ++tr) {
          for (SpmmKernel k : kFamilies) {
            if (serves(k, m, t)) {
              check_spmm(m, t, n, tr, tr, {0, k}, rng, dev, /*shift=*/1);
            }
          }
        }
      }
    }
  }
  std::printf("check: %d cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}

// Median time of one launch in milliseconds.
template <typename F>
float time_ms(F launch, int reps = 20, int rounds = 7) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CHECK_CUDA(launch());
  std::vector<float> t;
  for (int r = 0; r < rounds; ++r) {
    CHECK_CUDA(cudaEventRecord(a));
    for (int i = 0; i < reps; ++i) CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / reps);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return t[t.size() / 2];
}

int run_bench(const HostCsb& m, const DeviceInfo& dev, int64_t n, DType t, int cluster,
              int tiles_per_block, std::mt19937& rng) {
  const int beta = m.shape.block_size;
  const int64_t rows = m.shape.rows, cols = m.shape.cols;
  const int64_t nnz = static_cast<int64_t>(m.values.size());
  const double density = jaxcsb::density(m.shape, nnz);
  DeviceCsb dm(m, t);
  const int64_t big = std::max(rows, cols) * n;
  uint8_t* d_in = to_device(encode(t, random_dense(big, t, rng)));
  uint8_t* d_in2 = to_device(encode(t, random_dense(big, t, rng)));
  uint8_t* d_out = nullptr;
  CHECK_CUDA(cudaMalloc(&d_out, std::max(big, nnz) * dtype_size(t)));
  const double flop = 2.0 * nnz * n;
  std::printf("bench %ldx%ld density=%.3f nnz=%ld n=%ld beta=%d %s cluster=%d (%d SMs)\n",
              long(rows), long(cols), density, long(nnz), long(n), beta, dtype_name(t), cluster,
              dev.num_sms);
  // Every kernel family that serves the product is timed, the heuristic's pick first.
  int bad = 0;
  for (int tr = 0; tr < 2; ++tr) {
    for (int bl = 0; bl < 2; ++bl) {
      for (SpmmKernel kernel : kernels_for(m, t, n, tr, bl)) {
        if (kernel == SpmmKernel::kNarrow && n > 64) continue;  // built for small n only
        SpmmArgs a = spmm_args(m, dm, t, n, tr, bl, d_in, d_out);
        // tiles_per_block applies to lines of one block only (and the wide kernel only).
        const SpmmOptions opt{cluster, kernel, a.shape.line_length() == 1 ? tiles_per_block : 0};
        a.workspace = alloc_workspace(a, opt);
        auto launch = [&] { return launch_spmm(a, dev, nullptr, opt); };
        const float ms = time_ms(launch);
        // Determinism: three runs bitwise equal.
        bool same = false;
        cudaError_t err = cudaSuccess;
        run_repeatedly(d_out, a.shape.out_dim() * n * dtype_size(t), launch, 3, &same, &err);
        CHECK_CUDA(err);
        bad += !same;
        std::printf("spmm  %s %-5s %-6s  %8.4f ms  %6.2f TFLOP/s  deterministic=%s\n",
                    tr ? "A^T.B" : "A.B  ", bl ? "batch" : "feat", kernel_name(kernel), ms,
                    flop / ms / 1e9, same ? "yes" : "NO");
        cudaFree(a.workspace);
      }
    }
  }
  // SDDMM in the two layouts of the weight gradient: feature-major (dC (M, N), B (K, N)) and
  // batch-leading (dY (N, M), X (N, K)).
  for (int lt = 0; lt < 2; ++lt) {
    const SddmmArgs a = sddmm_args(m, dm, t, n, lt, !lt, d_in, d_in2, d_out);
    auto launch = [&] { return launch_sddmm(a, dev, nullptr, {cluster}); };
    const float ms = time_ms(launch);
    bool same = false;
    cudaError_t err = cudaSuccess;
    run_repeatedly(d_out, nnz * dtype_size(t), launch, 3, &same, &err);
    CHECK_CUDA(err);
    bad += !same;
    std::printf("sddmm %-15s %8.4f ms  %6.2f TFLOP/s  deterministic=%s\n",
                lt ? "batch-leading" : "feature-major", ms, flop / ms / 1e9, same ? "yes" : "NO");
  }
  cudaFree(d_in);
  cudaFree(d_in2);
  cudaFree(d_out);
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  DeviceInfo dev;
  CHECK_CUDA(device_info(nullptr, &dev));
  std::printf("device %d: %d SMs, %d bytes of shared memory per block, cluster launch %s\n",
              dev.device, dev.num_sms, dev.max_smem_optin, dev.cluster_launch ? "yes" : "no");
  if (mode == "check") {
    const std::string level = argc > 2 ? argv[2] : "";
    return run_check(level == "tiny" ? 2 : level == "quick" ? 1 : 0, dev);
  }
  if (mode == "bench") {
    const int beta = argc > 2 ? std::atoi(argv[2]) : 64;
    const int64_t rows = argc > 3 ? std::atol(argv[3]) : 4096;
    const int64_t cols = argc > 4 ? std::atol(argv[4]) : 1024;
    const double density = argc > 5 ? std::atof(argv[5]) : 0.1;
    const int64_t n = argc > 6 ? std::atol(argv[6]) : 4096;
    const std::string type = argc > 7 ? argv[7] : "float32";
    const DType t = type == "bfloat16"  ? DType::kBF16
                    : type == "float16" ? DType::kF16
                                        : DType::kF32;
    const int cluster = argc > 8 ? std::atoi(argv[8]) : 0;
    const int tiles_per_block = argc > 9 ? std::atoi(argv[9]) : 0;
    std::mt19937 rng(7);
    const HostCsb m = random_csb(rows, cols, beta, density, t, rng, -1, -1);
    return run_bench(m, dev, n, t, cluster, tiles_per_block, rng);
  }
  if (mode == "bench-smtx" && argc > 2) {
    const int beta = argc > 3 ? std::atoi(argv[3]) : 128;
    const int64_t n = argc > 4 ? std::atol(argv[4]) : 2048;
    std::mt19937 rng(7);
    const HostCsb m = read_smtx(argv[2], beta, DType::kF32, rng);
    return run_bench(m, dev, n, DType::kF32, 0, 0, rng);
  }
  std::fprintf(stderr,
               "usage: %s check [quick|tiny] | bench [beta rows cols density n dtype cluster "
               "tiles_per_block] | bench-smtx file.smtx [beta n]\n",
               argv[0]);
  return 2;
}
