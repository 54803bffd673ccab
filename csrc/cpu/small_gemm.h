// Register-tiled GEMM micro-kernels on GCC vectors (simd.h) for small products inside one
// parallel_for task, where a BLAS call would cost more than the product. Rows of an operand may be
// gathered or scattered through an index list (a compacted list of valid keys, say). Always
// inlined, so each is compiled for the instruction set of the REIDKERN_ISA_CLONES caller.
#pragma once

#include "cpu/simd.h"

namespace reidkern {
namespace vec {

// Row-major rows: row r at data + r * ld (unit column stride).
template <typename T>
struct Dense {
  T* data;
  int64_t ld;
};
// Row-major rows picked by an index list: row r at data + (index ? index[r] : r) * ld.
template <typename T>
struct Gathered {
  T* data;
  int64_t ld;
  const int32_t* index;
  REIDKERN_INLINE T* row(int64_t r) const { return data + (index ? index[r] : r) * ld; }
};
// Any strides: element (r, c) at data[r * rs + c * cs] (a transpose is a swap of rs and cs).
template <typename T>
struct Strided {
  T* data;
  int64_t rs, cs;
};

// C[m, n] = alpha * sum_k A[m, k] * B[n, k]   (dot products over k; K x N of B read once per
// block of 4 rows of A)
template <typename T, int VB>
REIDKERN_INLINE void gemm_nt(int64_t M, int64_t N, int64_t K, T alpha, Dense<const T> A,
                             Gathered<const T> B, Dense<T> C) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  const int64_t Kv = K - K % W;
  const int64_t lda = A.ld, ldc = C.ld;
  for (int64_t n = 0; n < N; ++n) {
    const T* b = B.row(n);
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      const T* a0 = A.data + m * lda;
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
      C.data[m * ldc + n] = alpha * s0;
      C.data[(m + 1) * ldc + n] = alpha * s1;
      C.data[(m + 2) * ldc + n] = alpha * s2;
      C.data[(m + 3) * ldc + n] = alpha * s3;
    }
    for (; m < M; ++m) {
      const T* a0 = A.data + m * lda;
      Vt c0 = {};
      for (int64_t k = 0; k < Kv; k += W) c0 += load<VB>(a0 + k) * load<VB>(b + k);
      T s0 = hsum<T, Vt>(c0);
      for (int64_t k = Kv; k < K; ++k) s0 += a0[k] * b[k];
      C.data[m * ldc + n] = alpha * s0;
    }
  }
}

// C[m, n] = alpha * sum_k A[m, k] * B[k, n]   (rows of B scaled and summed; register tile of 4 rows
// x 2 vectors)
template <typename T, int VB>
REIDKERN_INLINE void gemm_nn(int64_t M, int64_t N, int64_t K, T alpha, Strided<const T> A,
                             Gathered<const T> B, Gathered<T> C) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  const int64_t a_rs = A.rs, a_cs = A.cs;
  int64_t n = 0;
  for (; n + 2 * W <= N; n += 2 * W) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      Vt c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
      const T* a = A.data + m * a_rs;
      for (int64_t k = 0; k < K; ++k) {
        const T* b = B.row(k) + n;
        const Vt b0 = load<VB>(b), b1 = load<VB>(b + W);
        const T* ak = a + k * a_cs;
        const Vt x0 = Vt{} + ak[0], x1 = Vt{} + ak[a_rs], x2 = Vt{} + ak[2 * a_rs],
                 x3 = Vt{} + ak[3 * a_rs];
        c00 += x0 * b0; c01 += x0 * b1;
        c10 += x1 * b0; c11 += x1 * b1;
        c20 += x2 * b0; c21 += x2 * b1;
        c30 += x3 * b0; c31 += x3 * b1;
      }
      T* c = C.row(m) + n; store(c, alpha * c00); store(c + W, alpha * c01);
      c = C.row(m + 1) + n; store(c, alpha * c10); store(c + W, alpha * c11);
      c = C.row(m + 2) + n; store(c, alpha * c20); store(c + W, alpha * c21);
      c = C.row(m + 3) + n; store(c, alpha * c30); store(c + W, alpha * c31);
    }
    for (; m < M; ++m) {
      Vt c00 = {}, c01 = {};
      const T* a = A.data + m * a_rs;
      for (int64_t k = 0; k < K; ++k) {
        const T* b = B.row(k) + n;
        const Vt x0 = Vt{} + a[k * a_cs];
        c00 += x0 * load<VB>(b);
        c01 += x0 * load<VB>(b + W);
      }
      T* c = C.row(m) + n;
      store(c, alpha * c00);
      store(c + W, alpha * c01);
    }
  }
  for (; n + W <= N; n += W) {
    for (int64_t m = 0; m < M; ++m) {
      Vt c00 = {};
      const T* a = A.data + m * a_rs;
      for (int64_t k = 0; k < K; ++k) c00 += (Vt{} + a[k * a_cs]) * load<VB>(B.row(k) + n);
      store(C.row(m) + n, alpha * c00);
    }
  }
  if (n < N) {
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A.data + m * a_rs;
      T* c = C.row(m);
      for (int64_t nn = n; nn < N; ++nn) c[nn] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const T x = a[k * a_cs];
        const T* b = B.row(k);
        for (int64_t nn = n; nn < N; ++nn) c[nn] += x * b[nn];
      }
      for (int64_t nn = n; nn < N; ++nn) c[nn] *= alpha;
    }
  }
}

// C[m, n] = alpha * sum_k A[m, k] * B[k, n] for few rows M and many k (P V, dS K): B is streamed
// row by row, 4 rows at a time, in memory order; C (M x N, <= 64 KiB) stays in cache.
template <typename T, int VB>
REIDKERN_INLINE void gemm_nn_stream(int64_t M, int64_t N, int64_t K, T alpha, Strided<const T> A,
                                    Gathered<const T> B, Dense<T> C) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  const int64_t Nv = N - N % W;
  const int64_t a_rs = A.rs, a_cs = A.cs, ldc = C.ld;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C.data[m * ldc + n] = T(0);
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const T* b0 = B.row(k);
    const T* b1 = B.row(k + 1);
    const T* b2 = B.row(k + 2);
    const T* b3 = B.row(k + 3);
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A.data + m * a_rs + k * a_cs;
      const T s0 = alpha * a[0], s1 = alpha * a[a_cs], s2 = alpha * a[2 * a_cs],
              s3 = alpha * a[3 * a_cs];
      const Vt x0 = Vt{} + s0, x1 = Vt{} + s1, x2 = Vt{} + s2, x3 = Vt{} + s3;
      T* c = C.data + m * ldc;
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
    const T* b0 = B.row(k);
    for (int64_t m = 0; m < M; ++m) {
      const T s0 = alpha * A.data[m * a_rs + k * a_cs];
      const Vt x0 = Vt{} + s0;
      T* c = C.data + m * ldc;
      for (int64_t n = 0; n < Nv; n += W) store(c + n, load<VB>(c + n) + x0 * load<VB>(b0 + n));
      for (int64_t n = Nv; n < N; ++n) c[n] += s0 * b0[n];
    }
  }
}

}  // namespace vec
}  // namespace reidkern
