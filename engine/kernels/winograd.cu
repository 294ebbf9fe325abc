// Winograd F(2x2, 3x3) transforms (Lavin & Gray), the two memory-bound steps around the 16
// batched GEMMs (tiles x C) x (C x K) that cuBLAS runs.
//
// Input transform: V[p, t, c] = (B^T d B)[p] for every 4x4 input tile d of image n at tile row
// th, tile column tw (t = (n * TH + th) * TW + tw; p = 4 * u + v). The tile is read straight from
// the unpadded NHWC input; taps outside the image are zeros. One thread per (t, c), c fastest:
// reads and each of the 16 writes are coalesced across the warp.
// Output transform: out[n, 2 th + i, 2 tw + j, k] = (A^T M A)[i, j] with M[p] = M[p, t, k],
// clipped to OH x OW, optionally with the bias and activation fused. One thread per (t, k).
#include "common.cuh"

// B^T applied to the 4 values a0..a3 (a row or a column of the tile).
#define BT4(a0, a1, a2, a3, o0, o1, o2, o3) \
  o0 = (a0) - (a2); o1 = (a1) + (a2); o2 = (a2) - (a1); o3 = (a1) - (a3);

extern "C" __global__ void winograd_f2x2_input(
    const float* __restrict__ x, float* __restrict__ v, long long total,
    long long sn, long long sh, long long sw, int H, int W, int C, int TH, int TW,
    int pad_t, int pad_l) {
  const long long tiles = total / C;
  GRID_STRIDE_LOOP(i, total) {
    const Nhwc at = split_nhwc(i, TH, TW, C);  // (image, tile row, tile column, channel)
    const int c = at.c;
    const long long t = i / C;
    const long long n = at.n;
    const int h0 = 2 * at.h - pad_t, w0 = 2 * at.w - pad_l;
    float d[4][4];
    for (int a = 0; a < 4; ++a) {
      for (int b = 0; b < 4; ++b) {
        const int ih = h0 + a, iw = w0 + b;
        const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
        d[a][b] = inside ? x[n * sn + ih * sh + iw * sw + c] : 0.0f;
      }
    }
    float e[4][4];  // e = B^T d (rows combined), then V = e B (columns combined)
    for (int b = 0; b < 4; ++b) {
      BT4(d[0][b], d[1][b], d[2][b], d[3][b], e[0][b], e[1][b], e[2][b], e[3][b]);
    }
    for (int a = 0; a < 4; ++a) {
      float o0, o1, o2, o3;
      BT4(e[a][0], e[a][1], e[a][2], e[a][3], o0, o1, o2, o3);
      v[((4 * a + 0) * tiles + t) * C + c] = o0;
      v[((4 * a + 1) * tiles + t) * C + c] = o1;
      v[((4 * a + 2) * tiles + t) * C + c] = o2;
      v[((4 * a + 3) * tiles + t) * C + c] = o3;
    }
  }
}

extern "C" __global__ void winograd_f2x2_output(
    const float* __restrict__ m, const float* __restrict__ bias, float* __restrict__ y,
    long long total, int K, int TH, int TW, int OH, int OW, int has_bias, int kind,
    float alpha, float beta) {
  const long long tiles = total / K;
  GRID_STRIDE_LOOP(i, total) {
    const Nhwc at = split_nhwc(i, TH, TW, K);  // (image, tile row, tile column, channel)
    const int k = at.c, th = at.h, tw = at.w;
    const long long t = i / K;
    const long long n = at.n;
    float q[4][4];
    for (int p = 0; p < 16; ++p) q[p / 4][p % 4] = m[(p * tiles + t) * K + k];
    // A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: rows first, then columns.
    float e[2][4];
    for (int b = 0; b < 4; ++b) {
      e[0][b] = q[0][b] + q[1][b] + q[2][b];
      e[1][b] = q[1][b] - q[2][b] - q[3][b];
    }
    const float add = has_bias ? bias[k] : 0.0f;
    for (int a = 0; a < 2; ++a) {
      const int oh = 2 * th + a;
      const float out0 = e[a][0] + e[a][1] + e[a][2];
      const float out1 = e[a][1] - e[a][2] - e[a][3];
      const long long base = ((n * OH + oh) * OW + 2 * tw) * K + k;
      if (oh < OH) {
        y[base] = activate(out0 + add, kind, alpha, beta);
        if (2 * tw + 1 < OW) y[base + K] = activate(out1 + add, kind, alpha, beta);
      }
    }
  }
}
