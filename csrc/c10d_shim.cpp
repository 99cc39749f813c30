// c10d_shim: see c10d_shim.h. Compiled by build.rs with -DUSE_C10D_GLOO (and -DUSE_C10D_NCCL
// when NCCL's header and libtorch_cuda are present) against the libtorch headers of the wheel.
#include "c10d_shim.h"
#include "guarded.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct tchcv_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct tchcv_comm {
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace {

using tchcv::copy_message;

// Run `body`; any exception becomes a malloc'd message.
template <typename F>
char* guarded(F&& body) {
  return tchcv::guarded("c10d", std::forward<F>(body));
}

std::chrono::milliseconds millis(int64_t ms) {
  return std::chrono::milliseconds(ms);
}

std::vector<at::Tensor> tensor_list(const tchcv_tensor* tensors, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    list.push_back(*static_cast<at::Tensor*>(tensors[i]));
  }
  return list;
}

// Wait for every work; the first failure is rethrown after all were waited on, so no work is
// left running against tensors the caller is about to free.
void wait_all(std::vector<c10::intrusive_ptr<c10d::Work>>& works, int64_t timeout_ms) {
  std::exception_ptr first;
  for (auto& work : works) {
    try {
      work->wait(millis(timeout_ms));
    } catch (...) {
      if (!first) {
        first = std::current_exception();
      }
    }
  }
  if (first) {
    std::rethrow_exception(first);
  }
}

std::vector<std::string> split_list(const char* text) {
  std::vector<std::string> items;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (!item.empty()) {
      items.push_back(item);
    }
  }
  return items;
}

}  // namespace

extern "C" {

int tchcv_c10d_backends(void) {
  int backends = 1;
#ifdef USE_C10D_NCCL
  backends |= 2;
#endif
  return backends;
}

void tchcv_c10d_free_error(char* message) {
  std::free(message);
}

void tchcv_c10d_free_bytes(uint8_t* bytes) {
  std::free(bytes);
}

char* tchcv_store_tcp(const char* host, uint16_t port, int is_server, int64_t world_size,
                      int wait_workers, int64_t timeout_ms, tchcv_store** out) {
  return guarded([&] {
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = is_server != 0;
    options.numWorkers = static_cast<size_t>(world_size);
    options.waitWorkers = wait_workers != 0;
    options.timeout = millis(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    *out = new tchcv_store{store};
  });
}

char* tchcv_store_prefixed(tchcv_store* store, const char* prefix, tchcv_store** out) {
  return guarded([&] {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store->store);
    *out = new tchcv_store{prefixed};
  });
}

char* tchcv_store_clone(tchcv_store* store, tchcv_store** out) {
  return guarded([&] { *out = new tchcv_store{store->store->clone()}; });
}

void tchcv_store_free(tchcv_store* store) {
  try {
    delete store;
  } catch (...) {
  }
}

char* tchcv_store_set(tchcv_store* store, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] { store->store->set(key, std::vector<uint8_t>(value, value + len)); });
}

char* tchcv_store_get(tchcv_store* store, const char* key, uint8_t** value, size_t* len) {
  return guarded([&] {
    std::vector<uint8_t> bytes = store->store->get(key);
    *len = bytes.size();
    *value = static_cast<uint8_t*>(std::malloc(bytes.size() + 1));
    if (*value == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(*value, bytes.data(), bytes.size());
  });
}

char* tchcv_store_add(tchcv_store* store, const char* key, int64_t delta, int64_t* out) {
  return guarded([&] { *out = store->store->add(key, delta); });
}

char* tchcv_store_check(tchcv_store* store, const char* const* keys, size_t n, int* exists) {
  return guarded([&] {
    std::vector<std::string> list(keys, keys + n);
    *exists = store->store->check(list) ? 1 : 0;
  });
}

char* tchcv_comm_gloo(tchcv_store* store, int rank, int size, int64_t timeout_ms,
                      tchcv_comm** out) {
  return guarded([&] {
    auto options = c10d::ProcessGroupGloo::Options::create(millis(timeout_ms));
    const char* interfaces = std::getenv("GLOO_SOCKET_IFNAME");
    if (interfaces != nullptr && interfaces[0] != '\0') {
      for (const auto& name : split_list(interfaces)) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      }
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store->store, rank, size, options);
    *out = new tchcv_comm{backend};
  });
}

char* tchcv_comm_nccl(tchcv_store* store, int rank, int size, int64_t timeout_ms,
                      int device_index, tchcv_comm** out) {
#ifdef USE_C10D_NCCL
  return guarded([&] {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = millis(timeout_ms);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store->store, rank, size, options);
    *out = new tchcv_comm{backend};
  });
#else
  (void)store;
  (void)rank;
  (void)size;
  (void)timeout_ms;
  (void)device_index;
  (void)out;
  return copy_message(
      "NCCL is not compiled in (build.rs found no nccl.h or no libtorch_cuda; see tchcv info)");
#endif
}

void tchcv_comm_free(tchcv_comm* comm) {
  try {
    comm->backend->shutdown();
  } catch (...) {
  }
  try {
    delete comm;
  } catch (...) {
  }
}

char* tchcv_comm_allreduce_sum(tchcv_comm* comm, const tchcv_tensor* tensors, size_t n,
                               int64_t timeout_ms) {
  return guarded([&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    options.timeout = millis(timeout_ms);
    for (auto& tensor : tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{tensor};
      works.push_back(comm->backend->allreduce(one, options));
    }
    wait_all(works, timeout_ms);
  });
}

char* tchcv_comm_broadcast(tchcv_comm* comm, const tchcv_tensor* tensors, size_t n, int root,
                           int64_t timeout_ms) {
  return guarded([&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = millis(timeout_ms);
    for (auto& tensor : tensor_list(tensors, n)) {
      std::vector<at::Tensor> one{tensor};
      works.push_back(comm->backend->broadcast(one, options));
    }
    wait_all(works, timeout_ms);
  });
}

char* tchcv_comm_barrier(tchcv_comm* comm, int device_index, int64_t timeout_ms) {
  return guarded([&] {
    c10d::BarrierOptions options;
    options.timeout = millis(timeout_ms);
    if (device_index >= 0) {
      options.device_ids = {device_index};
    }
    std::vector<c10::intrusive_ptr<c10d::Work>> works{comm->backend->barrier(options)};
    wait_all(works, timeout_ms);
  });
}

char* tchcv_set_grad(tchcv_tensor param, tchcv_tensor grad) {
  return guarded([&] {
    static_cast<at::Tensor*>(param)->mutable_grad() = *static_cast<at::Tensor*>(grad);
  });
}

}  // extern "C"
