// L2 prefetch of up to four byte ranges (NVRTC), for decode at small batch:
// attention and the short kernels around it leave HBM mostly idle, so the
// weights of the GEMMs after them can be pulled into L2 while they run and
// those GEMMs then read L2 instead of HBM. Prefetching changes no data; the
// kernel's only effect is on timing.
//
// SM90+: one cp.async.bulk.prefetch.L2 per 64 KiB piece (the copy engine
// walks it; one instruction per piece). SM80-89: prefetch.global.L2 per
// 128-byte line. Threads take pieces round-robin over the grid, so the
// requests come from many SMs at once.
//
// Launched with programmatic dependent launch it lets the next kernel start
// at once (it writes nothing anyone reads), and it waits for the kernel
// before it only at the end: a kernel that never waits could finish before
// its producer, and the next kernel's wait would then no longer cover that
// producer.
#include "mllm_pdl.cuh"

namespace {

constexpr long long kPiece = 64 << 10;

__device__ __forceinline__ void prefetch_piece(const char* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
  for (int line = 0; line < bytes; line += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + line));
#endif
}

}  // namespace

// Symbol: prefetch_l2(p0, n0, p1, n1, p2, n2, p3, n3): range i is n_i bytes
// at p_i (n_i a multiple of 16 and p_i 16-byte aligned; n_i = 0: unused).
// Any grid, any block.
extern "C" __global__ void prefetch_l2(const char* p0, long long n0, const char* p1, long long n1, const char* p2,
                                       long long n2, const char* p3, long long n3) {
  mllm::allow_dependents();
  const char* const ptr[4] = {p0, p1, p2, p3};
  const long long len[4] = {n0, n1, n2, n3};
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Pieces are numbered across the ranges in order; `first` is this
  // thread's next one, relative to range r's start.
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const long long pieces = (len[r] + kPiece - 1) / kPiece;
    for (; first < pieces; first += stride) {
      const long long at = first * kPiece;
      prefetch_piece(ptr[r] + at, static_cast<int>(len[r] - at < kPiece ? len[r] - at : kPiece));
    }
    first -= pieces;
  }
  mllm::wait_for_producer();
}
