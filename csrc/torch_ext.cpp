// torch_ext: see torch_ext.h. Compiled by build.rs against the wheel's libtorch headers; needs
// no CUDA headers (the allocator statistics go through c10's device-generic DeviceAllocator).
#include "torch_ext.h"
#include "guarded.h"

#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>

namespace {

template <typename F>
char* guarded(F&& body) {
  return tchcv::guarded("libtorch", std::forward<F>(body));
}

c10::DeviceType device_type_of(int device_type) {
  switch (device_type) {
    case 0:
      return c10::DeviceType::CPU;
    case 1:
      return c10::DeviceType::CUDA;
    default:
      TORCH_CHECK(false, "unknown device type ", device_type, " (0 = CPU, 1 = CUDA)");
  }
}

at::ScalarType scalar_type_of(int scalar_type) {
  TORCH_CHECK(scalar_type >= 0 &&
                  scalar_type < static_cast<int>(at::ScalarType::NumOptions),
              "unknown scalar type ", scalar_type);
  return static_cast<at::ScalarType>(scalar_type);
}

c10::MemoryFormat memory_format_of(int memory_format) {
  switch (memory_format) {
    case 0:
      return c10::MemoryFormat::Contiguous;
    case 1:
      return c10::MemoryFormat::ChannelsLast;
    default:
      TORCH_CHECK(false, "unknown memory format ", memory_format,
                  " (0 = contiguous, 1 = channels-last)");
  }
}

const at::Tensor& tensor_of(tchcv_tensor tensor) {
  TORCH_CHECK(tensor != nullptr, "null tensor");
  return *static_cast<at::Tensor*>(tensor);
}

constexpr size_t kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

}  // namespace

extern "C" {

char* tchcv_autocast_get(int device_type, int* enabled, int* scalar_type) {
  return guarded([&] {
    const auto type = device_type_of(device_type);
    *enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *scalar_type = static_cast<int>(at::autocast::get_autocast_dtype(type));
  });
}

char* tchcv_autocast_set(int device_type, int enabled, int scalar_type) {
  return guarded([&] {
    const auto type = device_type_of(device_type);
    if (scalar_type >= 0) {
      at::autocast::set_autocast_dtype(type, scalar_type_of(scalar_type));
    }
    at::autocast::set_autocast_enabled(type, enabled != 0);
  });
}

int tchcv_autocast_enter(void) {
  return at::autocast::increment_nesting();
}

int tchcv_autocast_exit(void) {
  const int depth = at::autocast::decrement_nesting();
  if (depth == 0) {
    at::autocast::clear_cache();
  }
  return depth;
}

char* tchcv_contiguous(tchcv_tensor tensor, int memory_format, tchcv_tensor* out) {
  return guarded([&] {
    *out = new at::Tensor(tensor_of(tensor).contiguous(memory_format_of(memory_format)));
  });
}

char* tchcv_is_contiguous(tchcv_tensor tensor, int memory_format, int* out) {
  return guarded([&] {
    *out = tensor_of(tensor).is_contiguous(memory_format_of(memory_format)) ? 1 : 0;
  });
}

char* tchcv_device_memory(int device_type, int index, int64_t* allocated, int64_t* peak_allocated,
                          int64_t* reserved, int64_t* peak_reserved) {
  return guarded([&] {
    auto* allocator = c10::getDeviceAllocator(device_type_of(device_type));
    TORCH_CHECK(allocator->initialized(), "the device allocator is not initialized");
    const auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(index));
    *allocated = stats.allocated_bytes[kAggregate].current;
    *peak_allocated = stats.allocated_bytes[kAggregate].peak;
    *reserved = stats.reserved_bytes[kAggregate].current;
    *peak_reserved = stats.reserved_bytes[kAggregate].peak;
  });
}

char* tchcv_device_memory_reset_peak(int device_type, int index) {
  return guarded([&] {
    auto* allocator = c10::getDeviceAllocator(device_type_of(device_type));
    TORCH_CHECK(allocator->initialized(), "the device allocator is not initialized");
    allocator->resetPeakStats(static_cast<c10::DeviceIndex>(index));
  });
}

}  // extern "C"
