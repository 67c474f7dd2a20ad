// Optimizer updates as ONE launch over all parameters of a dtype. The launcher passes a
// device table of 64-bit words: the parameter pointers, the gradient pointers, the state
// pointers (one or two slots), then the element counts, ``count`` of each. Each thread
// walks every tensor with a grid-stride loop, so one launch covers any number of
// parameters of any sizes.

#include "common.cuh"

// As PyTorch's SGD without dampening: g = grad + wd*p; buf = momentum*buf + g; p -= lr*buf
// (p -= lr*g without momentum). Table: params, grads, bufs, sizes.
template <typename T>
__global__ void sgd_update(const unsigned long long* __restrict__ table, int count, T lr,
                           T momentum, T weight_decay, int use_momentum, int use_weight_decay) {
  for (int t = 0; t < count; ++t) {
    T* p = (T*)table[t];
    const T* grad = (const T*)table[count + t];
    T* buf = (T*)table[2 * count + t];
    const long long n = (long long)table[3 * count + t];
    GPUNN_GRID_STRIDE(i, n) {
      T g = grad[i];
      if (use_weight_decay) g = g + weight_decay * p[i];
      if (use_momentum) {
        g = buf[i] * momentum + g;
        buf[i] = g;
      }
      p[i] = p[i] - lr * g;
    }
  }
}

// As PyTorch's Adam (weight decay as an L2 term added to the gradient):
//   m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
//   p -= step_size * m / (sqrt(v) / bias2_sqrt + eps), step_size = lr / (1 - b1^t),
//   bias2_sqrt = sqrt(1 - b2^t). Table: params, grads, ms, vs, sizes.
template <typename T>
__global__ void adam_update(const unsigned long long* __restrict__ table, int count, T step_size,
                            T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T bias2_sqrt,
                            T eps, T weight_decay, int use_weight_decay) {
  for (int t = 0; t < count; ++t) {
    T* p = (T*)table[t];
    const T* grad = (const T*)table[count + t];
    T* m = (T*)table[2 * count + t];
    T* v = (T*)table[3 * count + t];
    const long long n = (long long)table[4 * count + t];
    GPUNN_GRID_STRIDE(i, n) {
      T g = grad[i];
      if (use_weight_decay) g = g + weight_decay * p[i];
      const T mi = m[i] * beta1 + one_minus_beta1 * g;
      const T vi = v[i] * beta2 + one_minus_beta2 * g * g;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] - step_size * mi / (gpunn::sqrt_(vi) / bias2_sqrt + eps);
    }
  }
}
