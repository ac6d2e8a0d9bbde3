// The torch-free interface of the CUDA kernels of adamw8::quantize and
// adamw8::dequantize (quantize_kernels.cuh): their record and entry point.
#pragma once

#include <cstdint>

namespace adamw8 {
namespace cuda {

struct QuantArgs {
  const float* x;   // quantize: the input; dequantize: the output
  uint8_t* codes;   // quantize: the output; dequantize: the input
  float* absmax;    // [nblocks]: quantize writes it, dequantize reads it
  const float* qmap;
  int64_t n;
  int is_signed;
  int block_wise;
  int vec;          // 1: x and codes 16-byte aligned: full units use vector accesses
  float* unit_max;  // block_wise=False quantize: scratch of [units] floats
};

// Runs quantize (dequantize when `dequant`) on `stream` (a cudaStream_t);
// returns the cudaError_t of the launches (0: success).
int launch_quantize(const QuantArgs& args, bool dequant, void* stream);

}  // namespace cuda
}  // namespace adamw8
