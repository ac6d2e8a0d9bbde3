// CPU kernels of adamw8::quantize and adamw8::dequantize: the 8-bit format of
// the optimizer state (docs/design.md) as standalone ops, used for tests and
// state-dict conversion.  Same rounding as the optimizer kernels (adamw8_math.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "adamw8_math.h"
#include "fused_step_checks.h"
#include "quant_lut_cpu.h"
#include "quantize_ops.h"

namespace adamw8 {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, const at::Tensor& qmap, bool block_wise,
                                                bool is_signed) {
  const QuantCall c = prepare_quantize(x, qmap, block_wise, is_signed);
  const int64_t n = c.n;
  const int64_t bs = block_len(n, block_wise);
  const int64_t nb = expected_blocks(n, block_wise);
  const float* xp = c.values.data_ptr<float>();
  uint8_t* cp = c.codes.data_ptr<uint8_t>();
  float* ap = c.absmax.data_ptr<float>();
  const auto lut = lut_for(c.qmap.data_ptr<float>());
  const cpu::QuantTable table = lut->table();
  const cpu::Kernels& k = *cpu::launch_for(1, cpu::DType::kFloat, n).kernels;  // the 8-bit fp32 entry's build
  at::parallel_for(0, nb, 1, [&](int64_t bb, int64_t be) {
    for (int64_t blk = bb; blk < be; ++blk) {
      const int64_t off = blk * bs, end = std::min(n, off + bs);
      float a = 0.0f;
      for (int64_t i = off; i < end; ++i) a = max_nan(a, std::fabs(xp[i]));
      k.quantize(table, xp + off, end - off, a, is_signed, cp + off);
      ap[blk] = a;
    }
  });
  return {c.codes, c.absmax};
}

at::Tensor dequantize_cpu(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& qmap,
                          bool block_wise) {
  const QuantCall c = prepare_dequantize(codes, absmax, qmap, block_wise);
  const int64_t bs = block_len(c.n, block_wise);
  const uint8_t* cp = c.codes.data_ptr<uint8_t>();
  const float* ap = c.absmax.data_ptr<float>();
  const float* qp = c.qmap.data_ptr<float>();
  float* op = c.values.data_ptr<float>();
  at::parallel_for(0, c.n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) op[i] = dequantize_value(qp, cp[i], ap[i / bs]);
  });
  return c.values;
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
}

}  // namespace adamw8
