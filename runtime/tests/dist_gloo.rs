//! libtorch's c10d collectives through `qatc_runtime::dist`: two worker
//! processes (this test binary, started again with the launcher variables
//! torchrun sets) join over loopback (TCPStore + ProcessGroupGloo) and
//! check a sum, a mean of several tensors of different kinds and shapes,
//! a broadcast and a barrier against values computed here; a group whose
//! other rank never comes fails within its timeout with an error naming
//! the rank; bad launcher variables are errors naming the variable.

use qatc_runtime::dist::{DistError, ProcessGroup, Rendezvous};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// Set in the worker processes: which test they play a part of.
const CHILD: &str = "QATC_DIST_TEST_CHILD";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// One worker of [`two_ranks_sum_average_and_broadcast_over_loopback`].
fn worker() {
    let mut r = Rendezvous::from_env()
        .unwrap()
        .expect("the launcher variables");
    r.timeout = Duration::from_secs(60);
    let pg = ProcessGroup::join(&r).unwrap();
    let (rank, world) = (pg.rank() as f64, pg.world_size() as f64);
    assert_eq!(world, 2.0);
    // Sum: (0 + 1) + (1 + 1) on every element.
    let mut t = Tensor::full([5], rank + 1.0, (Kind::Float, tch::Device::Cpu));
    pg.all_reduce_sum(&mut t).unwrap();
    assert_eq!(values(&t), vec![3.0; 5]);
    // Mean of tensors of different shapes and kinds, in one bucket.
    let mut ts = vec![
        Tensor::full([2, 3], rank, (Kind::Float, tch::Device::Cpu)),
        Tensor::from_slice(&[2.0 * rank, -rank, 0.25]).to_kind(Kind::Double),
    ];
    pg.all_reduce_mean(&mut ts).unwrap();
    assert_eq!(values(&ts[0]), vec![0.5; 6]);
    assert_eq!(ts[1].kind(), Kind::Double);
    assert_eq!(values(&ts[1]), vec![1.0, -0.5, 0.25]);
    // Broadcast from rank 0.
    let mut b = if rank == 0.0 {
        Tensor::from_slice(&[1.0f32, 2.0, 3.0])
    } else {
        Tensor::zeros([3], (Kind::Float, tch::Device::Cpu))
    };
    pg.broadcast(&mut b, 0).unwrap();
    assert_eq!(values(&b), vec![1.0, 2.0, 3.0]);
    pg.barrier().unwrap();
}

#[test]
fn two_ranks_sum_average_and_broadcast_over_loopback() {
    let test = "two_ranks_sum_average_and_broadcast_over_loopback";
    if std::env::var(CHILD).as_deref() == Ok(test) {
        worker();
        return;
    }
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(CHILD, test)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut done = [None; 2];
    while done.iter().any(Option::is_none) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i].is_none() {
                done[i] = c.try_wait().unwrap();
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("the two workers did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (rank, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Rank 0 of a world of two whose rank 1 never starts: joining fails
/// within the timeout (not forever), naming the rank and what it waited for.
#[test]
fn a_rank_that_never_comes_is_an_error_within_the_timeout() {
    let r = Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 2,
        interface: None,
        timeout: Duration::from_secs(2),
    };
    let start = Instant::now();
    let e = ProcessGroup::join(&r).err().expect("joining alone fails");
    let msg = e.to_string();
    assert!(matches!(e, DistError::C10d { .. }), "{msg}");
    assert!(msg.starts_with("rank 0 of 2: joining the group"), "{msg}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    eprintln!("after {:?}: {msg}", start.elapsed());
}

#[test]
fn launcher_variables_are_checked() {
    let vars = |set: &[(&str, &str)]| {
        let set: Vec<(String, String)> = set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rendezvous::from_vars(move |k| set.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    };
    assert_eq!(vars(&[]).unwrap(), None);
    let full = [
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ];
    let r = vars(&full).unwrap().unwrap();
    assert_eq!((r.rank, r.world_size, r.master_port), (1, 4, 29500));
    assert_eq!(r.master_addr, "node0");
    let e = vars(&full[..3]).unwrap_err().to_string();
    assert!(
        e.starts_with("environment variable MASTER_PORT: not set"),
        "{e}"
    );
    let mut bad = full;
    bad[0] = ("RANK", "one");
    let e = vars(&bad).unwrap_err().to_string();
    assert!(
        e.contains("RANK: `one` is not a non-negative integer"),
        "{e}"
    );
    bad = full;
    bad[3] = ("MASTER_PORT", "70000");
    let e = vars(&bad).unwrap_err().to_string();
    assert!(e.contains("MASTER_PORT: 70000 is not a TCP port"), "{e}");
    bad = full;
    bad[0] = ("RANK", "4");
    let e = vars(&bad).unwrap_err().to_string();
    assert!(e.contains("rank 4 is not in a world of 4"), "{e}");
}
