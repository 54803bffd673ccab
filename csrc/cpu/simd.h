// CPU SIMD helpers shared by the CPU kernels: GCC vector types of VB bytes (load, store, lane sum,
// axpy, dot, exp), the CPU's instruction set detected once at run time, and REIDKERN_ISA_CLONES,
// which compiles a kernel once per instruction set and calls the one the CPU supports.
//
// How a kernel uses it: write the hot loop once as an always-inlined template on <T, VB> (T: float
// or double, VB: vector bytes) using vec:: helpers, then
//   REIDKERN_ISA_CLONES(my_kernel, my_kernel_impl)
// defines my_kernel<T>(args...), which runs my_kernel_impl<T, VB>(args...) compiled for AVX-512
// (VB = 64), AVX2+FMA (VB = 32) or the x86-64 baseline (VB = 16), picked from the CPU's features.
// Everything the impl inlines is compiled for that instruction set; a function it calls but does
// not inline (std::sort, std::exp ...) stays baseline code. Dispatch happens once per call of
// my_kernel, so call it per parallel_for chunk, not per element.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

// 64-byte vector values passed between always-inlined helpers: no ABI crossing.
#pragma GCC diagnostic ignored "-Wpsabi"

#define REIDKERN_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__) && defined(__x86_64__)
#define REIDKERN_X86 1
#define REIDKERN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define REIDKERN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define REIDKERN_X86 0
#endif

namespace reidkern {

enum class Isa { Base, Avx2, Avx512 };

// The best instruction set this CPU runs among those the kernels are compiled for (detected once).
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

// REIDKERN_ISA_CLONES(NAME, IMPL): NAME<T>(args...) calls IMPL<T, VB>(args...) compiled for the
// CPU's instruction set (see the top of this file). Arguments are passed by value, as to IMPL.
#if REIDKERN_X86
#define REIDKERN_ISA_CLONES(NAME, IMPL)                                      \
  template <typename T, typename... Args>                                    \
  REIDKERN_TARGET_AVX512 auto NAME##_avx512(Args... args) {                  \
    return IMPL<T, 64>(args...);                                             \
  }                                                                          \
  template <typename T, typename... Args>                                    \
  REIDKERN_TARGET_AVX2 auto NAME##_avx2(Args... args) {                      \
    return IMPL<T, 32>(args...);                                             \
  }                                                                          \
  template <typename T, typename... Args>                                    \
  auto NAME##_base(Args... args) {                                           \
    return IMPL<T, 16>(args...);                                             \
  }                                                                          \
  template <typename T, typename... Args>                                    \
  auto NAME(Args... args) {                                                  \
    switch (::reidkern::cpu_isa()) {                                         \
      case ::reidkern::Isa::Avx512: return NAME##_avx512<T>(args...);        \
      case ::reidkern::Isa::Avx2: return NAME##_avx2<T>(args...);            \
      default: return NAME##_base<T>(args...);                               \
    }                                                                        \
  }
#else
#define REIDKERN_ISA_CLONES(NAME, IMPL) \
  template <typename T, typename... Args> \
  auto NAME(Args... args) {               \
    return IMPL<T, 16>(args...);          \
  }
#endif

namespace vec {

// A GCC vector of VB bytes of T (W lanes).
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

// y[c] += a * x[c] for c < n (two vectors per step).
template <typename T, int VB>
REIDKERN_INLINE void axpy(int64_t n, T a, const T* x, T* y) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  int64_t c = 0;
  for (; c + 2 * W <= n; c += 2 * W) {
    store(y + c, load<VB>(y + c) + a * load<VB>(x + c));
    store(y + c + W, load<VB>(y + c + W) + a * load<VB>(x + c + W));
  }
  for (; c + W <= n; c += W) store(y + c, load<VB>(y + c) + a * load<VB>(x + c));
  for (; c < n; ++c) y[c] += a * x[c];
}

// sum_c x[c] y[c] over c < n (two accumulators, to hide the add latency).
template <typename T, int VB>
REIDKERN_INLINE T dot(int64_t n, const T* x, const T* y) {
  using Vt = typename V<T, VB>::type;
  constexpr int W = V<T, VB>::W;
  Vt acc0 = {}, acc1 = {};
  int64_t c = 0;
  for (; c + 2 * W <= n; c += 2 * W) {
    acc0 += load<VB>(x + c) * load<VB>(y + c);
    acc1 += load<VB>(x + c + W) * load<VB>(y + c + W);
  }
  for (; c + W <= n; c += W) acc0 += load<VB>(x + c) * load<VB>(y + c);
  T s = hsum<T, Vt>(acc0 + acc1);
  for (; c < n; ++c) s += x[c] * y[c];
  return s;
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

// row[j] <- exp(row[j] - m) for j < n; returns the sum (float: the vector exp above; double:
// std::exp).
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
}  // namespace reidkern
