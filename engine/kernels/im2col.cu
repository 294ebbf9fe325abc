// im2col gather for NHWC float32 input: one thread per element of the column matrix
// cols[N, OH, OW, G, R, S, CG]. Consecutive threads write consecutive channels, so both the
// reads (a run of C in the input row) and the writes are coalesced. Out-of-image taps
// (the padding) are written as zeros, so no padded copy of the input is needed.
extern "C" __global__ void im2col_nhwc(
    const float* __restrict__ x, float* __restrict__ cols,
    long long total, int H, int W, int C, int OH, int OW, int G, int R, int S, int CG,
    int pad_t, int pad_l, int stride_h, int stride_w, int dil_h, int dil_w) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    long long rest = i;
    const int cg = rest % CG; rest /= CG;
    const int s = rest % S; rest /= S;
    const int r = rest % R; rest /= R;
    const int g = rest % G; rest /= G;
    const int ow = rest % OW; rest /= OW;
    const int oh = rest % OH; rest /= OH;
    const long long n = rest;
    const int ih = oh * stride_h - pad_t + r * dil_h;
    const int iw = ow * stride_w - pad_l + s * dil_w;
    float v = 0.0f;
    if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
      v = x[((n * H + ih) * W + iw) * C + g * CG + cg];
    }
    cols[i] = v;
  }
}
