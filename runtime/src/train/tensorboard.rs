//! TensorBoard event files: scalars, written as TFRecord-framed `Event`
//! protocol buffers (`events.out.tfevents.<time>.<host>.qatc`).
//!
//! Written by hand rather than through a crate: the format needs only three
//! small messages (`Event`, `Summary`, `Summary.Value`) and a masked
//! CRC-32C per record, while the Rust TensorBoard writers pull in a whole
//! protobuf toolchain or are unmaintained. The CRC comes from the `crc32c`
//! crate. Record layout: `u64 length`, `u32 masked_crc(length)`, `data`,
//! `u32 masked_crc(data)`, all little-endian.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An `Event` message: wall time (field 1), step (2), and either the file
/// version (3) or a summary (5).
fn event(wall_time: f64, step: i64, file_version: Option<&str>, summary: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    varint(&mut out, step as u64);
    if let Some(v) = file_version {
        bytes_field(&mut out, 3, v.as_bytes());
    }
    if let Some(s) = summary {
        bytes_field(&mut out, 5, s);
    }
    out
}

/// A `Summary` of scalar values: repeated `Value { tag = 1, simple_value = 2 }`.
fn scalar_summary(values: &[(&str, f64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::new();
        bytes_field(&mut value, 1, tag.as_bytes());
        value.push(0x15);
        value.extend_from_slice(&(*v as f32).to_le_bytes());
        bytes_field(&mut out, 1, &value);
    }
    out
}

impl EventWriter {
    /// Creates a new event file in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = dir.join(format!("events.out.tfevents.{secs}.{host}.qatc"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut w = Self {
            path,
            out: BufWriter::new(file),
        };
        w.record(&event(now(), 0, Some("brain.Event:2"), None))?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Writes scalars at `step` (one event).
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let summary = scalar_summary(values);
        self.record(&event(now(), step, None, Some(&summary)))
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the records back, checking both CRCs.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(data));
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    #[test]
    fn crc32c_is_the_castagnoli_polynomial() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn events_are_framed_and_encoded() {
        let dir = std::env::temp_dir().join(format!("qatc-tb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir).unwrap();
        w.scalars(300, &[("train/loss", 0.5)]).unwrap();
        w.flush().unwrap();
        let recs = records(&std::fs::read(w.path()).unwrap());
        assert_eq!(recs.len(), 2);
        assert!(recs[0].windows(13).any(|s| s == b"brain.Event:2"));
        let e = &recs[1];
        assert_eq!(e[0], 0x09);
        // step 300 as a varint after the double.
        assert_eq!(&e[9..12], &[0x10, 0xac, 0x02]);
        assert!(e.windows(10).any(|s| s == b"train/loss"));
        assert!(e.windows(5).any(|s| s == [0x15, 0, 0, 0, 0x3f]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
