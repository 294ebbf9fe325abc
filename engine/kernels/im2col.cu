// im2col gather for NHWC float32 input: one thread per element of the column matrix
// cols[N*OH*OW, G*R*S*CG] (per GEMM row: group, kernel row, kernel column, channel).
// Consecutive threads write consecutive columns and, inside a run of CG channels, read
// consecutive input addresses, so both sides are coalesced. Out-of-image taps (the padding)
// are written as zeros, so no padded copy of the input is made.
// The input may be a strided view (sn, sh, sw in elements; channels contiguous): the chunked
// algorithm passes slices of a larger activation.
#include "common.cuh"

// One 64-bit division splits the flat index into (row, column); the rest is 32-bit arithmetic
// (the caller guarantees N * OH * OW < 2^31 rows).
extern "C" __global__ void im2col_nhwc(
    const float* __restrict__ x, float* __restrict__ cols, long long total,
    long long sn, long long sh, long long sw, int H, int W, int OH, int OW, int G, int R,
    int S, int CG, int pad_t, int pad_l, int stride_h, int stride_w, int dil_h, int dil_w) {
  const int row_len = G * R * S * CG;
  GRID_STRIDE_LOOP(i, total) {
    const long long row = i / row_len;
    int col = (int)(i - row * row_len);
    const int cg = col % CG; col /= CG;
    const int s = col % S; col /= S;
    const int r = col % R;
    const int g = col / R;
    const int ow = (int)row % OW;
    const int rest = (int)row / OW;
    const int oh = rest % OH;
    const long long n = rest / OH;
    const int ih = oh * stride_h - pad_t + r * dil_h;
    const int iw = ow * stride_w - pad_l + s * dil_w;
    float v = 0.0f;
    if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
      v = x[n * sn + ih * sh + iw * sw + g * CG + cg];
    }
    cols[i] = v;
  }
}
