// Declarations of the gloo types that libtorch's c10d headers name.
//
// The torch wheel ships c10d's headers (`torch/csrc/distributed/c10d/*.hpp`)
// and gloo's compiled code inside libtorch_cpu.so, but not gloo's own
// headers, which `ProcessGroupGloo.hpp` includes. That header only holds
// gloo objects behind `shared_ptr` / `unique_ptr` members and names them in
// inline code qatc never instantiates, so declarations are enough for it to
// compile, and the layout of `c10d::ProcessGroupGloo` still comes from the
// shipped header itself. `gloo::rendezvous::Store` is the base of the
// header's inline `GlooStore` and needs its interface (gloo's, unchanged
// in the gloo torch 2.13 builds with); `gloo::Context::setTimeout` is
// named by an inline member. Nothing here is defined: a use of anything
// else fails to link instead of misbehaving.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
namespace rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys,
                    const std::chrono::milliseconds& timeout) = 0;
};
}  // namespace rendezvous
}  // namespace gloo
