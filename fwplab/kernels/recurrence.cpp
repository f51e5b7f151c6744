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
// recurrence). Plain C++ without intrinsics (the dense loops use GCC/Clang vector types,
// elementwise arrays elsewhere) and no dependency on PyTorch headers: the entry points
// take raw pointers and are called through ctypes.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

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

// A Lanes value with every lane equal to x.
template <typename V, typename T, int LANES>
inline V splat(T x) {
  V value;
  for (int l = 0; l < LANES; ++l) value[l] = x;
  return value;
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

// Lane layout <-> rows: lanes[k][l] = rows[l * stride + k] for `valid` lanes of `width`
// values (whole groups as one strided load per k that the compiler turns into gathers).
template <typename T, int LANES>
inline void gather_rows(const T* __restrict__ rows, int64_t stride, int64_t width, int valid,
                        T* __restrict__ lanes) {
  if (valid == LANES) {
    for (int64_t k = 0; k < width; ++k)
      for (int l = 0; l < LANES; ++l) lanes[k * LANES + l] = rows[l * stride + k];
    return;
  }
  for (int l = 0; l < valid; ++l)
    for (int64_t k = 0; k < width; ++k) lanes[k * LANES + l] = rows[l * stride + k];
}

// rows[l * stride + k] += lanes[k][l], the reverse of gather_rows.
template <typename T, int LANES>
inline void scatter_add_rows(const T* __restrict__ lanes, int64_t stride, int64_t width,
                             int valid, T* __restrict__ rows) {
  if (valid == LANES) {
    for (int64_t k = 0; k < width; ++k)
      for (int l = 0; l < LANES; ++l) rows[l * stride + k] += lanes[k * LANES + l];
    return;
  }
  for (int l = 0; l < valid; ++l)
    for (int64_t k = 0; k < width; ++k) rows[l * stride + k] += lanes[k * LANES + l];
}

// Everything shared by all groups of one call (read-only).
template <typename T>
struct Problem {
  // The controls before their activations: row r = point * flat + recurrence of each
  // starts at r * stride (a stride wider than the row lets the controls be columns of
  // one larger array, as the slow net's projections produce them); the gradients
  // have the same layout.
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
      const int64_t row = point(n, s) * problem.flat + first;
      gather_rows<T, LANES>(problem.fixed + row * problem.fixed_stride, problem.fixed_stride,
                            d_in, valid, f + s * d_in * LANES);
      gather_rows<T, LANES>(problem.target + row * problem.target_stride,
                            problem.target_stride, d_out, valid, c + s * d_out * LANES);
      gather_rows<T, LANES>(problem.rate + row * problem.rate_stride, problem.rate_stride, 1,
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
                     const T* __restrict__ factors, const T* __restrict__ coupling,
                     T* grad_fixed, T* grad_target, T* grad_rate) {
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
      const int64_t row = point(n, s) * problem.flat + first;
      scatter_add_rows<T, LANES>(grad_f + s * d_in * LANES, problem.fixed_stride, d_in, valid,
                                 grad_fixed + row * problem.fixed_stride);
      scatter_add_rows<T, LANES>(grad_e + s * d_out * LANES, problem.target_stride, d_out, valid,
                                 grad_target + row * problem.target_stride);
      scatter_add_rows<T, LANES>(rate_grad + s * LANES, problem.rate_stride, 1, valid,
                                 grad_rate + row * problem.rate_stride);
    }
  }
};

template <typename T, int S, int LANES>
struct Recurrence {
  static constexpr int64_t pairs_max = S * (S - 1) / 2 + 1;

  static int64_t groups(const Problem<T>& p) { return (p.flat + LANES - 1) / LANES; }

  static void forward_group(Group<T, S, LANES>& g, const T* M0, T* kept, T* checkpoints) {
    const Problem<T>& p = g.problem;
    const int64_t size = g.matrix * LANES;
    std::vector<T> M(size), activation(S * p.d_out * LANES),
        factors(S * p.d_out * LANES), coupling(pairs_max * LANES), controls(2 * g.block);
    g.gather_matrix(M0, M.data());
    g.scatter_matrix(M.data(), checkpoints);
    if (p.keep_position[0] >= 0) g.scatter_matrix(M.data(), kept + p.keep_position[0] * p.flat * g.matrix);
    for (int64_t n = 0; n < p.n_steps; ++n) {
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
                             T* grad_fixed, T* grad_target, T* grad_rate, T* grad_M0) {
    const Problem<T>& p = g.problem;
    const int64_t size = g.matrix * LANES;
    const int64_t stage_size = S * p.d_out * LANES;
    const int64_t points = p.n_steps * p.per_step + 1;
    for (int64_t point = 0; point < points; ++point)  // each group owns its rows: no race
      for (int l = 0; l < g.valid; ++l) {
        const int64_t row = point * p.flat + g.first + l;
        std::fill(grad_fixed + row * p.fixed_stride, grad_fixed + row * p.fixed_stride + p.d_in,
                  T(0));
        std::fill(grad_target + row * p.target_stride,
                  grad_target + row * p.target_stride + p.d_out, T(0));
        grad_rate[row * p.rate_stride] = T(0);
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
                        &coupling[k * pairs_max * LANES], grad_fixed, grad_target, grad_rate);
        if (p.keep_position[n] >= 0)
          g.add_matrix(grad_kept + p.keep_position[n] * p.flat * g.matrix, gM.data());
      }
    }
    g.scatter_matrix(gM.data(), grad_M0);
  }
};

// Run work(group) for every group on `threads` threads; returns 0 or an error code.
template <typename T, int S, int LANES, typename Work>
int run_groups(const Problem<T>& problem, int64_t threads, Work work) {
  const int64_t groups = Recurrence<T, S, LANES>::groups(problem);
  std::atomic<int64_t> next{0};
  std::atomic<int> failed{0};
  auto worker = [&]() {
    try {
      Group<T, S, LANES> group(problem);
      for (int64_t index = next++; index < groups; index = next++) {
        group.first = index * LANES;
        group.valid = int(std::min<int64_t>(LANES, problem.flat - group.first));
        work(group);
      }
    } catch (const std::exception&) {
      failed = 1;
    }
  };
  threads = std::max<int64_t>(1, std::min(threads, groups));
  std::vector<std::thread> pool;
  try {
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  } catch (const std::exception&) {
    failed = 1;
  }
  worker();
  for (auto& thread : pool) thread.join();
  return failed;
}

// Lanes per group: two vectors of 32 bytes, so AVX2 / NEON / SSE units all stay busy.
template <typename T>
constexpr int lanes() {
  return 64 / int(sizeof(T));
}

template <typename T, int S>
int forward_stages(const Problem<T>& problem, const T* M0, T* kept, T* checkpoints,
                   int64_t threads) {
  constexpr int L = lanes<T>();
  return run_groups<T, S, L>(problem, threads, [&](Group<T, S, L>& g) {
    Recurrence<T, S, L>::forward_group(g, M0, kept, checkpoints);
  });
}

template <typename T, int S>
int backward_stages(const Problem<T>& problem, const T* checkpoints, const T* grad_kept,
                    T* grad_fixed, T* grad_target, T* grad_rate, T* grad_M0, int64_t threads) {
  constexpr int L = lanes<T>();
  return run_groups<T, S, L>(problem, threads, [&](Group<T, S, L>& g) {
    Recurrence<T, S, L>::backward_group(g, checkpoints, grad_kept, grad_fixed, grad_target,
                                        grad_rate, grad_M0);
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
             const T* grad_kept, T* grad_fixed, T* grad_target, T* grad_rate, T* grad_M0,
             int64_t threads) {
  switch (stages) {
    case 1: return backward_stages<T, 1>(problem, checkpoints, grad_kept, grad_fixed, grad_target, grad_rate, grad_M0, threads);
    case 2: return backward_stages<T, 2>(problem, checkpoints, grad_kept, grad_fixed, grad_target, grad_rate, grad_M0, threads);
    case 3: return backward_stages<T, 3>(problem, checkpoints, grad_kept, grad_fixed, grad_target, grad_rate, grad_M0, threads);
    case 4: return backward_stages<T, 4>(problem, checkpoints, grad_kept, grad_fixed, grad_target, grad_rate, grad_M0, threads);
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
    return run_backward<T>(problem, stages, checkpoints, grad_kept, grad_fixed, grad_target, \
                           grad_rate, grad_M0, threads);                                     \
  }

FWPLAB_ENTRY_POINTS(float, f32)
FWPLAB_ENTRY_POINTS(double, f64)
