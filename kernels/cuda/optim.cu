// Optimizer updates as ONE launch over all parameters of a dtype. The launcher passes a
// device table of 64-bit words: the parameter pointers, the gradient pointers, the state
// pointers (one or two slots), then the element counts, ``count`` of each. Each thread
// walks every tensor with a grid-stride loop, so one launch covers any number of
// parameters of any sizes.

#include "common.cuh"

// As PyTorch's SGD without dampening: g = grad + wd*p; buf = momentum*buf + g; p -= lr*buf
// (nesterov: p -= lr*(g + momentum*buf); p -= lr*g without momentum). lr_slot and
// momentum_slot: null, or the device words holding a captured step's learning rate and
// momentum (gpunn::replayed), which a schedule may change between replays. skip: null, or
// the float16 loss scaler's found-inf flag: when it is set the update changes nothing.
// Table: params, grads, bufs, sizes.
template <typename T>
__global__ void sgd_update(const unsigned long long* __restrict__ table, int count, T lr_value,
                           const double* __restrict__ lr_slot, T momentum_value,
                           const double* __restrict__ momentum_slot, T weight_decay,
                           int use_momentum, int use_weight_decay, int nesterov,
                           const bool* __restrict__ skip) {
  if (skip && *skip) return;
  const T lr = lr_slot ? (T)*lr_slot : lr_value;
  const T momentum = momentum_slot ? (T)*momentum_slot : momentum_value;
  for (int t = 0; t < count; ++t) {
    T* p = (T*)table[t];
    const T* grad = (const T*)table[count + t];
    T* buf = (T*)table[2 * count + t];
    const long long n = (long long)table[3 * count + t];
    GPUNN_GRID_STRIDE(i, n) {
      T g = grad[i];
      if (use_weight_decay) g = g + weight_decay * p[i];
      if (use_momentum) {
        const T b = buf[i] * momentum + g;
        buf[i] = b;
        g = nesterov ? g + momentum * b : b;
      }
      p[i] = p[i] - lr * g;
    }
  }
}

// As PyTorch's Adam (weight decay as an L2 term added to the gradient), or its AdamW
// (use_decay: p *= decay = 1 - lr*wd first, and no L2 term):
//   m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
//   p -= step_size * m / (sqrt(v) / bias2_sqrt + eps), step_size = lr / (1 - b1^t),
//   bias2_sqrt = sqrt(1 - b2^t), decay = 1 - lr*wd and 1 - b1, 1 - b2 computed in double
//   from the step count t, the learning rate and beta1 (the values passed, or in a captured
//   step the words at step_slot, lr_slot and beta1_slot: gpunn::replayed) and the other
//   hyper-parameters, then rounded to T. skip: as sgd_update's.
//   Table: params, grads, ms, vs, sizes.
template <typename T>
__global__ void adam_update(const unsigned long long* __restrict__ table, int count, T eps,
                            T weight_decay, int use_weight_decay, int use_decay, double lr_d,
                            const double* __restrict__ lr_slot, double beta1_d,
                            const double* __restrict__ beta1_slot, double beta2_d,
                            double weight_decay_d, unsigned long long step,
                            const unsigned long long* __restrict__ step_slot,
                            const bool* __restrict__ skip) {
  if (skip && *skip) return;
  const double t = (double)gpunn::replayed(step, step_slot);
  const double lr = gpunn::replayed(lr_d, lr_slot);
  const double b1 = gpunn::replayed(beta1_d, beta1_slot);
  const T beta1 = (T)b1, one_minus_beta1 = (T)(1.0 - b1);
  const T beta2 = (T)beta2_d, one_minus_beta2 = (T)(1.0 - beta2_d);
  const T step_size = (T)(lr / (1.0 - pow(b1, t)));
  const T bias2_sqrt = (T)sqrt(1.0 - pow(beta2_d, t));
  const T decay = (T)(1.0 - lr * weight_decay_d);
  for (int k = 0; k < count; ++k) {
    T* p = (T*)table[k];
    const T* grad = (const T*)table[count + k];
    T* m = (T*)table[2 * count + k];
    T* v = (T*)table[3 * count + k];
    const long long n = (long long)table[4 * count + k];
    GPUNN_GRID_STRIDE(i, n) {
      if (use_decay) p[i] = p[i] * decay;
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

// Gradient clipping by norm, as PyTorch's clip_grad_norm_, in two launches and no host
// read. clip_grad_norm_reduce: every thread adds |g|^p (in double; norm_code 0: the max of
// |g| instead, 1: |g|, 2: g*g, 3: pow(|g|, p)) over all tensors of the table (grads, sizes),
// the blocks combine deterministically (the last block adds the partials in block order),
// and that block writes the norm to total[0] and min(max_norm / (norm + 1e-6), 1) to
// coef[0], both in T as the reference rounds them. clip_grad_norm_scale: g *= coef[0].
__device__ __forceinline__ double norm_term(double a, int norm_code, double p) {
  switch (norm_code) {
    case 1: return a;
    case 2: return a * a;
    default: return pow(a, p);
  }
}

template <typename T>
__global__ void clip_grad_norm_reduce(const unsigned long long* __restrict__ table, int count,
                                      int norm_code, double p, T max_norm,
                                      double* __restrict__ partials,
                                      unsigned int* __restrict__ counter, T* __restrict__ total,
                                      T* __restrict__ coef) {
  __shared__ double scratch[32];
  __shared__ bool is_last;
  double acc = 0.0;
  for (int t = 0; t < count; ++t) {
    const T* g = (const T*)table[t];
    const long long n = (long long)table[count + t];
    GPUNN_GRID_STRIDE(i, n) {
      const double a = gpunn::abs_((double)g[i]);
      acc = norm_code == 0 ? gpunn::maximum(acc, a) : acc + norm_term(a, norm_code, p);
    }
  }
  // block reduction (sum, or max for norm_code 0), then the last block reduces the partials
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  acc = norm_code == 0 ? gpunn::warp_max(acc) : gpunn::warp_sum(acc);
  if (lane == 0) scratch[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0;
    acc = norm_code == 0 ? gpunn::warp_max(acc) : gpunn::warp_sum(acc);
  }
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = acc;
    __threadfence();
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last || threadIdx.x != 0) return;
  __threadfence();
  double sum = 0.0;
  for (unsigned int k = 0; k < gridDim.x; ++k) {
    const double v = ((volatile double*)partials)[k];
    sum = norm_code == 0 ? gpunn::maximum(sum, v) : sum + v;
  }
  const double norm = norm_code == 0 ? sum : norm_code == 2 ? sqrt(sum) : norm_code == 1 ? sum
                                                                         : pow(sum, 1.0 / p);
  const T tn = (T)norm;
  const T c = max_norm / (tn + (T)1e-6);
  total[0] = tn;
  coef[0] = c > T(1) ? T(1) : c;  // np.minimum(c, 1): nan stays nan
  *counter = 0u;
}

template <typename T>
__global__ void clip_grad_norm_scale(const unsigned long long* __restrict__ table, int count,
                                     const T* __restrict__ coef) {
  const T c = coef[0];
  for (int t = 0; t < count; ++t) {
    T* g = (T*)table[t];
    const long long n = (long long)table[count + t];
    GPUNN_GRID_STRIDE(i, n) { g[i] = g[i] * c; }
  }
}

// Gradient clipping by value: g = min(max(g, -clip_value), clip_value); nan stays nan.
template <typename T>
__global__ void clip_grad_value_update(const unsigned long long* __restrict__ table, int count,
                                       T clip_value) {
  for (int t = 0; t < count; ++t) {
    T* g = (T*)table[t];
    const long long n = (long long)table[count + t];
    GPUNN_GRID_STRIDE(i, n) {
      const T x = g[i];
      g[i] = x > clip_value ? clip_value : x < -clip_value ? -clip_value : x;
    }
  }
}
