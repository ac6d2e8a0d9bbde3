// CPU kernels of adamw8::quantize and adamw8::dequantize: the blockwise 8-bit
// format of the optimizer state (SPEC §2.1, §2.3) as standalone ops, used for
// tests and state-dict conversion.  Same rounding as the optimizer kernels
// (adamw8_math.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "adamw8_math.h"
#include "fused_step_checks.h"
#include "quant_lut_cpu.h"

namespace adamw8 {
namespace {

void check_qmap(const at::Tensor& qmap, const at::Device& dev) {
  TORCH_CHECK(qmap.scalar_type() == at::kFloat && qmap.dim() == 1 && qmap.numel() == 256,
              "adamw8: qmap must be a float32 tensor of shape [256], got ", qmap.scalar_type(), " of shape ",
              qmap.sizes());
  TORCH_CHECK(qmap.device() == dev, "adamw8: qmap must be on ", dev, ", got ", qmap.device());
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, const at::Tensor& qmap, bool block_wise,
                                                bool is_signed) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "adamw8.quantize: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.layout() == at::kStrided, "adamw8.quantize: x must be dense, got layout ", x.layout());
  check_qmap(qmap, x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor q = qmap.contiguous();
  const int64_t n = xc.numel();
  const int64_t bs = block_len(n, block_wise);
  const int64_t nb = expected_blocks(n, block_wise);
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kByte));
  at::Tensor absmax = at::zeros({nb}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* qp = q.data_ptr<float>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* ap = absmax.data_ptr<float>();
  const auto lut = lut_for(qp);
  at::parallel_for(0, nb, 1, [&](int64_t bb, int64_t be) {
    for (int64_t blk = bb; blk < be; ++blk) {
      const int64_t off = blk * bs, end = std::min(n, off + bs);
      float a = 0.0f;
      for (int64_t i = off; i < end; ++i) a = max_nan(a, std::fabs(xp[i]));
      lut->quantize(xp + off, end - off, a, is_signed, cp + off);
      ap[blk] = a;
    }
  });
  return {codes, absmax};
}

at::Tensor dequantize_cpu(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& qmap,
                          bool block_wise) {
  TORCH_CHECK(codes.scalar_type() == at::kByte, "adamw8.dequantize: codes must be uint8, got ",
              codes.scalar_type());
  check_qmap(qmap, codes.device());
  const int64_t n = codes.numel();
  const int64_t nb = expected_blocks(n, block_wise);
  TORCH_CHECK(absmax.scalar_type() == at::kFloat && absmax.numel() == nb,
              "adamw8.dequantize: absmax must be float32 with ", nb, " elements, got ", absmax.scalar_type(),
              " with ", absmax.numel());
  TORCH_CHECK(absmax.device() == codes.device(), "adamw8.dequantize: absmax must be on ", codes.device(), ", got ",
              absmax.device());
  const at::Tensor cc = codes.contiguous(), ac = absmax.contiguous(), q = qmap.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const int64_t bs = block_len(n, block_wise);
  const uint8_t* cp = cc.data_ptr<uint8_t>();
  const float* ap = ac.data_ptr<float>();
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) op[i] = dequantize_value(qp, cp[i], ap[i / bs]);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adamw8, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
}

}  // namespace adamw8
