// Argument checks of adamw8::fused_step / fused_step_multi, shared by the CPU
// and CUDA registrations.  Every check runs before any tensor is written, and
// every message says what was expected and what was got (STYLE §3).  The fake
// kernels in adamw8/ops/schemas.py make the same checks for torch.compile.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "adamw8_math.h"
#include "cpu/kernel_args.h"

namespace adamw8 {

// One parameter's tensors, as the kernels see them.
struct ParamSlot {
  at::Tensor param, grad, state1, state2, state3, absmax1, absmax2, absmax3, step, gnorm_vec;
};

// What is common to every parameter of one call.  hyper: float32 [5] on the
// parameters' device: lr, beta1, beta2, eps, weight_decay.
struct GroupArgs {
  at::Tensor qmap1, qmap2, hyper, grad_scale, found_inf;
  bool block_wise = true;
  int64_t percentile = 100;
  at::Tensor steps_flat;  // the flat form's steps buffer (its last element: the CUDA completion counter)
};
constexpr int kHyperSize = 5;

// A parameter dtype as the CPU kernels and both launch tables key it (csrc/cpu/kernel_args.h).
inline cpu::DType cpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::DType::kFloat;
    case at::kDouble: return cpu::DType::kDouble;
    case at::kBFloat16: return cpu::DType::kBFloat16;
    case at::kHalf: return cpu::DType::kHalf;
    default: TORCH_CHECK(false, "adamw8: unsupported parameter dtype ", t);  // check_call refuses it first
  }
}

inline int64_t expected_blocks(int64_t numel, bool block_wise) {
  return block_wise ? (numel + kBlockSize - 1) / kBlockSize : 1;
}

// Elements per absmax block: 256, or the whole tensor with block_wise=False.
inline int64_t block_len(int64_t numel, bool block_wise) {
  return block_wise ? kBlockSize : std::max<int64_t>(numel, 1);
}

inline at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

inline void check_scalar_tensor(const at::Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.defined(), "adamw8: ", name, " must be a tensor, got None");
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1,
              "adamw8: ", name, " must be a float32 tensor with one element, got ",
              t.scalar_type(), " of shape ", t.sizes());
  TORCH_CHECK(t.device() == dev, "adamw8: ", name, " must be on the parameters' device ", dev,
              ", got ", t.device());
}

inline void check_group(const GroupArgs& g, const at::Device& dev, bool eight_bit) {
  TORCH_CHECK(g.hyper.defined(), "adamw8: hyper must be a tensor, got None");
  TORCH_CHECK(g.hyper.scalar_type() == at::kFloat && g.hyper.dim() == 1 && g.hyper.numel() == kHyperSize &&
                  g.hyper.is_contiguous(),
              "adamw8: hyper must be a contiguous float32 tensor of shape [5] (lr, beta1, beta2, eps, weight_decay), "
              "got ", g.hyper.scalar_type(), " of shape ", g.hyper.sizes());
  TORCH_CHECK(g.hyper.device() == dev, "adamw8: hyper must be on the parameters' device ", dev, ", got ",
              g.hyper.device());
  if (g.grad_scale.defined()) check_scalar_tensor(g.grad_scale, "grad_scale", dev);
  if (g.found_inf.defined()) check_scalar_tensor(g.found_inf, "found_inf", dev);
  for (const auto& [q, name] : {std::pair{g.qmap1, "qmap1"}, std::pair{g.qmap2, "qmap2"}}) {
    if (eight_bit) {
      TORCH_CHECK(q.defined(), "adamw8: 8-bit state needs ", name, ", got None");
      TORCH_CHECK(q.scalar_type() == at::kFloat && q.dim() == 1 && q.numel() == 256 && q.is_contiguous(),
                  "adamw8: ", name, " must be a contiguous float32 tensor of shape [256], got ",
                  q.scalar_type(), " of shape ", q.sizes());
      TORCH_CHECK(q.device() == dev, "adamw8: ", name, " must be on ", dev, ", got ", q.device());
    } else {
      TORCH_CHECK(!q.defined(), "adamw8: ", name, " is only used with 8-bit (uint8) state; got a tensor for "
                  "float32 state");
    }
  }
}

// The tensors of a slot the overlap checks compare, and their names in messages: the parameter
// first, then its gradient (read only), then what the step writes.
constexpr int kSlotTensors = 10;
constexpr const char* kSlotTensorNames[kSlotTensors] = {"parameter", "grad",    "state1",  "state2", "state3",
                                                        "absmax1",   "absmax2", "absmax3", "step",   "gnorm_vec"};
inline std::array<const at::Tensor*, kSlotTensors> slot_tensors(const ParamSlot& s) {
  return {&s.param, &s.grad, &s.state1, &s.state2, &s.state3, &s.absmax1, &s.absmax2, &s.absmax3, &s.step,
          &s.gnorm_vec};
}

// The tensors of one parameter that the step writes, and its gradient, must not share memory:
// the kernels treat them as separate arrays, so an overlap would corrupt them without a word.
// Only tensors of one storage are compared in detail (at::get_overlap_status; a non-dense view
// of a shared storage counts as overlapping).  Across the parameters of a call:
// check_slots_disjoint.
inline void check_no_overlap(const ParamSlot& s, const std::string& what) {
  const auto t = slot_tensors(s);
  for (int i = 0; i < kSlotTensors; ++i) {
    if (!t[i]->defined() || t[i]->numel() == 0) continue;
    for (int j = i + 1; j < kSlotTensors; ++j) {
      if (!t[j]->defined() || t[j]->numel() == 0 || !t[i]->storage().is_alias_of(t[j]->storage())) continue;
      TORCH_CHECK(at::get_overlap_status(*t[i], *t[j]) == at::MemOverlapStatus::No, "adamw8: the ",
                  kSlotTensorNames[i], " and the ", kSlotTensorNames[j], " of ", what,
                  " share memory; the step needs each as its own tensor");
    }
  }
}

// Across the parameters of one call: nothing one parameter's step writes (its parameter and
// state) may share memory with what another's writes.  Two slots of one tensor (the same
// parameter passed twice, say) would be updated by two threads at once on the GPU, each from
// what it read, and the result would depend on their timing.  Byte ranges are sorted and swept;
// where two ranges of one storage meet, at::get_overlap_status decides (as check_no_overlap).
// `params_only`: the flat form, whose state regions check_layout_disjoint has found disjoint.
inline void check_slots_disjoint(const std::vector<ParamSlot>& slots, bool params_only) {
  struct Range {
    uintptr_t lo, hi;
    const at::Tensor* t;
    int32_t slot, what;
  };
  std::vector<Range> r;
  r.reserve(slots.size() * 4);
  for (size_t i = 0; i < slots.size(); ++i) {
    const auto t = slot_tensors(slots[i]);
    for (int k = 0; k < (params_only ? 1 : kSlotTensors); ++k) {
      if (k == 1 || !t[k]->defined() || t[k]->numel() == 0) continue;  // the gradient is only read
      int64_t extent = 1;  // elements from the first to the last one addressed (strides are >= 0)
      for (int64_t d = 0; d < t[k]->dim(); ++d) extent += (t[k]->size(d) - 1) * t[k]->stride(d);
      const auto lo = reinterpret_cast<uintptr_t>(t[k]->const_data_ptr());
      r.push_back({lo, lo + static_cast<uintptr_t>(extent * t[k]->itemsize()), t[k], static_cast<int32_t>(i), k});
    }
  }
  std::sort(r.begin(), r.end(), [](const Range& a, const Range& b) { return a.lo < b.lo; });
  uintptr_t reach = 0;  // the largest end so far
  for (size_t j = 0; j < r.size(); ++j) {
    if (j > 0 && r[j].lo < reach) {  // meets an earlier range: compare with each that reaches it
      for (size_t i = j; i-- > 0;) {
        if (r[i].hi <= r[j].lo || r[i].slot == r[j].slot) continue;
        const Range &a = r[i].slot < r[j].slot ? r[i] : r[j], &b = r[i].slot < r[j].slot ? r[j] : r[i];
        TORCH_CHECK(!a.t->storage().is_alias_of(b.t->storage()) ||
                        at::get_overlap_status(*a.t, *b.t) == at::MemOverlapStatus::No,
                    "adamw8: the ", kSlotTensorNames[a.what], " of params[", a.slot, "] and the ",
                    kSlotTensorNames[b.what], " of params[", b.slot, "] share memory (the same tensor twice in one "
                    "call?); each parameter's step needs its own tensors");
      }
    }
    reach = std::max(reach, r[j].hi);
  }
}

// `what` names the parameter in messages (e.g. "params[3]").
inline void check_slot(const ParamSlot& s, const GroupArgs& g, const std::string& what) {
  const auto& p = s.param;
  TORCH_CHECK(p.layout() == at::kStrided, "adamw8: ", what, " must be a dense tensor, got layout ", p.layout());
  TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf,
              "adamw8: ", what, " must be float32, bfloat16 or float16, got ", p.scalar_type());
  const auto dev = p.device();
  TORCH_CHECK(s.grad.defined(), "adamw8: grad of ", what, " is None");
  TORCH_CHECK(s.grad.layout() == at::kStrided,
              "adamw8: grad of ", what, " must be dense, got layout ", s.grad.layout(),
              " (sparse gradients are not supported)");
  TORCH_CHECK(s.grad.scalar_type() == p.scalar_type(), "adamw8: grad of ", what, " must have the parameter's dtype ",
              p.scalar_type(), ", got ", s.grad.scalar_type());
  TORCH_CHECK(s.grad.device() == dev, "adamw8: grad of ", what, " must be on ", dev, ", got ", s.grad.device());
  TORCH_CHECK(s.grad.sizes() == p.sizes(), "adamw8: grad of ", what, " must have shape ", p.sizes(), ", got ",
              s.grad.sizes());

  const bool eight_bit = s.state1.scalar_type() == at::kByte;
  TORCH_CHECK(s.state1.scalar_type() == at::kFloat || eight_bit,
              "adamw8: state1 of ", what, " must be float32 (32-bit state) or uint8 (8-bit state), got ",
              s.state1.scalar_type());
  struct Named { const at::Tensor& t; const char* name; bool required; };
  for (const Named& st : {Named{s.state1, "state1", true}, Named{s.state2, "state2", true},
                          Named{s.state3, "state3", false}}) {
    if (!st.t.defined()) {
      TORCH_CHECK(!st.required, "adamw8: ", st.name, " of ", what, " is None");
      continue;
    }
    TORCH_CHECK(st.t.scalar_type() == s.state1.scalar_type(), "adamw8: ", st.name, " of ", what,
                " must have state1's dtype ", s.state1.scalar_type(), ", got ", st.t.scalar_type());
    TORCH_CHECK(st.t.sizes() == p.sizes(), "adamw8: ", st.name, " of ", what, " must have the parameter's shape ",
                p.sizes(), ", got ", st.t.sizes());
    TORCH_CHECK(st.t.is_contiguous(), "adamw8: ", st.name, " of ", what, " must be contiguous");
    TORCH_CHECK(st.t.device() == dev, "adamw8: ", st.name, " of ", what, " must be on ", dev, ", got ",
                st.t.device());
  }
  const int64_t nb = expected_blocks(p.numel(), g.block_wise);
  for (const Named& a : {Named{s.absmax1, "absmax1", eight_bit}, Named{s.absmax2, "absmax2", eight_bit},
                         Named{s.absmax3, "absmax3", eight_bit && s.state3.defined()}}) {
    if (!a.required) {
      TORCH_CHECK(!a.t.defined(), "adamw8: ", a.name, " of ", what,
                  " is only used with the matching 8-bit state; got a tensor where none was expected");
      continue;
    }
    TORCH_CHECK(a.t.defined(), "adamw8: 8-bit state of ", what, " needs ", a.name, ", got None");
    TORCH_CHECK(a.t.scalar_type() == at::kFloat && a.t.dim() == 1 && a.t.numel() == nb && a.t.is_contiguous(),
                "adamw8: ", a.name, " of ", what, " must be a contiguous float32 tensor of shape [", nb, "] (",
                g.block_wise ? "one per 256-element block" : "one per tensor, block_wise=False", "), got ",
                a.t.scalar_type(), " of shape ", a.t.sizes());
    TORCH_CHECK(a.t.device() == dev, "adamw8: ", a.name, " of ", what, " must be on ", dev, ", got ",
                a.t.device());
  }
  TORCH_CHECK(s.step.defined() && s.step.scalar_type() == at::kLong && s.step.numel() == 1,
              "adamw8: step of ", what, " must be an int64 tensor with one element (the exact step count), got ",
              s.step.defined() ? c10::toString(s.step.scalar_type()) : "None", " of shape ",
              s.step.defined() ? s.step.sizes() : at::IntArrayRef{});
  TORCH_CHECK(s.step.device() == dev, "adamw8: step of ", what, " must be on the parameters' device ", dev, ", got ",
              s.step.device());
  if (g.percentile < 100) {
    TORCH_CHECK(s.gnorm_vec.defined(), "adamw8: percentile clipping (percentile=", g.percentile,
                ") needs gnorm_vec for ", what, ", got None");
  }
  if (s.gnorm_vec.defined()) {
    TORCH_CHECK(s.gnorm_vec.scalar_type() == at::kFloat && s.gnorm_vec.dim() == 1 &&
                    s.gnorm_vec.numel() == kGnormHistory && s.gnorm_vec.is_contiguous(),
                "adamw8: gnorm_vec of ", what, " must be a contiguous float32 tensor of shape [100], got ",
                s.gnorm_vec.scalar_type(), " of shape ", s.gnorm_vec.sizes());
    TORCH_CHECK(s.gnorm_vec.device() == dev, "adamw8: gnorm_vec of ", what, " must be on ", dev, ", got ",
                s.gnorm_vec.device());
  }
  check_no_overlap(s, what);
}

// Checks a whole call; all slots must share device, param dtype and state format.
inline void check_call(const std::vector<ParamSlot>& slots, const GroupArgs& g) {
  TORCH_CHECK(g.percentile >= 1 && g.percentile <= 100,
              "adamw8: percentile must be in 1..100, got ", g.percentile);
  if (slots.empty()) return;
  const auto dev = slots[0].param.device();
  const auto dtype = slots[0].param.scalar_type();
  const auto sdtype = slots[0].state1.scalar_type();
  for (size_t i = 0; i < slots.size(); ++i) {
    const std::string what = slots.size() == 1 ? std::string("param") : "params[" + std::to_string(i) + "]";
    TORCH_CHECK(slots[i].param.device() == dev, "adamw8: one call takes parameters of one device: expected ", dev,
                " for ", what, ", got ", slots[i].param.device());
    TORCH_CHECK(slots[i].param.scalar_type() == dtype, "adamw8: one call takes parameters of one dtype: expected ",
                dtype, " for ", what, ", got ", slots[i].param.scalar_type());
    TORCH_CHECK(slots[i].state1.scalar_type() == sdtype,
                "adamw8: one call takes one state format: expected state1 dtype ", sdtype, " for ", what,
                ", got ", slots[i].state1.scalar_type());
    TORCH_CHECK(slots[i].state3.defined() == slots[0].state3.defined(),
                "adamw8: either every parameter of a call has state3 (amsgrad) or none has; ", what, " differs");
    check_slot(slots[i], g, what);
  }
  if (slots.size() > 1) check_slots_disjoint(slots, g.steps_flat.defined());
  check_group(g, dev, sdtype == at::kByte);
}

inline GroupArgs make_group(const std::optional<at::Tensor>& qmap1, const std::optional<at::Tensor>& qmap2,
                            const at::Tensor& hyper, bool block_wise, int64_t percentile,
                            const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& found_inf) {
  return GroupArgs{opt(qmap1), opt(qmap2), hyper, opt(grad_scale), opt(found_inf), block_wise, percentile};
}

// Builds the slots of fused_step_multi from its lists; optional lists may be empty.
inline std::vector<ParamSlot> make_slots(at::TensorList params, at::TensorList grads, at::TensorList state1,
                                         at::TensorList state2, at::TensorList state3, at::TensorList absmax1,
                                         at::TensorList absmax2, at::TensorList absmax3, at::TensorList steps,
                                         at::TensorList gnorm_vecs) {
  const size_t n = params.size();
  auto same = [n](at::TensorList l, const char* name, bool may_be_empty) {
    TORCH_CHECK(l.size() == n || (may_be_empty && l.empty()), "adamw8: ", name, " must have ", n,
                " entries (one per parameter)", may_be_empty ? " or none" : "", ", got ", l.size());
  };
  same(grads, "grads", false);
  same(state1, "state1", false);
  same(state2, "state2", false);
  same(steps, "steps", false);
  same(state3, "state3", true);
  same(absmax1, "absmax1", true);
  same(absmax2, "absmax2", true);
  same(absmax3, "absmax3", true);
  same(gnorm_vecs, "gnorm_vecs", true);
  std::vector<ParamSlot> slots(n);
  for (size_t i = 0; i < n; ++i) {
    auto at_or_none = [i](at::TensorList l) { return l.empty() ? at::Tensor() : l[i]; };
    slots[i] = ParamSlot{params[i], grads[i], state1[i], state2[i], at_or_none(state3), at_or_none(absmax1),
                         at_or_none(absmax2), at_or_none(absmax3), steps[i], at_or_none(gnorm_vecs)};
  }
  return slots;
}

// No two parameters of a layout may share a slot (step, gnorm_vec, per-tensor absmax) or state
// elements (and so absmax blocks: offsets are multiples of 256): the step would update them
// twice, each time from the other's result, without a word.  `spans`: (offset, end, parameter).
inline void check_layout_disjoint(at::IntArrayRef layout, std::vector<std::array<int64_t, 3>> spans) {
  std::vector<std::pair<int64_t, int64_t>> slots;  // (slot, parameter)
  slots.reserve(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) slots.push_back({layout[2 * i], static_cast<int64_t>(i)});
  std::sort(slots.begin(), slots.end());
  for (size_t i = 1; i < slots.size(); ++i) {
    TORCH_CHECK(slots[i].first != slots[i - 1].first, "adamw8: layout: params[", slots[i - 1].second, "] and params[",
                slots[i].second, "] share slot ", slots[i].first, "; each parameter needs its own");
  }
  spans.erase(std::remove_if(spans.begin(), spans.end(), [](const auto& r) { return r[1] == r[0]; }), spans.end());
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    const auto &a = spans[i - 1], &b = spans[i];
    TORCH_CHECK(b[0] >= a[1], "adamw8: layout: params[", a[2], "] (elements [", a[0], ", ", a[1], ")) and params[",
                b[2], "] (elements [", b[0], ", ", b[1], ")) overlap in the flat state buffers");
  }
}

// A contiguous view of `len` elements of the contiguous buffer `buf` from element `start`, with
// `shape`, made as at::native's views make theirs (alias_with_sizes_and_strides) but without a
// trip through the dispatcher: no autograd view record, which the kernels never need.  Made
// with narrow + view (five a parameter with 8-bit state), and with the step count written by
// fill_, the op took 6.2 us per tensor; 1.3 us without them (benchmarks/RESULTS.md).
inline at::Tensor flat_view(const at::Tensor& buf, int64_t start, at::IntArrayRef shape) {
  at::Tensor v = at::detail::make_tensor<c10::TensorImpl>(c10::TensorImpl::VIEW, c10::Storage(buf.storage()),
                                                          buf.key_set(), buf.dtype());
  c10::TensorImpl* impl = v.unsafeGetTensorImpl();
  impl->set_storage_offset(buf.storage_offset() + start);
  impl->set_sizes_contiguous(shape);
  return v;
}

// With a layout (adamw8/ops/schemas.py): each state list holds one flat 1-D buffer for every
// parameter, and the slots are views into it (schemas.py _flat_slots is the twin), which let
// every check and kernel below see one tensor per parameter.
inline std::vector<ParamSlot> flat_slots(at::TensorList params, at::TensorList grads, at::TensorList state1,
                                         at::TensorList state2, at::TensorList state3, at::TensorList absmax1,
                                         at::TensorList absmax2, at::TensorList absmax3, at::TensorList steps,
                                         at::TensorList gnorm_vecs, at::IntArrayRef layout, bool block_wise) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "adamw8: grads must have ", n, " entries (one per parameter), got ", grads.size());
  TORCH_CHECK(layout.size() == 2 * n, "adamw8: layout must have ", 2 * n, " ints (slot, offset per parameter), got ",
              layout.size());
  auto buffer = [](at::TensorList l, const char* name, bool required) {
    TORCH_CHECK(l.size() == 1 || (!required && l.empty()), "adamw8: ", name, " must hold ",
                required ? "exactly one flat buffer" : "one flat buffer or none", " with a layout, got ", l.size(),
                " tensors");
    if (l.empty()) return at::Tensor();
    TORCH_CHECK(l[0].dim() == 1 && l[0].is_contiguous(), "adamw8: ", name,
                " must be a contiguous 1-D buffer with a layout, got shape ", l[0].sizes());
    return l[0];
  };
  const at::Tensor b1 = buffer(state1, "state1", true), b2 = buffer(state2, "state2", true),
                   b3 = buffer(state3, "state3", false), a1 = buffer(absmax1, "absmax1", false),
                   a2 = buffer(absmax2, "absmax2", false), a3 = buffer(absmax3, "absmax3", false),
                   st = buffer(steps, "steps", true), gv = buffer(gnorm_vecs, "gnorm_vecs", false);
  std::vector<ParamSlot> slots(n);
  std::vector<std::array<int64_t, 3>> spans;  // (offset, end, parameter) in the state buffers
  spans.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t slot = layout[2 * i], off = layout[2 * i + 1], k = params[i].numel();
    TORCH_CHECK(slot >= 0 && off >= 0 && off % kBlockSize == 0, "adamw8: layout of params[", i,
                "]: expected a slot >= 0 and an offset >= 0 that is a multiple of 256, got slot ", slot, ", offset ",
                off);
    TORCH_CHECK(slot + 2 <= st.numel(), "adamw8: steps: params[", i, "] has slot ", slot, " but the flat buffer has ",
                st.numel(), " elements (one per slot, then the completion counter)");
    auto view = [&](const at::Tensor& buf, const char* name, int64_t start, int64_t len,
                    at::IntArrayRef shape) -> at::Tensor {
      if (!buf.defined()) return at::Tensor();
      TORCH_CHECK(start + len <= buf.numel(), "adamw8: ", name, ": params[", i, "] needs elements [", start, ", ",
                  start + len, ") of the flat buffer, which has ", buf.numel());
      return flat_view(buf, start, shape);
    };
    const int64_t nb = expected_blocks(k, block_wise);
    const int64_t boff = block_wise ? off / kBlockSize : slot;
    spans.push_back({off, off + k, static_cast<int64_t>(i)});
    slots[i] = ParamSlot{params[i], grads[i], view(b1, "state1", off, k, params[i].sizes()),
                         view(b2, "state2", off, k, params[i].sizes()), view(b3, "state3", off, k, params[i].sizes()),
                         view(a1, "absmax1", boff, nb, {nb}), view(a2, "absmax2", boff, nb, {nb}),
                         view(a3, "absmax3", boff, nb, {nb}), view(st, "steps", slot, 1, {}),
                         view(gv, "gnorm_vecs", kGnormHistory * slot, kGnormHistory, {kGnormHistory})};
  }
  check_layout_disjoint(layout, spans);
  return slots;
}

// The op entry point, shared by the CPU and CUDA registrations: it turns the
// schema's arguments (adamw8/ops/schemas.py STEP_ARGS, in order) into slots and
// calls `Run` (which checks, then launches).  fused_step has no kernel: it is
// fused_step_multi with one parameter (schemas.py).
using RunFn = void (*)(const std::vector<ParamSlot>&, const GroupArgs&);

template <RunFn Run>
void fused_step_multi_op(at::TensorList params, at::TensorList grads, at::TensorList state1, at::TensorList state2,
                         at::TensorList state3, at::TensorList absmax1, at::TensorList absmax2,
                         at::TensorList absmax3, const std::optional<at::Tensor>& qmap1,
                         const std::optional<at::Tensor>& qmap2, at::TensorList steps, at::TensorList gnorm_vecs,
                         const at::Tensor& hyper, bool block_wise, int64_t percentile,
                         const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                         at::IntArrayRef layout) {
  GroupArgs g = make_group(qmap1, qmap2, hyper, block_wise, percentile, grad_scale, found_inf);
  if (!layout.empty() && steps.size() == 1) g.steps_flat = steps[0];
  Run(layout.empty()
          ? make_slots(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs)
          : flat_slots(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs, layout,
                       block_wise),
      g);
}

}  // namespace adamw8
