//! Data-parallel training over c10d ([`crate::dist`]): the flags, joining
//! the group from the launcher variables, the checks that every rank runs
//! the same thing, the start from rank 0's state, and `--nproc`, the local
//! launcher (what `torchrun --nproc-per-node N` does for a PyTorch script).
//!
//! The split of the work (the training loop, `session`, does it):
//!
//! - `--batch-size` is the global batch: each of the `W` ranks takes its
//!   `1/W` part of every batch of the epoch's shared shuffled order
//!   ([`qatc_data::Shard`]; it must divide by `W`); the last, smaller
//!   batch is kept, as one process keeps it, and cut as evenly;
//! - each rank's loss is its part's cross-entropy sum times `W` over the
//!   whole batch's size (plus the clipping penalty), so the mean of the
//!   ranks' gradients, one all-reduce of one bucket after backward (tch
//!   has no backward hooks to overlap it with), is the gradient of the
//!   whole batch's mean loss, the clipping values' included;
//! - at the start every variable (parameters and buffers) and the
//!   optimizer state are broadcast from rank 0;
//! - rank 0 alone evaluates and writes the run directory (checkpoints,
//!   metrics, TensorBoard, progress); every rank reads it on `--resume`.

use crate::dist::{ProcessGroup, Rendezvous, DEFAULT_TIMEOUT};
use clap::{Args, ValueEnum};
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The collective backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Gloo (CPU tensors; CUDA ones go through a CPU copy).
    #[default]
    Auto,
    Gloo,
    /// NCCL: not built into this runtime (an error that says so).
    Nccl,
}

/// The flags of several processes (not recorded: the same run can go on
/// with other launch settings).
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct ParallelArgs {
    /// Start N worker processes on this machine (data-parallel training;
    /// see docs/training.md). Workers started by a launcher that sets
    /// RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun, SLURM)
    /// join their group without it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nproc: Option<u32>,
    /// The TCP port of rank 0's rendezvous store under --nproc [default:
    /// MASTER_PORT if set, else a free one].
    #[arg(long, value_name = "PORT")]
    pub master_port: Option<u16>,
    /// Collective backend [default: auto, Gloo].
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Seconds joining and each collective wait for the other ranks
    /// before the run fails [default: 300].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub dist_timeout: Option<u64>,
}

impl ParallelArgs {
    fn timeout(&self) -> Duration {
        self.dist_timeout
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
    }

    fn check_backend(&self) -> Result<(), String> {
        match self.backend {
            Backend::Auto | Backend::Gloo => Ok(()),
            Backend::Nccl => Err(
                "--backend nccl: this runtime's c10d shim is built with Gloo only (NCCL is \
                 not built yet: docs/training.md, \"GPUs and NCCL\"); use --backend gloo, \
                 which also takes CUDA tensors through a CPU copy"
                    .into(),
            ),
        }
    }

    /// What this process is: a worker of a group the launcher variables
    /// describe (joined), a launcher of `--nproc` workers, or one process.
    pub fn role(&self) -> Result<Role, String> {
        self.check_backend()?;
        let launched = std::env::var_os("RANK").is_some();
        match (self.nproc, launched) {
            (Some(n), false) if n > 1 => Ok(Role::Launcher(n as usize)),
            _ => match Rendezvous::from_env().map_err(|e| e.to_string())? {
                None => Ok(Role::Single),
                Some(mut r) => {
                    if let Some(n) = self.nproc.filter(|&n| n as usize != r.world_size) {
                        return Err(format!(
                            "--nproc {n} but the launcher variables say WORLD_SIZE={}: drop --nproc under a launcher",
                            r.world_size
                        ));
                    }
                    r.timeout = self.timeout();
                    let group = ProcessGroup::join(&r).map_err(|e| e.to_string())?;
                    Ok(Role::Worker(group))
                }
            },
        }
    }
}

/// See [`ParallelArgs::role`].
pub enum Role {
    Single,
    Launcher(usize),
    Worker(ProcessGroup),
}

/// How the workers of [`launch`] ended.
#[derive(Debug, PartialEq)]
pub enum Launched {
    /// Every rank finished.
    Finished,
    /// Every rank stopped on Ctrl-C (status 130) after saving.
    Interrupted,
}

/// Seconds the other workers get to end by themselves after one failed,
/// before the launcher kills them.
pub const GRACE: Duration = Duration::from_secs(10);

/// A free TCP port on the loopback interface.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port for the rendezvous: {e}"))
}

/// `--nproc N`: runs `program args` as `nproc` workers on this machine
/// with `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
/// `MASTER_ADDR` (127.0.0.1), `MASTER_PORT` (`port`, else the
/// environment's `MASTER_PORT`, else a free one) and, unless set,
/// `QATC_THREADS` (the cores over `nproc`), and waits for them.
/// When a worker fails (a non-zero status other than Ctrl-C's, or a
/// signal), the others get [`GRACE`] to end, then are killed, and the
/// error names the first that failed. `env`: more variables for the
/// workers.
pub fn launch(
    program: &Path,
    args: &[OsString],
    nproc: usize,
    port: Option<u16>,
    env: &[(String, String)],
) -> Result<Launched, String> {
    let env_port =
        match std::env::var("MASTER_PORT") {
            Ok(p) => Some(p.trim().parse::<u16>().map_err(|_| {
                format!("environment variable MASTER_PORT: `{p}` is not a TCP port")
            })?),
            Err(_) => None,
        };
    let port = match port.or(env_port) {
        Some(p) => {
            TcpListener::bind(("127.0.0.1", p)).map_err(|e| {
                format!("the rendezvous port {p} (--master-port / MASTER_PORT) is not free: {e}")
            })?;
            p
        }
        None => free_port()?,
    };
    // Ctrl-C reaches the workers (same process group): they save and
    // stop; the launcher waits for them.
    let _ = ctrlc::set_handler(|| {});
    // Each worker's share of the cores unless the user chose (torchrun
    // likewise sets OMP_NUM_THREADS).
    let threads = match std::env::var_os(crate::bench::THREADS_ENV) {
        Some(_) => None,
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Some((cores / nproc).max(1).to_string())
        }
    };
    let each = threads.as_ref().map_or(String::new(), |t| {
        format!(", {}={t} each", crate::bench::THREADS_ENV)
    });
    eprintln!(
        "launching {nproc} workers on this machine (rendezvous 127.0.0.1:{port}, Gloo{each})"
    );
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..nproc {
        let child = Command::new(program)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .envs(threads.iter().map(|t| (crate::bench::THREADS_ENV, t)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!(
                    "cannot start worker {rank} (`{}`): {e}",
                    program.display()
                ));
            }
        }
    }
    wait_all(children)
}

/// Waits for the workers; see [`launch`].
fn wait_all(mut children: Vec<Child>) -> Result<Launched, String> {
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; children.len()];
    let mut failed: Option<(usize, String, Instant)> = None;
    let mut killed: Vec<String> = Vec::new();
    loop {
        // Of the ranks that ended since the last look, one killed by a
        // signal is the cause rather than one that failed after it.
        let mut ended: Vec<(usize, std::process::ExitStatus)> = Vec::new();
        for (rank, c) in children.iter_mut().enumerate() {
            if status[rank].is_some() {
                continue;
            }
            if let Ok(Some(s)) = c.try_wait() {
                status[rank] = Some(s);
                ended.push((rank, s));
            }
        }
        ended.sort_by_key(|(rank, s)| (s.code().is_some(), *rank));
        if let Some((rank, s)) = ended
            .into_iter()
            .find(|(_, s)| !(s.success() || s.code() == Some(130)))
            .filter(|_| failed.is_none())
        {
            failed = Some((rank, describe(s), Instant::now()));
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        if let Some((_, _, at)) = &failed {
            if at.elapsed() > GRACE {
                for (rank, c) in children.iter_mut().enumerate() {
                    if status[rank].is_none() {
                        let _ = c.kill();
                        let _ = c.wait();
                        killed.push(rank.to_string());
                    }
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((rank, how, _)) = failed {
        let rest = if killed.is_empty() {
            "the other ranks ended".to_string()
        } else {
            format!(
                "rank(s) {} did not end within {} s (hung?) and were killed",
                killed.join(", "),
                GRACE.as_secs()
            )
        };
        return Err(format!(
            "rank {rank} of {} {how}; the run stopped ({rest})",
            children.len()
        ));
    }
    if status.iter().flatten().any(|s| s.code() == Some(130)) {
        Ok(Launched::Interrupted)
    } else {
        Ok(Launched::Finished)
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    "ended abnormally".into()
}
