// Elementwise ops: broadcast binary arithmetic and its gradients, the unary maps neg, exp
// and log with their gradients, and the float cast. Kernel names are the backend ops they
// implement (exp_forward is CupyBackend.exp_forward), each a template on the float type T.
//
// Unary kernels take contiguous arrays of n elements. Binary kernels broadcast: the launcher
// collapses the output shape to at most four dimensions (d0, d1, d2, d3) and passes each
// operand's element strides (0 along broadcast dimensions), or flags a Python scalar
// operand (A_SCALAR, B_SCALAR: its value comes in a_val / b_val), the common case of
// operands that are all contiguous and full-size (CONTIGUOUS: plain flat indexing, packs of
// 16 bytes), or a contiguous A with B one row broadcast over its rows (ROW_B: a bias; d3 is
// the row length).

#include "common.cuh"

namespace gpunn {

struct AddOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct SubOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a - b; }
};
struct MulOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a * b; }
};
struct DivOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a / b; }
};
struct PowOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return pow_(a, b); }
};

template <typename T, typename Op>
__device__ __forceinline__ void binary_map(const T* __restrict__ A, const T* __restrict__ B,
                                           T* __restrict__ Y, T a_val, T b_val, int flags,
                                           long long n, long long d1, long long d2, long long d3,
                                           long long sa0, long long sa1, long long sa2,
                                           long long sa3, long long sb0, long long sb1,
                                           long long sb2, long long sb3, Op op) {
  const bool a_scalar = (flags & A_SCALAR) != 0;
  const bool b_scalar = (flags & B_SCALAR) != 0;
  if (flags & ROW_B) {
    map_rows(A, B, Y, n, d3, op);
  } else if ((flags & CONTIGUOUS) && !a_scalar && !b_scalar) {
    map2(A, B, Y, n, op);
  } else if (flags & CONTIGUOUS) {
    GPUNN_GRID_STRIDE(i, n) { Y[i] = op(a_scalar ? a_val : A[i], b_scalar ? b_val : B[i]); }
  } else {
    GPUNN_GRID_WALK(i, w, n, d1, d2, d3) {
      const T a = a_scalar ? a_val : A[w.offset(sa0, sa1, sa2, sa3)];
      const T b = b_scalar ? b_val : B[w.offset(sb0, sb1, sb2, sb3)];
      Y[i] = op(a, b);
    }
  }
}

}  // namespace gpunn

// Parameters shared by the broadcast binary kernels (see the file header).
#define GPUNN_BINARY_PARAMS                                                                  \
  const T *__restrict__ A, const T *__restrict__ B, T *__restrict__ Y, T a_val, T b_val,     \
      int flags, long long n, long long d1, long long d2, long long d3, long long sa0,       \
      long long sa1, long long sa2, long long sa3, long long sb0, long long sb1, long long sb2, \
      long long sb3
#define GPUNN_BINARY_ARGS \
  A, B, Y, a_val, b_val, flags, n, d1, d2, d3, sa0, sa1, sa2, sa3, sb0, sb1, sb2, sb3

// ------------------------------------------------------------------ binary arithmetic
template <typename T>
__global__ void add_forward(GPUNN_BINARY_PARAMS) {
  gpunn::binary_map(GPUNN_BINARY_ARGS, gpunn::AddOp());
}

template <typename T>
__global__ void sub_forward(GPUNN_BINARY_PARAMS) {
  gpunn::binary_map(GPUNN_BINARY_ARGS, gpunn::SubOp());
}

template <typename T>
__global__ void mul_forward(GPUNN_BINARY_PARAMS) {
  gpunn::binary_map(GPUNN_BINARY_ARGS, gpunn::MulOp());
}

template <typename T>
__global__ void div_forward(GPUNN_BINARY_PARAMS) {
  gpunn::binary_map(GPUNN_BINARY_ARGS, gpunn::DivOp());
}

template <typename T>
__global__ void pow_forward(GPUNN_BINARY_PARAMS) {
  gpunn::binary_map(GPUNN_BINARY_ARGS, gpunn::PowOp());
}

// dL/dB of Y = A / B before un-broadcasting: -dY * Y / B. dY and Y are contiguous and
// full-size; B is strided (flags: B_SCALAR never occurs, a scalar B needs no gradient).
template <typename T>
__global__ void div_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                             const T* __restrict__ B, T* __restrict__ dB, long long n,
                             long long d1, long long d2, long long d3, long long sb0,
                             long long sb1, long long sb2, long long sb3) {
  GPUNN_GRID_WALK(i, w, n, d1, d2, d3) { dB[i] = -dY[i] * Y[i] / B[w.offset(sb0, sb1, sb2, sb3)]; }
}

// Both gradients of Y = A ** B before un-broadcasting, in one pass:
// dA = dY * B * A**(B - 1); dB = dY * Y * log(A), with log(A) taken as 0 where A <= 0.
// need bit 0: write dA; bit 1: write dB. A and B are strided or scalar (flags).
template <typename T>
__global__ void pow_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                             const T* __restrict__ A, const T* __restrict__ B,
                             T* __restrict__ dA, T* __restrict__ dB, T a_val, T b_val, int flags,
                             int need, long long n, long long d1, long long d2, long long d3,
                             long long sa0, long long sa1, long long sa2, long long sa3,
                             long long sb0, long long sb1, long long sb2, long long sb3) {
  GPUNN_GRID_WALK(i, w, n, d1, d2, d3) {
    const T a = (flags & gpunn::A_SCALAR) ? a_val : A[w.offset(sa0, sa1, sa2, sa3)];
    const T b = (flags & gpunn::B_SCALAR) ? b_val : B[w.offset(sb0, sb1, sb2, sb3)];
    const T dy = dY[i];
    if (need & 1) dA[i] = dy * b * gpunn::pow_(a, b - T(1));
    if (need & 2) dB[i] = dy * Y[i] * gpunn::log_(a > T(0) ? a : T(1));
  }
}

// ------------------------------------------------------------------ unary maps
template <typename T>
__global__ void neg_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return -x; });
}

template <typename T>
__global__ void exp_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return gpunn::exp_(x); });
}

// dX = dY * Y, Y = exp(X).
template <typename T>
__global__ void exp_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                             T* __restrict__ dX, long long n) {
  gpunn::map2(dY, Y, dX, n, [](T dy, T y) { return dy * y; });
}

template <typename T>
__global__ void log_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return gpunn::log_(x); });
}

// dX = dY / X.
template <typename T>
__global__ void log_backward(const T* __restrict__ dY, const T* __restrict__ X,
                             T* __restrict__ dX, long long n) {
  gpunn::map2(dY, X, dX, n, [](T dy, T x) { return dy / x; });
}

// float -> double for T = float, double -> float for T = double.
template <typename T>
__global__ void cast_forward(const T* __restrict__ X,
                             typename gpunn::other_float<T>::type* __restrict__ Y, long long n) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = (typename gpunn::other_float<T>::type)X[i]; }
}
