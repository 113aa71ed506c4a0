// The host-side interface of CUTLASS collectives and visitor nodes whose
// kernel parameters are their arguments as given and that need no workspace.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include <cutlass/cuda_host_adapter.hpp>
#include <cutlass/cutlass.h>

namespace mllm::int8_mm {

template <class Arguments>
struct PassThroughArguments {
  template <class ProblemShape>
  static constexpr Arguments to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
};

}  // namespace mllm::int8_mm
