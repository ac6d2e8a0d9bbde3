// adamw8::quantize / adamw8::dequantize: argument checks and outputs, shared by
// the CPU kernels (quantize_cpu.cpp), the CUDA glue (cuda/quantize_cuda.cpp) and
// the CPU emulation of the CUDA kernels (emu/emu_ops.cpp).  The fake kernels in
// adamw8/ops/schemas.py make the same checks.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "fused_step_checks.h"
#include "quantize_cuda.h"

namespace adamw8 {

inline void check_qmap(const at::Tensor& qmap, const at::Device& dev) {
  TORCH_CHECK(qmap.scalar_type() == at::kFloat && qmap.dim() == 1 && qmap.numel() == 256,
              "adamw8: qmap must be a float32 tensor of shape [256], got ", qmap.scalar_type(), " of shape ",
              qmap.sizes());
  TORCH_CHECK(qmap.device() == dev, "adamw8: qmap must be on ", dev, ", got ", qmap.device());
}

// One call's tensors: `values` float32 (quantize's input, dequantize's output),
// `codes` uint8 and `absmax` float32[nblocks] (the other way round), all contiguous.
struct QuantCall {
  at::Tensor values, codes, absmax, qmap;
  int64_t n = 0;
  bool block_wise = true, is_signed = true;
};

inline QuantCall prepare_quantize(const at::Tensor& x, const at::Tensor& qmap, bool block_wise, bool is_signed) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "adamw8.quantize: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.layout() == at::kStrided, "adamw8.quantize: x must be dense, got layout ", x.layout());
  check_qmap(qmap, x.device());
  QuantCall c;
  c.values = x.contiguous();
  c.qmap = qmap.contiguous();
  c.n = x.numel();
  c.block_wise = block_wise;
  c.is_signed = is_signed;
  c.codes = at::empty(x.sizes(), x.options().dtype(at::kByte));
  c.absmax = at::zeros({expected_blocks(c.n, block_wise)}, x.options());
  return c;
}

inline QuantCall prepare_dequantize(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& qmap,
                                    bool block_wise) {
  TORCH_CHECK(codes.scalar_type() == at::kByte, "adamw8.dequantize: codes must be uint8, got ",
              codes.scalar_type());
  check_qmap(qmap, codes.device());
  const int64_t nb = expected_blocks(codes.numel(), block_wise);
  TORCH_CHECK(absmax.scalar_type() == at::kFloat && absmax.numel() == nb,
              "adamw8.dequantize: absmax must be float32 with ", nb, " elements, got ", absmax.scalar_type(),
              " with ", absmax.numel());
  TORCH_CHECK(absmax.device() == codes.device(), "adamw8.dequantize: absmax must be on ", codes.device(), ", got ",
              absmax.device());
  QuantCall c;
  c.codes = codes.contiguous();
  c.absmax = absmax.contiguous();
  c.qmap = qmap.contiguous();
  c.n = codes.numel();
  c.block_wise = block_wise;
  c.values = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  return c;
}

// The CUDA kernels' record of a call; `scratch` holds [units] floats for a
// block_wise=False quantize (may be undefined otherwise).
inline cuda::QuantArgs quant_args(const QuantCall& c, const at::Tensor& scratch) {
  cuda::QuantArgs a{};
  a.x = c.values.data_ptr<float>();
  a.codes = c.codes.data_ptr<uint8_t>();
  a.absmax = c.absmax.data_ptr<float>();
  a.qmap = c.qmap.data_ptr<float>();
  a.n = c.n;
  a.is_signed = c.is_signed ? 1 : 0;
  a.block_wise = c.block_wise ? 1 : 0;
  a.vec = reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && reinterpret_cast<uintptr_t>(a.codes) % 16 == 0;
  a.unit_max = scratch.defined() ? scratch.data_ptr<float>() : nullptr;
  return a;
}

inline at::Tensor quant_scratch(const QuantCall& c, bool dequant) {
  if (dequant || c.block_wise || c.n == 0) return at::Tensor();
  return at::empty({(c.n + 255) / 256}, c.values.options());
}

}  // namespace adamw8
