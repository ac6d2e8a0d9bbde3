// Torch-facing glue of the CUDA quantize/dequantize kernels: checks and outputs
// (quantize_ops.h, shared with the CPU kernels), launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../quantize_cuda.h"
#include "../quantize_ops.h"
#include "launch_error.h"

namespace adamw8 {
namespace {

void run(const QuantCall& c, bool dequant) {
  if (c.n == 0 && (dequant || c.block_wise)) return;
  c10::cuda::CUDAGuard guard(c.codes.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(c.codes.device().index()).stream();
  const at::Tensor scratch = quant_scratch(c, dequant);
  const int err = cuda::launch_quantize(quant_args(c, scratch), dequant, stream);
  TORCH_CHECK(err == 0, "adamw8: launching the CUDA ", dequant ? "dequantize" : "quantize",
              " kernels failed: ", launch_error(err, c.codes.device().index()));
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, const at::Tensor& qmap, bool block_wise,
                                                 bool is_signed) {
  const QuantCall c = prepare_quantize(x, qmap, block_wise, is_signed);
  run(c, false);
  return {c.codes, c.absmax};
}

at::Tensor dequantize_cuda(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& qmap,
                           bool block_wise) {
  const QuantCall c = prepare_dequantize(codes, absmax, qmap, block_wise);
  run(c, true);
  return c.values;
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CUDA, m) {
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
}

}  // namespace adamw8
