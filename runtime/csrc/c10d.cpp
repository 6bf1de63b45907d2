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

#include <chrono>
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

template <typename F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

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

void qatc_pg_free(void* group) {
  guarded([&] { delete static_cast<Group*>(group); });
}

}  // extern "C"
