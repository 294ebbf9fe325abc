// Device helpers shared by the kernels (included, never launched on its own).
#ifndef GEMMSERVE_COMMON_CUH
#define GEMMSERVE_COMMON_CUH

// One thread per element of a flat index space of `total` elements, any grid size.
#define GRID_STRIDE_LOOP(i, total)                                              \
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (total); \
       i += (long long)blockDim.x * gridDim.x)

// (n, h, w, c) of the flat index of a contiguous (N, H, W, C) array, c fastest.
struct Nhwc {
  long long n;
  int h, w, c;
};

__device__ __forceinline__ Nhwc split_nhwc(long long i, int H, int W, int C) {
  Nhwc at;
  at.c = (int)(i % C);
  const long long pix = i / C;
  at.w = (int)(pix % W);
  const long long rest = pix / W;
  at.h = (int)(rest % H);
  at.n = rest / H;
  return at;
}

// Activation kinds, numbered as engine.conv.spec.ACTIVATIONS lists them.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_CLIP 3
#define ACT_SIGMOID 4
#define ACT_HARD_SIGMOID 5
#define ACT_HARD_SWISH 6
#define ACT_TANH 7

// Comparisons are written so that a NaN input stays NaN, as numpy.maximum/clip keep it.
__device__ __forceinline__ float clamp_keep_nan(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// `kind` is uniform across a launch, so the switch never diverges inside a warp.
__device__ __forceinline__ float activate(float v, int kind, float alpha, float beta) {
  switch (kind) {
    case ACT_RELU: return v < 0.0f ? 0.0f : v;
    case ACT_LEAKY_RELU: return v < 0.0f ? v * alpha : v;
    case ACT_CLIP: return clamp_keep_nan(v, alpha, beta);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ACT_HARD_SIGMOID: return clamp_keep_nan(v * alpha + beta, 0.0f, 1.0f);
    case ACT_HARD_SWISH: return v * clamp_keep_nan(v * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f);
    case ACT_TANH: return tanhf(v);
    default: return v;
  }
}

#endif  // GEMMSERVE_COMMON_CUH
