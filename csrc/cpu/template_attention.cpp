// CPU kernels of reidkern::template_attention_fwd / _bwd: a few learned queries (Nq <= 32) over up
// to 512 keys with head dim up to 512 (and LGUR's 192 queries over 400 dictionary atoms), forward
// and backward fused per (batch, head).
//
// One task per (b, h), run by torch's intra-op pool. A task keeps its logits / probabilities
// [Nq, L] in a small thread-local buffer, never a [B, H, Nq, L] tensor unless the weights are
// asked for. Forward saves the log-sum-exp per query row; backward recomputes the probabilities
// from it (flash-attention style) and needs neither the weights nor the output:
//   P = exp(S - lse), dP = dO V^T (+ grad of the returned weights), delta_i = sum_j P_ij dP_ij,
//   dS = P (dP - delta) + grad_mean_i / n_valid, dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
// A query row whose keys are all padding gets zero output, zero weights, zero mean logit, lse=-inf
// and zero gradients.
//
// Three ways to run a task's GEMMs, chosen from the shape (AttnGeom::few / ::blas):
//   * Nq <= 8 (and D <= 128 or little work): keys-major kernels with one vector lane per query
//     (S^T = K Q^T as broadcast-FMA outer products, softmax on whole vectors, the query rows held
//     in registers for P V, dS K, dS^T Q, P^T dO); padded keys stay in with probability 0.
//   * otherwise, with Nq * L * D >= 2^16: torch's mm.out (BLAS) on views of the task's memory;
//     padded keys stay in with probability 0.
//   * small tasks: register-tiled dot-product kernels on the compacted list of valid keys.
// The hand-written loops use GCC vector extensions, compiled three times (AVX-512 / AVX2+FMA /
// baseline vectors) and picked from the CPU's features at run time. Big fresh outputs get a
// transparent-huge-page hint before their first touch.
#include "common.h"
#include "huge_pages.h"


#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

// 64-byte vector values passed between always-inlined helpers: no ABI crossing.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace reidkern {
namespace {

// ---- small GEMMs on 64-byte GCC vectors (inlined into each target clone) --------------------------
#define REIDKERN_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__) && defined(__x86_64__)
#define REIDKERN_X86 1
#define REIDKERN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define REIDKERN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define REIDKERN_X86 0
#endif


enum class Isa { Base, Avx2, Avx512 };

inline Isa cpu_isa() {
  static const Isa isa = [] {
#if REIDKERN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
    return Isa::Base;
  }();
  return isa;
}

namespace vec {

template <typename T, int VB>
struct V {
  static constexpr int W = VB / sizeof(T);
  typedef T type __attribute__((vector_size(VB)));
};

template <int VB, typename T>
REIDKERN_INLINE typename V<T, VB>::type load(const T* p) {
  typename V<T, VB>::type x;
  __builtin_memcpy(&x, p, sizeof x);
  return x;
}
template <typename T, typename Vt>
REIDKERN_INLINE void store(T* p, Vt x) {
  __builtin_memcpy(p, &x, sizeof x);
}
// Sum of the lanes by halving (log2(W) shuffle + add steps).
template <typename T, typename Vt>
REIDKERN_INLINE T hsum(Vt x) {
  constexpr int W = int(sizeof(Vt) / sizeof(T));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I Vi __attribute__((vector_size(sizeof(Vt))));
  Vi idx;
  for (int t = 0; t < W; ++t) idx[t] = t;
  if constexpr (W >= 16) x += __builtin_shuffle(x, idx ^ 8);
  if constexpr (W >= 8) x += __builtin_shuffle(x, idx ^ 4);
  if constexpr (W >= 4) x += __builtin_shuffle(x, idx ^ 2);
  if constexpr (W >= 2) x += __builtin_shuffle(x, idx ^ 1);
  return x[0];
}

// C[m * ldc + n] = alpha * sum_k A[m * lda + k] * B[b_rows[n] * ldb + k]   (dot products over k)
template <typename T, int VB>
REIDKERN_INLINE void gemm_nt(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                             const T* B, int64_t ldb, const int32_t* b_rows, T* C, int64_t ldc) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  const int64_t Kv = K - K % W;
  for (int64_t n = 0; n < N; ++n) {
    const T* b = B + (b_rows ? b_rows[n] : n) * ldb;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      const T* a0 = A + m * lda;
      const T* a1 = a0 + lda;
      const T* a2 = a1 + lda;
      const T* a3 = a2 + lda;
      Vt c0 = {}, c1 = {}, c2 = {}, c3 = {};
      for (int64_t k = 0; k < Kv; k += W) {
        const Vt bv = load<VB>(b + k);
        c0 += load<VB>(a0 + k) * bv;
        c1 += load<VB>(a1 + k) * bv;
        c2 += load<VB>(a2 + k) * bv;
        c3 += load<VB>(a3 + k) * bv;
      }
      T s0 = hsum<T, Vt>(c0), s1 = hsum<T, Vt>(c1), s2 = hsum<T, Vt>(c2), s3 = hsum<T, Vt>(c3);
      for (int64_t k = Kv; k < K; ++k) {
        s0 += a0[k] * b[k];
        s1 += a1[k] * b[k];
        s2 += a2[k] * b[k];
        s3 += a3[k] * b[k];
      }
      C[m * ldc + n] = alpha * s0;
      C[(m + 1) * ldc + n] = alpha * s1;
      C[(m + 2) * ldc + n] = alpha * s2;
      C[(m + 3) * ldc + n] = alpha * s3;
    }
    for (; m < M; ++m) {
      const T* a0 = A + m * lda;
      Vt c0 = {};
      for (int64_t k = 0; k < Kv; k += W) c0 += load<VB>(a0 + k) * load<VB>(b + k);
      T s0 = hsum<T, Vt>(c0);
      for (int64_t k = Kv; k < K; ++k) s0 += a0[k] * b[k];
      C[m * ldc + n] = alpha * s0;
    }
  }
}

// C[c_rows[m] * ldc + n] = alpha * sum_k A[m * a_rs + k * a_cs] * B[b_rows[k] * ldb + n]
// (rows of B scaled and summed; register tile of 4 rows x 2 vectors).
template <typename T, int VB>
REIDKERN_INLINE void gemm_nn(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_rs,
                             int64_t a_cs, const T* B, int64_t ldb, const int32_t* b_rows, T* C,
                             int64_t ldc, const int32_t* c_rows) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  auto brow = [&](int64_t k) { return B + (b_rows ? b_rows[k] : k) * ldb; };
  auto crow = [&](int64_t m) { return C + (c_rows ? c_rows[m] : m) * ldc; };
  int64_t n = 0;
  for (; n + 2 * W <= N; n += 2 * W) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      Vt c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
      const T* a = A + m * a_rs;
      for (int64_t k = 0; k < K; ++k) {
        const T* b = brow(k) + n;
        const Vt b0 = load<VB>(b), b1 = load<VB>(b + W);
        const T* ak = a + k * a_cs;
        const Vt x0 = Vt{} + ak[0], x1 = Vt{} + ak[a_rs], x2 = Vt{} + ak[2 * a_rs],
                 x3 = Vt{} + ak[3 * a_rs];
        c00 += x0 * b0; c01 += x0 * b1;
        c10 += x1 * b0; c11 += x1 * b1;
        c20 += x2 * b0; c21 += x2 * b1;
        c30 += x3 * b0; c31 += x3 * b1;
      }
      T* c = crow(m) + n; store(c, alpha * c00); store(c + W, alpha * c01);
      c = crow(m + 1) + n; store(c, alpha * c10); store(c + W, alpha * c11);
      c = crow(m + 2) + n; store(c, alpha * c20); store(c + W, alpha * c21);
      c = crow(m + 3) + n; store(c, alpha * c30); store(c + W, alpha * c31);
    }
    for (; m < M; ++m) {
      Vt c00 = {}, c01 = {};
      const T* a = A + m * a_rs;
      for (int64_t k = 0; k < K; ++k) {
        const T* b = brow(k) + n;
        const Vt x0 = Vt{} + a[k * a_cs];
        c00 += x0 * load<VB>(b);
        c01 += x0 * load<VB>(b + W);
      }
      T* c = crow(m) + n;
      store(c, alpha * c00);
      store(c + W, alpha * c01);
    }
  }
  for (; n + W <= N; n += W) {
    for (int64_t m = 0; m < M; ++m) {
      Vt c00 = {};
      const T* a = A + m * a_rs;
      for (int64_t k = 0; k < K; ++k) c00 += (Vt{} + a[k * a_cs]) * load<VB>(brow(k) + n);
      store(crow(m) + n, alpha * c00);
    }
  }
  if (n < N) {
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A + m * a_rs;
      T* c = crow(m);
      for (int64_t nn = n; nn < N; ++nn) c[nn] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const T x = a[k * a_cs];
        const T* b = brow(k);
        for (int64_t nn = n; nn < N; ++nn) c[nn] += x * b[nn];
      }
      for (int64_t nn = n; nn < N; ++nn) c[nn] *= alpha;
    }
  }
}

// C[m * ldc + n] = alpha * sum_k A[m * a_rs + k * a_cs] * B[b_rows[k] * ldb + n] for few rows M
// and many k (P V, dS K): B is streamed row by row, 4 rows at a time, in memory order; C (M x N, <= 64 KiB) stays in cache.
template <typename T, int VB>
REIDKERN_INLINE void gemm_nn_stream(int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                                    int64_t a_rs, int64_t a_cs, const T* B, int64_t ldb,
                                    const int32_t* b_rows, T* C, int64_t ldc) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  const int64_t Nv = N - N % W;
  auto brow = [&](int64_t k) { return B + (b_rows ? b_rows[k] : k) * ldb; };
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = T(0);
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const T* b0 = brow(k);
    const T* b1 = brow(k + 1);
    const T* b2 = brow(k + 2);
    const T* b3 = brow(k + 3);
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A + m * a_rs + k * a_cs;
      const T s0 = alpha * a[0], s1 = alpha * a[a_cs], s2 = alpha * a[2 * a_cs],
              s3 = alpha * a[3 * a_cs];
      const Vt x0 = Vt{} + s0, x1 = Vt{} + s1, x2 = Vt{} + s2, x3 = Vt{} + s3;
      T* c = C + m * ldc;
      for (int64_t n = 0; n < Nv; n += W) {
        Vt acc = load<VB>(c + n);
        acc += x0 * load<VB>(b0 + n);
        acc += x1 * load<VB>(b1 + n);
        acc += x2 * load<VB>(b2 + n);
        acc += x3 * load<VB>(b3 + n);
        store(c + n, acc);
      }
      for (int64_t n = Nv; n < N; ++n) c[n] += s0 * b0[n] + s1 * b1[n] + s2 * b2[n] + s3 * b3[n];
    }
  }
  for (; k < K; ++k) {
    const T* b0 = brow(k);
    for (int64_t m = 0; m < M; ++m) {
      const T s0 = alpha * A[m * a_rs + k * a_cs];
      const Vt x0 = Vt{} + s0;
      T* c = C + m * ldc;
      for (int64_t n = 0; n < Nv; n += W) store(c + n, load<VB>(c + n) + x0 * load<VB>(b0 + n));
      for (int64_t n = Nv; n < N; ++n) c[n] += s0 * b0[n];
    }
  }
}

// exp of a float vector (Cephes expf polynomial; x <= 88); exp(x) = 0 for x < -87.3.
template <int VB>
REIDKERN_INLINE typename V<float, VB>::type exp_f32(typename V<float, VB>::type x) {
  using Vf = typename V<float, VB>::type;
  typedef int32_t Vi __attribute__((vector_size(VB)));
  const Vf lo = x < -87.3f ? Vf{} + 1.0f : Vf{};  // lanes that underflow
  x = x < -87.3f ? Vf{} - 87.3f : x;
  Vf t = x * 1.44269504088896341f + 0.5f;
  Vi ni = __builtin_convertvector(t, Vi);
  Vf fn = __builtin_convertvector(ni, Vf);
  fn = fn > t ? fn - 1.0f : fn;  // floor
  ni = __builtin_convertvector(fn, Vi);
  Vf r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  Vf p = Vf{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  Vi bits = (ni + 127) << 23;
  Vf scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  Vf y = p * scale;
  return lo != 0.0f ? Vf{} : y;
}

// row[j] <- exp(row[j] - m); returns the sum.
template <typename T, int VB>
REIDKERN_INLINE T exp_sub_sum(T* row, int64_t n, T m) {
  T sum = T(0);
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    using Vf = typename V<float, VB>::type;
    constexpr int W = V<float, VB>::W;
    Vf acc = {};
    for (; j + W <= n; j += W) {
      const Vf e = exp_f32<VB>(load<VB>(row + j) - m);
      store(row + j, e);
      acc += e;
    }
    sum = hsum<float, Vf>(acc);
  }
  for (; j < n; ++j) {
    row[j] = std::exp(row[j] - m);
    sum += row[j];
  }
  return sum;
}

}  // namespace vec

struct AttnGeom {
  int64_t B, H, Nq, L, D;
  bool q_bcast;
  bool few;   // Nq <= 8: keys-major kernels with one vector lane per query
  bool blas;  // per-(b, h) GEMMs through torch's mm (BLAS) instead of the inline micro-kernels
  int64_t qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2;
};

// Valid (non-padded) key indices of batch b.
inline int64_t valid_keys(const bool* mask, int64_t b, int64_t L, int32_t* keys) {
  int64_t n = 0;
  if (mask == nullptr) {
    for (int64_t j = 0; j < L; ++j) keys[j] = static_cast<int32_t>(j);
    return L;
  }
  const bool* m = mask + b * L;
  for (int64_t j = 0; j < L; ++j)
    if (!m[j]) keys[n++] = static_cast<int32_t>(j);
  return n;
}

// C[m, n] (row stride ldc, unit column stride) = A[m, k] . B[k, n], A and B given by strides,
// through torch's aten::mm.out (BLAS; single-threaded inside a parallel_for task). Only views of
// existing memory are made: nothing is allocated.
struct Blas {
  torch::stable::Device dev;
  ScalarType st;
  void mm(const void* a, int64_t m, int64_t k, int64_t a_rs, int64_t a_cs, const void* b,
          int64_t n, int64_t b_rs, int64_t b_cs, void* c, int64_t ldc) const {
    Tensor A = torch::stable::from_blob(const_cast<void*>(a), {m, k}, {a_rs, a_cs}, dev, st);
    Tensor Bm = torch::stable::from_blob(const_cast<void*>(b), {k, n}, {b_rs, b_cs}, dev, st);
    Tensor C = torch::stable::from_blob(c, {m, n}, {ldc, 1}, dev, st);
    std::array<StableIValue, 3> stack{torch::stable::detail::from(A),
                                      torch::stable::detail::from(Bm),
                                      torch::stable::detail::from(C)};
    STABLE_TORCH_ERROR_CODE_CHECK(
        torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION));
    (void)torch::stable::detail::to<Tensor>(stack[0]);  // release the returned reference
  }
};

// Per (b, h) work above which the GEMMs go through BLAS (below, its call overhead dominates).
constexpr int64_t kBlasMinMacs = int64_t(1) << 16;

// row[j] *= scale over n values (padded keys, when pad is given, set to -inf); returns the max and,
// through sum, the sum over the valid values.
template <typename T, int VB>
REIDKERN_INLINE T scale_max_sum(T* row, int64_t n, T scale, const bool* pad, T& sum) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T ninf = -std::numeric_limits<T>::infinity();
  T mx = ninf, sm = T(0);
  int64_t j = 0;
  if (pad == nullptr) {
    Vt vmx = Vt{} + ninf, vsm = {};
    for (; j + W <= n; j += W) {
      const Vt x = vec::load<VB>(row + j) * scale;
      vec::store(row + j, x);
      vmx = x > vmx ? x : vmx;
      vsm += x;
    }
    for (int t = 0; t < W; ++t) mx = vmx[t] > mx ? vmx[t] : mx;
    sm = vec::hsum<T, Vt>(vsm);
    for (; j < n; ++j) {
      const T x = row[j] * scale;
      row[j] = x;
      mx = x > mx ? x : mx;
      sm += x;
    }
  } else {
    for (; j < n; ++j) {
      if (pad[j]) {
        row[j] = ninf;
      } else {
        const T x = row[j] * scale;
        row[j] = x;
        mx = x > mx ? x : mx;
        sm += x;
      }
    }
  }
  sum = sm;
  return mx;
}

// Forward of one (b, h) with BLAS GEMMs over all L keys (padded keys get probability 0).
template <typename T, int VB>
REIDKERN_INLINE void attn_fwd_task_blas(const AttnGeom& g, const Blas& blas, const T* q,
                                        const T* k, const T* v, const bool* mask, T scale, T* out,
                                        T* lse, T* mean, T* weights, int64_t bh, T* s) {
  const int64_t b = bh / g.H, h = bh % g.H, Nq = g.Nq, L = g.L, D = g.D;
  const T* qb = q + (g.q_bcast ? 0 : b) * g.qs0 + h * g.qs1;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  T* ob = out + bh * Nq * D;
  const bool* pad = mask ? mask + b * L : nullptr;
  int64_t nv = L;
  if (pad) {
    nv = 0;
    for (int64_t j = 0; j < L; ++j) nv += pad[j] ? 0 : 1;
  }
  if (nv == 0) {
    for (int64_t t = 0; t < Nq * D; ++t) ob[t] = T(0);
    for (int64_t i = 0; i < Nq; ++i) {
      lse[bh * Nq + i] = -std::numeric_limits<T>::infinity();
      mean[bh * Nq + i] = T(0);
    }
    if (weights)
      for (int64_t t = 0; t < Nq * L; ++t) weights[bh * Nq * L + t] = T(0);
    return;
  }
  blas.mm(qb, Nq, D, g.qs2, 1, kb, L, 1, g.ks2, s, L);  // S = Q K^T
  for (int64_t i = 0; i < Nq; ++i) {
    T* row = s + i * L;
    T sum_logit;
    const T mx = scale_max_sum<T, VB>(row, L, scale, pad, sum_logit);
    const T denom = vec::exp_sub_sum<T, VB>(row, L, mx);  // padded: exp(-inf) = 0
    const T inv = T(1) / denom;
    for (int64_t j = 0; j < L; ++j) row[j] *= inv;
    lse[bh * Nq + i] = mx + std::log(denom);
    mean[bh * Nq + i] = sum_logit / T(nv);
    if (weights) {
      T* w = weights + (bh * Nq + i) * L;
      for (int64_t j = 0; j < L; ++j) w[j] = row[j];
    }
  }
  blas.mm(s, Nq, L, L, 1, vb, D, g.vs2, 1, ob, D);  // O = P V
}

// Backward of one (b, h) with BLAS GEMMs over all L keys (padded keys: P = dS = 0, so their dK and
// dV rows come out 0).
template <typename T, int VB>
REIDKERN_INLINE void attn_bwd_task_blas(const AttnGeom& g, const Blas& blas, const T* dout,
                                        const T* gw, const T* gmean, const T* q, const T* k,
                                        const T* v, const bool* mask, T scale, const T* lse, T* dq,
                                        T* dk, int64_t dks0, int64_t dks1, int64_t dks2, T* dv,
                                        int64_t dvs0, int64_t dvs1, int64_t dvs2, int64_t bh, T* p,
                                        T* ds) {
  const int64_t b = bh / g.H, h = bh % g.H, Nq = g.Nq, L = g.L, D = g.D;
  const T* qb = q + (g.q_bcast ? 0 : b) * g.qs0 + h * g.qs1;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  const T* dob = dout + bh * Nq * D;
  T* dqb = dq + bh * Nq * D;
  T* dkb = dk + b * dks0 + h * dks1;
  T* dvb = dv + b * dvs0 + h * dvs1;
  const bool* pad = mask ? mask + b * L : nullptr;
  int64_t nv = L;
  if (pad) {
    nv = 0;
    for (int64_t j = 0; j < L; ++j) nv += pad[j] ? 0 : 1;
  }
  if (nv == 0) {
    for (int64_t t = 0; t < Nq * D; ++t) dqb[t] = T(0);
    for (int64_t j = 0; j < L; ++j)
      for (int64_t d = 0; d < D; ++d) dkb[j * dks2 + d] = dvb[j * dvs2 + d] = T(0);
    return;
  }
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  blas.mm(qb, Nq, D, g.qs2, 1, kb, L, 1, g.ks2, p, L);   // S = Q K^T (unscaled)
  blas.mm(dob, Nq, D, D, 1, vb, L, 1, g.vs2, ds, L);     // dP = dO V^T
  for (int64_t i = 0; i < Nq; ++i) {
    T* prow = p + i * L;
    T* drow = ds + i * L;
    const T l = lse[bh * Nq + i];
    T unused;
    scale_max_sum<T, VB>(prow, L, scale, pad, unused);  // scaled logits, padded -> -inf
    vec::exp_sub_sum<T, VB>(prow, L, l);                // P = exp(S - lse)
    if (gw) {
      const T* gwr = gw + (bh * Nq + i) * L;
      for (int64_t j = 0; j < L; ++j) drow[j] += gwr[j];
    }
    T delta = T(0);
    int64_t j = 0;
    {
      Vt acc = {};
      for (; j + W <= L; j += W) acc += vec::load<VB>(prow + j) * vec::load<VB>(drow + j);
      delta = vec::hsum<T, Vt>(acc);
      for (; j < L; ++j) delta += prow[j] * drow[j];
    }
    const T gm = gmean ? gmean[bh * Nq + i] / T(nv) : T(0);
    // dS' = scale (P (dP - delta) + gm) on valid keys, 0 on padded ones
    j = 0;
    for (; j + W <= L; j += W) {
      const Vt pv = vec::load<VB>(prow + j);
      vec::store(drow + j, scale * (pv * (vec::load<VB>(drow + j) - delta) + gm));
    }
    for (; j < L; ++j) drow[j] = scale * (prow[j] * (drow[j] - delta) + gm);
    if (pad)
      for (int64_t jj = 0; jj < L; ++jj)
        if (pad[jj]) drow[jj] = T(0);
  }
  blas.mm(ds, Nq, L, L, 1, kb, D, g.ks2, 1, dqb, D);     // dQ = dS' K
  blas.mm(ds, L, Nq, 1, L, qb, D, g.qs2, 1, dkb, dks2);  // dK = dS'^T Q
  blas.mm(p, L, Nq, 1, L, dob, D, D, 1, dvb, dvs2);      // dV = P^T dO
}

// ---- few queries (Nq <= 8): keys-major kernels with the queries in the lanes of one vector ------
// Q^T (and dO^T) are packed as [D] vectors of 8 lanes, so S^T[j] = sum_d K[j, d] Q^T[d] is an
// outer-product GEMM (broadcast K, 8 keys per register tile) with no horizontal sums; softmax,
// delta and dS run on whole vectors (one lane per query); P V, dS K, dS^T Q and P^T dO keep the
// NQ query rows (or their coefficients) in registers while streaming the key rows once.
constexpr int64_t kFewQueries = 8;
// Above this head dim (and with enough work for BLAS) BLAS's GEMMs measured faster (LGUR PGU,
// D = 512); below it the few-query kernels are 1.3-2x faster than BLAS and the dot-product kernels.
constexpr int64_t kFewMaxD = 128;

template <typename T>
struct FewQ {
  static constexpr int QB = 8 * int(sizeof(T));  // bytes of an 8-lane vector
  typedef typename vec::V<T, QB>::type Qv;
};

template <typename T>
REIDKERN_INLINE typename FewQ<T>::Qv qexp(typename FewQ<T>::Qv x) {
  if constexpr (std::is_same_v<T, float>) {
    return vec::exp_f32<32>(x);
  } else {
    typename FewQ<T>::Qv y;
    for (int t = 0; t < 8; ++t) y[t] = std::exp(x[t]);
    return y;
  }
}

// P[d][i] = X[i * xs + d] for i < NQ, 0 for the other lanes.
template <typename T, int NQ>
REIDKERN_INLINE void pack_lanes(int64_t D, const T* X, int64_t xs, typename FewQ<T>::Qv* P) {
  for (int64_t d = 0; d < D; ++d) {
    typename FewQ<T>::Qv p = {};
    for (int i = 0; i < NQ; ++i) p[i] = X[i * xs + d];
    P[d] = p;
  }
}

// out[j] = sum_d X[j * xs + d] P[d]   (8 rows of X per register tile)
template <typename T>
REIDKERN_INLINE void rows_dot_packed(int64_t L, int64_t D, const T* X, int64_t xs,
                                     const typename FewQ<T>::Qv* P, typename FewQ<T>::Qv* out) {
  using Qv = typename FewQ<T>::Qv;
  int64_t j = 0;
  for (; j + 8 <= L; j += 8) {
    const T* x0 = X + j * xs;
    const T* x1 = x0 + xs;
    const T* x2 = x1 + xs;
    const T* x3 = x2 + xs;
    const T* x4 = x3 + xs;
    const T* x5 = x4 + xs;
    const T* x6 = x5 + xs;
    const T* x7 = x6 + xs;
    Qv a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
    for (int64_t d = 0; d < D; ++d) {
      const Qv p = P[d];
      a0 += x0[d] * p; a1 += x1[d] * p; a2 += x2[d] * p; a3 += x3[d] * p;
      a4 += x4[d] * p; a5 += x5[d] * p; a6 += x6[d] * p; a7 += x7[d] * p;
    }
    out[j] = a0; out[j + 1] = a1; out[j + 2] = a2; out[j + 3] = a3;
    out[j + 4] = a4; out[j + 5] = a5; out[j + 6] = a6; out[j + 7] = a7;
  }
  for (; j < L; ++j) {
    const T* x0 = X + j * xs;
    Qv a0 = {};
    for (int64_t d = 0; d < D; ++d) a0 += x0[d] * P[d];
    out[j] = a0;
  }
}

// out[i * ldo + c] = sum_j A[j][i] X[j * xs + c] for i < NQ (P V, dS K): NQ x 2 vectors of
// accumulators per column strip.
template <typename T, int VB, int NQ>
REIDKERN_INLINE void lanes_times_rows(int64_t L, int64_t D, const typename FewQ<T>::Qv* A,
                                      const T* X, int64_t xs, T* out, int64_t ldo) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T* a = reinterpret_cast<const T*>(A);  // a[j * 8 + i]
  int64_t c = 0;
  for (; c + 2 * W <= D; c += 2 * W) {
    Vt acc0[NQ], acc1[NQ];
    for (int i = 0; i < NQ; ++i) acc0[i] = acc1[i] = Vt{};
    for (int64_t j = 0; j < L; ++j) {
      const Vt x0 = vec::load<VB>(X + j * xs + c), x1 = vec::load<VB>(X + j * xs + c + W);
      for (int i = 0; i < NQ; ++i) {
        const T s = a[j * 8 + i];
        acc0[i] += s * x0;
        acc1[i] += s * x1;
      }
    }
    for (int i = 0; i < NQ; ++i) {
      vec::store(out + i * ldo + c, acc0[i]);
      vec::store(out + i * ldo + c + W, acc1[i]);
    }
  }
  for (; c + W <= D; c += W) {
    Vt acc0[NQ];
    for (int i = 0; i < NQ; ++i) acc0[i] = Vt{};
    for (int64_t j = 0; j < L; ++j) {
      const Vt x0 = vec::load<VB>(X + j * xs + c);
      for (int i = 0; i < NQ; ++i) acc0[i] += a[j * 8 + i] * x0;
    }
    for (int i = 0; i < NQ; ++i) vec::store(out + i * ldo + c, acc0[i]);
  }
  for (; c < D; ++c) {
    T acc[NQ] = {};
    for (int64_t j = 0; j < L; ++j)
      for (int i = 0; i < NQ; ++i) acc[i] += a[j * 8 + i] * X[j * xs + c];
    for (int i = 0; i < NQ; ++i) out[i * ldo + c] = acc[i];
  }
}

// out[j * ldo + c] = sum_i A[j][i] Y[i * ys + c] for all L rows (dK = dS^T Q, dV = P^T dO): the
// NQ rows of a column strip of Y stay in registers while the L output rows are written once.
template <typename T, int VB, int NQ>
REIDKERN_INLINE void lanes_t_times_rows(int64_t L, int64_t D, const typename FewQ<T>::Qv* A,
                                        const T* Y, int64_t ys, T* out, int64_t ldo) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T* a = reinterpret_cast<const T*>(A);
  int64_t c = 0;
  for (; c + 2 * W <= D; c += 2 * W) {
    Vt y0[NQ], y1[NQ];
    for (int i = 0; i < NQ; ++i) {
      y0[i] = vec::load<VB>(Y + i * ys + c);
      y1[i] = vec::load<VB>(Y + i * ys + c + W);
    }
    for (int64_t j = 0; j < L; ++j) {
      Vt acc0 = {}, acc1 = {};
      for (int i = 0; i < NQ; ++i) {
        const T s = a[j * 8 + i];
        acc0 += s * y0[i];
        acc1 += s * y1[i];
      }
      vec::store(out + j * ldo + c, acc0);
      vec::store(out + j * ldo + c + W, acc1);
    }
  }
  for (; c + W <= D; c += W) {
    Vt y0[NQ];
    for (int i = 0; i < NQ; ++i) y0[i] = vec::load<VB>(Y + i * ys + c);
    for (int64_t j = 0; j < L; ++j) {
      Vt acc0 = {};
      for (int i = 0; i < NQ; ++i) acc0 += a[j * 8 + i] * y0[i];
      vec::store(out + j * ldo + c, acc0);
    }
  }
  for (; c < D; ++c)
    for (int64_t j = 0; j < L; ++j) {
      T acc = T(0);
      for (int i = 0; i < NQ; ++i) acc += a[j * 8 + i] * Y[i * ys + c];
      out[j * ldo + c] = acc;
    }
}

// Per-thread scratch of 8-lane vectors: packed Q^T and dO^T [D], S^T / P^T and dP^T / dS^T [L]
// (64-byte aligned by hand: std::vector does not see the vector types' alignment).
template <typename T>
struct FewQScratch {
  using Qv = typename FewQ<T>::Qv;
  std::vector<char> buf;
  Qv *qt, *ot, *st, *dt;
  FewQScratch(int64_t L, int64_t D) : buf(size_t(2 * (L + D)) * sizeof(Qv) + 64) {
    char* base = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
    qt = reinterpret_cast<Qv*>(base);
    ot = qt + D;
    st = ot + D;
    dt = st + L;
  }
};

inline int64_t count_valid(const bool* pad, int64_t L) {
  if (pad == nullptr) return L;
  int64_t nv = 0;
  for (int64_t j = 0; j < L; ++j) nv += pad[j] ? 0 : 1;
  return nv;
}

// Forward of one (b, h) for Nq = NQ <= 8, over all L keys (padded keys get probability 0).
template <typename T, int VB, int NQ>
REIDKERN_INLINE void attn_fwd_task_few(const AttnGeom& g, const T* q, const T* k, const T* v,
                                       const bool* mask, T scale, T* out, T* lse, T* mean,
                                       T* weights, int64_t bh, FewQScratch<T>& sc) {
  using Qv = typename FewQ<T>::Qv;
  const int64_t b = bh / g.H, h = bh % g.H, L = g.L, D = g.D;
  const T* qb = q + (g.q_bcast ? 0 : b) * g.qs0 + h * g.qs1;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  T* ob = out + bh * NQ * D;
  const bool* pad = mask ? mask + b * L : nullptr;
  const int64_t nv = count_valid(pad, L);
  if (nv == 0) {
    for (int64_t t = 0; t < NQ * D; ++t) ob[t] = T(0);
    for (int i = 0; i < NQ; ++i) {
      lse[bh * NQ + i] = -std::numeric_limits<T>::infinity();
      mean[bh * NQ + i] = T(0);
    }
    if (weights)
      for (int64_t t = 0; t < NQ * L; ++t) weights[bh * NQ * L + t] = T(0);
    return;
  }
  Qv* st = sc.st;
  pack_lanes<T, NQ>(D, qb, g.qs2, sc.qt);
  rows_dot_packed<T>(L, D, kb, g.ks2, sc.qt, st);  // S^T = K Q^T
  const T ninf = -std::numeric_limits<T>::infinity();
  Qv vmx = Qv{} + ninf, vsum = {};
  for (int64_t j = 0; j < L; ++j) {
    if (pad && pad[j]) {
      st[j] = Qv{} + ninf;
      continue;
    }
    const Qv x = st[j] * scale;
    st[j] = x;
    vmx = x > vmx ? x : vmx;
    vsum += x;
  }
  Qv den = {};
  for (int64_t j = 0; j < L; ++j) {
    const Qv e = qexp<T>(st[j] - vmx);  // padded: exp(-inf) = 0
    st[j] = e;
    den += e;
  }
  const Qv inv = T(1) / den;
  for (int64_t j = 0; j < L; ++j) st[j] *= inv;
  for (int i = 0; i < NQ; ++i) {
    lse[bh * NQ + i] = vmx[i] + std::log(den[i]);
    mean[bh * NQ + i] = vsum[i] / T(nv);
  }
  if (weights)
    for (int i = 0; i < NQ; ++i) {
      T* w = weights + (bh * NQ + i) * L;
      for (int64_t j = 0; j < L; ++j) w[j] = st[j][i];
    }
  lanes_times_rows<T, VB, NQ>(L, D, st, vb, g.vs2, ob, D);  // O = P V
}

// Backward of one (b, h) for Nq = NQ <= 8 (padded keys: P = dS = 0, so their dK, dV rows are 0).
template <typename T, int VB, int NQ>
REIDKERN_INLINE void attn_bwd_task_few(const AttnGeom& g, const T* dout, const T* gw,
                                       const T* gmean, const T* q, const T* k, const T* v,
                                       const bool* mask, T scale, const T* lse, T* dq, T* dk,
                                       int64_t dks0, int64_t dks1, int64_t dks2, T* dv,
                                       int64_t dvs0, int64_t dvs1, int64_t dvs2, int64_t bh,
                                       FewQScratch<T>& sc) {
  using Qv = typename FewQ<T>::Qv;
  const int64_t b = bh / g.H, h = bh % g.H, L = g.L, D = g.D;
  const T* qb = q + (g.q_bcast ? 0 : b) * g.qs0 + h * g.qs1;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  const T* dob = dout + bh * NQ * D;
  T* dqb = dq + bh * NQ * D;
  T* dkb = dk + b * dks0 + h * dks1;
  T* dvb = dv + b * dvs0 + h * dvs1;
  const bool* pad = mask ? mask + b * L : nullptr;
  const int64_t nv = count_valid(pad, L);
  if (nv == 0) {
    for (int64_t t = 0; t < NQ * D; ++t) dqb[t] = T(0);
    for (int64_t j = 0; j < L; ++j)
      for (int64_t d = 0; d < D; ++d) dkb[j * dks2 + d] = dvb[j * dvs2 + d] = T(0);
    return;
  }
  Qv* st = sc.st;
  Qv* dt = sc.dt;
  pack_lanes<T, NQ>(D, qb, g.qs2, sc.qt);
  pack_lanes<T, NQ>(D, dob, D, sc.ot);
  rows_dot_packed<T>(L, D, kb, g.ks2, sc.qt, st);  // S^T = K Q^T
  rows_dot_packed<T>(L, D, vb, g.vs2, sc.ot, dt);  // dP^T = V dO^T
  Qv lv = {}, gm = {};
  for (int i = 0; i < NQ; ++i) {
    lv[i] = lse[bh * NQ + i];
    gm[i] = gmean ? gmean[bh * NQ + i] / T(nv) : T(0);
  }
  Qv delta = {};
  for (int64_t j = 0; j < L; ++j) {
    if (pad && pad[j]) {
      st[j] = Qv{};
      continue;
    }
    const Qv p = qexp<T>(st[j] * scale - lv);  // P = exp(S - lse)
    st[j] = p;
    if (gw)
      for (int i = 0; i < NQ; ++i) dt[j][i] += gw[(bh * NQ + i) * L + j];
    delta += p * dt[j];
  }
  for (int64_t j = 0; j < L; ++j)  // dS' = scale (P (dP - delta) + gm), 0 on padded keys
    dt[j] = (pad && pad[j]) ? Qv{} : scale * (st[j] * (dt[j] - delta) + gm);
  lanes_times_rows<T, VB, NQ>(L, D, dt, kb, g.ks2, dqb, D);         // dQ = dS' K
  lanes_t_times_rows<T, VB, NQ>(L, D, dt, qb, g.qs2, dkb, dks2);    // dK = dS'^T Q
  lanes_t_times_rows<T, VB, NQ>(L, D, st, dob, D, dvb, dvs2);       // dV = P^T dO
}

template <typename T, int VB>
REIDKERN_INLINE void attn_fwd_few(const AttnGeom& g, const T* q, const T* k, const T* v,
                                  const bool* mask, T scale, T* out, T* lse, T* mean, T* weights,
                                  int64_t begin, int64_t end) {
  FewQScratch<T> sc(g.L, g.D);
  for (int64_t bh = begin; bh < end; ++bh) {
    switch (g.Nq) {
#define REIDKERN_FEW_FWD(N) \
  case N: attn_fwd_task_few<T, VB, N>(g, q, k, v, mask, scale, out, lse, mean, weights, bh, sc); break;
      REIDKERN_FEW_FWD(1) REIDKERN_FEW_FWD(2) REIDKERN_FEW_FWD(3) REIDKERN_FEW_FWD(4)
      REIDKERN_FEW_FWD(5) REIDKERN_FEW_FWD(6) REIDKERN_FEW_FWD(7) REIDKERN_FEW_FWD(8)
#undef REIDKERN_FEW_FWD
      default: break;
    }
  }
}

template <typename T, int VB>
REIDKERN_INLINE void attn_bwd_few(const AttnGeom& g, const T* dout, const T* gw, const T* gmean,
                                  const T* q, const T* k, const T* v, const bool* mask, T scale,
                                  const T* lse, T* dq, T* dk, int64_t dks0, int64_t dks1,
                                  int64_t dks2, T* dv, int64_t dvs0, int64_t dvs1, int64_t dvs2,
                                  int64_t begin, int64_t end) {
  FewQScratch<T> sc(g.L, g.D);
  for (int64_t bh = begin; bh < end; ++bh) {
    switch (g.Nq) {
#define REIDKERN_FEW_BWD(N)                                                                        \
  case N:                                                                                          \
    attn_bwd_task_few<T, VB, N>(g, dout, gw, gmean, q, k, v, mask, scale, lse, dq, dk, dks0, dks1, \
                                dks2, dv, dvs0, dvs1, dvs2, bh, sc);                               \
    break;
      REIDKERN_FEW_BWD(1) REIDKERN_FEW_BWD(2) REIDKERN_FEW_BWD(3) REIDKERN_FEW_BWD(4)
      REIDKERN_FEW_BWD(5) REIDKERN_FEW_BWD(6) REIDKERN_FEW_BWD(7) REIDKERN_FEW_BWD(8)
#undef REIDKERN_FEW_BWD
      default: break;
    }
  }
}

template <typename T, int VB>
REIDKERN_INLINE void attn_fwd_task(const AttnGeom& g, const T* q, const T* k, const T* v,
                                   const bool* mask, T scale, T* out, T* lse, T* mean,
                                   T* weights, int64_t bh, std::vector<T>& S,
                                   std::vector<int32_t>& keys) {
  const int64_t b = bh / g.H, h = bh % g.H, Nq = g.Nq, L = g.L, D = g.D;
  const T* qb = q + (g.q_bcast ? 0 : b) * g.qs0 + h * g.qs1;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  T* ob = out + bh * Nq * D;
  const int64_t nv = valid_keys(mask, b, L, keys.data());
  if (nv == 0) {
    for (int64_t t = 0; t < Nq * D; ++t) ob[t] = T(0);
    for (int64_t i = 0; i < Nq; ++i) {
      lse[bh * Nq + i] = -std::numeric_limits<T>::infinity();
      mean[bh * Nq + i] = T(0);
    }
    if (weights)
      for (int64_t t = 0; t < Nq * L; ++t) weights[bh * Nq * L + t] = T(0);
    return;
  }
  T* s = S.data();
  // S[i, jj] = scale * q_i . k_keys[jj]
  vec::gemm_nt<T, VB>(Nq, nv, D, scale, qb, g.qs2, kb, g.ks2, keys.data(), s, nv);
  for (int64_t i = 0; i < Nq; ++i) {
    T* row = s + i * nv;
    T mx = row[0], sum_logit = T(0);
    for (int64_t jj = 0; jj < nv; ++jj) {
      mx = row[jj] > mx ? row[jj] : mx;
      sum_logit += row[jj];
    }
    const T denom = vec::exp_sub_sum<T, VB>(row, nv, mx);  // row <- exp(row - mx)
    const T inv = T(1) / denom;
    for (int64_t jj = 0; jj < nv; ++jj) row[jj] *= inv;
    lse[bh * Nq + i] = mx + std::log(denom);
    mean[bh * Nq + i] = sum_logit / T(nv);
    if (weights) {
      T* w = weights + (bh * Nq + i) * L;
      if (nv != L)
        for (int64_t j = 0; j < L; ++j) w[j] = T(0);
      for (int64_t jj = 0; jj < nv; ++jj) w[keys[jj]] = row[jj];
    }
  }
  // O = P V
  vec::gemm_nn_stream<T, VB>(Nq, D, nv, T(1), s, nv, 1, vb, g.vs2, keys.data(), ob, D);
}

template <typename T, int VB>
REIDKERN_INLINE void attn_bwd_task(const AttnGeom& g, const T* dout, const T* gw, const T* gmean,
                                   const T* q, const T* k, const T* v, const bool* mask, T scale,
                                   const T* lse, T* dq, T* dk, int64_t dks0, int64_t dks1,
                                   int64_t dks2, T* dv, int64_t dvs0, int64_t dvs1, int64_t dvs2,
                                   int64_t bh, std::vector<T>& P, std::vector<T>& dS,
                                   std::vector<int32_t>& keys) {
  const int64_t b = bh / g.H, h = bh % g.H, Nq = g.Nq, L = g.L, D = g.D;
  const T* qb = q + (g.q_bcast ? 0 : b) * g.qs0 + h * g.qs1;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  const T* dob = dout + bh * Nq * D;
  T* dqb = dq + bh * Nq * D;
  T* dkb = dk + b * dks0 + h * dks1;
  T* dvb = dv + b * dvs0 + h * dvs1;
  const int64_t nv = valid_keys(mask, b, L, keys.data());
  if (nv != L) {  // padded keys get zero gradients
    for (int64_t j = 0; j < L; ++j) {
      for (int64_t d = 0; d < D; ++d) dkb[j * dks2 + d] = T(0);
      for (int64_t d = 0; d < D; ++d) dvb[j * dvs2 + d] = T(0);
    }
  }
  if (nv == 0) {
    for (int64_t t = 0; t < Nq * D; ++t) dqb[t] = T(0);
    return;
  }
  T* p = P.data();
  T* ds = dS.data();
  vec::gemm_nt<T, VB>(Nq, nv, D, scale, qb, g.qs2, kb, g.ks2, keys.data(), p, nv);
  vec::gemm_nt<T, VB>(Nq, nv, D, T(1), dob, D, vb, g.vs2, keys.data(), ds, nv);  // dP
  for (int64_t i = 0; i < Nq; ++i) {
    T* prow = p + i * nv;
    T* drow = ds + i * nv;
    const T l = lse[bh * Nq + i];
    if (l == -std::numeric_limits<T>::infinity()) {  // cannot happen with nv > 0; kept for safety
      for (int64_t jj = 0; jj < nv; ++jj) prow[jj] = drow[jj] = T(0);
      continue;
    }
    vec::exp_sub_sum<T, VB>(prow, nv, l);  // prow <- exp(S - lse)
    if (gw) {
      const T* gwr = gw + (bh * Nq + i) * L;
      for (int64_t jj = 0; jj < nv; ++jj) drow[jj] += gwr[keys[jj]];
    }
    T delta = T(0);
    for (int64_t jj = 0; jj < nv; ++jj) delta += prow[jj] * drow[jj];
    const T gm = gmean ? gmean[bh * Nq + i] / T(nv) : T(0);
    for (int64_t jj = 0; jj < nv; ++jj) drow[jj] = prow[jj] * (drow[jj] - delta) + gm;
  }
  // dQ = scale dS K ; dK = scale dS^T Q ; dV = P^T dO
  vec::gemm_nn_stream<T, VB>(Nq, D, nv, scale, ds, nv, 1, kb, g.ks2, keys.data(), dqb, D);
  vec::gemm_nn<T, VB>(nv, D, Nq, scale, ds, 1, nv, qb, g.qs2, nullptr, dkb, dks2, keys.data());
  vec::gemm_nn<T, VB>(nv, D, Nq, T(1), p, 1, nv, dob, D, nullptr, dvb, dvs2, keys.data());
}

template <typename T, int VB>
REIDKERN_INLINE void attn_fwd_range(const AttnGeom& g, const T* q, const T* k, const T* v,
                                    const bool* mask, T scale, T* out, T* lse, T* mean, T* weights,
                                    const Blas& blas, int64_t begin, int64_t end) {
  if (g.few) return attn_fwd_few<T, VB>(g, q, k, v, mask, scale, out, lse, mean, weights, begin, end);
  std::vector<T> S(g.Nq * g.L);
  if (g.blas) {
    for (int64_t bh = begin; bh < end; ++bh)
      attn_fwd_task_blas<T, VB>(g, blas, q, k, v, mask, scale, out, lse, mean, weights, bh,
                                S.data());
    return;
  }
  std::vector<int32_t> keys(g.L);
  for (int64_t bh = begin; bh < end; ++bh)
    attn_fwd_task<T, VB>(g, q, k, v, mask, scale, out, lse, mean, weights, bh, S, keys);
}

template <typename T, int VB>
REIDKERN_INLINE void attn_bwd_range(const AttnGeom& g, const T* dout, const T* gw, const T* gmean,
                                    const T* q, const T* k, const T* v, const bool* mask, T scale,
                                    const T* lse, T* dq, T* dk, int64_t dks0, int64_t dks1,
                                    int64_t dks2, T* dv, int64_t dvs0, int64_t dvs1, int64_t dvs2,
                                    const Blas& blas, int64_t begin, int64_t end) {
  if (g.few)
    return attn_bwd_few<T, VB>(g, dout, gw, gmean, q, k, v, mask, scale, lse, dq, dk, dks0, dks1,
                               dks2, dv, dvs0, dvs1, dvs2, begin, end);
  std::vector<T> P(g.Nq * g.L), dS(g.Nq * g.L);
  if (g.blas) {
    for (int64_t bh = begin; bh < end; ++bh)
      attn_bwd_task_blas<T, VB>(g, blas, dout, gw, gmean, q, k, v, mask, scale, lse, dq, dk, dks0,
                                dks1, dks2, dv, dvs0, dvs1, dvs2, bh, P.data(), dS.data());
    return;
  }
  std::vector<int32_t> keys(g.L);
  for (int64_t bh = begin; bh < end; ++bh)
    attn_bwd_task<T, VB>(g, dout, gw, gmean, q, k, v, mask, scale, lse, dq, dk, dks0, dks1, dks2,
                         dv, dvs0, dvs1, dvs2, bh, P, dS, keys);
}

// Each entry point compiled for AVX-512 (64-byte vectors), AVX2+FMA (32) and the baseline (16);
// picked at run time from the CPU's features.
#define REIDKERN_ATTN_ISA(ATTR, SUFFIX, VB)                                                     \
  template <typename T, typename... Args>                                                     \
  ATTR void attn_fwd_##SUFFIX(Args... args) {                                                 \
    attn_fwd_range<T, VB>(args...);                                                           \
  }                                                                                           \
  template <typename T, typename... Args>                                                     \
  ATTR void attn_bwd_##SUFFIX(Args... args) {                                                 \
    attn_bwd_range<T, VB>(args...);                                                           \
  }
#if REIDKERN_X86
REIDKERN_ATTN_ISA(REIDKERN_TARGET_AVX512, avx512, 64)
REIDKERN_ATTN_ISA(REIDKERN_TARGET_AVX2, avx2, 32)
#endif
REIDKERN_ATTN_ISA(, base, 16)

template <typename T, typename... Args>
void attn_fwd(Args... args) {
  switch (cpu_isa()) {
#if REIDKERN_X86
    case Isa::Avx512: return attn_fwd_avx512<T>(args...);
    case Isa::Avx2: return attn_fwd_avx2<T>(args...);
#endif
    default: return attn_fwd_base<T>(args...);
  }
}
template <typename T, typename... Args>
void attn_bwd(Args... args) {
  switch (cpu_isa()) {
#if REIDKERN_X86
    case Isa::Avx512: return attn_bwd_avx512<T>(args...);
    case Isa::Avx2: return attn_bwd_avx2<T>(args...);
#endif
    default: return attn_bwd_base<T>(args...);
  }
}

AttnGeom check_geometry(const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::optional<Tensor>& mask) {
  check_dim(q, 4, "q");
  check_dim(k, 4, "k");
  check_dim(v, 4, "v");
  check_floating(q, "q");
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                  "q, k and v must have the same dtype");
  AttnGeom g{};
  g.B = k.size(0);
  g.H = k.size(1);
  g.L = k.size(2);
  g.D = k.size(3);
  g.Nq = q.size(2);
  STD_TORCH_CHECK(q.size(0) == g.B || q.size(0) == 1, "q must have batch 1 or B");
  STD_TORCH_CHECK(q.size(1) == g.H && q.size(3) == g.D, "q must be [B or 1, H, Nq, D]");
  STD_TORCH_CHECK(v.size(0) == g.B && v.size(1) == g.H && v.size(2) == g.L && v.size(3) == g.D,
                  "v must have k's shape [B, H, L, D]");
  STD_TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
                  "q, k, v must have unit stride on the head dimension");
  g.q_bcast = q.size(0) == 1 && g.B != 1;
  g.qs0 = q.stride(0); g.qs1 = q.stride(1); g.qs2 = q.stride(2);
  g.ks0 = k.stride(0); g.ks1 = k.stride(1); g.ks2 = k.stride(2);
  g.vs0 = v.stride(0); g.vs1 = v.stride(1); g.vs2 = v.stride(2);
  g.few = g.Nq >= 1 && g.Nq <= kFewQueries && g.L >= 1 && g.D >= 1 &&
          (g.D <= kFewMaxD || g.Nq * g.L * g.D < kBlasMinMacs);
  g.blas = !g.few && g.Nq * g.L * g.D >= kBlasMinMacs;
  if (mask.has_value()) {
    check_dim(*mask, 2, "key_padding_mask");
    check_dtype(*mask, ScalarType::Bool, "key_padding_mask");
    STD_TORCH_CHECK(mask->size(0) == g.B && mask->size(1) == g.L && mask->is_contiguous(),
                    "key_padding_mask must be a contiguous [B, L] bool tensor");
  }
  return g;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> template_attention_fwd_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& mask,
    double scale, bool return_weights) {
  const AttnGeom g = check_geometry(q, k, v, mask);
  const auto st = q.scalar_type();
  const auto dev = q.device();
  auto out = torch::stable::empty({g.B, g.H, g.Nq, g.D}, st, std::nullopt, dev);
  auto lse = torch::stable::empty({g.B, g.H, g.Nq}, st, std::nullopt, dev);
  auto mean = torch::stable::empty({g.B, g.H, g.Nq}, st, std::nullopt, dev);
  auto weights = return_weights
                     ? torch::stable::empty({g.B, g.H, g.Nq, g.L}, st, std::nullopt, dev)
                     : torch::stable::empty({0}, st, std::nullopt, dev);
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  const Blas blas{dev, st};
  REIDKERN_DISPATCH_FLOATING(q, "template_attention_fwd", [&] {
    const scalar_t* qp = static_cast<const scalar_t*>(q.const_data_ptr());
    const scalar_t* kp = static_cast<const scalar_t*>(k.const_data_ptr());
    const scalar_t* vp = static_cast<const scalar_t*>(v.const_data_ptr());
    scalar_t* op = static_cast<scalar_t*>(out.mutable_data_ptr());
    scalar_t* lp = static_cast<scalar_t*>(lse.mutable_data_ptr());
    scalar_t* mp = static_cast<scalar_t*>(mean.mutable_data_ptr());
    scalar_t* wp = return_weights ? static_cast<scalar_t*>(weights.mutable_data_ptr()) : nullptr;
    advise_huge_pages(op, g.B * g.H * g.Nq * g.D * int64_t(sizeof(scalar_t)));
    if (wp) advise_huge_pages(wp, g.B * g.H * g.Nq * g.L * int64_t(sizeof(scalar_t)));
    torch::stable::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
      attn_fwd<scalar_t>(g, qp, kp, vp, m, scalar_t(scale), op, lp, mp, wp, blas, begin, end);
    });
  });
  return {out, lse, mean, weights};
}

std::tuple<Tensor, Tensor, Tensor> template_attention_bwd_cpu(
    const Tensor& grad_out, const std::optional<Tensor>& grad_weights,
    const std::optional<Tensor>& grad_mean, const Tensor& q, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& mask, const Tensor& lse, double scale) {
  const AttnGeom g = check_geometry(q, k, v, mask);
  const auto st = q.scalar_type();
  const auto dev = q.device();
  STD_TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == st && grad_out.dim() == 4 &&
                      grad_out.size(0) == g.B && grad_out.size(2) == g.Nq,
                  "grad_out must be a contiguous [B, H, Nq, D] tensor of q's dtype");
  STD_TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == st && lse.numel() == g.B * g.H * g.Nq,
                  "lse must be a contiguous [B, H, Nq] tensor");
  if (grad_weights.has_value())
    STD_TORCH_CHECK(grad_weights->is_contiguous() && grad_weights->scalar_type() == st &&
                        grad_weights->numel() == g.B * g.H * g.Nq * g.L,
                    "grad_weights must be a contiguous [B, H, Nq, L] tensor");
  if (grad_mean.has_value())
    STD_TORCH_CHECK(grad_mean->is_contiguous() && grad_mean->scalar_type() == st &&
                        grad_mean->numel() == g.B * g.H * g.Nq,
                    "grad_mean_logit must be a contiguous [B, H, Nq] tensor");
  // dq per (b, h); the caller sums over b when q was broadcast. dk, dv keep k's and v's layout.
  auto dq = torch::stable::empty({g.B, g.H, g.Nq, g.D}, st, std::nullopt, dev);
  auto dk = torch::stable::empty_like(k);
  auto dv = torch::stable::empty_like(v);
  STD_TORCH_CHECK(dk.stride(3) == 1 && dv.stride(3) == 1, "unexpected gradient layout");
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  const Blas blas{dev, st};
  REIDKERN_DISPATCH_FLOATING(q, "template_attention_bwd", [&] {
    using T = scalar_t;
    const T* gop = static_cast<const T*>(grad_out.const_data_ptr());
    const T* gwp = grad_weights.has_value() ? static_cast<const T*>(grad_weights->const_data_ptr()) : nullptr;
    const T* gmp = grad_mean.has_value() ? static_cast<const T*>(grad_mean->const_data_ptr()) : nullptr;
    const T* qp = static_cast<const T*>(q.const_data_ptr());
    const T* kp = static_cast<const T*>(k.const_data_ptr());
    const T* vp = static_cast<const T*>(v.const_data_ptr());
    const T* lp = static_cast<const T*>(lse.const_data_ptr());
    T* dqp = static_cast<T*>(dq.mutable_data_ptr());
    T* dkp = static_cast<T*>(dk.mutable_data_ptr());
    T* dvp = static_cast<T*>(dv.mutable_data_ptr());
    advise_huge_pages(dqp, g.B * g.H * g.Nq * g.D * int64_t(sizeof(T)));
    advise_huge_pages(dkp, dk.numel() * int64_t(sizeof(T)));
    advise_huge_pages(dvp, dv.numel() * int64_t(sizeof(T)));
    const int64_t a0 = dk.stride(0), a1 = dk.stride(1), a2 = dk.stride(2);
    const int64_t c0 = dv.stride(0), c1 = dv.stride(1), c2 = dv.stride(2);
    torch::stable::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
      attn_bwd<T>(g, gop, gwp, gmp, qp, kp, vp, m, T(scale), lp, dqp, dkp, a0, a1, a2, dvp, c0, c1,
                  c2, blas, begin, end);
    });
  });
  return {dq, dk, dv};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("template_attention_fwd", TORCH_BOX(&template_attention_fwd_cpu));
  m.impl("template_attention_bwd", TORCH_BOX(&template_attention_bwd_cpu));
}

}  // namespace reidkern
