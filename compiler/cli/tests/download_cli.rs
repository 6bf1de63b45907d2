//! `qatc data download cifar10` end to end, against a small CIFAR-10-like
//! archive made here and served from 127.0.0.1 by a tiny HTTP/1.1
//! responder thread: the unpacked files open with `qatc_data`, and a wrong
//! checksum, a 404, an unreachable URL, a taken directory and bad flags exit
//! 1 with a clear message and leave nothing behind.

use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn qatc(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("qatc runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `n` CIFAR-10 records with labels `(i + shift) % 10`.
fn records(n: usize, shift: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(((i + shift) % 10) as u8);
        out.extend((0..3072).map(|j| ((i * 31 + j) % 256) as u8));
    }
    out
}

/// A .tar.gz laid out like the official one: `cifar-10-batches-bin/` with
/// two training files, the test file, the class names and a readme.
fn archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    let files: [(&str, Vec<u8>); 5] = [
        ("data_batch_1.bin", records(4, 0)),
        ("data_batch_2.bin", records(3, 4)),
        ("test_batch.bin", records(2, 7)),
        ("batches.meta.txt", names.as_bytes().to_vec()),
        ("readme.html", b"<p>not data</p>".to_vec()),
    ];
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-bin/{name}"),
            &bytes[..],
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves `body` at `/cifar.tar.gz` (404 elsewhere) for up to `requests`
/// connections, then stops; returns the base URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let request = String::from_utf8_lossy(&head);
            let response = if request.starts_with("GET /cifar.tar.gz ") {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&response);
        }
    });
    base
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn downloads_verifies_and_unpacks_a_loadable_data_set() {
    let body = archive();
    let md5 = md5_hex(&body);
    let url = format!("{}/cifar.tar.gz", serve(body, 1));
    let tmp = tempfile::tempdir().unwrap();
    // Left by a killed download (no process has this id); another data set's.
    let sets = tmp.path().join("sets");
    std::fs::create_dir_all(sets.join(".c10.unpack-999999999")).unwrap();
    std::fs::write(sets.join(".c10.download-999999999"), "partial").unwrap();
    std::fs::write(sets.join(".c100.download-999999999"), "other").unwrap();
    let out = qatc(
        tmp.path(),
        &[
            "data",
            "download",
            "cifar10",
            "sets/c10",
            "--url",
            &url,
            "--md5",
            &md5.to_uppercase(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("downloading {url}")), "{stderr}");
    assert!(stderr.contains("100.0%"), "{stderr}");
    assert!(stderr.contains("checksum ok"), "{stderr}");
    assert!(text(&out.stdout).contains("CIFAR-10 unpacked, 7 training and 2 test images"));

    let dir = tmp.path().join("sets/c10");
    assert_eq!(
        listing(&dir),
        [
            "batches.meta.txt",
            "data_batch_1.bin",
            "data_batch_2.bin",
            "test_batch.bin"
        ]
    );
    // Nothing temporary left beside it, stale leftovers of c10 removed.
    assert_eq!(listing(&sets), [".c100.download-999999999", "c10"]);
    let split = qatc_data::open(&dir.to_string_lossy()).unwrap();
    assert_eq!(split.train.labels, [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(split.test.labels, [7, 8]);
    assert_eq!(split.train.classes[9], "truck");

    // Again: already there, nothing fetched (the server is gone).
    let out = qatc(
        tmp.path(),
        &["data", "download", "cifar10", "sets/c10", "--url", &url],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("already there"));
}

#[test]
fn a_wrong_checksum_fails_and_keeps_nothing() {
    let url = format!("{}/cifar.tar.gz", serve(archive(), 1));
    let tmp = tempfile::tempdir().unwrap();
    let wrong = "0123456789abcdef0123456789abcdef";
    let out = qatc(
        tmp.path(),
        &[
            "data", "download", "cifar10", "c10", "--url", &url, "--md5", wrong,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "checksum mismatch for {url}: expected MD5 {wrong}, got "
        )),
        "{stderr}"
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn a_missing_file_and_an_unreachable_server_fail_cleanly() {
    let base = serve(archive(), 1);
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("{base}/nothing-here.tar.gz");
    let out = qatc(
        tmp.path(),
        &["data", "download", "cifar10", "c10", "--url", &url],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot download {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("404"), "{stderr}");

    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/cifar.tar.gz");
    let out = qatc(
        tmp.path(),
        &["data", "download", "cifar10", "c10", "--url", &url],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("cannot download {url}")));
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn an_archive_without_cifar_files_is_refused() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &b"hi"[..])
        .unwrap();
    let body = tar.into_inner().unwrap().finish().unwrap();
    let md5 = md5_hex(&body);
    let url = format!("{}/cifar.tar.gz", serve(body, 1));
    let tmp = tempfile::tempdir().unwrap();
    let out = qatc(
        tmp.path(),
        &[
            "data", "download", "cifar10", "c10", "--url", &url, "--md5", &md5,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("holds no CIFAR-10 binary files"));
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn a_taken_directory_and_bad_flags_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("c10")).unwrap();
    std::fs::write(tmp.path().join("c10/mine.txt"), "keep me").unwrap();
    let out = qatc(
        tmp.path(),
        &[
            "data",
            "download",
            "cifar10",
            "c10",
            "--url",
            "http://127.0.0.1:1/",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("c10: exists and is not a CIFAR-10 data set"));
    assert_eq!(listing(&tmp.path().join("c10")), ["mine.txt"]);

    for args in [
        &["data", "download", "mnist"][..],
        &["data", "download"],
        &["data", "fetch", "cifar10"],
        &["data", "download", "cifar10", "--bogus"],
        &["data", "download", "cifar10", "d", "--md5", "xyz"],
    ] {
        let out = qatc(tmp.path(), args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
