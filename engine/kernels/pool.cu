// MaxPool / AveragePool on NHWC float32, every ONNX attribute, one launch.
// One thread per output element (n, oh, ow, c), c fastest: a warp reads a run of channels of
// one input pixel per tap (coalesced) and writes a run of channels of one output pixel.
// Padding is never materialised: taps outside the image are skipped (max) or not summed (avg).
// ceil_mode only changes OH/OW, which the caller computes; pad_b/pad_r bound the region that
// count_include_pad counts, so windows hanging past the padding (ceil_mode) count as ONNX says.
// The divisor is (taps counted along H) x (taps counted along W), each at least 1.
#include "common.cuh"

extern "C" __global__ void pool_nhwc(
    const float* __restrict__ x, float* __restrict__ y, long long total,
    long long sn, long long sh, long long sw, int H, int W, int C, int OH, int OW,
    int KH, int KW, int stride_h, int stride_w, int dil_h, int dil_w,
    int pad_t, int pad_l, int pad_b, int pad_r, int is_max, int count_include_pad) {
  GRID_STRIDE_LOOP(i, total) {
    const Nhwc o = split_nhwc(i, OH, OW, C);
    const float* xn = x + o.n * sn + o.c;
    const int h0 = o.h * stride_h - pad_t, w0 = o.w * stride_w - pad_l;
    float acc = is_max ? -__int_as_float(0x7f800000) : 0.0f;  // -inf (NVRTC has no INFINITY)
    int count_h = 0, count_w = 0;
    for (int r = 0; r < KH; ++r) {
      const int ih = h0 + r * dil_h;
      const bool in_h = ih >= 0 && ih < H;
      count_h += count_include_pad ? (ih >= -pad_t && ih < H + pad_b) : in_h;
      if (!in_h) continue;
      for (int s = 0; s < KW; ++s) {
        const int iw = w0 + s * dil_w;
        if (iw < 0 || iw >= W) continue;
        const float v = xn[ih * sh + iw * sw];
        if (is_max) {
          acc = (v > acc || v != v) && acc == acc ? v : acc;  // NaN wins and stays
        } else {
          acc += v;
        }
      }
    }
    if (!is_max) {
      for (int s = 0; s < KW; ++s) {
        const int iw = w0 + s * dil_w;
        count_w += count_include_pad ? (iw >= -pad_l && iw < W + pad_r) : (iw >= 0 && iw < W);
      }
      const float divisor = (float)(max(count_h, 1) * max(count_w, 1));
      acc *= 1.0f / divisor;
    }
    y[i] = acc;
  }
}
