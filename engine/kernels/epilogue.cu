// Fused conv epilogue: y[rows, K] = activation(y + bias[K]), in place, one launch.
// One thread per element of the row-major (rows, K) output, so consecutive threads touch
// consecutive addresses (coalesced); the K-float bias stays in L1/L2.
#include "common.cuh"

extern "C" __global__ void bias_activation(
    float* __restrict__ y, const float* __restrict__ bias, long long total, int K,
    int has_bias, int kind, float alpha, float beta) {
  GRID_STRIDE_LOOP(i, total) {
    float v = y[i];
    if (has_bias) v += bias[i % K];
    y[i] = activate(v, kind, alpha, beta);
  }
}
