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
#include <torch/csrc/autograd/custom_function.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace {

thread_local std::string last_error;

constexpr int64_t DOREFA = 0;
constexpr int64_t PACT = 1;
constexpr int64_t MPACT = 2;

constexpr int64_t ACT_NONE = 0;
constexpr int64_t ACT_RELU = 1;
constexpr int64_t ACT_RELU6 = 2;

constexpr int64_t GRAIN = 1 << 15;

struct Params {
  bool sign;     // DoReFa at 1 bit: q = sign(clamped)
  float pre;     // DoReFa: 0.1 (x is scaled before clamping); 1 otherwise
  float lo, hi;  // clamping range
  float s;       // q = round(c * s) / s
  bool down;     // mPACT: code bit 2 (clipped at -|a|)
  int64_t act;   // ACT_NONE, ACT_RELU or ACT_RELU6 applied to x first
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
               s = _mm256_set1_ps(p.s), zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f);
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
    if (p.act != ACT_NONE) {
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
  TORCH_CHECK(act == ACT_NONE || act == ACT_RELU || act == ACT_RELU6,
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

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
    ctx->save_for_backward({code});
    ctx->saved_data["mode"] = mode;
    return q;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor code = ctx->get_saved_variables()[0];
    int64_t mode = ctx->saved_data["mode"].toInt();
    // g and dx in the code's layout (a copy only if g comes in another one).
    at::Tensor g = grads[0];
    if (g.strides() != code.strides()) {
      at::Tensor laid = at::empty_like(code, g.options());
      laid.copy_(g);
      g = laid;
    }
    at::Tensor dx = at::empty_like(g);
    const float* gp = g.const_data_ptr<float>();
    const uint8_t* cp = code.const_data_ptr<uint8_t>();
    float* dp = dx.mutable_data_ptr<float>();
    int64_t n = g.numel();
    at::Tensor da;
    if (mode == DOREFA) {
      at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
        input_grad_range(gp + begin, cp + begin, dp + begin, end - begin, 0.1f);
      });
    } else {
      // dx and dalpha's partial sums in the same pass over g and the code.
      double sum = at::parallel_reduce(
          0, n, GRAIN, 0.0,
          [&](int64_t begin, int64_t end, double acc) {
            return acc + grads_range(gp + begin, cp + begin, dp + begin, end - begin);
          },
          [](double a, double b) { return a + b; });
      da = at::scalar_tensor(static_cast<float>(sum), g.options());
    }
    return {dx, da, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

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

}  // extern "C"
