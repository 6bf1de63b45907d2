// Fused activation quantizers of qatc's runtime (see runtime/src/quant/fused.rs).
//
// One libtorch autograd function per call site kind (DoReFa activation, PACT,
// mPACT) whose forward makes one pass over the input (read x, write q and a
// one-byte code per element) and whose backward makes one pass (read the
// incoming gradient and the code, write dx, reduce dalpha). The stock-op path
// of quant.rs needs about eleven passes forward and three backward for the
// same values and gradients.
//
// Values are bit for bit those of the stock ops (quant.rs): the same float
// operations in the same order (scale, clamp, multiply, round half to even,
// divide), compiled without contraction into FMAs (build.rs passes
// -ffp-contract=off) and without fast-math. Gradients with respect to x are
// bit for bit too (g times a 0/1 mask); the clipping value's gradient is a
// sum in another order (float lanes flushed into doubles), equal to the
// reference's within float rounding.
//
// The code byte: bit 0 = "inside" (x passes its gradient), bit 1 = clipped
// at +|a| (dalpha += g), bit 2 = clipped at -|a| (dalpha -= g). PACT and
// mPACT count ties on both sides, as the seed's backward does.
//
// A ReLU or ReLU6 right before the quantizer can be fused in (`act`): the
// quantizer then reads relu(x) = max(x, 0) or relu6(x) = min(max(x, 0), 6)
// (PyTorch's clamp_min / hardtanh values, NaN kept), and bit 0 also
// requires the activation's own gradient mask: x > 0 for ReLU (its backward
// is threshold_backward on the result), 0 < x < 6 for ReLU6 (hardtanh's
// backward is strict at both ends); NaN passes both, as in PyTorch. The
// clipping value's bits are those of the quantizer's input, relu(x), since
// the activation does not stand between the quantizer and dalpha.
//
// C interface: tensors are passed and returned as `at::Tensor*` (tch's
// C_tensor); a returned tensor is owned by the caller (tch deletes it). On an
// exception the functions return nullptr and qatc_fq_last_error() says why.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace {

thread_local std::string last_error;

constexpr int64_t DOREFA = 0;
constexpr int64_t PACT = 1;
constexpr int64_t MPACT = 2;

constexpr int64_t ACT_NONE = 0;
constexpr int64_t ACT_RELU = 1;
constexpr int64_t ACT_RELU6 = 2;
constexpr int64_t ACT_HARDSWISH = 3;

constexpr int64_t GRAIN = 1 << 15;

struct Params {
  bool sign;     // DoReFa at 1 bit: q = sign(clamped)
  float pre;     // DoReFa: 0.1 (x is scaled before clamping); 1 otherwise
  float lo, hi;  // clamping range
  float s;       // q = round(c * s) / s
  bool down;     // mPACT: code bit 2 (clipped at -|a|)
  int64_t act;   // ACT_NONE, ACT_RELU, ACT_RELU6 or ACT_HARDSWISH applied to x first
};

// The stock ops per element: torch.clamp keeps a NaN input NaN, torch.round
// rounds half to even (nearbyint in the default rounding mode), torch.sign
// is (0 < c) - (c < 0).
inline float clamp_scalar(float v, float lo, float hi) {
  float m = v < lo ? lo : v;
  return m > hi ? hi : m;
}

inline uint8_t code_scalar(float v, const Params& p) {
  return static_cast<uint8_t>((v >= p.lo && v <= p.hi ? 1 : 0) | (v >= p.hi ? 2 : 0) |
                              (p.down && v <= p.lo ? 4 : 0));
}

// The fused activation's value and whether it passes its gradient.
inline float act_scalar(float x, int64_t act, bool* passes) {
  if (act == ACT_NONE) {
    *passes = true;
    return x;
  }
  if (act == ACT_HARDSWISH) {
    // PyTorch's scalar hardswish: x * min(max(x + 3, 0), 6) / 6. Its
    // gradient is not a 0/1 mask: the backward reads x (see FusedQuant).
    *passes = true;
    return x * std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f;
  }
  *passes = !(x <= 0.0f) && !(act == ACT_RELU6 && x >= 6.0f);
  float y = x < 0.0f ? 0.0f : x;
  return act == ACT_RELU6 && y > 6.0f ? 6.0f : y;
}

template <bool CODE>
void quantize_scalar(const float* x, float* q, uint8_t* code, int64_t len, const Params& p) {
  for (int64_t i = 0; i < len; ++i) {
    bool passes;
    float y = act_scalar(x[i], p.act, &passes);
    float v = p.pre == 1.0f ? y : y * p.pre;
    float c = clamp_scalar(v, p.lo, p.hi);
    if (CODE) code[i] = code_scalar(v, p) & (passes ? 0xff : 0xfe);
    q[i] = p.sign ? static_cast<float>((0.0f < c) - (c < 0.0f)) : std::nearbyint(c * p.s) / p.s;
  }
}

// AVX2: 8 elements at a time with the same operations. max(lo, v) and
// min(hi, m) return their second operand when one is NaN, so a NaN input
// stays NaN; a NaN clipping value makes s NaN and every q NaN, as the stock
// ops do. Rounding is vroundps to nearest even, the division vdivps.
template <bool CODE>
__attribute__((target("avx2"))) void quantize_avx2(const float* x, float* q, uint8_t* code,
                                                   int64_t len, const Params& p) {
  const __m256 pre = _mm256_set1_ps(p.pre), lo = _mm256_set1_ps(p.lo), hi = _mm256_set1_ps(p.hi),
               s = _mm256_set1_ps(p.s), zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f),
               three = _mm256_set1_ps(3.0f);
  const __m256i all = _mm256_set1_epi32(-1);
  const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2),
                four = _mm256_set1_epi32(p.down ? 4 : 0);
  // Low byte of each 32-bit lane to the first 4 bytes of each 128-bit half.
  const __m256i gather = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1);
  const __m256i halves = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
  const bool scaled = p.pre != 1.0f;
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    // The fused activation: max and min return v when it is NaN.
    __m256i passes = all;
    if (p.act == ACT_HARDSWISH) {
      // PyTorch's vectorised hardswish: x * min(max(x + 3, 0), 6) / 6 (a
      // NaN stays NaN: max and min return their second operand then).
      __m256 m = _mm256_min_ps(six, _mm256_max_ps(zero, _mm256_add_ps(v, three)));
      v = _mm256_div_ps(_mm256_mul_ps(v, m), six);
    } else if (p.act != ACT_NONE) {
      passes = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_NLE_UQ));
      if (p.act == ACT_RELU6) {
        passes = _mm256_and_si256(passes, _mm256_castps_si256(_mm256_cmp_ps(v, six, _CMP_NGE_UQ)));
        v = _mm256_min_ps(six, _mm256_max_ps(zero, v));
      } else {
        v = _mm256_max_ps(zero, v);
      }
    }
    if (scaled) v = _mm256_mul_ps(v, pre);
    __m256 c = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
    __m256 r = _mm256_round_ps(_mm256_mul_ps(c, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_ps(q + i, _mm256_div_ps(r, s));
    if (CODE) {
      __m256i ge_lo = _mm256_castps_si256(_mm256_cmp_ps(v, lo, _CMP_GE_OQ));
      __m256i le_hi = _mm256_castps_si256(_mm256_cmp_ps(v, hi, _CMP_LE_OQ));
      __m256i ge_hi = _mm256_castps_si256(_mm256_cmp_ps(v, hi, _CMP_GE_OQ));
      __m256i le_lo = _mm256_castps_si256(_mm256_cmp_ps(v, lo, _CMP_LE_OQ));
      __m256i bits = _mm256_or_si256(
          _mm256_and_si256(_mm256_and_si256(_mm256_and_si256(ge_lo, le_hi), passes), one),
          _mm256_or_si256(_mm256_and_si256(ge_hi, two), _mm256_and_si256(le_lo, four)));
      __m256i packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(bits, gather), halves);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(code + i), _mm256_castsi256_si128(packed));
    }
  }
  quantize_scalar<CODE>(x + i, q + i, CODE ? code + i : nullptr, len - i, p);
}

const bool has_avx2 = __builtin_cpu_supports("avx2");

template <bool CODE>
void quantize_range(const float* x, float* q, uint8_t* code, int64_t len, const Params& p) {
  if (has_avx2 && !p.sign) {
    quantize_avx2<CODE>(x, q, code, len, p);
  } else {
    quantize_scalar<CODE>(x, q, code, len, p);
  }
}

// Writes q (and the code, when not null) for every element of x.
void quantize(const at::Tensor& x, at::Tensor& q, uint8_t* code, const Params& p) {
  const float* xp = x.const_data_ptr<float>();
  float* qp = q.mutable_data_ptr<float>();
  at::parallel_for(0, x.numel(), GRAIN, [&](int64_t begin, int64_t end) {
    if (code) {
      quantize_range<true>(xp + begin, qp + begin, code + begin, end - begin, p);
    } else {
      quantize_range<false>(xp + begin, qp + begin, nullptr, end - begin, p);
    }
  });
}

#define QATC_MULTIVERSION __attribute__((target_clones("avx2", "default")))

// dx = g * mask * slope for DoReFa: the stock path's g * (mask * slope)
// (both products are exact for a 0/1 mask).
QATC_MULTIVERSION
void input_grad_range(const float* g, const uint8_t* code, float* dx, int64_t len, float slope) {
  for (int64_t i = 0; i < len; ++i) {
    dx[i] = g[i] * static_cast<float>(code[i] & 1) * slope;
  }
}

// dx = g * inside for PACT and mPACT, and the sum of
// g * ([clipped at +|a|] - [clipped at -|a|]), in one pass; the sum in
// double.
double grads_scalar(const float* g, const uint8_t* code, float* dx, int64_t len) {
  double sum = 0.0;
  for (int64_t i = 0; i < len; ++i) {
    uint8_t c = code[i];
    dx[i] = g[i] * static_cast<float>(c & 1);
    sum += static_cast<double>(g[i] * static_cast<float>(((c >> 1) & 1) - ((c >> 2) & 1)));
  }
  return sum;
}

// The same 8 elements at a time: the sum in 8 float lanes, flushed into a
// double every 1024 elements.
__attribute__((target("avx2"))) double grads_avx2(const float* g, const uint8_t* code, float* dx,
                                                  int64_t len) {
  const __m256i one = _mm256_set1_epi32(1);
  double sum = 0.0;
  int64_t i = 0;
  while (len - i >= 8) {
    int64_t stop = i + std::min<int64_t>(1024, (len - i) / 8 * 8);
    __m256 acc = _mm256_setzero_ps();
    for (; i < stop; i += 8) {
      __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(code + i)));
      __m256 gv = _mm256_loadu_ps(g + i);
      __m256 inside = _mm256_cvtepi32_ps(_mm256_and_si256(c, one));
      __m256i side = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(c, 1), one),
                                      _mm256_and_si256(_mm256_srli_epi32(c, 2), one));
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(gv, inside));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(gv, _mm256_cvtepi32_ps(side)));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (float v : lanes) sum += v;
  }
  return sum + grads_scalar(g + i, code + i, dx + i, len - i);
}

double grads_range(const float* g, const uint8_t* code, float* dx, int64_t len) {
  return has_avx2 ? grads_avx2(g, code, dx, len) : grads_scalar(g, code, dx, len);
}

Params params_of(int64_t mode, int64_t bits, const at::Tensor& alpha, int64_t act) {
  TORCH_CHECK(act == ACT_NONE || act == ACT_RELU || act == ACT_RELU6 || act == ACT_HARDSWISH,
              "fused quantizer: unknown activation ", act);
  Params p{false, 1.0f, 0.0f, 0.0f, 0.0f, false, act};
  if (mode == DOREFA) {
    p.sign = bits == 1;
    p.pre = 0.1f;
    p.hi = 1.0f;
    p.s = static_cast<float>((1u << bits) - 1);
  } else {
    float a = alpha.item<float>();
    int64_t k = mode == PACT ? bits : bits - 1;
    // (1 / a) * levels in float, as `alpha.reciprocal() * levels` does.
    p.s = (1.0f / a) * static_cast<float>((1u << k) - 1);
    if (mode == PACT) {
      p.hi = a;
    } else {
      p.hi = std::fabs(a);
      p.lo = -p.hi;
      p.down = true;
    }
  }
  return p;
}

// The sum of f(begin, end) over [0, n) cut into blocks of `block` indices,
// the blocks computed in parallel and their partial sums added in block
// order: the same value whatever the number of threads (at::parallel_reduce
// cuts the range by the thread count, so its sum would depend on it).
template <class F>
double blocked_sum(int64_t n, int64_t block, const F& f) {
  int64_t blocks = (n + block - 1) / block;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t stop) {
    for (int64_t b = first; b < stop; ++b) partial[b] = f(b * block, std::min(n, (b + 1) * block));
  });
  double sum = 0.0;
  for (double v : partial) sum += v;
  return sum;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// g in the code's layout (a copy only if g comes in another one).
at::Tensor laid_like(const at::Tensor& g, const at::Tensor& code) {
  if (g.strides() == code.strides()) return g;
  at::Tensor laid = at::empty_like(code, g.options());
  laid.copy_(g);
  return laid;
}

// The quantizer's own backward: dx = g * inside (times 0.1 for DoReFa) in
// the code's layout, and dalpha (undefined for DoReFa) into *da.
at::Tensor quantizer_grads(const at::Tensor& grad, const at::Tensor& code, int64_t mode,
                           at::Tensor* da) {
  at::Tensor g = laid_like(grad, code);
  at::Tensor dx = at::empty_like(g);
  const float* gp = g.const_data_ptr<float>();
  const uint8_t* cp = code.const_data_ptr<uint8_t>();
  float* dp = dx.mutable_data_ptr<float>();
  int64_t n = g.numel();
  if (mode == DOREFA) {
    at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
      input_grad_range(gp + begin, cp + begin, dp + begin, end - begin, 0.1f);
    });
  } else {
    // dx and dalpha's partial sums in the same pass over g and the code.
    double sum = blocked_sum(n, GRAIN, [&](int64_t begin, int64_t end) {
      return grads_range(gp + begin, cp + begin, dp + begin, end - begin);
    });
    *da = at::scalar_tensor(static_cast<float>(sum), g.options());
  }
  return dx;
}

struct FusedQuant : public torch::autograd::Function<FusedQuant> {
  // alpha is a constant 0 for DoReFa (no gradient).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha,
                            int64_t mode, int64_t bits, int64_t act) {
    Params p = params_of(mode, bits, alpha, act);
    // x is dense (the caller makes it contiguous in its suggested memory
    // format); q and the code take its strides, so element i of the storage
    // is the same element in all three.
    at::Tensor q = at::empty_like(x);
    at::Tensor code = at::empty_like(x, x.options().dtype(at::kByte));
    quantize(x, q, code.mutable_data_ptr<uint8_t>(), p);
    // A fused hardswish's gradient depends on x itself (not a 0/1 mask):
    // its backward reads x, as PyTorch's hardswish backward does.
    if (act == ACT_HARDSWISH) {
      ctx->save_for_backward({code, x});
    } else {
      ctx->save_for_backward({code});
    }
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["act"] = act;
    return q;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    at::Tensor code = saved[0];
    int64_t mode = ctx->saved_data["mode"].toInt();
    int64_t act = ctx->saved_data["act"].toInt();
    at::Tensor da;
    at::Tensor dx = quantizer_grads(grads[0], code, mode, &da);
    if (act == ACT_HARDSWISH) {
      // The hardswish's own backward on the quantizer's input gradient:
      // PyTorch's kernel, so the same values as the unfused ops.
      dx = at::hardswish_backward(dx, saved[1]);
    }
    return {dx, da, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};


// Rows of a 4-D tensor as the concat and the gating product see them: in
// channels-last storage one row per pixel (N*H*W rows of C channels), in
// contiguous (NCHW) storage one row per image (N rows of C*H*W values).
// `stride` is the distance between row starts in elements (larger than
// `len` for a channel slice of a wider map, e.g. a split part).
struct Rows {
  const float* data;
  int64_t len;
  int64_t stride;
};

// `x`'s rows in memory format `fmt` without a copy, or false when its
// strides do not have that form.
bool rows_of(const at::Tensor& x, at::MemoryFormat fmt, Rows* r) {
  if (x.dim() != 4) return false;
  int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  if (fmt == at::MemoryFormat::ChannelsLast) {
    int64_t sw = x.stride(3);
    bool ok = (c == 1 || x.stride(1) == 1) && (h == 1 || x.stride(2) == w * sw) &&
              (n == 1 || x.stride(0) == h * w * sw) && sw >= c;
    if (!ok) return false;
    r->data = x.const_data_ptr<float>();
    r->len = c;
    r->stride = sw;
    return true;
  }
  bool inner = (w == 1 || x.stride(3) == 1) && (h == 1 || x.stride(2) == w) &&
               (c == 1 || x.stride(1) == h * w);
  if (!inner || x.stride(0) < c * h * w) return false;
  r->data = x.const_data_ptr<float>();
  r->len = c * h * w;
  r->stride = n == 1 ? c * h * w : x.stride(0);
  return true;
}

int64_t row_count(const at::Tensor& x, at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast ? x.size(0) * x.size(2) * x.size(3) : x.size(0);
}

// Quantizes concat(act_0(x_0), act_1(x_1), ...) along the channels into q
// (and the code), row by row: the same values as the concatenation
// quantized, without writing the concatenation.
void quantize_concat(const std::vector<Rows>& in, const std::vector<Params>& ps, int64_t rows,
                     float* q, uint8_t* code) {
  int64_t width = 0;
  for (const Rows& r : in) width += r.len;
  int64_t grain = std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, width));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t off = row * width;
      for (size_t i = 0; i < in.size(); ++i) {
        const float* src = in[i].data + row * in[i].stride;
        if (code) {
          quantize_range<true>(src, q + off, code + off, in[i].len, ps[i]);
        } else {
          quantize_range<false>(src, q + off, nullptr, in[i].len, ps[i]);
        }
        off += in[i].len;
      }
    }
  });
}

at::MemoryFormat format_of(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// The inputs as rows (copied into `keep` in the format where their strides
// have no row form), the output's sizes and the activation of each.
struct ConcatIn {
  at::MemoryFormat fmt;
  std::vector<at::Tensor> keep;
  std::vector<Rows> rows;
  std::vector<int64_t> sizes;
  int64_t nrows;
};

ConcatIn concat_in(at::TensorList xs) {
  TORCH_CHECK(!xs.empty(), "fused concat quantizer: no inputs");
  ConcatIn c;
  c.fmt = format_of(xs[0]);
  int64_t channels = 0;
  for (const at::Tensor& x : xs) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
                "fused concat quantizer: 4-D float CPU tensors expected, got ", x.toString());
    TORCH_CHECK(x.size(0) == xs[0].size(0) && x.size(2) == xs[0].size(2) &&
                    x.size(3) == xs[0].size(3),
                "fused concat quantizer: the inputs' batch and spatial sizes differ");
    at::Tensor t = x;
    Rows r;
    if (!rows_of(t, c.fmt, &r)) {
      t = x.contiguous(c.fmt);
      TORCH_CHECK(rows_of(t, c.fmt, &r), "fused concat quantizer: no row form");
    }
    c.keep.push_back(t);
    c.rows.push_back(r);
    channels += x.size(1);
  }
  c.sizes = {xs[0].size(0), channels, xs[0].size(2), xs[0].size(3)};
  c.nrows = row_count(xs[0], c.fmt);
  return c;
}

// Activation of input i from the packed argument (two bits per input).
int64_t act_of(int64_t acts, size_t i) { return (acts >> (2 * i)) & 3; }

struct FusedConcatQuant : public torch::autograd::Function<FusedConcatQuant> {
  static at::Tensor forward(AutogradContext* ctx, at::TensorList xs, const at::Tensor& alpha,
                            int64_t mode, int64_t bits, int64_t acts) {
    ConcatIn c = concat_in(xs);
    std::vector<Params> ps;
    for (size_t i = 0; i < xs.size(); ++i) ps.push_back(params_of(mode, bits, alpha, act_of(acts, i)));
    at::Tensor q = at::empty(c.sizes, xs[0].options().memory_format(c.fmt));
    at::Tensor code = at::empty(c.sizes, xs[0].options().dtype(at::kByte).memory_format(c.fmt));
    quantize_concat(c.rows, ps, c.nrows, q.mutable_data_ptr<float>(),
                    code.mutable_data_ptr<uint8_t>());
    ctx->save_for_backward({code});
    ctx->saved_data["mode"] = mode;
    std::vector<int64_t> widths;
    for (const at::Tensor& x : xs) widths.push_back(x.size(1));
    ctx->saved_data["widths"] = widths;
    return q;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor code = ctx->get_saved_variables()[0];
    int64_t mode = ctx->saved_data["mode"].toInt();
    std::vector<int64_t> widths = ctx->saved_data["widths"].toIntVector();
    at::MemoryFormat fmt = format_of(code);
    at::Tensor g = laid_like(grads[0], code);
    const float* gp = g.const_data_ptr<float>();
    const uint8_t* cp = code.const_data_ptr<uint8_t>();
    int64_t n = code.size(0), h = code.size(2), w = code.size(3);
    int64_t rows = row_count(code, fmt);
    int64_t per = fmt == at::MemoryFormat::ChannelsLast ? 1 : h * w;
    int64_t width = code.size(1) * per;
    // One dense gradient per input, in the output's memory format.
    std::vector<at::Tensor> dxs;
    std::vector<float*> dps;
    std::vector<int64_t> lens, offs;
    int64_t off = 0;
    for (int64_t c : widths) {
      dxs.push_back(at::empty({n, c, h, w}, g.options().memory_format(fmt)));
      dps.push_back(dxs.back().mutable_data_ptr<float>());
      lens.push_back(c * per);
      offs.push_back(off);
      off += c * per;
    }
    int64_t grain = std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, width));
    double sum = blocked_sum(rows, grain, [&](int64_t begin, int64_t end) {
          double acc = 0.0;
          for (int64_t row = begin; row < end; ++row) {
            for (size_t i = 0; i < dps.size(); ++i) {
              int64_t at_ = row * width + offs[i];
              float* dst = dps[i] + row * lens[i];
              if (mode == DOREFA) {
                input_grad_range(gp + at_, cp + at_, dst, lens[i], 0.1f);
              } else {
                acc += grads_range(gp + at_, cp + at_, dst, lens[i]);
              }
            }
          }
          return acc;
        });
    variable_list out(dxs.begin(), dxs.end());
    out.push_back(mode == DOREFA ? at::Tensor()
                                 : at::scalar_tensor(static_cast<float>(sum), g.options()));
    out.push_back(at::Tensor());
    out.push_back(at::Tensor());
    out.push_back(at::Tensor());
    return out;
  }
};

// The gating product x * gate (gate [N, C, 1, 1], x [N, C, H, W], both
// dense) quantized in one pass: each product is formed in a small buffer
// (the same float multiply as `x * gate`) and quantized from there.
void quantize_gated(const at::Tensor& x, const at::Tensor& gate, float* q, uint8_t* code,
                    const Params& p) {
  const float* xp = x.const_data_ptr<float>();
  const float* gp = gate.const_data_ptr<float>();
  int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  bool last = format_of(x) == at::MemoryFormat::ChannelsLast;
  // Channels-last: one row per pixel, the gate's row of C varying along it;
  // NCHW: one row per (image, channel), one gate value for its H*W values.
  int64_t rows = last ? n * hw : n * c, len = last ? c : hw;
  // Rows are quantized in blocks of about 4096 values (the output is dense,
  // so a block of rows is one run): short rows (a few channels) would
  // otherwise pay a call per row.
  int64_t block = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, len));
  int64_t grain = std::max<int64_t>(block, GRAIN / std::max<int64_t>(1, len));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(block * len);
    for (int64_t first = begin; first < end; first += block) {
      int64_t stop = std::min(end, first + block);
      for (int64_t row = first; row < stop; ++row) {
        const float* src = xp + row * len;
        float* dst = buf.data() + (row - first) * len;
        if (last) {
          const float* gr = gp + (row / hw) * c;
          for (int64_t i = 0; i < len; ++i) dst[i] = src[i] * gr[i];
        } else {
          float gv = gp[row];
          for (int64_t i = 0; i < len; ++i) dst[i] = src[i] * gv;
        }
      }
      int64_t count = (stop - first) * len;
      if (code) {
        quantize_range<true>(buf.data(), q + first * len, code + first * len, count, p);
      } else {
        quantize_range<false>(buf.data(), q + first * len, nullptr, count, p);
      }
    }
  });
}

struct FusedMulQuant : public torch::autograd::Function<FusedMulQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gate,
                            const at::Tensor& alpha, int64_t mode, int64_t bits) {
    Params p = params_of(mode, bits, alpha, ACT_NONE);
    at::Tensor q = at::empty_like(x);
    at::Tensor code = at::empty_like(x, x.options().dtype(at::kByte));
    quantize_gated(x, gate, q.mutable_data_ptr<float>(), code.mutable_data_ptr<uint8_t>(), p);
    ctx->save_for_backward({code, x, gate});
    ctx->saved_data["mode"] = mode;
    return q;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    int64_t mode = ctx->saved_data["mode"].toInt();
    at::Tensor da;
    at::Tensor dq = quantizer_grads(grads[0], saved[0], mode, &da);
    // The product's backward as autograd computes it for `x * gate`:
    // dx = dq * gate, dgate = (dq * x) summed to the gate's shape.
    at::Tensor dx = dq * saved[2];
    at::Tensor dgate = at::sum_to(dq * saved[1], saved[2].sizes());
    return {dx, dgate, da, at::Tensor(), at::Tensor()};
  }
};

// This thread's OpenMP thread count (the ICV that at::get_num_threads()
// reads) at 1 for the scope's life, so ATen's ops called here take their
// serial paths; restored on exit, also when an op throws. For the small
// tensors of the weight quantizer: an op that splits 40,000 elements over
// two threads waits for the sleeping second thread (OMP_WAIT_POLICY=PASSIVE)
// about 70 us on a virtual machine, ten times its work.
struct SerialScope {
  // at::get_num_threads() first: its lazy per-thread initialisation would
  // otherwise set the count back on its first call inside the scope.
  int before = at::get_num_threads();
  // MKL's own count for this thread (its vector math, tanh among them,
  // starts its own parallel region): weak, absent from builds without MKL.
  int mkl_before = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
  SerialScope() { omp_set_num_threads(1); }
  ~SerialScope() {
    omp_set_num_threads(before);
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(mkl_before);
  }
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;
};

// The DoReFa weight quantizer of quant.rs for 2 bits and more, op for op:
// t = tanh(w) / max|tanh(w)|, then its values rounded in place (the sign at
// 2 bits, round(t * n) / n with n = 2^(bits-1) - 1 otherwise); the
// division's backward never reads its output, so the gradient is the
// graph's straight through the rounding.
at::Tensor dorefa_weight_graph(const at::Tensor& w, int64_t bits) {
  at::Tensor t = at::tanh(w);
  t = t / t.abs().max();
  at::Tensor q = t.detach();
  if (bits == 2) {
    q.sign_();
  } else {
    double n = static_cast<double>((int64_t{1} << (bits - 1)) - 1);
    q.mul_(n);
    q.round_();
    q.div_(n);
  }
  return t;
}

// The weight quantizer as one autograd node whose forward and backward run
// on this thread alone (SerialScope). Backward builds the same graph again
// on a detached copy of w and differentiates it with autograd: PyTorch's
// own derivative formulas (tanh, abs, max, division), so dw is the stock
// graph's, computed serially (the stock graph's sum over a weight of more
// than 32,768 elements is split over the threads: its last bits there
// depend on the thread count, these do not).
struct FusedWeightQuant : public torch::autograd::Function<FusedWeightQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, int64_t bits) {
    SerialScope serial;
    ctx->save_for_backward({w});
    ctx->saved_data["bits"] = bits;
    return dorefa_weight_graph(w, bits);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    SerialScope serial;
    at::Tensor w = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    int64_t bits = ctx->saved_data["bits"].toInt();
    at::AutoGradMode enable(true);
    at::Tensor t = dorefa_weight_graph(w, bits);
    variable_list dw = torch::autograd::grad({t}, {w}, {grads[0]});
    return {dw[0], at::Tensor()};
  }
};

}  // namespace

extern "C" {

// The DoReFa weight quantizer (2 to 16 bits) of a float CPU tensor as one
// serial autograd node (FusedWeightQuant); a constant when w needs no
// gradient or grad mode is off.
at::Tensor* qatc_fq_dorefa_weight(const at::Tensor* w, int64_t bits) {
  try {
    TORCH_CHECK(w->device().is_cpu() && w->scalar_type() == at::kFloat,
                "fused weight quantizer: a float CPU tensor expected, got ", w->toString());
    TORCH_CHECK(bits >= 2 && bits <= 16, "fused weight quantizer: 2 to 16 bits, got ", bits);
    if (w->requires_grad() && at::GradMode::is_enabled()) {
      return new at::Tensor(FusedWeightQuant::apply(*w, bits));
    }
    SerialScope serial;
    return new at::Tensor(dorefa_weight_graph(*w, bits));
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

const char* qatc_fq_last_error() { return last_error.c_str(); }

// The quantized x, or of relu(x) / relu6(x) with `act` 1 / 2. `alpha` may
// be null (DoReFa). With `track` set, the result carries the seed's gradient
// to x and alpha through FusedQuant; without, it is computed in one pass
// with no code and no graph.
at::Tensor* qatc_fq_quantize(const at::Tensor* x, const at::Tensor* alpha, int64_t mode,
                             int64_t bits, int64_t act, int track) {
  try {
    // DoReFa has no clipping value; autograd functions take no undefined
    // inputs, so it gets a constant that receives no gradient.
    at::Tensor a = alpha ? *alpha : at::zeros({}, x->options());
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kFloat,
                "fused quantizer: a float CPU tensor expected, got ", x->toString());
    // Dense in its own layout (contiguous or channels-last): one storage pass.
    at::Tensor xd = x->contiguous(x->suggest_memory_format());
    if (track) {
      return new at::Tensor(FusedQuant::apply(xd, a, mode, bits, act));
    }
    at::NoGradGuard no_grad;
    Params p = params_of(mode, bits, a, act);
    at::Tensor q = at::empty_like(xd);
    quantize(xd, q, nullptr, p);
    return new at::Tensor(q);
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

// concat(act_0(xs[0]), ...) along dim 1, quantized: `acts` holds two bits
// per input (0 none, 1 ReLU, 2 ReLU6).
at::Tensor* qatc_fq_quantize_concat(const at::Tensor* const* xs, int64_t count,
                                    const at::Tensor* alpha, int64_t mode, int64_t bits,
                                    int64_t acts, int track) {
  try {
    std::vector<at::Tensor> list;
    for (int64_t i = 0; i < count; ++i) list.push_back(*xs[i]);
    at::Tensor a = alpha ? *alpha : at::zeros({}, list.at(0).options());
    if (track) {
      return new at::Tensor(FusedConcatQuant::apply(at::TensorList(list), a, mode, bits, acts));
    }
    at::NoGradGuard no_grad;
    ConcatIn c = concat_in(list);
    std::vector<Params> ps;
    for (size_t i = 0; i < list.size(); ++i) ps.push_back(params_of(mode, bits, a, act_of(acts, i)));
    at::Tensor q = at::empty(c.sizes, list[0].options().memory_format(c.fmt));
    quantize_concat(c.rows, ps, c.nrows, q.mutable_data_ptr<float>(), nullptr);
    return new at::Tensor(q);
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

// x * gate quantized (gate [N, C, 1, 1] broadcast over x's H x W).
at::Tensor* qatc_fq_quantize_mul(const at::Tensor* x, const at::Tensor* gate,
                                 const at::Tensor* alpha, int64_t mode, int64_t bits, int track) {
  try {
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kFloat && x->dim() == 4 &&
                    gate->device().is_cpu() && gate->scalar_type() == at::kFloat &&
                    gate->dim() == 4 && gate->size(0) == x->size(0) &&
                    gate->size(1) == x->size(1) && gate->size(2) == 1 && gate->size(3) == 1,
                "fused gate quantizer: x [N, C, H, W] and gate [N, C, 1, 1] float CPU tensors "
                "expected, got ",
                x->toString(), " ", gate->sizes(), " ", gate->toString());
    at::Tensor a = alpha ? *alpha : at::zeros({}, x->options());
    at::Tensor xd = x->contiguous(format_of(*x));
    at::Tensor gd = gate->contiguous();
    if (track) {
      return new at::Tensor(FusedMulQuant::apply(xd, gd, a, mode, bits));
    }
    at::NoGradGuard no_grad;
    Params p = params_of(mode, bits, a, ACT_NONE);
    at::Tensor q = at::empty_like(xd);
    quantize_gated(xd, gd, q.mutable_data_ptr<float>(), nullptr, p);
    return new at::Tensor(q);
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

}  // extern "C"
