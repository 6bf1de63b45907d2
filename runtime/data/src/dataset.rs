//! `Dataset`: decoded images in memory, their labels, and how to normalise
//! and augment them.
//!
//! Invariants (every constructor in this crate keeps them):
//! `images.len() == labels.len() * C * H * W`, each image stored as CHW
//! planes of `u8` pixels, every label `< classes.len()`, and `norm.mean`,
//! `norm.std` have one entry per channel. Images stay `u8` so that CIFAR-10
//! (60,000 images) takes 184 MB rather than 737 MB of `f32`; normalisation
//! happens per batch through a 256-entry table per channel.

/// Per-channel normalisation: `(pixel / scale - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// The largest pixel value: 255 for 8-bit images, 16 for the digits.
    pub scale: f32,
    /// One mean per channel, in units of `pixel / scale`.
    pub mean: Vec<f32>,
    /// One standard deviation per channel, in units of `pixel / scale`.
    pub std: Vec<f32>,
}

impl Normalize {
    /// The seed's CIFAR-10 normalisation (`../shared/docs/seed-reference.md`
    /// section 6): scale 255, mean (0.4914, 0.4822, 0.4465), std (0.2023,
    /// 0.1994, 0.2010).
    pub fn cifar10() -> Normalize {
        Normalize {
            scale: 255.0,
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2023, 0.1994, 0.2010],
        }
    }

    /// The mean and (population) standard deviation of each channel of
    /// `images` (CHW images of `shape`), in units of `pixel / scale`: what
    /// gives the normalised pixels of this data mean 0 and standard
    /// deviation 1 per channel. Sums are exact integers, so the result does
    /// not depend on the order of the images.
    pub fn fit(images: &[u8], [c, h, w]: [usize; 3], scale: f32) -> Normalize {
        let plane = (h * w).max(1);
        let mut sum = vec![0u64; c];
        let mut sq = vec![0u64; c];
        for (k, chunk) in images.chunks_exact(plane).enumerate() {
            let ch = k % c.max(1);
            for &p in chunk {
                sum[ch] += p as u64;
                sq[ch] += (p as u64) * (p as u64);
            }
        }
        let n = (images.len() / c.max(1)).max(1) as f64;
        let scale64 = scale as f64;
        let (mean, std) = sum
            .iter()
            .zip(&sq)
            .map(|(&s, &q)| {
                let mean = s as f64 / n;
                let var = (q as f64 / n - mean * mean).max(0.0);
                let std = (var.sqrt() / scale64).max(1e-6);
                ((mean / scale64) as f32, std as f32)
            })
            .unzip();
        Normalize { scale, mean, std }
    }

    /// For each channel, the normalised value of every `u8` pixel value
    /// (`table[c][p]`): a lookup is cheaper than the arithmetic and gives
    /// exactly the same `f32` for a pixel wherever it is normalised.
    pub fn table(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&mean, &std)| {
                let mut t = [0f32; 256];
                for (p, v) in t.iter_mut().enumerate() {
                    *v = (p as f32 / self.scale - mean) / std;
                }
                t
            })
            .collect()
    }
}

/// Training-time augmentation: a random crop of the original size out of
/// the image padded with `pad` zero pixels on every side (torchvision's
/// `RandomCrop(size, padding=pad)`), then, when `hflip`, a horizontal flip
/// with probability 1/2 (`RandomHorizontalFlip`). Padding is in pixel space
/// (pixel value 0, as the seed pads PIL images before normalising).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Zero padding on each side before the random crop; 0 disables the crop.
    pub pad: usize,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
}

impl Augment {
    /// The seed's CIFAR-10 augmentation: pad 4, horizontal flip.
    pub fn cifar10() -> Augment {
        Augment {
            pad: 4,
            hflip: true,
        }
    }

    /// Whether this augmentation changes anything.
    pub fn is_identity(&self) -> bool {
        self.pad == 0 && !self.hflip
    }
}

/// What opening an image folder left out (see `folder`): both zero for
/// the other data sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Files that are not images by name (hidden files, OS metadata, text).
    pub not_images: usize,
    /// Files with an image name that did not decode (only when
    /// `FolderOptions::skip_broken`).
    pub broken: usize,
}

/// A labelled set of same-sized images.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// A short name: `digits`, `cifar10`, or the folder's name.
    pub name: String,
    /// `[C, H, W]` of every image.
    pub shape: [usize; 3],
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// `N * C * H * W` pixels, CHW per image.
    pub images: Vec<u8>,
    /// `N` labels, each `< classes.len()`.
    pub labels: Vec<u16>,
    /// How to normalise the pixels.
    pub norm: Normalize,
    /// The usual training augmentation for this kind of data.
    pub augment: Augment,
    /// What opening the data left out (image folders).
    pub skipped: Skipped,
}

impl Dataset {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `C * H * W`: pixels per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The first `n` images (all of them when `n >= len`).
    pub fn limit(mut self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let len = self.image_len();
        self.labels.truncate(n);
        self.images.truncate(n * len);
        self
    }

    /// `n` images spread evenly over the set (image `i * len / n` for `i`
    /// in `0..n`), in order; all of them when `n >= len`. What
    /// `--limit-train` / `--limit-test` / `--limit` take everywhere: an
    /// image folder is sorted by class, so its first `n` images would be
    /// one class, while every `len/n`-th keeps them all.
    pub fn spread(self, n: usize) -> Dataset {
        let len = self.len();
        if n >= len {
            return self;
        }
        let picks: Vec<usize> = (0..n).map(|i| i * len / n).collect();
        let images = picks
            .iter()
            .flat_map(|&i| self.image(i).iter().copied())
            .collect();
        let labels = picks.iter().map(|&i| self.labels[i]).collect();
        Dataset {
            images,
            labels,
            ..self
        }
    }

    /// The pixels of image `i` (CHW). Panics when `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// Image `i` normalised, without augmentation, into `out`
    /// (`image_len()` values, CHW). Panics when `i >= len()` or `out` has
    /// another length.
    pub fn normalized(&self, i: usize, out: &mut [f32]) {
        let table = self.norm.table();
        self.normalize_with(&table, i, out);
    }

    /// `normalized` with a table made once by `Normalize::table`.
    pub(crate) fn normalize_with(&self, table: &[[f32; 256]], i: usize, out: &mut [f32]) {
        let plane = self.shape[1] * self.shape[2];
        assert_eq!(out.len(), self.image_len(), "output length");
        for (c, (dst, src)) in out
            .chunks_exact_mut(plane)
            .zip(self.image(i).chunks_exact(plane))
            .enumerate()
        {
            let t = &table[c];
            for (d, &p) in dst.iter_mut().zip(src) {
                *d = t[p as usize];
            }
        }
    }

    /// How many images each class has, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// A data set's training and test splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The training split.
    pub train: Dataset,
    /// The test split (same shape, classes and normalisation).
    pub test: Dataset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_every_class_of_a_sorted_set() {
        let split = crate::open("digits").unwrap();
        let mut sorted = split.train;
        let mut order: Vec<usize> = (0..sorted.len()).collect();
        order.sort_by_key(|&i| sorted.labels[i]);
        sorted.images = order
            .iter()
            .flat_map(|&i| sorted.image(i).to_vec())
            .collect();
        sorted.labels = order.iter().map(|&i| sorted.labels[i]).collect();
        let few = sorted.clone().spread(50);
        assert_eq!(few.len(), 50);
        assert_eq!(few.image(1), sorted.image(sorted.len() / 50));
        // About 144 images per class: 4 to 6 of each in 50 (the first 50
        // would hold 0s only).
        let counts = few.class_counts();
        assert!(counts.iter().all(|&c| (4..=6).contains(&c)), "{counts:?}");
        assert_eq!(sorted.clone().spread(10_000).len(), sorted.len());
    }

    #[test]
    fn fit_gives_each_channels_mean_and_std() {
        // Two 1x2 images of two channels: channel 0 sees 0, 2, 4, 6 (mean 3,
        // std sqrt(5)); channel 1 always 10 (std 0, floored).
        let images = [0, 2, 10, 10, 4, 6, 10, 10];
        let n = Normalize::fit(&images, [2, 1, 2], 2.0);
        assert_eq!(n.scale, 2.0);
        assert_eq!(n.mean, [1.5, 5.0]);
        assert!((n.std[0] - 5f32.sqrt() / 2.0).abs() < 1e-6, "{n:?}");
        assert!(n.std[1] > 0.0 && n.std[1] < 1e-5, "{n:?}");
    }
}
