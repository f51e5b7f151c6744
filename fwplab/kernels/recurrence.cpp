// The rank-one fast weight recurrence of fwplab.solvers on a fixed grid, forward and backward.
//
// One explicit Runge-Kutta step of the delta / post-tanh delta / Oja rule, in the form
// (M = W for delta, M = W^T for Oja; f the fixed factor, c the target, beta the rate):
//
//     e_i = M_n f_i - c_i + sum_{j<i} h a_ij (f_i . f_j) r_j
//     r_i = beta_i g(-e_i)           g: identity, tanh or softmax
//     M_{n+1} = M_n + sum_i h b_i r_i f_i^T
//
// The controls arrive before their activations (softmax, tanh, sigmoid), which are applied
// when a step's controls are gathered and differentiated in the backward.
//
// Independent recurrences (batch x heads) are processed in groups of LANES: every local
// array keeps the lane index innermost, so the compiler's vector instructions carry
// independent samples and a group's fast weights stay in cache for the whole sequence
// (updated in place in the forward). The threads split the groups; each thread also
// zeroes the gradient rows of its own groups. The controls are read with a row stride,
// so they may be column slices of one array (the slow net's joint projection).
// The forward keeps M every `every` steps; the backward recomputes each segment from
// its checkpoint and walks it in reverse (one hand-written backward for the whole
// recurrence). With a fused slow net (SlowNetSpec), a group computes the controls of each
// segment itself from the path's pieces (row-major products vectorised over columns, the
// LayerNorm per row) into its own buffers, and the backward turns the segment's control
// gradients into the slow net's parameter gradients (one set per worker thread).
// Plain C++ without intrinsics (the dense loops use GCC/Clang vector types,
// elementwise arrays elsewhere) and no dependency on PyTorch headers: the entry points
// take raw pointers and are called through ctypes.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

enum Nonlinearity : int64_t { kLinear = 0, kTanh = 1, kSoftmax = 2 };

// exp(x) for x <= 0, written with operations compilers vectorise (no libm call):
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial, 2^n from the bits.
template <typename T>
struct Exp;

template <>
struct Exp<float> {
  static inline float nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    float shifted = x * 1.44269504088896341f + shifter;
    float n = shifted - shifter;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t shifted_bits, shifter_bits;
    std::memcpy(&shifted_bits, &shifted, sizeof(float));
    std::memcpy(&shifter_bits, &shifter, sizeof(float));
    int32_t bits = (shifted_bits - shifter_bits + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    return p * scale;
  }
};

template <>
struct Exp<double> {
  static inline double nonpositive(double x) {
    x = x < -708.0 ? -708.0 : x;
    const double shifter = 6755399441055744.0;  // 1.5 * 2^52
    double shifted = x * 1.4426950408889634 + shifter;
    double n = shifted - shifter;
    double r = x - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;  // 1 / 13!
    const double inverse_factorials[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                         1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                                         1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                                         1.0 / 6.0,         0.5,              1.0,
                                         1.0};
    for (double coefficient : inverse_factorials) p = p * r + coefficient;
    int64_t shifted_bits, shifter_bits;
    std::memcpy(&shifted_bits, &shifted, sizeof(double));
    std::memcpy(&shifter_bits, &shifter, sizeof(double));
    int64_t bits = (shifted_bits - shifter_bits + 1023) << 52;
    double scale;
    std::memcpy(&scale, &bits, sizeof(double));
    return p * scale;
  }
};

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) <= 1.
template <typename T>
inline T tanh_vectorisable(T x) {
  T magnitude = x < T(0) ? -x : x;
  T e = Exp<T>::nonpositive(T(-2) * magnitude);
  T t = (T(1) - e) / (T(1) + e);
  return x < T(0) ? -t : t;
}

enum Activation : int64_t { kIdentity = 0, kTanhActivation = 1, kSoftmaxActivation = 2, kSigmoid = 3 };

// Apply an activation in place to a block of `size` values per lane, (size, LANES);
// softmax acts over the `size` values of each lane.
template <typename T, int LANES>
void activate(int64_t code, T* __restrict__ x, int64_t size) {
  if (code == kTanhActivation) {
    for (int64_t q = 0; q < size * LANES; ++q) x[q] = tanh_vectorisable(x[q]);
  } else if (code == kSigmoid) {  // 1 / (1 + exp(-x)) from exp(-|x|) <= 1
    for (int64_t q = 0; q < size * LANES; ++q) {
      const T e = Exp<T>::nonpositive(x[q] < T(0) ? x[q] : -x[q]);
      x[q] = x[q] < T(0) ? e / (T(1) + e) : T(1) / (T(1) + e);
    }
  } else if (code == kSoftmaxActivation) {
    T largest[LANES], total[LANES];
    for (int l = 0; l < LANES; ++l) largest[l] = x[l];
    for (int64_t q = 1; q < size; ++q)
      for (int l = 0; l < LANES; ++l) largest[l] = std::max(largest[l], x[q * LANES + l]);
    for (int l = 0; l < LANES; ++l) total[l] = T(0);
    for (int64_t q = 0; q < size; ++q)
      for (int l = 0; l < LANES; ++l) {
        x[q * LANES + l] = Exp<T>::nonpositive(x[q * LANES + l] - largest[l]);
        total[l] += x[q * LANES + l];
      }
    for (int l = 0; l < LANES; ++l) total[l] = T(1) / total[l];
    for (int64_t q = 0; q < size; ++q)
      for (int l = 0; l < LANES; ++l) x[q * LANES + l] *= total[l];
  }
}

// g <- J^T g for the activation whose output is y, both (size, LANES).
template <typename T, int LANES>
void activation_vjp(int64_t code, const T* __restrict__ y, T* __restrict__ g, int64_t size) {
  if (code == kTanhActivation) {
    for (int64_t q = 0; q < size * LANES; ++q) g[q] *= T(1) - y[q] * y[q];
  } else if (code == kSigmoid) {
    for (int64_t q = 0; q < size * LANES; ++q) g[q] *= y[q] * (T(1) - y[q]);
  } else if (code == kSoftmaxActivation) {
    T dot[LANES] = {};
    for (int64_t q = 0; q < size; ++q)
      for (int l = 0; l < LANES; ++l) dot[l] += g[q * LANES + l] * y[q * LANES + l];
    for (int64_t q = 0; q < size; ++q)
      for (int l = 0; l < LANES; ++l)
        g[q * LANES + l] = y[q * LANES + l] * (g[q * LANES + l] - dot[l]);
  }
}

// The step's dense work, on matrices and stage vectors in the lane layout: a matrix X is
// (rows, cols, LANES), stage vectors are (S, size, LANES). Each routine keeps a block of
// rows (or columns) and all S stages in registers, so every value loaded from X feeds
// S fused multiply-adds and every stage vector loaded feeds BLOCK of them. The LANES
// values of one position are one `Lanes` value: a GCC/Clang vector (which the compiler
// keeps in a register; plain arrays of accumulators it spills to memory) or, with other
// compilers, an array with elementwise operators.
constexpr int64_t kBlock = 4;

#if defined(__GNUC__)
template <typename T, int LANES>
struct LaneType {
  typedef T type __attribute__((vector_size(LANES * sizeof(T)), aligned(sizeof(T))));
};
#else
template <typename T, int LANES>
struct LaneArray {
  T v[LANES];
  T& operator[](int l) { return v[l]; }
  LaneArray& operator+=(const LaneArray& other) {
    for (int l = 0; l < LANES; ++l) v[l] += other.v[l];
    return *this;
  }
  LaneArray& operator-=(const LaneArray& other) {
    for (int l = 0; l < LANES; ++l) v[l] -= other.v[l];
    return *this;
  }
  friend LaneArray operator-(const LaneArray& a, const LaneArray& b) {
    LaneArray difference;
    for (int l = 0; l < LANES; ++l) difference.v[l] = a.v[l] - b.v[l];
    return difference;
  }
  friend LaneArray operator+(const LaneArray& a, const LaneArray& b) {
    LaneArray sum;
    for (int l = 0; l < LANES; ++l) sum.v[l] = a.v[l] + b.v[l];
    return sum;
  }
  friend LaneArray operator*(const LaneArray& a, const LaneArray& b) {
    LaneArray product;
    for (int l = 0; l < LANES; ++l) product.v[l] = a.v[l] * b.v[l];
    return product;
  }
};
template <typename T, int LANES>
struct LaneType {
  using type = LaneArray<T, LANES>;
};
#endif

// A Lanes value with every lane equal to x (GCC/Clang: one broadcast; filling the
// lanes one by one compiles to a masked broadcast per lane).
template <typename V, typename T, int LANES>
inline V splat(T x) {
#if defined(__GNUC__)
  return V{} + x;
#else
  V value;
  for (int l = 0; l < LANES; ++l) value[l] = x;
  return value;
#endif
}

// out[s][o] = sum_k X[o][k] y[s][k] (+ out[s][o] when `accumulate`).
template <typename T, int S, int LANES>
inline void project(const T* X_, const T* y_, T* out_, int64_t rows, int64_t cols,
                    bool accumulate) {
  using V = typename LaneType<T, LANES>::type;
  const V* __restrict__ X = reinterpret_cast<const V*>(X_);
  const V* __restrict__ y = reinterpret_cast<const V*>(y_);
  V* __restrict__ out = reinterpret_cast<V*>(out_);
  int64_t o = 0;
  for (; o + kBlock <= rows; o += kBlock) {
    V acc[kBlock][S];
    for (int r = 0; r < kBlock; ++r)
      for (int s = 0; s < S; ++s) acc[r][s] = accumulate ? out[s * rows + o + r] : V{};
    for (int64_t k = 0; k < cols; ++k)
      for (int r = 0; r < kBlock; ++r)
        for (int s = 0; s < S; ++s) acc[r][s] += X[(o + r) * cols + k] * y[s * cols + k];
    for (int r = 0; r < kBlock; ++r)
      for (int s = 0; s < S; ++s) out[s * rows + o + r] = acc[r][s];
  }
  for (; o < rows; ++o) {
    V acc[S];
    for (int s = 0; s < S; ++s) acc[s] = accumulate ? out[s * rows + o] : V{};
    for (int64_t k = 0; k < cols; ++k)
      for (int s = 0; s < S; ++s) acc[s] += X[o * cols + k] * y[s * cols + k];
    for (int s = 0; s < S; ++s) out[s * rows + o] = acc[s];
  }
}

// out[s][k] += sum_o z[s][o] X[o][k] + sum_o w[s][o] Y[o][k]: two transposed products
// sharing one pass over the columns.
template <typename T, int S, int LANES>
inline void project_transposed(const T* z_, const T* X_, const T* w_, const T* Y_, T* out_,
                               int64_t rows, int64_t cols) {
  using V = typename LaneType<T, LANES>::type;
  const V* __restrict__ z = reinterpret_cast<const V*>(z_);
  const V* __restrict__ X = reinterpret_cast<const V*>(X_);
  const V* __restrict__ w = reinterpret_cast<const V*>(w_);
  const V* __restrict__ Y = reinterpret_cast<const V*>(Y_);
  V* __restrict__ out = reinterpret_cast<V*>(out_);
  int64_t k = 0;
  for (; k + kBlock <= cols; k += kBlock) {
    V acc[S][kBlock];
    for (int s = 0; s < S; ++s)
      for (int c = 0; c < kBlock; ++c) acc[s][c] = out[s * cols + k + c];
    for (int64_t o = 0; o < rows; ++o)
      for (int s = 0; s < S; ++s) {
        const V zs = z[s * rows + o], ws = w[s * rows + o];
        for (int c = 0; c < kBlock; ++c)
          acc[s][c] += zs * X[o * cols + k + c] + ws * Y[o * cols + k + c];
      }
    for (int s = 0; s < S; ++s)
      for (int c = 0; c < kBlock; ++c) out[s * cols + k + c] = acc[s][c];
  }
  for (; k < cols; ++k) {
    V acc[S];
    for (int s = 0; s < S; ++s) acc[s] = out[s * cols + k];
    for (int64_t o = 0; o < rows; ++o)
      for (int s = 0; s < S; ++s)
        acc[s] += z[s * rows + o] * X[o * cols + k] + w[s * rows + o] * Y[o * cols + k];
    for (int s = 0; s < S; ++s) out[s * cols + k] = acc[s];
  }
}

// X[o][k] += sum_s z[s][o] y[s][k] (in place; z already carries the step weights).
template <typename T, int S, int LANES>
inline void rank_update(T* X_, const T* z_, const T* y_, int64_t rows, int64_t cols) {
  using V = typename LaneType<T, LANES>::type;
  V* __restrict__ X = reinterpret_cast<V*>(X_);
  const V* __restrict__ z = reinterpret_cast<const V*>(z_);
  const V* __restrict__ y = reinterpret_cast<const V*>(y_);
  int64_t o = 0;
  for (; o + kBlock <= rows; o += kBlock) {
    V weight[kBlock][S];
    for (int r = 0; r < kBlock; ++r)
      for (int s = 0; s < S; ++s) weight[r][s] = z[s * rows + o + r];
    for (int64_t k = 0; k < cols; ++k)
      for (int r = 0; r < kBlock; ++r) {
        V value = X[(o + r) * cols + k];
        for (int s = 0; s < S; ++s) value += weight[r][s] * y[s * cols + k];
        X[(o + r) * cols + k] = value;
      }
  }
  for (; o < rows; ++o) {
    V weight[S];
    for (int s = 0; s < S; ++s) weight[s] = z[s * rows + o];
    for (int64_t k = 0; k < cols; ++k) {
      V value = X[o * cols + k];
      for (int s = 0; s < S; ++s) value += weight[s] * y[s * cols + k];
      X[o * cols + k] = value;
    }
  }
}

// Lane layout <-> rows: lanes[k][l] = base[offset[l] + k] for `valid` lanes of `width`
// values (whole groups as one load per k that the compiler turns into gathers).
template <typename T, int LANES>
inline void gather_lanes(const T* __restrict__ base, const int64_t* __restrict__ offset,
                         int64_t width, int valid, T* __restrict__ lanes) {
  if (valid == LANES) {
    for (int64_t k = 0; k < width; ++k)
      for (int l = 0; l < LANES; ++l) lanes[k * LANES + l] = base[offset[l] + k];
    return;
  }
  for (int l = 0; l < valid; ++l)
    for (int64_t k = 0; k < width; ++k) lanes[k * LANES + l] = base[offset[l] + k];
}

// base[offset[l] + k] += lanes[k][l], the reverse of gather_lanes.
template <typename T, int LANES>
inline void scatter_add_lanes(const T* __restrict__ lanes, const int64_t* __restrict__ offset,
                              int64_t width, int valid, T* __restrict__ base) {
  if (valid == LANES) {
    for (int64_t k = 0; k < width; ++k)
      for (int l = 0; l < LANES; ++l) base[offset[l] + k] += lanes[k * LANES + l];
    return;
  }
  for (int l = 0; l < valid; ++l)
    for (int64_t k = 0; k < width; ++k) base[offset[l] + k] += lanes[k * LANES + l];
}

// ------------------------------------------------------------------ the fused slow net
// Row-major products of the slow net, vectorised over the columns of B and C, which are
// padded to whole vectors (B's padding zero): for `rows` rows i and `vectors` column
// vectors, C[i][:] = init + sum_p A(i, p) B[p][:] with A(i, p) = A[i * si + p * sp], so A
// may be read transposed. init: C itself (`accumulate`), the row `bias` or zero. A tile
// of R rows and NV column vectors stays in registers; each B vector loaded feeds R
// fused multiply-adds.
template <typename T, int LANES, int R, int NV>
inline void product_tile(const T* __restrict__ A, int64_t si, int64_t sp, int64_t depth,
                         const T* __restrict__ B_, int64_t ldb, T* __restrict__ C_, int64_t ldc,
                         const T* __restrict__ bias_, bool accumulate) {
  using V = typename LaneType<T, LANES>::type;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      if (accumulate)
        acc[r][v] = *reinterpret_cast<const V*>(C_ + r * ldc + v * LANES);
      else if (bias_ != nullptr)
        acc[r][v] = *reinterpret_cast<const V*>(bias_ + v * LANES);
      else
        acc[r][v] = V{};
    }
  for (int64_t p = 0; p < depth; ++p) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const V*>(B_ + p * ldb + v * LANES);
    for (int r = 0; r < R; ++r) {
      const V a = splat<V, T, LANES>(A[r * si + p * sp]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(C_ + r * ldc + v * LANES) = acc[r][v];
}

// The register tile of `product` (rows x column vectors of one native register each):
// 6 x 4 accumulators in AVX-512's 32 registers, 4 x 3 in the 16 of AVX2, SSE or NEON.
// Measured on a Zen 4 core for the slow net's shapes: 96 GFLOP/s with AVX-512 (4 x 4:
// 77), 77 with AVX2 only.
#if defined(__AVX512F__)
constexpr int kProductRows = 6, kProductVectors = 4, kProductBytes = 64;
#elif defined(__AVX__)
constexpr int kProductRows = 4, kProductVectors = 3, kProductBytes = 32;
#else
constexpr int kProductRows = 4, kProductVectors = 3, kProductBytes = 16;
#endif

// One native vector register of T: the recurrences per group and the vector width of the
// slow net's row-major loops (16 float32 with AVX-512, 8 with AVX2). GCC lowers a wider
// generic vector through memory: built for AVX2 with 64-byte lanes, the kernel took
// 160 ms instead of 134 at the Speech Commands shape, B=128, and the products ran at
// 2 GFLOP/s instead of 77.
template <typename T>
constexpr int lanes() {
  return kProductBytes / int(sizeof(T));
}

template <typename T, int LANES, int R>
inline void product_columns(const T* A, int64_t si, int64_t sp, int64_t depth, const T* B,
                            int64_t ldb, int64_t vectors, T* C, int64_t ldc, const T* bias,
                            bool accumulate) {
  // Tiles of kProductVectors column vectors; one vector more than a tile is split in two
  // near halves (5 = 3 + 2: a tile of one vector feeds one multiply-add per broadcast).
  for (int64_t v = 0; v < vectors;) {
    const int64_t left = vectors - v;
    const int64_t width = left == kProductVectors + 1 ? (left + 1) / 2
                                                      : std::min<int64_t>(left, kProductVectors);
    const T* b = B + v * LANES;
    T* c = C + v * LANES;
    const T* bias_v = bias ? bias + v * LANES : nullptr;
    switch (width) {
      case 4: product_tile<T, LANES, R, 4>(A, si, sp, depth, b, ldb, c, ldc, bias_v, accumulate); break;
      case 3: product_tile<T, LANES, R, 3>(A, si, sp, depth, b, ldb, c, ldc, bias_v, accumulate); break;
      case 2: product_tile<T, LANES, R, 2>(A, si, sp, depth, b, ldb, c, ldc, bias_v, accumulate); break;
      default: product_tile<T, LANES, R, 1>(A, si, sp, depth, b, ldb, c, ldc, bias_v, accumulate); break;
    }
    v += width;
  }
}

template <typename T, int LANES>
void product(int64_t rows, int64_t vectors, int64_t depth, const T* A, int64_t si, int64_t sp,
             const T* B, int64_t ldb, T* C, int64_t ldc, const T* bias, bool accumulate) {
  constexpr int R = kProductRows;
  int64_t i = 0;
  for (; i + R <= rows; i += R)
    product_columns<T, LANES, R>(A + i * si, si, sp, depth, B, ldb, vectors, C + i * ldc, ldc,
                                 bias, accumulate);
  for (; i < rows; ++i)
    product_columns<T, LANES, 1>(A + i * si, si, sp, depth, B, ldb, vectors, C + i * ldc, ldc,
                                 bias, accumulate);
}

// c[:] += sum of the `rows` rows of X (row stride ld), `vectors` vectors wide.
template <typename T, int LANES>
void add_column_sums(const T* X_, int64_t rows, int64_t ld, int64_t vectors, T* c_) {
  using V = typename LaneType<T, LANES>::type;
  V* c = reinterpret_cast<V*>(c_);
  for (int64_t v = 0; v < vectors; ++v) {
    V total = c[v];
    for (int64_t i = 0; i < rows; ++i) total += *reinterpret_cast<const V*>(X_ + i * ld + v * LANES);
    c[v] = total;
  }
}

template <typename T, int LANES>
inline T lane_sum(typename LaneType<T, LANES>::type x) {
  T total = T(0);
  for (int l = 0; l < LANES; ++l) total += x[l];
  return total;
}

// The slow net the fused kernel evaluates at the stage points (all read-only):
//
//     X, dX/dt  from the path's pieces (cubic: a + b s + c s^2 + d s^3; linear)
//     u = LN(A in_1 + a)          in_1: X or dX/dt
//     j = B u + b                 the joint projection (keys and rates, or keys, values, rates)
//     v = V in_2 + e              CDE values, in_2: X or dX/dt (absent for the ODE driver)
//
// Weights arrive transposed and padded: columns to whole vectors (`hidden_pad`,
// `joint_pad`) with zeros. Each control (fixed, target, rate) is read from array 0 (j)
// or 1 (v), from column `column + head * head_stride`.
template <typename T>
struct SlowNetSpec {
  const T* coefficients;  // cubic: (batch, pieces, 4 C) packed a, b, 2c, 3d; linear: (batch, pieces + 1, C)
  const T* slopes;        // linear: (batch, pieces, C)
  const int64_t* piece;   // (points,)
  const T* offset;        // (points,): time since the piece's start
  const T* in_weight_t;   // (C, Hp)
  const T* in_bias;       // (Hp)
  const T* norm_weight;   // (Hp)
  const T* norm_bias;     // (Hp)
  const T* joint_weight_t;  // (H, Jp)
  const T* joint_weight;  // (J, Hp)
  const T* joint_bias;    // (Jp)
  const T* value_weight_t;  // (C, Hp) or null
  const T* value_bias;    // (Hp) or null
  int64_t path_kind, batch, pieces, channels, hidden, joint, heads, feature_input, value_input;
  int64_t hidden_pad, joint_pad;
  int64_t array[3], column[3], head_stride[3];
  T eps;
};

enum PathKind : int64_t { kCubicPath = 0, kLinearPath = 1 };
constexpr int kGradients = 8;  // the parameter gradients, in SlowNetSpec's order (no joint_weight)

// One worker's slow net: the controls of one segment of points for one group's batch
// elements, row (point - p0) * nb + batch element, and their backward into the worker's
// own slots of the parameter gradients. Its row-major loops run on vectors of LANES
// (lanes<T>(): one register).
template <typename T, int LANES>
struct SlowNetWork {
  const SlowNetSpec<T>& net;
  int64_t nb, rows_max, C, H, Hp, J, Jp;
  std::vector<T> x, dx, normed, rstd, u, joint, value, grad_joint, grad_value, grad_u, mask;
  T* grad[kGradients] = {};
  int64_t rows = 0;

  SlowNetWork(const SlowNetSpec<T>& spec, int64_t points_max)
      : net(spec), nb(LANES / spec.heads), rows_max(points_max * (LANES / spec.heads)),
        C(spec.channels), H(spec.hidden), Hp(spec.hidden_pad), J(spec.joint),
        Jp(spec.joint_pad) {
    x.resize(rows_max * C);
    dx.resize(rows_max * C);
    normed.resize(rows_max * Hp);
    rstd.resize(rows_max);
    u.resize(rows_max * Hp);
    joint.resize(rows_max * Jp);
    value.resize(net.value_input >= 0 ? rows_max * Hp : 0);
    mask.assign(Hp, T(0));
    std::fill(mask.begin(), mask.begin() + H, T(1));
  }

  void bind_gradients(T* const* slots, int64_t worker) {
    const int64_t sizes[kGradients] = {C * Hp, Hp, Hp, Hp, H * Jp, Jp, C * Hp, Hp};
    for (int q = 0; q < kGradients; ++q)
      grad[q] = slots[q] == nullptr ? nullptr : slots[q] + worker * sizes[q];
    grad_joint.resize(rows_max * Jp);
    grad_value.resize(value.size());
    grad_u.resize(rows_max * Hp);
  }

  const T* input(int64_t which) const { return which == 1 ? dx.data() : x.data(); }

  // Controls at points p0 .. p0 + points - 1 of batch elements first .. first + valid - 1.
  void compute(int64_t first, int64_t valid, int64_t p0, int64_t points) {
    using V = typename LaneType<T, LANES>::type;
    rows = points * nb;
    for (int64_t p = 0; p < points; ++p) {
      const int64_t piece = net.piece[p0 + p];
      const T s = net.offset[p0 + p];
      for (int64_t bl = 0; bl < nb; ++bl) {
        T* xr = &x[(p * nb + bl) * C];
        T* dr = &dx[(p * nb + bl) * C];
        if (bl >= valid) {
          std::fill(xr, xr + C, T(0));
          std::fill(dr, dr + C, T(0));
          continue;
        }
        const int64_t b = first + bl;
        if (net.path_kind == kCubicPath) {
          const T* a = net.coefficients + (b * net.pieces + piece) * 4 * C;
          const T *slope = a + C, *two_c = a + 2 * C, *three_d = a + 3 * C;
          for (int64_t c = 0; c < C; ++c) {
            dr[c] = slope[c] + (two_c[c] + three_d[c] * s) * s;
            const T inner = slope[c] + T(0.5) * ((two_c[c] + T(2.0 / 3.0) * (three_d[c] * s)) * s);
            xr[c] = a[c] + inner * s;
          }
        } else {
          const T* start = net.coefficients + (b * (net.pieces + 1) + piece) * C;
          const T* slope = net.slopes + (b * net.pieces + piece) * C;
          for (int64_t c = 0; c < C; ++c) {
            dr[c] = slope[c];
            xr[c] = start[c] + slope[c] * s;
          }
        }
      }
    }
    const int64_t hv = Hp / LANES;
    product<T, LANES>(rows, hv, C, input(net.feature_input), C, 1, net.in_weight_t, Hp,
                      normed.data(), Hp, net.in_bias, false);
    const V* m = reinterpret_cast<const V*>(mask.data());
    const V* gamma = reinterpret_cast<const V*>(net.norm_weight);
    const V* beta = reinterpret_cast<const V*>(net.norm_bias);
    for (int64_t i = 0; i < rows; ++i) {  // LayerNorm (biased variance, as torch)
      V* z = reinterpret_cast<V*>(&normed[i * Hp]);
      V* out = reinterpret_cast<V*>(&u[i * Hp]);
      V total{};
      for (int64_t v = 0; v < hv; ++v) total += z[v];
      const T mean = lane_sum<T, LANES>(total) / T(H);
      V squares{};
      for (int64_t v = 0; v < hv; ++v) {
        z[v] = (z[v] - splat<V, T, LANES>(mean)) * m[v];
        squares += z[v] * z[v];
      }
      const T r = T(1) / std::sqrt(lane_sum<T, LANES>(squares) / T(H) + net.eps);
      rstd[i] = r;
      const V rv = splat<V, T, LANES>(r);
      for (int64_t v = 0; v < hv; ++v) {
        z[v] *= rv;
        out[v] = z[v] * gamma[v] + beta[v];
      }
    }
    product<T, LANES>(rows, Jp / LANES, H, u.data(), Hp, 1, net.joint_weight_t, Jp,
                      joint.data(), Jp, net.joint_bias, false);
    if (net.value_input >= 0)
      product<T, LANES>(rows, hv, C, input(net.value_input), C, 1, net.value_weight_t, Hp,
                        value.data(), Hp, net.value_bias, false);
  }

  void clear_gradients() {
    std::fill(grad_joint.begin(), grad_joint.begin() + rows * Jp, T(0));
    if (!grad_value.empty()) std::fill(grad_value.begin(), grad_value.begin() + rows * Hp, T(0));
  }

  // The parameter gradients of the last `compute`'s rows, from grad_joint and grad_value.
  void backward() {
    using V = typename LaneType<T, LANES>::type;
    const int64_t hv = Hp / LANES;
    if (net.value_input >= 0) {
      product<T, LANES>(C, hv, rows, input(net.value_input), 1, C, grad_value.data(), Hp,
                        grad[6], Hp, nullptr, true);
      add_column_sums<T, LANES>(grad_value.data(), rows, Hp, hv, grad[7]);
    }
    product<T, LANES>(H, Jp / LANES, rows, u.data(), 1, Hp, grad_joint.data(), Jp, grad[4], Jp,
                      nullptr, true);
    add_column_sums<T, LANES>(grad_joint.data(), rows, Jp, Jp / LANES, grad[5]);
    product<T, LANES>(rows, hv, J, grad_joint.data(), Jp, 1, net.joint_weight, Hp,
                      grad_u.data(), Hp, nullptr, false);
    const V* m = reinterpret_cast<const V*>(mask.data());
    const V* gamma = reinterpret_cast<const V*>(net.norm_weight);
    V* grad_gamma = reinterpret_cast<V*>(grad[2]);
    V* grad_beta = reinterpret_cast<V*>(grad[3]);
    for (int64_t i = 0; i < rows; ++i) {  // LayerNorm backward
      V* g = reinterpret_cast<V*>(&grad_u[i * Hp]);
      const V* n = reinterpret_cast<const V*>(&normed[i * Hp]);
      V first{}, second{};
      for (int64_t v = 0; v < hv; ++v) {
        grad_gamma[v] += g[v] * n[v];
        grad_beta[v] += g[v];
        g[v] *= gamma[v];
        first += g[v];
        second += g[v] * n[v];
      }
      const V mean_g = splat<V, T, LANES>(lane_sum<T, LANES>(first) / T(H));
      const V mean_gn = splat<V, T, LANES>(lane_sum<T, LANES>(second) / T(H));
      const V r = splat<V, T, LANES>(rstd[i]);
      for (int64_t v = 0; v < hv; ++v) g[v] = r * (g[v] - mean_g - n[v] * mean_gn) * m[v];
    }
    product<T, LANES>(C, hv, rows, input(net.feature_input), 1, C, grad_u.data(), Hp, grad[0],
                      Hp, nullptr, true);
    add_column_sums<T, LANES>(grad_u.data(), rows, Hp, hv, grad[1]);
  }
};

// Everything shared by all groups of one call (read-only).
template <typename T>
struct Problem {
  // The controls before their activations: row r = point * flat + recurrence of each
  // starts at r * stride (a stride wider than the row lets the controls be columns of
  // one larger array, as the slow net's projections produce them); the gradients
  // have the same layout. With a fused slow net (`net`), the controls are computed
  // instead, segment by segment, and these pointers are unused.
  const T* fixed;   // rows of d_in
  const T* target;  // rows of d_out
  const T* rate;    // rows of 1
  const double* steps;
  const double* a;  // (stages, stages), row i: coefficients of stage i
  const double* b;
  const int64_t* offsets;
  const int64_t* keep_position;  // (n_steps + 1,): output position of each grid index or -1
  int64_t n_steps, per_step, flat, d_out, d_in, nonlinearity, every;
  int64_t fixed_stride, target_stride, rate_stride;
  int64_t fixed_activation, target_activation, rate_activation;
  const SlowNetSpec<T>* net = nullptr;
  T* const* net_gradients = nullptr;  // kGradients arrays of per-worker slots (backward)
};

// Where one control's rows lie for one group: lane l of point p at
// base[(p - point_base) * point_stride + offset[l]], its gradient at the same place of grad.
template <typename T, int LANES>
struct Source {
  const T* base = nullptr;
  T* grad = nullptr;
  int64_t point_stride = 0;
  int64_t offset[LANES] = {};
};

// Per-thread work space and the step routines for one group of LANES recurrences.
template <typename T, int S, int LANES>
struct Group {
  const Problem<T>& problem;
  int64_t first = 0;  // first recurrence of the group
  int valid = 0;      // recurrences in the group (the last group may be partial)
  int64_t d_out, d_in, matrix;
  // The controls of one step, activated, in one block: f (S, d_in, LANES),
  // c (S, d_out, LANES), beta (S, LANES).
  int64_t block;
  bool shares_point;  // the last stage of a step is the first of the next one
  std::vector<T> e, weighted, grad_r, grad_e, grad_f, rate_grad;
  std::vector<int> pair_i, pair_j;
  std::vector<T> pair_a;
  Source<T, LANES> source[3];  // fixed, target, rate
  int64_t point_base = 0;      // the first point the sources hold
  SlowNetWork<T, LANES>* net = nullptr;  // the fused slow net, or null

  explicit Group(const Problem<T>& p)
      : problem(p), d_out(p.d_out), d_in(p.d_in), matrix(p.d_out * p.d_in),
        block(S * (p.d_in + p.d_out + 1) * LANES),
        shares_point(S > 1 && p.offsets[0] == 0 && p.offsets[S - 1] == p.per_step) {
    e.resize(S * d_out * LANES);
    weighted.resize(S * d_out * LANES);
    grad_r.resize(S * d_out * LANES);
    grad_e.resize(S * d_out * LANES);
    grad_f.resize(S * d_in * LANES);
    rate_grad.resize(S * LANES);
    for (int i = 0; i < S; ++i)
      for (int j = 0; j < i; ++j)
        if (p.a[i * S + j] != 0.0) {
          pair_i.push_back(i);
          pair_j.push_back(j);
          pair_a.push_back(T(p.a[i * S + j]));
        }
  }

  // Point the sources at the group's rows: of the problem's arrays (and the gradient
  // arrays, when given), or of the fused slow net's segment buffers.
  void bind(T* grad_fixed = nullptr, T* grad_target = nullptr, T* grad_rate = nullptr) {
    if (net != nullptr) {
      const SlowNetSpec<T>& spec = net->net;
      for (int c = 0; c < 3; ++c) {
        const bool joint = spec.array[c] == 0;
        const int64_t width = joint ? net->Jp : net->Hp;
        source[c].base = (joint ? net->joint.data() : net->value.data()) + spec.column[c];
        T* grad = joint ? net->grad_joint.data() : net->grad_value.data();
        source[c].grad = grad == nullptr ? nullptr : grad + spec.column[c];
        source[c].point_stride = net->nb * width;
        for (int l = 0; l < LANES; ++l)
          source[c].offset[l] = (l / spec.heads) * width + (l % spec.heads) * spec.head_stride[c];
      }
      return;
    }
    const T* bases[3] = {problem.fixed, problem.target, problem.rate};
    T* grads[3] = {grad_fixed, grad_target, grad_rate};
    const int64_t strides[3] = {problem.fixed_stride, problem.target_stride, problem.rate_stride};
    for (int c = 0; c < 3; ++c) {
      source[c].base = bases[c];
      source[c].grad = grads[c];
      source[c].point_stride = problem.flat * strides[c];
      for (int l = 0; l < LANES; ++l) source[c].offset[l] = (first + (l < valid ? l : 0)) * strides[c];
    }
    point_base = 0;
  }

  int64_t point(int64_t n, int s) const { return n * problem.per_step + problem.offsets[s]; }
  T* fixed_of(T* controls) const { return controls; }
  T* target_of(T* controls) const { return controls + S * d_in * LANES; }
  T* rate_of(T* controls) const { return controls + S * (d_in + d_out) * LANES; }
  const T* fixed_of(const T* controls) const { return controls; }
  const T* target_of(const T* controls) const { return controls + S * d_in * LANES; }
  const T* rate_of(const T* controls) const { return controls + S * (d_in + d_out) * LANES; }

  // Gather the controls of step n into a block in the lane layout and activate them.
  // `previous` (the block of step n - 1, or null) provides a shared first stage.
  void load_controls(int64_t n, T* controls, const T* previous) const {
    if (valid < LANES) std::fill(controls, controls + block, T(0));  // lanes left empty
    T* f = fixed_of(controls);
    T* c = target_of(controls);
    T* beta = rate_of(controls);
    int first_stage = 0;
    if (previous != nullptr && shares_point) {
      std::copy(fixed_of(previous) + (S - 1) * d_in * LANES, fixed_of(previous) + S * d_in * LANES, f);
      std::copy(target_of(previous) + (S - 1) * d_out * LANES,
                target_of(previous) + S * d_out * LANES, c);
      for (int l = 0; l < LANES; ++l) beta[l] = rate_of(previous)[(S - 1) * LANES + l];
      first_stage = 1;
    }
    for (int s = first_stage; s < S; ++s) {
      const int64_t at = point(n, s) - point_base;
      gather_lanes<T, LANES>(source[0].base + at * source[0].point_stride, source[0].offset,
                             d_in, valid, f + s * d_in * LANES);
      gather_lanes<T, LANES>(source[1].base + at * source[1].point_stride, source[1].offset,
                             d_out, valid, c + s * d_out * LANES);
      gather_lanes<T, LANES>(source[2].base + at * source[2].point_stride, source[2].offset, 1,
                             valid, beta + s * LANES);
      activate<T, LANES>(problem.fixed_activation, f + s * d_in * LANES, d_in);
      activate<T, LANES>(problem.target_activation, c + s * d_out * LANES, d_out);
      activate<T, LANES>(problem.rate_activation, beta + s * LANES, 1);
    }
  }

  // Matrix (flat, d_out, d_in) <-> lane layout (d_out * d_in, LANES).
  void gather_matrix(const T* source, T* lanes) const {
    std::fill(lanes, lanes + matrix * LANES, T(0));
    for (int l = 0; l < valid; ++l) {
      const T* own = source + (first + l) * matrix;
      for (int64_t q = 0; q < matrix; ++q) lanes[q * LANES + l] = own[q];
    }
  }
  void add_matrix(const T* source, T* lanes) const {
    for (int l = 0; l < valid; ++l) {
      const T* own = source + (first + l) * matrix;
      for (int64_t q = 0; q < matrix; ++q) lanes[q * LANES + l] += own[q];
    }
  }
  void scatter_matrix(const T* lanes, T* destination) const {
    for (int l = 0; l < valid; ++l) {
      T* own = destination + (first + l) * matrix;
      for (int64_t q = 0; q < matrix; ++q) own[q] = lanes[q * LANES + l];
    }
  }

  // One step from M (lane layout) into M_next with the step's control block; records
  // the activations, factors r and couplings h a_ij (f_i . f_j) of the step.
  void forward_step(int64_t n, const T* controls, const T* M, T* M_next,
                    T* __restrict__ activation,
                    T* __restrict__ factors, T* __restrict__ coupling) {
    const T h = T(problem.steps[n]);
    const T* __restrict__ f = fixed_of(controls);
    const T* __restrict__ c = target_of(controls);
    const T* __restrict__ beta = rate_of(controls);
    T* __restrict__ e = this->e.data();
    for (size_t q = 0; q < pair_i.size(); ++q) {
      const T* fi = f + pair_i[q] * d_in * LANES;
      const T* fj = f + pair_j[q] * d_in * LANES;
      T dot[LANES] = {};
      for (int64_t k = 0; k < d_in; ++k)
        for (int l = 0; l < LANES; ++l) dot[l] += fi[k * LANES + l] * fj[k * LANES + l];
      for (int l = 0; l < LANES; ++l) coupling[q * LANES + l] = h * pair_a[q] * dot[l];
    }
    // e_i = M f_i - c_i
    project<T, S, LANES>(M, f, e, d_out, d_in, false);
    for (int64_t q = 0; q < S * d_out * LANES; ++q) e[q] -= c[q];
    for (int i = 0; i < S; ++i) {
      T* ei = e + i * d_out * LANES;
      for (size_t q = 0; q < pair_i.size(); ++q) {
        if (pair_i[q] != i) continue;
        const T* rj = factors + pair_j[q] * d_out * LANES;
        const T* cq = coupling + q * LANES;
        for (int64_t o = 0; o < d_out; ++o)
          for (int l = 0; l < LANES; ++l) ei[o * LANES + l] += cq[l] * rj[o * LANES + l];
      }
      T* act = activation + i * d_out * LANES;
      T* ri = factors + i * d_out * LANES;
      const T* bi = beta + i * LANES;
      if (problem.nonlinearity == kLinear) {
        for (int64_t o = 0; o < d_out; ++o)
          for (int l = 0; l < LANES; ++l) {
            act[o * LANES + l] = ei[o * LANES + l];
            ri[o * LANES + l] = -bi[l] * ei[o * LANES + l];
          }
      } else if (problem.nonlinearity == kTanh) {
        for (int64_t o = 0; o < d_out; ++o)
          for (int l = 0; l < LANES; ++l) {
            T t = tanh_vectorisable(ei[o * LANES + l]);
            act[o * LANES + l] = t;
            ri[o * LANES + l] = -bi[l] * t;
          }
      } else {  // softmax over o of -e
        T largest[LANES], total[LANES];
        for (int l = 0; l < LANES; ++l) largest[l] = -ei[l];
        for (int64_t o = 1; o < d_out; ++o)
          for (int l = 0; l < LANES; ++l)
            largest[l] = std::max(largest[l], -ei[o * LANES + l]);
        for (int l = 0; l < LANES; ++l) total[l] = T(0);
        for (int64_t o = 0; o < d_out; ++o)
          for (int l = 0; l < LANES; ++l) {
            T y = Exp<T>::nonpositive(-ei[o * LANES + l] - largest[l]);
            act[o * LANES + l] = y;
            total[l] += y;
          }
        for (int l = 0; l < LANES; ++l) total[l] = T(1) / total[l];
        for (int64_t o = 0; o < d_out; ++o)
          for (int l = 0; l < LANES; ++l) {
            act[o * LANES + l] *= total[l];
            ri[o * LANES + l] = bi[l] * act[o * LANES + l];
          }
      }
    }
    // M_next = M + sum_i h b_i r_i f_i^T (M_next may be M: updated in place)
    T* __restrict__ weighted = this->weighted.data();
    for (int s = 0; s < S; ++s) {
      const T weight = T(h * problem.b[s]);
      for (int64_t q = s * d_out * LANES; q < (s + 1) * d_out * LANES; ++q)
        weighted[q] = weight * factors[q];
    }
    if (M_next != M) std::copy(M, M + matrix * LANES, M_next);
    rank_update<T, S, LANES>(M_next, weighted, f, d_out, d_in);
  }

  // Backpropagate gM = dL/dM_{n+1} through step n into dL/dM_n (in place) and add the
  // step's control gradients to the outputs. M is M_n, `controls` the step's block.
  void backward_step(int64_t n, const T* controls, const T* __restrict__ M,
                     T* __restrict__ gM, const T* __restrict__ activation,
                     const T* __restrict__ factors, const T* __restrict__ coupling) {
    const T h = T(problem.steps[n]);
    const T* __restrict__ f = fixed_of(controls);
    const T* __restrict__ beta = rate_of(controls);
    T* __restrict__ grad_f = this->grad_f.data();
    T* __restrict__ grad_r = this->grad_r.data();
    T* __restrict__ grad_e = this->grad_e.data();
    T* __restrict__ rate_grad = this->rate_grad.data();
    std::fill(grad_f, grad_f + S * d_in * LANES, T(0));
    // dL/dr_s = h b_s gM f_s (dL/df_s = h b_s gM^T r_s follows below, with M^T dL/de_s)
    project<T, S, LANES>(gM, f, grad_r, d_out, d_in, false);
    T* __restrict__ weighted = this->weighted.data();
    for (int s = 0; s < S; ++s) {
      const T weight = T(h * problem.b[s]);
      for (int64_t q = s * d_out * LANES; q < (s + 1) * d_out * LANES; ++q) {
        grad_r[q] *= weight;
        weighted[q] = weight * factors[q];
      }
    }
    using V = typename LaneType<T, LANES>::type;
    const V* act_all = reinterpret_cast<const V*>(activation);
    const V* r_all = reinterpret_cast<const V*>(factors);
    const V* f_all = reinterpret_cast<const V*>(f);
    const V* beta_all = reinterpret_cast<const V*>(beta);
    const V* coupling_all = reinterpret_cast<const V*>(coupling);
    V* gr_all = reinterpret_cast<V*>(grad_r);
    V* ge_all = reinterpret_cast<V*>(grad_e);
    V* gf_all = reinterpret_cast<V*>(grad_f);
    V* rate_grad_all = reinterpret_cast<V*>(rate_grad);
    const V one = splat<V, T, LANES>(T(1));
    for (int i = S - 1; i >= 0; --i) {
      const V* act = act_all + i * d_out;
      const V* ri = r_all + i * d_out;
      const V* gri = gr_all + i * d_out;
      V* gei = ge_all + i * d_out;
      const V bi = beta_all[i];
      V rate_sum{};
      if (problem.nonlinearity == kLinear) {  // r = -beta e
        for (int64_t o = 0; o < d_out; ++o) {
          gei[o] = V{} - bi * gri[o];
          rate_sum -= gri[o] * act[o];
        }
      } else if (problem.nonlinearity == kTanh) {  // r = -beta tanh(e)
        for (int64_t o = 0; o < d_out; ++o) {
          const V t = act[o];
          gei[o] = (t * t - one) * bi * gri[o];
          rate_sum -= gri[o] * t;
        }
      } else {  // r = beta y, y = softmax(-e): dL/de = r (<dL/dr, y> - dL/dr)
        for (int64_t o = 0; o < d_out; ++o) rate_sum += gri[o] * act[o];
        for (int64_t o = 0; o < d_out; ++o) gei[o] = ri[o] * (rate_sum - gri[o]);
      }
      rate_grad_all[i] = rate_sum;
      for (size_t q = 0; q < pair_i.size(); ++q) {
        if (pair_i[q] != i) continue;
        const int j = pair_j[q];
        const V* rj = r_all + j * d_out;
        V* grj = gr_all + j * d_out;
        const V cq = coupling_all[q];
        V coupling_grad{};
        for (int64_t o = 0; o < d_out; ++o) {
          grj[o] += cq * gei[o];
          coupling_grad += gei[o] * rj[o];
        }
        const V g = splat<V, T, LANES>(T(h * pair_a[q])) * coupling_grad;
        V* gfi = gf_all + i * d_in;
        V* gfj = gf_all + j * d_in;
        const V* fi = f_all + i * d_in;
        const V* fj = f_all + j * d_in;
        for (int64_t k = 0; k < d_in; ++k) {
          gfi[k] += g * fj[k];
          gfj[k] += g * fi[k];
        }
      }
    }
    // dL/df_s += h b_s gM^T r_s + M_n^T dL/de_s, then dL/dM_n = gM + sum_s dL/de_s f_s^T
    project_transposed<T, S, LANES>(weighted, gM, grad_e, M, grad_f, d_out, d_in);
    rank_update<T, S, LANES>(gM, grad_e, f, d_out, d_in);
    // Through the activations (dL/dc = -dL/de), then onto the stage points.
    for (int64_t q = 0; q < S * d_out * LANES; ++q) grad_e[q] = -grad_e[q];
    activation_vjp<T, LANES>(problem.rate_activation, beta, rate_grad, S);
    for (int s = 0; s < S; ++s) {
      activation_vjp<T, LANES>(problem.fixed_activation, f + s * d_in * LANES,
                               grad_f + s * d_in * LANES, d_in);
      activation_vjp<T, LANES>(problem.target_activation, target_of(controls) + s * d_out * LANES,
                               grad_e + s * d_out * LANES, d_out);
      const int64_t at = point(n, s) - point_base;
      scatter_add_lanes<T, LANES>(grad_f + s * d_in * LANES, source[0].offset, d_in, valid,
                                  source[0].grad + at * source[0].point_stride);
      scatter_add_lanes<T, LANES>(grad_e + s * d_out * LANES, source[1].offset, d_out, valid,
                                  source[1].grad + at * source[1].point_stride);
      scatter_add_lanes<T, LANES>(rate_grad + s * LANES, source[2].offset, 1, valid,
                                  source[2].grad + at * source[2].point_stride);
    }
  }
};

template <typename T, int S, int LANES>
struct Recurrence {
  static constexpr int64_t pairs_max = S * (S - 1) / 2 + 1;

  static int64_t groups(const Problem<T>& p) { return (p.flat + LANES - 1) / LANES; }

  // The fused slow net: the controls of the segment of steps start .. stop - 1.
  static void compute_controls(Group<T, S, LANES>& g, int64_t start, int64_t stop) {
    const Problem<T>& p = g.problem;
    const int64_t heads = g.net->net.heads;
    g.net->compute(g.first / heads, g.valid / heads, start * p.per_step,
                   (stop - start) * p.per_step + 1);
    g.point_base = start * p.per_step;
  }

  static void forward_group(Group<T, S, LANES>& g, const T* M0, T* kept, T* checkpoints) {
    const Problem<T>& p = g.problem;
    const int64_t size = g.matrix * LANES;
    std::vector<T> M(size), activation(S * p.d_out * LANES),
        factors(S * p.d_out * LANES), coupling(pairs_max * LANES), controls(2 * g.block);
    g.gather_matrix(M0, M.data());
    g.scatter_matrix(M.data(), checkpoints);
    if (p.keep_position[0] >= 0) g.scatter_matrix(M.data(), kept + p.keep_position[0] * p.flat * g.matrix);
    for (int64_t n = 0; n < p.n_steps; ++n) {
      if (g.net != nullptr && n % p.every == 0)
        compute_controls(g, n, std::min(n + p.every, p.n_steps));
      T* current = &controls[(n % 2) * g.block];
      g.load_controls(n, current, n > 0 ? &controls[((n + 1) % 2) * g.block] : nullptr);
      g.forward_step(n, current, M.data(), M.data(), activation.data(), factors.data(),
                     coupling.data());
      if ((n + 1) % p.every == 0)
        g.scatter_matrix(M.data(), checkpoints + (n + 1) / p.every * p.flat * g.matrix);
      if (p.keep_position[n + 1] >= 0)
        g.scatter_matrix(M.data(), kept + p.keep_position[n + 1] * p.flat * g.matrix);
    }
  }

  static void backward_group(Group<T, S, LANES>& g, const T* checkpoints, const T* grad_kept,
                             T* grad_M0) {
    const Problem<T>& p = g.problem;
    const int64_t size = g.matrix * LANES;
    const int64_t stage_size = S * p.d_out * LANES;
    const int64_t points = p.n_steps * p.per_step + 1;
    if (g.net == nullptr)
      for (int64_t point = 0; point < points; ++point)  // each group owns its rows: no race
        for (int l = 0; l < g.valid; ++l) {
          T* row[3];
          for (int c = 0; c < 3; ++c)
            row[c] = g.source[c].grad + point * g.source[c].point_stride + g.source[c].offset[l];
          std::fill(row[0], row[0] + p.d_in, T(0));
          std::fill(row[1], row[1] + p.d_out, T(0));
          row[2][0] = T(0);
        }
    std::vector<T> states((p.every + 1) * size), activation(p.every * stage_size),
        factors(p.every * stage_size), coupling(p.every * pairs_max * LANES),
        controls(p.every * g.block), gM(size, T(0));
    if (p.keep_position[p.n_steps] >= 0)
      g.add_matrix(grad_kept + p.keep_position[p.n_steps] * p.flat * g.matrix, gM.data());
    const int64_t segments = (p.n_steps + p.every - 1) / p.every;
    for (int64_t segment = segments - 1; segment >= 0; --segment) {
      const int64_t start = segment * p.every;
      const int64_t stop = std::min(start + p.every, p.n_steps);
      if (g.net != nullptr) {
        compute_controls(g, start, stop);
        g.net->clear_gradients();
      }
      g.gather_matrix(checkpoints + segment * p.flat * g.matrix, states.data());
      for (int64_t n = start; n < stop; ++n) {
        const int64_t k = n - start;
        g.load_controls(n, &controls[k * g.block], k > 0 ? &controls[(k - 1) * g.block] : nullptr);
        g.forward_step(n, &controls[k * g.block], &states[k * size], &states[(k + 1) * size],
                       &activation[k * stage_size], &factors[k * stage_size],
                       &coupling[k * pairs_max * LANES]);
      }
      for (int64_t n = stop - 1; n >= start; --n) {
        const int64_t k = n - start;
        g.backward_step(n, &controls[k * g.block], &states[k * size], gM.data(),
                        &activation[k * stage_size], &factors[k * stage_size],
                        &coupling[k * pairs_max * LANES]);
        if (p.keep_position[n] >= 0)
          g.add_matrix(grad_kept + p.keep_position[n] * p.flat * g.matrix, gM.data());
      }
      if (g.net != nullptr) g.net->backward();
    }
    g.scatter_matrix(gM.data(), grad_M0);
  }
};

// Run work(group) for every group on `threads` threads; returns 0 or an error code.
// Worker t of a team of T takes groups t, t + T, ... (the same split every call, so a
// fused slow net's gradients, summed per worker, come out bit for bit the same). Each
// worker has its own group (and fused slow net, whose parameter gradients go to the
// worker's own slots); `grads` are the control gradients of the unfused kernel
// (backward). Built with OpenMP, the team is PyTorch's own OpenMP threads; otherwise
// threads started here.
template <typename T, int S, int LANES, typename Work>
int run_groups(const Problem<T>& problem, int64_t threads, T* const* grads, Work work) {
  const int64_t groups = Recurrence<T, S, LANES>::groups(problem);
  threads = std::max<int64_t>(1, std::min(threads, groups));
  std::atomic<int> failed{0};
  auto worker = [&](int64_t index, int64_t team) {
    try {
      Group<T, S, LANES> group(problem);
      std::unique_ptr<SlowNetWork<T, LANES>> net;
      if (problem.net != nullptr) {
        net.reset(new SlowNetWork<T, LANES>(*problem.net, problem.every * problem.per_step + 1));
        if (problem.net_gradients != nullptr) net->bind_gradients(problem.net_gradients, index);
        group.net = net.get();
      }
      for (int64_t at = index; at < groups; at += team) {
        group.first = at * LANES;
        group.valid = int(std::min<int64_t>(LANES, problem.flat - group.first));
        if (grads != nullptr) group.bind(grads[0], grads[1], grads[2]);
        else group.bind();
        work(group);
      }
    } catch (const std::exception&) {
      failed = 1;
    }
  };
#if defined(_OPENMP)
#pragma omp parallel num_threads(int(threads))
  worker(omp_get_thread_num(), omp_get_num_threads());
#else
  std::vector<std::thread> pool;
  try {
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker, t, threads);
  } catch (const std::exception&) {
    failed = 1;
  }
  worker(0, threads);
  for (auto& thread : pool) thread.join();
#endif
  return failed;
}

template <typename T, int S>
int forward_stages(const Problem<T>& problem, const T* M0, T* kept, T* checkpoints,
                   int64_t threads) {
  constexpr int L = lanes<T>();
  return run_groups<T, S, L>(problem, threads, nullptr, [&](Group<T, S, L>& g) {
    Recurrence<T, S, L>::forward_group(g, M0, kept, checkpoints);
  });
}

template <typename T, int S>
int backward_stages(const Problem<T>& problem, const T* checkpoints, const T* grad_kept,
                    T* const* grads, T* grad_M0, int64_t threads) {
  constexpr int L = lanes<T>();
  return run_groups<T, S, L>(problem, threads, grads, [&](Group<T, S, L>& g) {
    Recurrence<T, S, L>::backward_group(g, checkpoints, grad_kept, grad_M0);
  });
}

template <typename T>
Problem<T> make_problem(const T* fixed, const T* target, const T* rate, const double* steps,
                        const double* a, const double* b, const int64_t* offsets,
                        const int64_t* keep_position, int64_t n_steps, int64_t per_step,
                        int64_t flat, int64_t d_out, int64_t d_in, int64_t nonlinearity,
                        int64_t every, const int64_t* activations, const int64_t* strides) {
  return Problem<T>{fixed, target, rate, steps, a, b, offsets, keep_position, n_steps,
                    per_step, flat, d_out, d_in, nonlinearity, every, strides[0],
                    strides[1], strides[2], activations[0], activations[1], activations[2]};
}

// The fused slow net from the arrays and sizes of the fused entry points (their order is
// SlowNetSpec's; see fwplab/kernels/__init__.py).
template <typename T>
SlowNetSpec<T> make_slow_net(const void* const* arrays, const int64_t* sizes, double eps) {
  using Spec = SlowNetSpec<T>;
  const T* Spec::*const tensors[] = {
      &Spec::coefficients, &Spec::slopes,        nullptr,  // the pieces: int64
      &Spec::offset,       &Spec::in_weight_t,   &Spec::in_bias,
      &Spec::norm_weight,  &Spec::norm_bias,     &Spec::joint_weight_t,
      &Spec::joint_weight, &Spec::joint_bias,    &Spec::value_weight_t,
      &Spec::value_bias};
  int64_t Spec::*const integers[] = {
      &Spec::path_kind, &Spec::batch,         &Spec::pieces,      &Spec::channels,
      &Spec::hidden,    &Spec::joint,         &Spec::heads,       &Spec::feature_input,
      &Spec::value_input, &Spec::hidden_pad,  &Spec::joint_pad};
  Spec net{};
  for (int i = 0; i < int(sizeof(tensors) / sizeof(tensors[0])); ++i)
    if (tensors[i] != nullptr) net.*tensors[i] = static_cast<const T*>(arrays[i]);
  net.piece = static_cast<const int64_t*>(arrays[2]);
  for (int i = 0; i < int(sizeof(integers) / sizeof(integers[0])); ++i)
    net.*integers[i] = sizes[i];
  for (int c = 0; c < 3; ++c) {
    net.array[c] = sizes[11 + 3 * c];
    net.column[c] = sizes[12 + 3 * c];
    net.head_stride[c] = sizes[13 + 3 * c];
  }
  net.eps = T(eps);
  return net;
}

// The problem of a fused call: no control arrays, the slow net computes the controls.
template <typename T>
Problem<T> fused_problem(const SlowNetSpec<T>& net, const double* steps, const double* a,
                         const double* b, const int64_t* offsets, const int64_t* keep_position,
                         int64_t n_steps, int64_t per_step, int64_t flat, int64_t d_out,
                         int64_t d_in, int64_t nonlinearity, int64_t every,
                         const int64_t* activations) {
  const int64_t strides[3] = {0, 0, 0};
  auto problem = make_problem<T>(nullptr, nullptr, nullptr, steps, a, b, offsets, keep_position,
                                 n_steps, per_step, flat, d_out, d_in, nonlinearity, every,
                                 activations, strides);
  problem.net = &net;
  return problem;
}

// Whether a slow net's sizes fit the kernel's lanes and padding.
template <typename T>
bool slow_net_fits(const SlowNetSpec<T>& net) {
  constexpr int L = lanes<T>();
  return net.heads > 0 && L % net.heads == 0 && net.hidden_pad % L == 0 &&
         net.joint_pad % L == 0 && net.hidden_pad >= net.hidden && net.joint_pad >= net.joint;
}

template <typename T>
int run_forward(const Problem<T>& problem, int64_t stages, const T* M0, T* kept, T* checkpoints,
            int64_t threads) {
  switch (stages) {
    case 1: return forward_stages<T, 1>(problem, M0, kept, checkpoints, threads);
    case 2: return forward_stages<T, 2>(problem, M0, kept, checkpoints, threads);
    case 3: return forward_stages<T, 3>(problem, M0, kept, checkpoints, threads);
    case 4: return forward_stages<T, 4>(problem, M0, kept, checkpoints, threads);
    default: return 2;
  }
}

template <typename T>
int run_backward(const Problem<T>& problem, int64_t stages, const T* checkpoints,
             const T* grad_kept, T* const* grads, T* grad_M0, int64_t threads) {
  switch (stages) {
    case 1: return backward_stages<T, 1>(problem, checkpoints, grad_kept, grads, grad_M0, threads);
    case 2: return backward_stages<T, 2>(problem, checkpoints, grad_kept, grads, grad_M0, threads);
    case 3: return backward_stages<T, 3>(problem, checkpoints, grad_kept, grads, grad_M0, threads);
    case 4: return backward_stages<T, 4>(problem, checkpoints, grad_kept, grads, grad_M0, threads);
    default: return 2;
  }
}

}  // namespace

// C entry points (one per dtype). Arrays are contiguous; see fwplab/kernels/__init__.py.
#ifdef _WIN32
#define FWPLAB_EXPORT extern "C" __declspec(dllexport)
#else
#define FWPLAB_EXPORT extern "C" __attribute__((visibility("default")))
#endif
#define FWPLAB_ENTRY_POINTS(T, SUFFIX)                                                      \
  FWPLAB_EXPORT int fwplab_forward_##SUFFIX(                                                  \
      const T* fixed, const T* target, const T* rate, const T* M0, const double* steps,      \
      const double* a, const double* b, const int64_t* offsets,                              \
      const int64_t* keep_position, const int64_t* activations, const int64_t* strides,      \
      int64_t n_steps,                                                                       \
      int64_t stages, int64_t per_step, int64_t flat, int64_t d_out, int64_t d_in,           \
      int64_t nonlinearity, int64_t every, T* kept, T* checkpoints, int64_t threads) {       \
    auto problem = make_problem<T>(fixed, target, rate, steps, a, b, offsets, keep_position, \
                                   n_steps, per_step, flat, d_out, d_in, nonlinearity,       \
                                   every, activations, strides);                             \
    return run_forward<T>(problem, stages, M0, kept, checkpoints, threads);                  \
  }                                                                                          \
  FWPLAB_EXPORT int fwplab_backward_##SUFFIX(                                                 \
      const T* fixed, const T* target, const T* rate, const double* steps, const double* a,  \
      const double* b, const int64_t* offsets, const int64_t* keep_position,                 \
      const int64_t* activations, const int64_t* strides, int64_t n_steps, int64_t stages,   \
      int64_t per_step,                                                                      \
      int64_t flat, int64_t d_out, int64_t d_in, int64_t nonlinearity, int64_t every,        \
      const T* checkpoints, const T* grad_kept, T* grad_fixed, T* grad_target,               \
      T* grad_rate, T* grad_M0, int64_t threads) {                                           \
    auto problem = make_problem<T>(fixed, target, rate, steps, a, b, offsets, keep_position, \
                                   n_steps, per_step, flat, d_out, d_in, nonlinearity,       \
                                   every, activations, strides);                             \
    T* grads[3] = {grad_fixed, grad_target, grad_rate};                                      \
    return run_backward<T>(problem, stages, checkpoints, grad_kept, grads, grad_M0, threads); \
  }                                                                                          \
  FWPLAB_EXPORT int fwplab_fused_forward_##SUFFIX(                                            \
      const void* const* net_arrays, const int64_t* net_sizes, double eps, const T* M0,      \
      const double* steps, const double* a, const double* b, const int64_t* offsets,         \
      const int64_t* keep_position, const int64_t* activations, int64_t n_steps,             \
      int64_t stages, int64_t per_step, int64_t flat, int64_t d_out, int64_t d_in,           \
      int64_t nonlinearity, int64_t every, T* kept, T* checkpoints, int64_t threads) {       \
    const auto net = make_slow_net<T>(net_arrays, net_sizes, eps);                           \
    if (!slow_net_fits<T>(net)) return 3;  /* heads or padding do not fit the lanes */       \
    auto problem = fused_problem<T>(net, steps, a, b, offsets, keep_position, n_steps,       \
                                    per_step, flat, d_out, d_in, nonlinearity, every,        \
                                    activations);                                            \
    return run_forward<T>(problem, stages, M0, kept, checkpoints, threads);                  \
  }                                                                                          \
  FWPLAB_EXPORT int fwplab_fused_backward_##SUFFIX(                                           \
      const void* const* net_arrays, const int64_t* net_sizes, double eps,                   \
      const double* steps, const double* a, const double* b, const int64_t* offsets,         \
      const int64_t* keep_position, const int64_t* activations, int64_t n_steps,             \
      int64_t stages, int64_t per_step, int64_t flat, int64_t d_out, int64_t d_in,           \
      int64_t nonlinearity, int64_t every, const T* checkpoints, const T* grad_kept,         \
      T* const* net_gradients, T* grad_M0, int64_t threads) {                                \
    const auto net = make_slow_net<T>(net_arrays, net_sizes, eps);                           \
    if (!slow_net_fits<T>(net)) return 3;  /* heads or padding do not fit the lanes */       \
    auto problem = fused_problem<T>(net, steps, a, b, offsets, keep_position, n_steps,       \
                                    per_step, flat, d_out, d_in, nonlinearity, every,        \
                                    activations);                                            \
    problem.net_gradients = net_gradients;                                                   \
    return run_backward<T>(problem, stages, checkpoints, grad_kept, nullptr, grad_M0,        \
                           threads);                                                         \
  }

#if defined(_OPENMP)
FWPLAB_EXPORT int64_t fwplab_openmp() { return 1; }
#else
FWPLAB_EXPORT int64_t fwplab_openmp() { return 0; }
#endif
FWPLAB_EXPORT int64_t fwplab_lanes_f32() { return lanes<float>(); }
FWPLAB_EXPORT int64_t fwplab_lanes_f64() { return lanes<double>(); }

FWPLAB_ENTRY_POINTS(float, f32)
FWPLAB_ENTRY_POINTS(double, f64)
