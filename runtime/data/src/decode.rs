//! Parallel decoding of a list of JPEG/PNG images into one CHW `u8` buffer.
//!
//! Input: `ImageEntry`s (a file on disk or bytes already in memory, and a
//! label). Output: the pixels of every image, in entry order, as CHW planes:
//! one luma plane when every image is grayscale (an MNIST-like folder keeps
//! its one channel), else R, G, B planes, grayscale images replicated into
//! the three (a colour data set with a few gray images stays RGB). Alpha is
//! dropped. All images must have the size of the first; the first error in
//! entry order is reported, whatever thread met it, so errors do not depend
//! on thread timing.
//!
//! The work is split into one contiguous run of entries per core (std
//! scoped threads, each writing its own disjoint slice of the output), which
//! needs no work queue and no locks: images of one data set cost about the
//! same to decode.

use crate::error::DataError;
use std::path::PathBuf;

/// Where an image's bytes are.
#[derive(Debug, Clone)]
pub(crate) enum ImageSource {
    /// A file, read when decoded.
    File,
    /// Bytes already in memory (a member of an archive).
    Memory(Vec<u8>),
}

/// One image to decode.
#[derive(Debug, Clone)]
pub(crate) struct ImageEntry {
    /// The file (or archive member) named in messages.
    pub path: PathBuf,
    pub source: ImageSource,
    pub label: u16,
}

/// Decoded images: `[C, H, W]` (C is 1 or 3) and the pixels.
pub(crate) struct Decoded {
    pub shape: [usize; 3],
    pub images: Vec<u8>,
    /// Indexes of the entries that did not decode and were skipped (only
    /// with `skip_broken`), ascending; `images` holds the others only.
    pub broken: Vec<usize>,
}

/// The image as RGB, and whether it was grayscale.
fn decode_one(entry: &ImageEntry) -> Result<(image::RgbImage, bool), DataError> {
    let owned;
    let bytes: &[u8] = match &entry.source {
        ImageSource::File => {
            owned = std::fs::read(&entry.path).map_err(|e| DataError::io(&entry.path, e))?;
            &owned
        }
        ImageSource::Memory(bytes) => bytes,
    };
    let image = image::load_from_memory(bytes).map_err(|e| DataError::Decode {
        path: entry.path.clone(),
        message: e.to_string(),
    })?;
    let gray = matches!(
        image.color(),
        image::ColorType::L8
            | image::ColorType::La8
            | image::ColorType::L16
            | image::ColorType::La16
    );
    Ok((image.into_rgb8(), gray))
}

/// Decodes `entries` on `threads` threads (at least 1). An image that
/// does not decode is an error naming it, or with `skip_broken` is left
/// out and listed in [`Decoded::broken`].
pub(crate) fn decode_all(
    entries: &[ImageEntry],
    threads: usize,
    skip_broken: bool,
) -> Result<Decoded, DataError> {
    let empty = || Decoded {
        shape: [3, 0, 0],
        images: Vec::new(),
        broken: Vec::new(),
    };
    // The first image that decodes sets the size.
    let mut first_good = None;
    for (i, entry) in entries.iter().enumerate() {
        match decode_one(entry) {
            Ok((image, _)) => {
                first_good = Some((i, image));
                break;
            }
            Err(DataError::Decode { .. }) if skip_broken => continue,
            Err(e) => return Err(e),
        }
    }
    let Some((first_index, first)) = first_good else {
        return Ok(Decoded {
            broken: (0..entries.len()).collect(),
            ..empty()
        });
    };
    let first_entry = &entries[first_index];
    let (w, h) = first.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::Decode {
            path: first_entry.path.clone(),
            message: "the image has no pixels".into(),
        });
    }
    let image_len = 3 * w as usize * h as usize;
    let mut images = vec![0u8; entries.len() * image_len];
    let threads = threads.clamp(1, entries.len());
    let per_thread = entries.len().div_ceil(threads);
    // Whether image i was grayscale, written by the thread that decodes it.
    let mut gray = vec![false; entries.len()];
    // Whether image i did not decode (and is skipped).
    let mut broken = vec![false; entries.len()];
    let check = |entry: &ImageEntry,
                 out: &mut [u8],
                 (is_gray, is_broken): (&mut bool, &mut bool)|
     -> Result<(), DataError> {
        let (rgb, g) = match decode_one(entry) {
            Err(DataError::Decode { .. }) if skip_broken => {
                *is_broken = true;
                return Ok(());
            }
            other => other?,
        };
        *is_gray = g;
        if rgb.dimensions() != (w, h) {
            return Err(DataError::ImageSize {
                path: entry.path.clone(),
                got_w: rgb.width(),
                got_h: rgb.height(),
                first: first_entry.path.clone(),
                w,
                h,
            });
        }
        let plane = w as usize * h as usize;
        let (r, gb) = out.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            r[i] = px[0];
            g[i] = px[1];
            b[i] = px[2];
        }
        Ok(())
    };
    let errors: Vec<DataError> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(per_thread)
            .zip(images.chunks_mut(per_thread * image_len))
            .zip(gray.chunks_mut(per_thread))
            .zip(broken.chunks_mut(per_thread))
            .map(|(((chunk, out), gray), broken)| {
                scope.spawn(move || {
                    let outs = out
                        .chunks_exact_mut(image_len)
                        .zip(gray.iter_mut().zip(broken.iter_mut()));
                    for (entry, (out, flags)) in chunk.iter().zip(outs) {
                        check(entry, out, flags)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(result) => result.err(),
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    // Chunks are in entry order, so the first error is the earliest entry's.
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let broken: Vec<usize> = (0..entries.len()).filter(|&i| broken[i]).collect();
    if !broken.is_empty() {
        let mut kept = Vec::with_capacity((entries.len() - broken.len()) * image_len);
        let mut kept_gray = Vec::with_capacity(entries.len() - broken.len());
        for (i, rgb) in images.chunks_exact(image_len).enumerate() {
            if broken.binary_search(&i).is_err() {
                kept.extend_from_slice(rgb);
                kept_gray.push(gray[i]);
            }
        }
        images = kept;
        gray = kept_gray;
    }
    let (h, w) = (h as usize, w as usize);
    if gray.iter().all(|&g| g) {
        // Keep each image's first plane (R = G = B = luma).
        let plane = h * w;
        let luma: Vec<u8> = images
            .chunks_exact(image_len)
            .flat_map(|rgb| &rgb[..plane])
            .copied()
            .collect();
        return Ok(Decoded {
            shape: [1, h, w],
            images: luma,
            broken,
        });
    }
    Ok(Decoded {
        shape: [3, h, w],
        images,
        broken,
    })
}

/// The number of decoding threads: the cores this process may use.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
