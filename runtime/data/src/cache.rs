//! The decode cache of image folders and archives: decoding 60,000 JPEGs
//! takes seconds, reading their pixels back takes milliseconds.
//!
//! A split is cached as one binary file, in the first of these places where
//! it can be written: `<dir>/.qatc-cache/<split>.bin` next to an image
//! folder (`<parent>/.qatc-cache/<archive name>-<split>.bin` for an archive),
//! else `${XDG_CACHE_HOME:-$HOME/.cache}/qatc/data/<hash of the data path>-<split>.bin`
//! (read-only data such as a shared mount). A directory without write
//! permission bits counts as read-only even for root, who could write into
//! it. Reading tries the same places in the same order.
//!
//! A cache file is valid only for its key, an FNV-1a hash of the format
//! version and of every source file's relative path, size, modification
//! time and label (for an archive: its path, size and modification time),
//! so adding, removing, renaming or rewriting an image re-decodes the split.
//! A missing, stale or damaged cache file is not an error: the split is
//! decoded again and the cache rewritten. Files are written to a temporary
//! name in the same directory and renamed into place, so a reader never sees
//! half a file and concurrent writers do not corrupt each other.
//!
//! Layout (little-endian): `QATCIMG1`, key `u64`, n, c, h, w `u64`, class
//! count `u32` then each class name as `u32` length + UTF-8, n labels `u16`,
//! then the `n*c*h*w` pixels.

use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"QATCIMG1";

/// A 64-bit FNV-1a hash, stable across platforms and toolchains (unlike
/// std's `DefaultHasher`), for cache keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn bytes(mut self, bytes: &[u8]) -> Fnv {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// Hashes a length-prefixed string, so that concatenations differ.
    pub fn str(self, s: &str) -> Fnv {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    pub fn u64(self, x: u64) -> Fnv {
        self.bytes(&x.to_le_bytes())
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The key of one file's identity: size and modification time.
pub(crate) fn file_stamp(hash: Fnv, meta: &std::fs::Metadata) -> Fnv {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    hash.u64(meta.len()).u64(mtime)
}

/// A cached split.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cached {
    pub shape: [usize; 3],
    pub classes: Vec<String>,
    pub labels: Vec<u16>,
    pub images: Vec<u8>,
}

/// The places a split's cache file may be, in order of preference.
#[derive(Debug, Clone)]
pub(crate) struct CachePlaces {
    pub paths: Vec<PathBuf>,
}

impl CachePlaces {
    /// Next to the data (`<dir>/.qatc-cache/<file>`), then under
    /// `fallback_root` (by default the user's cache directory), named by a
    /// hash of the data's absolute path.
    pub fn new(
        data_path: &Path,
        local: PathBuf,
        split: &str,
        fallback_root: Option<&Path>,
    ) -> Self {
        let mut paths = vec![local];
        if let Some(root) = fallback_root {
            let absolute = std::fs::canonicalize(data_path).unwrap_or_else(|_| data_path.into());
            let hash = Fnv::new().str(&absolute.to_string_lossy()).finish();
            paths.push(root.join(format!("{hash:016x}-{split}.bin")));
        }
        CachePlaces { paths }
    }

    /// The first valid cache file for `key`.
    pub fn load(&self, key: u64) -> Option<Cached> {
        self.paths.iter().find_map(|p| read(p, key))
    }

    /// Writes the cache to the first place that takes it; `None` when no
    /// place does (the data still loads, it is just decoded next time too).
    pub fn store(&self, key: u64, cached: &Cached) -> Option<PathBuf> {
        let bytes = encode(key, cached);
        self.paths
            .iter()
            .find(|p| {
                meant_to_be_written(p)
                    && p.parent()
                        .is_none_or(|d| std::fs::create_dir_all(d).is_ok())
                    && write_atomic(p, &bytes).is_ok()
            })
            .cloned()
    }
}

/// Whether the directory that `path` goes in (or, while that does not
/// exist yet, its parent: the data's directory) has any write permission
/// bit. Root can write into a read-only directory anyway, so trying is not
/// enough: shared, read-only data must not get a cache written into it.
fn meant_to_be_written(path: &Path) -> bool {
    let Some(dir) = path.parent() else {
        return true;
    };
    let existing = if dir.exists() {
        Some(dir)
    } else {
        dir.parent()
    };
    match existing.map(std::fs::metadata) {
        Some(Ok(meta)) => !meta.permissions().readonly(),
        _ => true,
    }
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/qatc/data`, when either variable is set.
pub(crate) fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("qatc").join("data"))
}

fn encode(key: u64, c: &Cached) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + c.labels.len() * 2 + c.images.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.to_le_bytes());
    for x in [c.labels.len(), c.shape[0], c.shape[1], c.shape[2]] {
        out.extend_from_slice(&(x as u64).to_le_bytes());
    }
    out.extend_from_slice(&(c.classes.len() as u32).to_le_bytes());
    for name in &c.classes {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    for l in &c.labels {
        out.extend_from_slice(&l.to_le_bytes());
    }
    out.extend_from_slice(&c.images);
    out
}

/// Reads a cache file; `None` for anything but a complete file for `key`.
/// The pixels are read straight into their own buffer (no second copy of
/// 184 MB for CIFAR-10), after every length was checked against the file's
/// size, so a damaged header cannot ask for a huge allocation.
fn read(path: &Path, key: u64) -> Option<Cached> {
    let file = std::fs::File::open(path).ok()?;
    let left = file.metadata().ok()?.len();
    let mut r = Stream {
        reader: std::io::BufReader::new(file),
        left,
    };
    if r.bytes(8)? != MAGIC || r.u64()? != key {
        return None;
    }
    let n = usize::try_from(r.u64()?).ok()?;
    let mut shape = [0usize; 3];
    for d in &mut shape {
        *d = usize::try_from(r.u64()?).ok()?;
    }
    let class_count = r.u32()? as usize;
    let mut classes = Vec::new();
    for _ in 0..class_count {
        let len = r.u32()? as usize;
        classes.push(String::from_utf8(r.bytes(len)?).ok()?);
    }
    let labels: Vec<u16> = r
        .bytes(n.checked_mul(2)?)?
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let image_len = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))?;
    let images = r.bytes(n.checked_mul(image_len)?)?;
    if r.left != 0 || labels.iter().any(|&l| l as usize >= classes.len()) {
        return None;
    }
    Some(Cached {
        shape,
        classes,
        labels,
        images,
    })
}

/// A reader that knows how many bytes the file has left.
struct Stream {
    reader: std::io::BufReader<std::fs::File>,
    left: u64,
}

impl Stream {
    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        if n as u64 > self.left {
            return None;
        }
        let mut out = vec![0u8; n];
        std::io::Read::read_exact(&mut self.reader, &mut out).ok()?;
        self.left -= n as u64;
        Some(out)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory (`.<name>.<pid>.tmp`), flushed to disk, then renamed over
/// `path`, so a reader or a crash never sees a half-written file; the
/// temporary file is removed on failure. The directory must exist. One
/// implementation for the decode cache, the runtime's checkpoints and
/// metrics, and every file the `qatc` binary writes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cached {
        Cached {
            shape: [3, 2, 2],
            classes: vec!["a".into(), "bé".into()],
            labels: vec![1, 0],
            images: (0..24).collect(),
        }
    }

    #[test]
    fn round_trip_and_key_check() {
        let dir = tempfile::tempdir().unwrap();
        let places = CachePlaces {
            paths: vec![dir.path().join("c/train.bin")],
        };
        assert_eq!(places.store(7, &sample()), Some(places.paths[0].clone()));
        assert_eq!(places.load(7), Some(sample()));
        assert_eq!(places.load(8), None);
    }

    #[test]
    fn damaged_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let bytes = encode(7, &sample());
        for cut in [0, 8, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert_eq!(read(&path, 7), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert_eq!(read(&path, 7), None);
    }

    #[test]
    fn falls_back_when_the_first_place_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the cache directory should be: not writable as a dir.
        std::fs::write(dir.path().join(".qatc-cache"), b"").unwrap();
        let places = CachePlaces::new(
            dir.path(),
            dir.path().join(".qatc-cache/train.bin"),
            "train",
            Some(&dir.path().join("user")),
        );
        let written = places.store(1, &sample()).unwrap();
        assert!(written.starts_with(dir.path().join("user")), "{written:?}");
        assert!(written.to_string_lossy().ends_with("-train.bin"));
        assert_eq!(places.load(1), Some(sample()));
    }

    #[test]
    fn read_only_data_directories_are_left_alone_even_by_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
        let places = CachePlaces::new(
            &data,
            data.join(".qatc-cache/train.bin"),
            "train",
            Some(&dir.path().join("user")),
        );
        let written = places.store(1, &sample());
        let local_made = data.join(".qatc-cache").exists();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!local_made);
        assert!(written.unwrap().starts_with(dir.path().join("user")));
        assert_eq!(places.load(1), Some(sample()));
    }

    #[test]
    fn fnv_is_stable() {
        // The FNV-1a test vector for "a".
        assert_eq!(Fnv::new().bytes(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
