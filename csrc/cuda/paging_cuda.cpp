// Paged optimizer state (adamw8/paging.py, docs/design.md "Paged state"): CUDA unified memory
// as ordinary CUDA tensors.
//
//   adamw8::_managed_empty(int[] size, ScalarType dtype, Device device) -> Tensor
//       cudaMallocManaged memory of that shape on that CUDA device, freed (cudaFree) when the
//       tensor's storage dies; refused, with the figures, when it asks for more than the device
//       has free (oversubscribed managed memory can stall the card).
//   adamw8::_prefetch(Tensor[] tensors, bool to_device) -> ()
//       cudaMemPrefetchAsync of each tensor's bytes to its device (to_device) or to host memory,
//       on the current stream; refused while the stream is being captured (the prefetch cannot
//       be captured).
//   adamw8::_is_managed(Tensor t) -> bool
//       whether t's memory is managed (cudaPointerGetAttributes).
//   adamw8::_prefetch_location(Tensor t) -> int
//       where t's managed memory was last prefetched: its device's index, -1 for host memory,
//       -2 for nowhere or several places (cudaMemRangeAttributeLastPrefetchLocation).
//
// They take no dispatch (catch-all kernels): the allocation has no tensor input to dispatch
// on, and they are called from Python outside compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace adamw8 {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "adamw8: ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor managed_empty(c10::IntArrayRef size, c10::ScalarType dtype, c10::Device device) {
  TORCH_CHECK(device.is_cuda(), "adamw8: managed (paged) memory is CUDA memory; got device ", device);
  for (const int64_t d : size) TORCH_CHECK(d >= 0, "adamw8: negative dimension ", d, " in size ", size);
  const int64_t index = device.has_index() ? device.index() : c10::cuda::current_device();
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  const int64_t numel = c10::multiply_integers(size);
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  TORCH_CHECK(bytes <= free, "adamw8: paged state of ", bytes, " bytes does not fit in the ", free,
              " bytes free on cuda:", index, " (of ", total, "); adamw8 never oversubscribes managed memory. Free "
              "device memory first, or use a non-paged optimizer");
  void* ptr = nullptr;
  if (bytes > 0) check_cuda(cudaMallocManaged(&ptr, bytes, cudaMemAttachGlobal), "cudaMallocManaged");
  auto deleter = [](void* p) {
    if (p != nullptr) cudaFree(p);  // cudaFree waits for work still using the memory
  };
  return at::from_blob(ptr, size, deleter,
                       at::TensorOptions().dtype(dtype).device(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index))));
}

void prefetch(at::TensorList tensors, bool to_device) {
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(t.is_cuda(), "adamw8: prefetch takes CUDA tensors, got one on ", t.device());
    if (t.numel() == 0) continue;
    c10::cuda::CUDAGuard guard(t.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream, &capturing), "cudaStreamIsCapturing");
    TORCH_CHECK(capturing == cudaStreamCaptureStatusNone,
                "adamw8: cudaMemPrefetchAsync cannot be captured in a CUDA graph; page state in before the capture");
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
#if CUDART_VERSION >= 13000
    cudaMemLocation loc{};
    loc.type = to_device ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
    loc.id = to_device ? t.device().index() : 0;
    check_cuda(cudaMemPrefetchAsync(t.data_ptr(), bytes, loc, 0, stream), "cudaMemPrefetchAsync");
#else
    check_cuda(cudaMemPrefetchAsync(t.data_ptr(), bytes, to_device ? t.device().index() : cudaCpuDeviceId, stream),
               "cudaMemPrefetchAsync");
#endif
  }
}

bool is_managed(const at::Tensor& t) {
  if (!t.is_cuda() || t.data_ptr() == nullptr) return false;
  cudaPointerAttributes attr{};
  check_cuda(cudaPointerGetAttributes(&attr, t.data_ptr()), "cudaPointerGetAttributes");
  return attr.type == cudaMemoryTypeManaged;
}

int64_t prefetch_location(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda() && is_managed(t), "adamw8: _prefetch_location takes a tensor in managed memory");
  if (t.numel() == 0) return -2;
  int location = cudaInvalidDeviceId;
  check_cuda(cudaMemRangeGetAttribute(&location, sizeof(location), cudaMemRangeAttributeLastPrefetchLocation,
                                      t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size()),
             "cudaMemRangeGetAttribute");
  return location == cudaCpuDeviceId ? -1 : (location >= 0 ? location : -2);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(adamw8, m) {
  m.def("_managed_empty(int[] size, ScalarType dtype, Device device) -> Tensor", &managed_empty);
  m.def("_prefetch(Tensor[] tensors, bool to_device) -> ()", &prefetch);
  m.def("_is_managed(Tensor t) -> bool", &is_managed);
  m.def("_prefetch_location(Tensor t) -> int", &prefetch_location);
}

}  // namespace adamw8
