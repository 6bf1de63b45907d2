// Data-parallel collectives for qatc training: libtorch's own c10d engine
// (TCPStore rendezvous, ProcessGroupGloo on CPU tensors), behind a small C
// API that `src/dist.rs` wraps. No transport of our own: the store, the
// process group and the collectives are libtorch's, as
// torch.distributed's are.
//
// Errors: every function catches what libtorch throws (c10::Error, a
// timeout, a peer that went away) and returns null / non-zero; then
// qatc_pg_last_error() says why (thread-local).

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <exception>
#include <string>
#include <vector>

namespace {

thread_local std::string last_error;

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
};

// An exception's message, without the C++ backtrace libtorch's errors
// carry in what().
std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    return c->what_without_backtrace();
  }
  return e.what();
}

template <typename F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = message_of(e);
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

// The error a collective inside an autograd function met (thrown out of
// autograd it would end the process through tch's panicking backward):
// kept here, the tensor left unreduced, and read by
// qatc_pg_take_autograd_error after the forward or backward pass.
std::mutex autograd_error_lock;
std::string autograd_error;

void allreduce_in_place(Group* g, at::Tensor& t) {
  try {
    std::vector<at::Tensor> ts = {t};
    g->pg->allreduce(ts)->wait(g->timeout);
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(autograd_error_lock);
    if (autograd_error.empty()) autograd_error = message_of(e);
  }
}

// y = sum over ranks of x, differentiable: every rank's y depends on every
// rank's x, so the gradient of x is the sum over ranks of y's gradients
// (torch.distributed.nn.functional.all_reduce).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor y = x.detach().to(at::kCPU).contiguous().clone();
    allreduce_in_place(reinterpret_cast<Group*>(group), y);
    return y.to(x.device());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    at::Tensor d = grads[0].to(at::kCPU).contiguous().clone();
    allreduce_in_place(g, d);
    return {d.to(grads[0].device()), at::Tensor()};
  }
};

}  // namespace

extern "C" {

const char* qatc_pg_last_error() { return last_error.c_str(); }

// Joins the group of `world` processes whose rank 0 serves the TCPStore at
// addr:port (rank 0 listens there; port 0: any free port, see
// qatc_pg_port). `iface`: the network interface Gloo binds to (null or
// empty: the address that reaches `addr`, loopback for a local master).
// Blocks until every rank joined or `timeout_ms` passed.
void* qatc_pg_new(const char* addr, int port, int rank, int world, const char* iface,
                  long long timeout_ms) {
  Group* g = nullptr;
  int rc = guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (iface != nullptr && iface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    g = new Group{store, pg, timeout};
  });
  return rc == 0 ? g : nullptr;
}

// The port the store listens on (rank 0's choice when asked for port 0).
int qatc_pg_port(void* group) {
  return static_cast<Group*>(group)->store->getPort();
}

// Sums `t` (a contiguous CPU tensor) over all ranks, in place.
int qatc_pg_allreduce_sum(void* group, at::Tensor* t) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts = {*t};
    g->pg->allreduce(ts)->wait(g->timeout);
  });
}

// Overwrites `t` on every rank with rank `root`'s.
int qatc_pg_broadcast(void* group, at::Tensor* t, int root) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts = {*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    g->pg->broadcast(ts, o)->wait(g->timeout);
  });
}

// Waits for every rank.
int qatc_pg_barrier(void* group) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    g->pg->barrier()->wait(g->timeout);
  });
}

// y = the sum of `t` over all ranks, with the sum's gradient (see
// AllReduceSum). Never null: on an error `t` itself comes back and the
// error is kept for qatc_pg_take_autograd_error.
at::Tensor* qatc_pg_allreduce_autograd(void* group, at::Tensor* t) {
  try {
    return new at::Tensor(AllReduceSum::apply(*t, reinterpret_cast<int64_t>(group)));
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(autograd_error_lock);
    if (autograd_error.empty()) autograd_error = message_of(e);
  }
  return new at::Tensor(*t);
}

// The first error of a collective inside autograd since the last call
// (empty: none), copied into `buf` (NUL-terminated, cut to `len`); returns
// its length, 0 for none.
int qatc_pg_take_autograd_error(char* buf, int len) {
  std::lock_guard<std::mutex> lock(autograd_error_lock);
  int n = static_cast<int>(autograd_error.size());
  if (n > 0 && len > 0) {
    int k = std::min(n, len - 1);
    std::memcpy(buf, autograd_error.data(), static_cast<std::size_t>(k));
    buf[k] = '\0';
  }
  autograd_error.clear();
  return n;
}

void qatc_pg_free(void* group) {
  guarded([&] { delete static_cast<Group*>(group); });
}

}  // extern "C"
