//! Collectives for data-parallel training over libtorch's own c10d engine:
//! a `TCPStore` rendezvous (rank 0 serves it) and a `ProcessGroupGloo` over
//! CPU tensors, through the C shim `csrc/c10d.cpp` (issue 22's transport;
//! used by the training loop, `train::run`, and by synchronised BN).
//!
//! A worker joins with the variables torch's launchers set ([`Rendezvous::
//! from_env`]: `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), or an
//! explicit [`Rendezvous`]. [`ProcessGroup::all_reduce_mean`] averages a
//! list of tensors (gradients) in one flat bucket; [`ProcessGroup::broadcast`]
//! copies rank `root`'s values to every rank (parameters and optimizer
//! state at the start). Every call waits at most the rendezvous timeout: a
//! rank that died or hangs makes the others fail with an error, not wait
//! forever.
//!
//! Unsafe code: the FFI calls into the shim, each in a block with its
//! `SAFETY` note.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;
use tch::{Kind, Tensor};

extern "C" {
    fn qatc_pg_last_error() -> *const c_char;
    fn qatc_pg_new(
        addr: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        iface: *const c_char,
        timeout_ms: i64,
    ) -> *mut c_void;
    fn qatc_pg_port(group: *mut c_void) -> i32;
    fn qatc_pg_allreduce_sum(group: *mut c_void, t: *mut torch_sys::C_tensor) -> i32;
    fn qatc_pg_broadcast(group: *mut c_void, t: *mut torch_sys::C_tensor, root: i32) -> i32;
    fn qatc_pg_barrier(group: *mut c_void) -> i32;
    fn qatc_pg_allreduce_autograd(
        group: *mut c_void,
        t: *mut torch_sys::C_tensor,
    ) -> *mut torch_sys::C_tensor;
    fn qatc_pg_take_autograd_error(buf: *mut c_char, len: i32) -> i32;
    fn qatc_pg_free(group: *mut c_void);
}

/// What can go wrong joining a group or running a collective.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable that is missing or not what it must be.
    #[error("environment variable {name}: {reason}")]
    Env { name: &'static str, reason: String },
    /// A rendezvous that makes no sense (rank outside the world, ...).
    #[error("{0}")]
    Config(String),
    /// libtorch's c10d raised an error (a peer that went away, a timeout,
    /// a port in use, an unreachable master).
    #[error("rank {rank} of {world}: {what}: {message}")]
    C10d {
        rank: usize,
        world: usize,
        what: &'static str,
        message: String,
    },
}

/// Where and how a worker joins its group.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendezvous {
    /// Rank 0's address (it serves the store there).
    pub master_addr: String,
    /// The store's port (0 for rank 0: any free one, see
    /// [`ProcessGroup::port`]).
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    /// The network interface Gloo binds to (`GLOO_SOCKET_IFNAME`, as
    /// torch.distributed reads it); `None`: the address that reaches the
    /// master.
    pub interface: Option<String>,
    /// How long joining and every collective may wait for the others.
    pub timeout: Duration,
}

/// The default wait of joining and of each collective (as
/// torch.distributed's default for Gloo, 30 minutes, is far too long to
/// notice a dead rank in a test or a short run).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Rendezvous {
    /// The rendezvous torchrun-style launchers and SLURM scripts describe:
    /// `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` (all four, or
    /// `Ok(None)` when none of them is set), `GLOO_SOCKET_IFNAME` if set.
    pub fn from_env() -> Result<Option<Rendezvous>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any variable source.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Rendezvous>, DistError> {
        const NAMES: [&str; 4] = ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];
        if NAMES.iter().all(|n| var(n).is_none()) {
            return Ok(None);
        }
        let get = |name: &'static str| {
            var(name).ok_or_else(|| DistError::Env {
                name,
                reason: format!(
                    "not set, but {} is: a distributed worker needs RANK, WORLD_SIZE, MASTER_ADDR \
                     and MASTER_PORT",
                    NAMES
                        .iter()
                        .filter(|n| var(n).is_some())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        };
        let number = |name: &'static str| -> Result<usize, DistError> {
            let v = get(name)?;
            v.trim().parse().map_err(|_| DistError::Env {
                name,
                reason: format!("`{v}` is not a non-negative integer"),
            })
        };
        let port = number("MASTER_PORT")?;
        let port = u16::try_from(port).map_err(|_| DistError::Env {
            name: "MASTER_PORT",
            reason: format!("{port} is not a TCP port"),
        })?;
        let r = Rendezvous {
            master_addr: get("MASTER_ADDR")?,
            master_port: port,
            rank: number("RANK")?,
            world_size: number("WORLD_SIZE")?,
            interface: var("GLOO_SOCKET_IFNAME").filter(|s| !s.is_empty()),
            timeout: DEFAULT_TIMEOUT,
        };
        r.check()?;
        Ok(Some(r))
    }

    fn check(&self) -> Result<(), DistError> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DistError::Config(format!(
                "rank {} is not in a world of {} process(es)",
                self.rank, self.world_size
            )));
        }
        if self.world_size > i32::MAX as usize {
            return Err(DistError::Config(format!(
                "a world of {} processes",
                self.world_size
            )));
        }
        if self.master_addr.is_empty() || self.master_addr.contains('\0') {
            return Err(DistError::Config(format!(
                "master address `{}` is not a host name or address",
                self.master_addr
            )));
        }
        Ok(())
    }
}

/// One process's membership of a group: libtorch's TCPStore and
/// ProcessGroupGloo. Dropping it leaves the group.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world: usize,
    timeout: Duration,
}

// SAFETY: the shim's group is libtorch's ProcessGroupGloo, which
// serialises its own work queue; qatc uses one group from one thread at a
// time (`&mut self` or `&self` calls that wait for their work).
unsafe impl Send for ProcessGroup {}

fn last_error() -> String {
    // SAFETY: the shim's thread-local message is a NUL-terminated string
    // that lives until the next call on this thread; it is copied at once.
    unsafe { CStr::from_ptr(qatc_pg_last_error()) }
        .to_string_lossy()
        .into_owned()
}

impl ProcessGroup {
    /// Joins the group: waits (at most `r.timeout`) until every rank has.
    pub fn join(r: &Rendezvous) -> Result<ProcessGroup, DistError> {
        r.check()?;
        let addr = CString::new(r.master_addr.as_str())
            .map_err(|_| DistError::Config("master address with a NUL byte".into()))?;
        let iface = match &r.interface {
            Some(i) => Some(
                CString::new(i.as_str())
                    .map_err(|_| DistError::Config("interface name with a NUL byte".into()))?,
            ),
            None => None,
        };
        let timeout_ms = r.timeout.as_millis().min(i64::MAX as u128) as i64;
        // SAFETY: the strings are NUL-terminated and outlive the call; the
        // result is a group owned by the caller, or null on an error.
        let raw = unsafe {
            qatc_pg_new(
                addr.as_ptr(),
                i32::from(r.master_port),
                r.rank as i32,
                r.world_size as i32,
                iface.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
                timeout_ms,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| DistError::C10d {
            rank: r.rank,
            world: r.world_size,
            what: "joining the group",
            message: format!(
                "{} (master {}:{}, timeout {:?})",
                last_error(),
                r.master_addr,
                r.master_port,
                r.timeout
            ),
        })?;
        Ok(ProcessGroup {
            raw,
            rank: r.rank,
            world: r.world_size,
            timeout: r.timeout,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The port the store listens on (rank 0 asked for port 0 gets the
    /// one the system chose).
    pub fn port(&self) -> u16 {
        // SAFETY: `raw` is a live group.
        let p = unsafe { qatc_pg_port(self.raw.as_ptr()) };
        u16::try_from(p).unwrap_or(0)
    }

    fn check(&self, rc: i32, what: &'static str) -> Result<(), DistError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(DistError::C10d {
                rank: self.rank,
                world: self.world,
                what,
                message: format!(
                    "{} (a collective waits at most {:?} for the others)",
                    last_error(),
                    self.timeout
                ),
            })
        }
    }

    fn contiguous_cpu(t: &Tensor, what: &'static str) -> Result<(), DistError> {
        if t.device() != tch::Device::Cpu || !t.is_contiguous() {
            return Err(DistError::Config(format!(
                "{what}: Gloo collectives here take contiguous CPU tensors"
            )));
        }
        Ok(())
    }

    /// Sums `t` over all ranks, in place (a contiguous CPU tensor).
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
        Self::contiguous_cpu(t, "all_reduce")?;
        // SAFETY: `raw` is a live group, `t` a live tensor the call writes
        // in place and does not keep.
        let rc = unsafe { qatc_pg_allreduce_sum(self.raw.as_ptr(), t.as_mut_ptr()) };
        self.check(rc, "all_reduce")
    }

    /// Averages every tensor of `ts` over all ranks, in place, in one
    /// collective: the tensors are copied into one flat float32 bucket,
    /// summed, divided by the world size and copied back (each keeps its
    /// kind and device).
    pub fn all_reduce_mean(&self, ts: &mut [Tensor]) -> Result<(), DistError> {
        if ts.is_empty() {
            return Ok(());
        }
        let flat: Vec<Tensor> = ts
            .iter()
            .map(|t| {
                t.to_device(tch::Device::Cpu)
                    .to_kind(Kind::Float)
                    .reshape([-1])
            })
            .collect();
        let mut bucket = Tensor::cat(&flat, 0).contiguous();
        self.all_reduce_sum(&mut bucket)?;
        let bucket = bucket / self.world as f64;
        let mut at = 0i64;
        for t in ts.iter_mut() {
            let n = t.numel() as i64;
            let part = bucket
                .narrow(0, at, n)
                .reshape(t.size())
                .to_kind(t.kind())
                .to_device(t.device());
            tch::no_grad(|| t.copy_(&part));
            at += n;
        }
        Ok(())
    }

    /// The sum of `t` over all ranks as a new tensor that autograd
    /// differentiates: the gradient of `t` on each rank is the sum over
    /// ranks of the result's gradients (what synchronised BN needs: every
    /// rank's statistics depend on every rank's activations). Works on any
    /// device (the collective runs on a CPU copy). An error, forward or
    /// backward, does not stop autograd (a model's forward cannot return
    /// one): the tensor is left unreduced and [`Self::take_autograd_error`]
    /// returns the error, which the caller checks after the pass.
    pub fn all_reduce_autograd(&self, t: &Tensor) -> Tensor {
        // SAFETY: `raw` is a live group that outlives the graph (the
        // training loop keeps it until the run ends); `t` is a live tensor
        // the call does not keep; the result, never null, is a new tensor
        // we own.
        unsafe {
            Tensor::from_ptr(qatc_pg_allreduce_autograd(
                self.raw.as_ptr(),
                t.as_ptr().cast_mut(),
            ))
        }
    }

    /// The first error a collective of [`Self::all_reduce_autograd`] met
    /// (forward or backward) since the last call, if any.
    pub fn take_autograd_error(&self) -> Result<(), DistError> {
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` is writable for its length; the shim writes a
        // NUL-terminated string within it.
        let n = unsafe { qatc_pg_take_autograd_error(buf.as_mut_ptr().cast(), buf.len() as i32) };
        if n == 0 {
            return Ok(());
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Err(DistError::C10d {
            rank: self.rank,
            world: self.world,
            what: "all_reduce in autograd",
            message: String::from_utf8_lossy(&buf[..end]).into_owned(),
        })
    }

    /// Overwrites every tensor of `ts` (any kind, layout or device) with
    /// rank `root`'s values, one collective each.
    pub fn broadcast_all(&self, ts: &[Tensor], root: usize) -> Result<(), DistError> {
        for t in ts {
            let mut c = t.to_device(tch::Device::Cpu).contiguous().copy();
            self.broadcast(&mut c, root)?;
            let c = c.to_device(t.device());
            tch::no_grad(|| t.shallow_clone().copy_(&c));
        }
        Ok(())
    }

    /// Checks that every rank says the same `text` about `what` (the spec,
    /// profile and settings of a run): rank 0's text is broadcast, each
    /// rank compares it line by line, and all learn which ranks differ. An
    /// error on every rank if one does, naming the ranks and, on the
    /// differing ones, the first differing line of both.
    pub fn check_same(&self, what: &str, text: &str) -> Result<(), DistError> {
        let cpu = (Kind::Int64, tch::Device::Cpu);
        let mut len = Tensor::from_slice(&[text.len() as i64]);
        self.broadcast(&mut len, 0)?;
        let n = len.int64_value(&[0]);
        let mut bytes = if self.rank == 0 {
            Tensor::from_slice(text.as_bytes())
        } else {
            Tensor::zeros([n], (Kind::Uint8, tch::Device::Cpu))
        };
        self.broadcast(&mut bytes, 0)?;
        let root: Vec<u8> = Vec::<u8>::try_from(&bytes).unwrap_or_default();
        let root = String::from_utf8_lossy(&root).into_owned();
        let mine = root != text;
        let mut flags = Tensor::zeros([self.world as i64], cpu);
        if mine {
            let _ = flags.get(self.rank as i64).fill_(1);
        }
        self.all_reduce_sum(&mut flags)?;
        let flags = Vec::<i64>::try_from(&flags).unwrap_or_default();
        let ranks: Vec<String> = flags
            .iter()
            .enumerate()
            .filter(|(_, &f)| f != 0)
            .map(|(r, _)| r.to_string())
            .collect();
        if ranks.is_empty() {
            return Ok(());
        }
        let detail = if mine {
            let (a, b) = text
                .lines()
                .zip(root.lines().chain(std::iter::repeat("")))
                .find(|(a, b)| a != b)
                .unwrap_or((text, &root));
            format!(": this rank has `{a}`, rank 0 `{b}`")
        } else {
            String::new()
        };
        Err(DistError::Config(format!(
            "rank {} of {}: rank(s) {} differ from rank 0 in {what}{detail}",
            self.rank,
            self.world,
            ranks.join(", ")
        )))
    }

    /// Overwrites `t` on every rank with rank `root`'s values.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        Self::contiguous_cpu(t, "broadcast")?;
        if root >= self.world {
            return Err(DistError::Config(format!(
                "broadcast from rank {root} in a world of {}",
                self.world
            )));
        }
        // SAFETY: as in `all_reduce_sum`.
        let rc = unsafe { qatc_pg_broadcast(self.raw.as_ptr(), t.as_mut_ptr(), root as i32) };
        self.check(rc, "broadcast")
    }

    /// Waits until every rank got here.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: `raw` is a live group.
        let rc = unsafe { qatc_pg_barrier(self.raw.as_ptr()) };
        self.check(rc, "barrier")
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` was returned by `qatc_pg_new` and is freed once.
        unsafe { qatc_pg_free(self.raw.as_ptr()) };
    }
}
