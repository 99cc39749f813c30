// torch_ext: see torch_ext.h. Compiled by build.rs against the wheel's libtorch headers; needs
// no CUDA headers (the allocator statistics go through c10's device-generic DeviceAllocator).
#include "torch_ext.h"
#include "guarded.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
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

// ---- operator counting ------------------------------------------------------------------------

std::mutex op_count_mutex;
std::optional<at::CallbackHandle> op_count_handle;  // guarded by op_count_mutex
// The operator calls: each its name, then the names of the calls it made, tab-separated.
std::vector<std::string> op_calls;  // guarded by op_count_mutex

// Per thread, the operator calls being run, innermost last: each its slot in op_calls and its
// line under way.
thread_local std::vector<std::pair<size_t, std::string>> op_stack;

// Calls are reported in the order they started (as torch.profiler lists its events): a call
// takes its slot on entry and fills it on exit.
std::unique_ptr<at::ObserverContext> op_count_enter(const at::RecordFunction& fn) {
  if (!op_stack.empty()) {
    op_stack.back().second.append("\t").append(fn.name());
  }
  size_t slot = 0;
  {
    std::lock_guard<std::mutex> lock(op_count_mutex);
    slot = op_calls.size();
    op_calls.emplace_back(fn.name());
  }
  op_stack.emplace_back(slot, fn.name());
  return nullptr;
}

void op_count_exit(const at::RecordFunction&, at::ObserverContext*) {
  // A callback registered while an operator was running sees its exit without its entry.
  if (op_stack.empty()) {
    return;
  }
  auto [slot, line] = std::move(op_stack.back());
  op_stack.pop_back();
  std::lock_guard<std::mutex> lock(op_count_mutex);
  if (slot < op_calls.size()) {
    op_calls[slot] = std::move(line);
  }
}

// ---- operator timing --------------------------------------------------------------------------

std::mutex op_time_mutex;
std::optional<at::CallbackHandle> op_time_handle;  // guarded by op_time_mutex
// Per operator name: outermost calls and their nanoseconds.
std::map<std::string, std::pair<int64_t, int64_t>> op_times;  // guarded by op_time_mutex
// Bumped by each start, so a thread's depth left over from an earlier timing is discarded.
std::atomic<uint64_t> op_time_generation{0};

// Per thread: the timing generation it last saw, its operator nesting depth and when its
// outermost call started.
struct OpTimeThread {
  uint64_t generation = 0;
  int depth = 0;
  std::chrono::steady_clock::time_point started;
};
thread_local OpTimeThread op_time_thread;

std::unique_ptr<at::ObserverContext> op_time_enter(const at::RecordFunction&) {
  auto& t = op_time_thread;
  const uint64_t generation = op_time_generation.load(std::memory_order_relaxed);
  if (t.generation != generation) {
    t = OpTimeThread{generation, 0, {}};
  }
  if (t.depth++ == 0) {
    t.started = std::chrono::steady_clock::now();
  }
  return nullptr;
}

void op_time_exit(const at::RecordFunction& fn, at::ObserverContext*) {
  auto& t = op_time_thread;
  // A callback registered while an operator was running sees its exit without its entry.
  if (t.generation != op_time_generation.load(std::memory_order_relaxed) || t.depth == 0) {
    return;
  }
  if (--t.depth > 0) {
    return;
  }
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now() - t.started)
                      .count();
  std::lock_guard<std::mutex> lock(op_time_mutex);
  auto& entry = op_times[fn.name()];
  entry.first += 1;
  entry.second += ns;
}

std::vector<at::Tensor> tensors_of(tchcv_tensor* list, int64_t n) {
  TORCH_CHECK(n >= 0 && (n == 0 || list != nullptr), "bad tensor list of length ", n);
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(tensor_of(list[i]));
  }
  return out;
}

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

int tchcv_cudnn_benchmark(void) {
  return at::globalContext().benchmarkCuDNN() ? 1 : 0;
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

char* tchcv_read_back_i64(tchcv_tensor tensor, int64_t* out, int64_t len) {
  return guarded([&] {
    // A named scope, so an operator count sees this wait for the device on any device.
    RECORD_FUNCTION("tchcv::read_back", std::vector<c10::IValue>());
    const auto& t = tensor_of(tensor);
    TORCH_CHECK(t.numel() == len, "read_back: the tensor has ", t.numel(), " elements, not ", len);
    const auto host = t.to(at::kCPU, at::kLong).contiguous();
    std::memcpy(out, host.const_data_ptr<int64_t>(), static_cast<size_t>(len) * sizeof(int64_t));
  });
}

char* tchcv_op_count_start(void) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(op_count_mutex);
    TORCH_CHECK(!op_count_handle.has_value(), "an operator count is already running");
    op_calls.clear();
    op_stack.clear();  // what a count stopped mid-operator left on this thread
    op_count_handle = at::addGlobalCallback(
        at::RecordFunctionCallback(op_count_enter, op_count_exit)
            .scopes({at::RecordScope::FUNCTION})
            .needsInputs(false)
            .needsOutputs(false));
  });
}

char* tchcv_op_count_stop(char** report) {
  return guarded([&] {
    std::optional<at::CallbackHandle> handle;
    {
      std::lock_guard<std::mutex> lock(op_count_mutex);
      TORCH_CHECK(op_count_handle.has_value(), "no operator count is running");
      handle = op_count_handle;
      op_count_handle.reset();
    }
    at::removeCallback(*handle);
    std::ostringstream out;
    std::lock_guard<std::mutex> lock(op_count_mutex);
    for (const auto& line : op_calls) {
      out << line << '\n';
    }
    op_calls.clear();
    *report = tchcv::copy_message(out.str());
  });
}

char* tchcv_op_time_start(void) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(op_time_mutex);
    TORCH_CHECK(!op_time_handle.has_value(), "an operator timing is already running");
    op_times.clear();
    op_time_generation.fetch_add(1, std::memory_order_relaxed);
    op_time_handle = at::addGlobalCallback(
        at::RecordFunctionCallback(op_time_enter, op_time_exit)
            .scopes({at::RecordScope::FUNCTION})
            .needsInputs(false)
            .needsOutputs(false));
  });
}

char* tchcv_op_time_stop(char** report) {
  return guarded([&] {
    std::optional<at::CallbackHandle> handle;
    {
      std::lock_guard<std::mutex> lock(op_time_mutex);
      TORCH_CHECK(op_time_handle.has_value(), "no operator timing is running");
      handle = op_time_handle;
      op_time_handle.reset();
    }
    at::removeCallback(*handle);
    std::ostringstream out;
    std::lock_guard<std::mutex> lock(op_time_mutex);
    for (const auto& [name, entry] : op_times) {
      out << name << '\t' << entry.first << '\t' << entry.second << '\n';
    }
    op_times.clear();
    *report = tchcv::copy_message(out.str());
  });
}

char* tchcv_grad_set_none(tchcv_tensor tensor) {
  return guarded([&] {
    at::Tensor t = tensor_of(tensor);
    t.mutable_grad().reset();
  });
}

char* tchcv_fused_sgd(tchcv_tensor* params, tchcv_tensor* grads, tchcv_tensor* bufs, int64_t n,
                      double weight_decay, double momentum, double lr, int nesterov,
                      int is_first_step) {
  return guarded([&] {
    const auto p = tensors_of(params, n);
    const auto g = tensors_of(grads, n);
    const auto b = momentum != 0.0 ? tensors_of(bufs, n) : std::vector<at::Tensor>{};
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, /*dampening=*/0.0, nesterov != 0,
                    /*maximize=*/false, is_first_step != 0);
  });
}

char* tchcv_fused_adam(tchcv_tensor* params, tchcv_tensor* grads, tchcv_tensor* exp_avgs,
                       tchcv_tensor* exp_avg_sqs, int64_t n, double lr, double beta1, double beta2,
                       double weight_decay, double eps, int decoupled, int64_t step) {
  return guarded([&] {
    const auto p = tensors_of(params, n);
    if (p.empty()) {
      return;
    }
    const auto g = tensors_of(grads, n);
    const auto m = tensors_of(exp_avgs, n);
    const auto v = tensors_of(exp_avg_sqs, n);
    // The kernels read each parameter's step count from a float scalar on its device.
    const auto count = at::full({}, static_cast<double>(step),
                                at::TensorOptions().dtype(at::kFloat).device(p[0].device()));
    const std::vector<at::Tensor> steps(p.size(), count);
    if (decoupled != 0) {
      at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false);
    } else {
      at::_fused_adam_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps,
                       /*amsgrad=*/false, /*maximize=*/false);
    }
  });
}

}  // extern "C"
