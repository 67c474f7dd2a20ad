// Max and average pooling, NCHW. The launcher walks the N*C planes in chunks whose every
// index fits in 32 bits, so these kernels use int arithmetic (NC: the chunk's planes). Backward kernels gather (one thread per input
// element, no atomics), so results are deterministic.

#include "common.cuh"

// Max over each window, padding counting as -inf; arg = the window offset i*kw + j of the
// FIRST maximum in row-major window order (as NumPy's argmax), kept for the backward.
template <typename T>
__global__ void max_pool2d_forward(const T* __restrict__ X, T* __restrict__ Y,
                                   int* __restrict__ arg, int NC, int H, int W, int kh, int kw,
                                   int sh, int sw, int ph, int pw, int OH, int OW) {
  const int total = NC * OH * OW;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int ow = idx % OW;
    const int oh = (idx / OW) % OH;
    const T* x = X + (idx / (OW * OH)) * H * W;
    T best = gpunn::neg_inf<T>();
    int best_k = 0;
    for (int i = 0; i < kh; ++i) {
      const int h = oh * sh - ph + i;
      for (int j = 0; j < kw; ++j) {
        const int w = ow * sw - pw + j;
        const T v = (h >= 0 && h < H && w >= 0 && w < W) ? x[h * W + w] : gpunn::neg_inf<T>();
        if (v > best) {
          best = v;
          best_k = i * kw + j;
        }
      }
    }
    Y[idx] = best;
    arg[idx] = best_k;
  }
}

// dX gathers dY from every window whose recorded maximum is this element.
template <typename T>
__global__ void max_pool2d_backward(const T* __restrict__ dY, const int* __restrict__ arg,
                                    T* __restrict__ dX, int NC, int H, int W, int kh, int kw,
                                    int sh, int sw, int ph, int pw, int OH, int OW) {
  const int total = NC * H * W;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int w = idx % W;
    const int h = (idx / W) % H;
    const int base = (idx / (W * H)) * OH * OW;
    T acc = T(0);
    for (int i = 0; i < kh; ++i) {
      const int y = h + ph - i;
      if (y < 0 || y % sh != 0 || y / sh >= OH) continue;
      for (int j = 0; j < kw; ++j) {
        const int x = w + pw - j;
        if (x < 0 || x % sw != 0 || x / sw >= OW) continue;
        const int o = base + (y / sh) * OW + x / sw;
        if (arg[o] == i * kw + j) acc += dY[o];
      }
    }
    dX[idx] = acc;
  }
}

// Mean over each window, zero padding included in the count (PyTorch's default).
template <typename T>
__global__ void avg_pool2d_forward(const T* __restrict__ X, T* __restrict__ Y, int NC, int H,
                                   int W, int kh, int kw, int sh, int sw, int ph, int pw, int OH,
                                   int OW) {
  const int total = NC * OH * OW;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int ow = idx % OW;
    const int oh = (idx / OW) % OH;
    const T* x = X + (idx / (OW * OH)) * H * W;
    T acc = T(0);
    for (int i = 0; i < kh; ++i) {
      const int h = oh * sh - ph + i;
      if (h < 0 || h >= H) continue;
      for (int j = 0; j < kw; ++j) {
        const int w = ow * sw - pw + j;
        if (w >= 0 && w < W) acc += x[h * W + w];
      }
    }
    Y[idx] = acc / T(kh * kw);
  }
}

// dX gathers dY / (kh*kw) from every window that covers this element.
template <typename T>
__global__ void avg_pool2d_backward(const T* __restrict__ dY, T* __restrict__ dX, int NC, int H,
                                    int W, int kh, int kw, int sh, int sw, int ph, int pw, int OH,
                                    int OW) {
  const int total = NC * H * W;
  const T count = T(kh * kw);
  GPUNN_GRID_STRIDE32(idx, total) {
    const int w = idx % W;
    const int h = (idx / W) % H;
    const int base = (idx / (W * H)) * OH * OW;
    T acc = T(0);
    for (int i = 0; i < kh; ++i) {
      const int y = h + ph - i;
      if (y < 0 || y % sh != 0 || y / sh >= OH) continue;
      for (int j = 0; j < kw; ++j) {
        const int x = w + pw - j;
        if (x < 0 || x % sw != 0 || x / sw >= OW) continue;
        acc += dY[base + (y / sh) * OW + x / sw] / count;
      }
    }
    dX[idx] = acc;
  }
}
