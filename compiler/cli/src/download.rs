//! `qatc data download cifar10 [DIR]`: fetch the official CIFAR-10 binary
//! archive, verify its MD5, and unpack its data files into DIR, all or
//! nothing.
//!
//! Steps, each leaving nothing behind when it fails:
//! 1. stream the archive over HTTP(S) into a temporary file next to DIR
//!    (`.DIR.download-PID`), hashing as it arrives, with progress on
//!    stderr;
//! 2. compare the MD5 with the expected one (the official archive's, or
//!    `--md5`);
//! 3. unpack `data_batch_*.bin`, `test_batch.bin` and `batches.meta.txt`
//!    (wherever they sit in the archive; nothing else, and only by file
//!    name, so no member can write outside the directory) into a temporary
//!    directory next to DIR (`.DIR.unpack-PID`);
//! 4. open it with `qatc_data` (every record is checked), then rename it to
//!    DIR, so DIR either does not exist or holds a complete data set.
//!
//! Temporary files of a download that was killed (no destructor ran) are
//! removed by the next download into the same DIR once their process is
//! gone.
//!
//! This lives in the `qatc` crate, not in `qatc-data`, so that the training
//! runtime and the integer engine, which only read data, do not compile an
//! HTTP client and TLS. `ureq` (with rustls: no OpenSSL to install) is a
//! small blocking client, right for one download; `md-5` is RustCrypto's
//! MD5; `flate2` + `tar` read the archive as a stream. `--url` and `--md5`
//! serve mirrors, and the tests, which serve an archive from 127.0.0.1.

use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its MD5, as published next to it.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Where `qatc data download cifar10` puts the files by default.
pub const CIFAR10_DIR: &str = "data/cifar10";

/// What to fetch and where to put it.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    /// Expected MD5, 32 hex digits (any case).
    pub md5: String,
    pub dir: PathBuf,
}

/// What a successful download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `true` when DIR already held the data set and nothing was fetched.
    pub already_there: bool,
    pub train: usize,
    pub test: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("`{md5}` is not an MD5 checksum (32 hexadecimal digits)")]
    BadChecksumArg { md5: String },
    #[error(
        "{dir}: exists and is not a CIFAR-10 data set (remove it or choose another directory)"
    )]
    DirTaken { dir: PathBuf },
    #[error("cannot download {url}: {message}")]
    Http { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checksum mismatch for {url}: expected MD5 {expected}, got {got} ({bytes} bytes); \
         nothing was kept"
    )]
    Checksum {
        url: String,
        expected: String,
        got: String,
        bytes: u64,
    },
    #[error("{url}: bad archive: {message}")]
    Archive { url: String, message: String },
    #[error(
        "{url}: the archive holds no CIFAR-10 binary files (data_batch_*.bin, test_batch.bin)"
    )]
    NotCifar { url: String },
    #[error("{url}: unpacked files are not a CIFAR-10 data set: {source}")]
    Data {
        url: String,
        #[source]
        source: qatc_data::DataError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary file or directory, removed on drop unless kept.
struct Temp(Option<PathBuf>);

impl Temp {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}

/// Downloads, verifies and unpacks CIFAR-10 as `req` says, reporting
/// progress on `progress` (stderr in the CLI).
pub fn download_cifar10(req: &Request, progress: &mut dyn Write) -> Result<Outcome, DownloadError> {
    let expected = req.md5.trim().to_ascii_lowercase();
    if expected.len() != 32 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DownloadError::BadChecksumArg {
            md5: req.md5.clone(),
        });
    }
    let dir = &req.dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            let present = qatc_data::cifar::is_cifar_dir(dir)
                .then(|| qatc_data::cifar::open_cifar(dir).ok())
                .flatten();
            return match present {
                Some(split) => Ok(Outcome {
                    already_there: true,
                    train: split.train.len(),
                    test: split.test.len(),
                    bytes: 0,
                }),
                None => Err(DownloadError::DirTaken { dir: dir.clone() }),
            };
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cifar10".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    remove_stale(&parent, &name);
    let pid = std::process::id();
    let archive = Temp(Some(parent.join(format!(".{name}.download-{pid}"))));
    let (bytes, got) = fetch(&req.url, archive.path(), progress)?;
    if got != expected {
        return Err(DownloadError::Checksum {
            url: req.url.clone(),
            expected,
            got,
            bytes,
        });
    }
    let _ = writeln!(progress, "checksum ok (MD5 {got}); unpacking");
    let unpacked = Temp(Some(parent.join(format!(".{name}.unpack-{pid}"))));
    unpack(&req.url, archive.path(), unpacked.path())?;
    let split =
        qatc_data::cifar::open_cifar(unpacked.path()).map_err(|source| DownloadError::Data {
            url: req.url.clone(),
            source,
        })?;
    if dir.exists() {
        // Empty (checked above): rename cannot replace a directory everywhere.
        std::fs::remove_dir(dir).map_err(io(dir))?;
    }
    std::fs::rename(unpacked.path(), dir).map_err(io(dir))?;
    unpacked.keep();
    Ok(Outcome {
        already_there: false,
        train: split.train.len(),
        test: split.test.len(),
        bytes,
    })
}

/// Removes what a download into `parent/name` that was killed (by a
/// signal: no destructor ran) left behind: `.NAME.download-PID` and
/// `.NAME.unpack-PID` whose process is gone. Where there is no `/proc` to
/// tell, nothing is removed.
fn remove_stale(parent: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = [".download-", ".unpack-"].iter().find_map(|kind| {
            file.strip_prefix(&format!(".{name}{kind}"))
                .and_then(|pid| pid.parse::<u32>().ok())
        });
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

/// Streams `url` into `path`; returns its size and MD5 (lowercase hex).
fn fetch(url: &str, path: &Path, progress: &mut dyn Write) -> Result<(u64, String), DownloadError> {
    let http = |message: String| DownloadError::Http {
        url: url.to_string(),
        message,
    };
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(3600)))
        .build()
        .new_agent();
    let _ = writeln!(progress, "downloading {url}");
    let mut response = agent.get(url).call().map_err(|e| http(e.to_string()))?;
    let total = response.body().content_length();
    let mut body = response.body_mut().as_reader();
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    let mut hash = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let (mut done, start) = (0u64, Instant::now());
    let mut shown = Instant::now();
    loop {
        let n = body.read(&mut buf).map_err(|e| http(e.to_string()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io(path))?;
        done += n as u64;
        if shown.elapsed() >= Duration::from_millis(500) {
            shown = Instant::now();
            let _ = write!(
                progress,
                "\r{}",
                progress_line(done, total, start.elapsed())
            );
        }
    }
    file.sync_all().map_err(io(path))?;
    let _ = writeln!(
        progress,
        "\r{}",
        progress_line(done, total, start.elapsed())
    );
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((done, digest))
}

fn progress_line(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rate = mib(done) / elapsed.as_secs_f64().max(1e-3);
    match total {
        Some(t) if t > 0 => format!(
            "{:5.1}% {:.1} of {:.1} MiB, {rate:.1} MiB/s",
            100.0 * done as f64 / t as f64,
            mib(done),
            mib(t)
        ),
        _ => format!("{:.1} MiB, {rate:.1} MiB/s", mib(done)),
    }
}

/// Whether a member's file name is one of the data set's files.
fn is_data_file(name: &str) -> bool {
    name == "test_batch.bin"
        || name == "batches.meta.txt"
        || (name.starts_with("data_batch_") && name.ends_with(".bin"))
}

/// Writes the archive's data files, flat, into the new directory `out`.
fn unpack(url: &str, archive: &Path, out: &Path) -> Result<(), DownloadError> {
    let bad = |e: std::io::Error| DownloadError::Archive {
        url: url.to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir(out).map_err(io(out))?;
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut found = 0;
    for member in tar.entries().map_err(bad)? {
        let mut member = member.map_err(bad)?;
        if !member.header().entry_type().is_file() {
            continue;
        }
        let path = member.path().map_err(bad)?;
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !is_data_file(&name) {
            continue;
        }
        let target = out.join(&name);
        let mut dst = std::fs::File::create(&target).map_err(io(&target))?;
        std::io::copy(&mut member, &mut dst).map_err(bad)?;
        dst.sync_all().map_err(io(&target))?;
        found += 1;
    }
    if found == 0 {
        return Err(DownloadError::NotCifar {
            url: url.to_string(),
        });
    }
    Ok(())
}

/// `qatc data download cifar10 [DIR]`: see [`download_cifar10`].
pub fn data_download(
    dir: Option<PathBuf>,
    url: Option<String>,
    md5: Option<String>,
) -> anyhow::Result<std::process::ExitCode> {
    let req = Request {
        url: url.unwrap_or_else(|| CIFAR10_URL.into()),
        md5: md5.unwrap_or_else(|| CIFAR10_MD5.into()),
        dir: dir.unwrap_or_else(|| CIFAR10_DIR.into()),
    };
    let done = download_cifar10(&req, &mut std::io::stderr())?;
    let what = if done.already_there {
        "already there"
    } else {
        "unpacked"
    };
    println!(
        "{}: CIFAR-10 {what}, {} training and {} test images",
        req.dir.display(),
        done.train,
        done.test
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_are_recognised_by_name() {
        for name in [
            "data_batch_1.bin",
            "data_batch_5.bin",
            "test_batch.bin",
            "batches.meta.txt",
        ] {
            assert!(is_data_file(name), "{name}");
        }
        for name in ["readme.html", "data_batch_1", "batches.meta", "x.bin"] {
            assert!(!is_data_file(name), "{name}");
        }
    }

    #[test]
    fn progress_lines() {
        let s = progress_line(50 << 20, Some(100 << 20), Duration::from_secs(5));
        assert_eq!(s, " 50.0% 50.0 of 100.0 MiB, 10.0 MiB/s");
        let s = progress_line(3 << 20, None, Duration::from_secs(1));
        assert_eq!(s, "3.0 MiB, 3.0 MiB/s");
    }

    #[test]
    fn a_malformed_checksum_is_refused_before_any_work() {
        let req = Request {
            url: "http://127.0.0.1:1/x".into(),
            md5: "abc".into(),
            dir: PathBuf::from("/nonexistent/never/made"),
        };
        let e = download_cifar10(&req, &mut std::io::sink()).unwrap_err();
        assert!(e.to_string().contains("not an MD5 checksum"), "{e}");
        assert!(!Path::new("/nonexistent").exists());
    }
}
