// Feeds the tokens one step sampled on the device into the next step's input
// ids, with no round trip through the host: under overlap scheduling the host
// launches step k + 1 before it has read step k's tokens. Compiled by NVRTC.
//
// The host checks every pair against both lengths before the launch; the
// kernel checks again and skips a pair out of range, so no pair can write
// outside `ids`. A sampled id that is itself invalid (-1 from a broken logits
// row) is copied as is: the embedding lookup zero-fills such a row, and the
// host reports the failure when it reads that step's tokens.

// Symbol: feed_tokens(ids, ids_len, sampled, sampled_len, pairs, n):
// ids[pairs[2i]] = sampled[pairs[2i + 1]] for i < n. Any grid, any block.
extern "C" __global__ void feed_tokens(int* ids, int ids_len, const int* sampled, int sampled_len, const int* pairs,
                                       int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int row = pairs[2 * i];
    const int src = pairs[2 * i + 1];
    if (row >= 0 && row < ids_len && src >= 0 && src < sampled_len) ids[row] = sampled[src];
  }
}
