// Shared by the C shims (c10d_shim.cpp, torch_ext.cpp): C++ exceptions become malloc'd
// messages at the C boundary, so none crosses into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

namespace tchcv {

// A malloc'd copy of `message` (freed by the caller with free()).
inline char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// Run `body`: NULL on success, else the exception's message (c10 errors without their
// backtrace); `what` names the library in the message of an unknown exception.
template <typename F>
char* guarded(const char* what, F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message(std::string("unknown C++ exception in ") + what);
  }
}

}  // namespace tchcv
