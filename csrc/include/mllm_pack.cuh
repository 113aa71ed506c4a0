// A 16-byte (or narrower) group of elements moved with one load/store.
#pragma once

namespace mllm {

template <typename S, int VEC>
struct alignas(sizeof(S) * VEC) Pack {
  S v[VEC];
};

// Elements of S in one 16-byte pack.
template <typename S>
struct PackWidth {
  static constexpr int value = 16 / sizeof(S);
};

}  // namespace mllm
