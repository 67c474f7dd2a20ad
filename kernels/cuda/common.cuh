// gpunn CUDA kernels: what every .cu file shares.
//
// The loader (gpunn.kernels.cuda.loader) pastes this header in front of each .cu file and
// compiles the result with NVRTC through cupy.RawModule, one instance per float type
// (`relu_forward<float>`, `relu_forward<double>`). Nothing here includes a CUDA or C++
// header, so NVRTC needs no include path and CuPy's on-disk cache sees every byte of source.
//
// Grid-stride loops. Every elementwise kernel walks its n elements as
//     for (i = global thread id; i < n; i += total threads in the grid)
// so any grid size visits each element exactly once: the launcher caps the grid at a few
// waves of the device, and larger inputs simply take more trips round the loop.
//
// Arithmetic follows the NumPy reference formula by formula, in the same order, and the
// loader compiles with --fmad=false, so float64 results agree with NumPy to a few ulp.

#ifndef GPUNN_COMMON_CUH
#define GPUNN_COMMON_CUH

#define GPUNN_GRID_STRIDE(i, n)                                                        \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);         \
       i += (long long)blockDim.x * gridDim.x)

// 32-bit variant for kernels whose launcher guarantees n < 2^31 (convolution, pooling).
#define GPUNN_GRID_STRIDE32(i, n)                                                      \
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

namespace gpunn {

// ---------------------------------------------------------------- math, per float type
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }
__device__ __forceinline__ float pow_(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pow_(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

// max as np.maximum: a NaN operand propagates.
template <typename T> __device__ __forceinline__ T maximum(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// The other float type: cast_forward<float> writes doubles and cast_forward<double> floats.
template <typename T> struct other_float;
template <> struct other_float<float> { typedef double type; };
template <> struct other_float<double> { typedef float type; };

// ---------------------------------------------------------------- vectorised maps
// 16 bytes of T (4 floats, 2 doubles), loaded and stored as one: the elementwise kernels
// move whole packs when their arrays are 16-byte aligned (CuPy's allocations are; a view
// at an odd offset takes the element-by-element loop), which halves the memory
// instructions per byte and keeps more loads in flight.
template <typename T> struct alignas(16) Pack {
  T v[16 / sizeof(T)];
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return ((unsigned long long)p & 15ULL) == 0;
}

// Y[i] = f(X[i]) for i < n.
template <typename T, typename F>
__device__ __forceinline__ void map1(const T* __restrict__ X, T* __restrict__ Y, long long n,
                                     F f) {
  constexpr int L = 16 / sizeof(T);
  long long done = 0;
  if (aligned16(X) && aligned16(Y)) {
    const long long packs = n / L;
    const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(X);
    Pack<T>* yp = reinterpret_cast<Pack<T>*>(Y);
    GPUNN_GRID_STRIDE(p, packs) {
      const Pack<T> x = xp[p];
      Pack<T> y;
      for (int k = 0; k < L; ++k) y.v[k] = f(x.v[k]);
      yp[p] = y;
    }
    done = packs * L;
  }
  GPUNN_GRID_STRIDE(i, n - done) { Y[done + i] = f(X[done + i]); }
}

// Y[i] = f(A[i], B[i]) for i < n.
template <typename T, typename F>
__device__ __forceinline__ void map2(const T* __restrict__ A, const T* __restrict__ B,
                                     T* __restrict__ Y, long long n, F f) {
  constexpr int L = 16 / sizeof(T);
  long long done = 0;
  if (aligned16(A) && aligned16(B) && aligned16(Y)) {
    const long long packs = n / L;
    const Pack<T>* ap = reinterpret_cast<const Pack<T>*>(A);
    const Pack<T>* bp = reinterpret_cast<const Pack<T>*>(B);
    Pack<T>* yp = reinterpret_cast<Pack<T>*>(Y);
    GPUNN_GRID_STRIDE(p, packs) {
      const Pack<T> a = ap[p];
      const Pack<T> b = bp[p];
      Pack<T> y;
      for (int k = 0; k < L; ++k) y.v[k] = f(a.v[k], b.v[k]);
      yp[p] = y;
    }
    done = packs * L;
  }
  GPUNN_GRID_STRIDE(i, n - done) { Y[done + i] = f(A[done + i], B[done + i]); }
}

// Y[i] = f(A[i], B[i % cols]) for i < n, A contiguous and B one row of ``cols`` elements
// (a bias added to every row). Each thread keeps its column and advances it by the grid's
// stride modulo cols, so the loop divides nothing.
template <typename T, typename F>
__device__ __forceinline__ void map_rows(const T* __restrict__ A, const T* __restrict__ B,
                                         T* __restrict__ Y, long long n, long long cols, F f) {
  constexpr int L = 16 / sizeof(T);
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long stride = (long long)blockDim.x * gridDim.x;
  if (aligned16(A) && aligned16(B) && aligned16(Y) && cols % L == 0) {
    const long long packs = n / L;  // n is a multiple of cols, hence of L
    const Pack<T>* ap = reinterpret_cast<const Pack<T>*>(A);
    Pack<T>* yp = reinterpret_cast<Pack<T>*>(Y);
    long long c = (first * L) % cols;
    const long long step = (stride * L) % cols;
    for (long long p = first; p < packs; p += stride) {
      const Pack<T> a = ap[p];
      const Pack<T> b = *reinterpret_cast<const Pack<T>*>(B + c);
      Pack<T> y;
      for (int k = 0; k < L; ++k) y.v[k] = f(a.v[k], b.v[k]);
      yp[p] = y;
      c += step;
      if (c >= cols) c -= cols;
    }
    return;
  }
  long long c = first % cols;
  const long long step = stride % cols;
  for (long long i = first; i < n; i += stride) {
    Y[i] = f(A[i], B[c]);
    c += step;
    if (c >= cols) c -= cols;
  }
}

// ---------------------------------------------------------------- activations
// sigmoid without overflow: exp is only ever taken of a non-positive number, and both
// signs take the same path (no divergence within a warp).
template <typename T> __device__ __forceinline__ T sigmoid(T x) {
  const T e = exp_(-abs_(x));
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}

// Activation codes, as the launcher passes them: gpunn.kernels.codes.ACTIVATION_CODES, the
// one Python table (tests/test_cuda_loader.py holds this enum to it).
enum Activation { ACT_NONE = 0, ACT_RELU = 1, ACT_SIGMOID = 2, ACT_TANH = 3 };

template <typename T> __device__ __forceinline__ T activate(T z, int act) {
  switch (act) {
    case ACT_RELU: return z < T(0) ? T(0) : z;
    case ACT_SIGMOID: return sigmoid(z);
    case ACT_TANH: return tanh_(z);
    default: return z;
  }
}

// dL/dz from dL/dy for y = act(z), written as a function of y as the reference does.
template <typename T> __device__ __forceinline__ T activation_grad(T dy, T y, int act) {
  switch (act) {
    case ACT_RELU: return y > T(0) ? dy : T(0);
    case ACT_SIGMOID: return dy * y * (T(1) - y);
    case ACT_TANH: return dy * (T(1) - y * y);
    default: return dy;
  }
}

// ---------------------------------------------------------------- reductions
// Butterfly sums and maxima: every lane of the warp ends with the result.
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = maximum(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over a 1-D block whose size is a multiple of 32; the result is valid in thread 0.
// ``scratch`` holds 32 values in shared memory.
template <typename T> __device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : T(0);
    v = warp_sum(v);
  }
  return v;
}

// Sum of ``v`` over every thread of the grid in one launch, deterministically: each block
// writes its partial sum, and the last block to finish adds the partials in block order.
// Returns true in the last block, whose thread 0 then holds the total in *total. The
// launcher keeps ``counter`` at zero between launches (the last block resets it).
template <typename T>
__device__ bool grid_sum(T v, T* partials, unsigned int* counter, T* total) {
  __shared__ T scratch[32];
  __shared__ bool is_last;
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = v;
    __threadfence();
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  T acc = T(0);
  for (unsigned int k = threadIdx.x; k < gridDim.x; k += blockDim.x) {
    acc += ((volatile T*)partials)[k];
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) {
    *total = acc;
    *counter = 0u;
  }
  return true;
}

// ---------------------------------------------------------------- replayed host values
// A host value a step draws anew at every call (a dropout seed, Adam's step count, the
// learning rate a schedule sets): an
// eager launch passes it by value and ``slot`` null; a launch captured into a CUDA graph
// passes the device word that every replay refreshes before the graph runs
// (gpunn.cuda.graphs.replayed), so the kernel reads the replay's value, not the capture's.
__device__ __forceinline__ unsigned long long replayed(unsigned long long value,
                                                       const unsigned long long* slot) {
  return slot ? *slot : value;
}
__device__ __forceinline__ double replayed(double value, const double* slot) {
  return slot ? *slot : value;
}

// ---------------------------------------------------------------- dropout's generator
// The n-th output of splitmix64 seeded with ``seed``: base.py's splitmix64, bit for bit.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long seed,
                                                         unsigned long long index) {
  unsigned long long z = seed + (index + 1ULL) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Keep element ``index`` when the top 24 bits of its hash, scaled to [0, 1), reach p.
__device__ __forceinline__ bool dropout_keep(unsigned long long seed, long long index, double p) {
  const unsigned long long bits = splitmix64(seed, (unsigned long long)index) >> 40;
  return (double)bits * (1.0 / 16777216.0) >= p;
}

// ---------------------------------------------------------------- broadcasting
// Flags of the strided elementwise kernels.
enum OperandFlags { A_SCALAR = 1, B_SCALAR = 2, CONTIGUOUS = 4, ROW_B = 8 };

// Split flat output index i of a (collapsed) output shape (d0, d1, d2, d3) into its four
// coordinates; an operand's element offset is then i0*s0 + i1*s1 + i2*s2 + i3*s3, with
// stride 0 along the dimensions it is broadcast over.
struct Coord4 {
  long long i0, i1, i2, i3;
  __device__ __forceinline__ long long offset(long long s0, long long s1, long long s2,
                                              long long s3) const {
    return i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3;
  }
};

__device__ __forceinline__ Coord4 coord4(long long i, long long d1, long long d2, long long d3) {
  Coord4 c;
  c.i3 = i % d3;
  i /= d3;
  c.i2 = i % d2;
  i /= d2;
  c.i1 = i % d1;
  c.i0 = i / d1;
  return c;
}

// The coordinates of a grid-stride walk over such an output: start at flat index i, then
// advance by the grid's total thread count, carrying between dimensions instead of
// dividing at every element (integer division costs more than the memory traffic).
struct Walk4 {
  long long c0, c1, c2, c3;  // current coordinates
  long long s0, s1, s2, s3;  // the stride, written in the same mixed radix
  long long d1, d2, d3;
  __device__ __forceinline__ Walk4(long long i, long long stride, long long d1_, long long d2_,
                                   long long d3_)
      : d1(d1_), d2(d2_), d3(d3_) {
    const Coord4 c = coord4(i, d1, d2, d3);
    const Coord4 s = coord4(stride, d1, d2, d3);
    c0 = c.i0, c1 = c.i1, c2 = c.i2, c3 = c.i3;
    s0 = s.i0, s1 = s.i1, s2 = s.i2, s3 = s.i3;
  }
  __device__ __forceinline__ void advance() {
    c3 += s3;
    c2 += s2;
    c1 += s1;
    c0 += s0;
    if (c3 >= d3) c3 -= d3, ++c2;  // each digit is below twice its radix: one carry at most
    if (c2 >= d2) c2 -= d2, ++c1;
    if (c1 >= d1) c1 -= d1, ++c0;
  }
  __device__ __forceinline__ long long offset(long long t0, long long t1, long long t2,
                                              long long t3) const {
    return c0 * t0 + c1 * t1 + c2 * t2 + c3 * t3;
  }
};

// A grid-stride loop over n elements that also walks their 4-d coordinates as ``w``.
#define GPUNN_GRID_WALK(i, w, n, d1, d2, d3)                                             \
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                        \
  const long long i##_stride = (long long)blockDim.x * gridDim.x;                        \
  for (gpunn::Walk4 w(i, i##_stride, d1, d2, d3); i < (n); i += i##_stride, w.advance())

}  // namespace gpunn

#endif  // GPUNN_COMMON_CUH
