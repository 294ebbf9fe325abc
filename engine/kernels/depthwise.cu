// Depthwise convolution (groups == C, K = C * multiplier) on NHWC float32, with the bias and
// activation fused: one launch per layer, no im2col, no per-group GEMMs.
// One thread per output element (n, oh, ow, k), k fastest. Output channel k reads input
// channel k / multiplier; weights are laid out (R, S, K) so a warp reads consecutive weights.
// Out-of-image taps are skipped (zero padding without a padded copy).
#include "common.cuh"

extern "C" __global__ void depthwise_nhwc(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, long long total, long long sn, long long sh, long long sw,
    int H, int W, int OH, int OW, int K, int R, int S, int multiplier,
    int pad_t, int pad_l, int stride_h, int stride_w, int dil_h, int dil_w,
    int has_bias, int kind, float alpha, float beta) {
  GRID_STRIDE_LOOP(i, total) {
    const Nhwc o = split_nhwc(i, OH, OW, K);
    const int k = o.c;
    const float* xn = x + o.n * sn + k / multiplier;
    const int h0 = o.h * stride_h - pad_t, w0 = o.w * stride_w - pad_l;
    float acc = 0.0f;
    for (int r = 0; r < R; ++r) {
      const int ih = h0 + r * dil_h;
      if (ih < 0 || ih >= H) continue;
      for (int s = 0; s < S; ++s) {
        const int iw = w0 + s * dil_w;
        if (iw < 0 || iw >= W) continue;
        acc = fmaf(xn[ih * sh + iw * sw], w[(r * S + s) * K + k], acc);
      }
    }
    if (has_bias) acc += bias[k];
    y[i] = activate(acc, kind, alpha, beta);
  }
}
