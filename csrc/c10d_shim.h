// c10d_shim: the small part of libtorch's c10d (TCPStore, PrefixStore, ProcessGroupGloo,
// ProcessGroupNCCL) that tchcv's `dist` module needs, behind a C ABI.
//
// Conventions: every function that can fail returns NULL on success or an error message
// allocated with malloc, which the caller frees with tchcv_c10d_free_error. No C++ exception
// crosses this boundary. Tensors are `at::Tensor*` (tch's `C_tensor`).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tchcv_store tchcv_store;
typedef struct tchcv_comm tchcv_comm;
typedef void* tchcv_tensor;

// Bit 0: Gloo compiled in, bit 1: NCCL compiled in.
int tchcv_c10d_backends(void);
void tchcv_c10d_free_error(char* message);
void tchcv_c10d_free_bytes(uint8_t* bytes);

// A TCPStore client of host:port; with is_server, this process also hosts the store and
// (when wait_workers) waits until world_size clients joined. timeout_ms bounds connecting
// and every blocking get/wait.
char* tchcv_store_tcp(const char* host, uint16_t port, int is_server, int64_t world_size,
                      int wait_workers, int64_t timeout_ms, tchcv_store** out);
// The same store seen through a key prefix (torchrun's agent store: "/worker/attempt_N").
char* tchcv_store_prefixed(tchcv_store* store, const char* prefix, tchcv_store** out);
// A new connection to the same store (for use from another thread).
char* tchcv_store_clone(tchcv_store* store, tchcv_store** out);
void tchcv_store_free(tchcv_store* store);

char* tchcv_store_set(tchcv_store* store, const char* key, const uint8_t* value, size_t len);
// Blocks up to the store's timeout until `key` exists; *value is freed with tchcv_c10d_free_bytes.
char* tchcv_store_get(tchcv_store* store, const char* key, uint8_t** value, size_t* len);
char* tchcv_store_add(tchcv_store* store, const char* key, int64_t delta, int64_t* out);
// *exists = 1 when every key exists; never blocks.
char* tchcv_store_check(tchcv_store* store, const char* const* keys, size_t n, int* exists);

// ProcessGroupGloo over `store` (devices from GLOO_SOCKET_IFNAME, else the default device).
char* tchcv_comm_gloo(tchcv_store* store, int rank, int size, int64_t timeout_ms,
                      tchcv_comm** out);
// ProcessGroupNCCL over `store`, for CUDA device `device_index`.
char* tchcv_comm_nccl(tchcv_store* store, int rank, int size, int64_t timeout_ms,
                      int device_index, tchcv_comm** out);
// Shut the backend down (NCCL: abort communicators, stop the watchdog) and free it.
void tchcv_comm_free(tchcv_comm* comm);

// One collective per tensor, all issued before any is waited on; each waits up to timeout_ms.
// Tensors must be dense and contiguous, on the backend's device kind.
char* tchcv_comm_allreduce_sum(tchcv_comm* comm, const tchcv_tensor* tensors, size_t n,
                               int64_t timeout_ms);
char* tchcv_comm_broadcast(tchcv_comm* comm, const tchcv_tensor* tensors, size_t n, int root,
                           int64_t timeout_ms);
// device_index < 0: no device hint (Gloo).
char* tchcv_comm_barrier(tchcv_comm* comm, int device_index, int64_t timeout_ms);

// param.grad = grad (Python's `p.grad = g`), for parameters without a gradient yet.
char* tchcv_set_grad(tchcv_tensor param, tchcv_tensor grad);

#ifdef __cplusplus
}
#endif
