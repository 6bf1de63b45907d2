//! The built-in data set: the UCI optical handwritten digits (8x8, pixels
//! 0..16, 1,797 images, CC BY 4.0; see `assets/README.md`), embedded in the
//! library so that training works offline with nothing to download.
//!
//! Split: the first 1,437 rows train, the last 360 rows test (the table's
//! own order, which interleaves writers and classes, so both splits hold
//! every class). Normalisation: `scale` 16 and the mean and standard
//! deviation of the training split's pixels (population std), computed at
//! load time; augmentation: pad 1 (a shift of up to one pixel), no flip,
//! since digits are not mirror-invariant.

use crate::dataset::{Augment, Dataset, Normalize, Split};
use crate::error::DataError;
use std::io::Read;
use std::path::PathBuf;

/// The embedded table: 1,797 rows of 64 pixels (row by row) and a label.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// Rows of the built-in table.
pub const DIGITS_ROWS: usize = 1797;
/// Rows at the end of the table that form the test split.
pub const DIGITS_TEST_ROWS: usize = 360;

/// The built-in digits, split into train and test.
pub fn digits() -> Result<Split, DataError> {
    let (images, labels) = parse(DIGITS_CSV_GZ)?;
    let train_n = labels.len().saturating_sub(DIGITS_TEST_ROWS);
    let test = make(images[train_n * 64..].to_vec(), labels[train_n..].to_vec());
    let mut train = make(images[..train_n * 64].to_vec(), labels[..train_n].to_vec());
    train.norm = Normalize::fit(&train.images, train.shape, 16.0);
    let test = Dataset {
        norm: train.norm.clone(),
        ..test
    };
    Ok(Split { train, test })
}

fn source() -> PathBuf {
    PathBuf::from("<built-in>/digits.csv.gz")
}

fn make(images: Vec<u8>, labels: Vec<u16>) -> Dataset {
    Dataset {
        name: "digits".into(),
        shape: [1, 8, 8],
        classes: (0..10).map(|d| d.to_string()).collect(),
        images,
        labels,
        norm: Normalize {
            scale: 16.0,
            mean: vec![0.0],
            std: vec![1.0],
        },
        augment: Augment {
            pad: 1,
            hflip: false,
        },
        skipped: Default::default(),
    }
}

/// Parses the gzipped table into pixels (row-major 8x8 per image, which is
/// CHW with one channel) and labels.
fn parse(gz: &[u8]) -> Result<(Vec<u8>, Vec<u16>), DataError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| DataError::io(source(), e))?;
    let mut images = Vec::with_capacity(DIGITS_ROWS * 64);
    let mut labels = Vec::with_capacity(DIGITS_ROWS);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::Table {
            path: source(),
            line: i + 1,
            message,
        };
        let values: Vec<&str> = line.split(',').collect();
        if values.len() != 65 {
            return Err(bad(format!("{} values, expected 65", values.len())));
        }
        for (j, v) in values.iter().enumerate() {
            let max = if j < 64 { 16 } else { 9 };
            let x: u8 = v
                .trim()
                .parse()
                .ok()
                .filter(|&x| x <= max)
                .ok_or_else(|| bad(format!("value {j}: `{v}` is not in 0..={max}")))?;
            if j < 64 {
                images.push(x);
            } else {
                labels.push(x as u16);
            }
        }
    }
    Ok((images, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_rows_split_and_label_counts() {
        let split = digits().unwrap();
        assert_eq!(split.train.len() + split.test.len(), DIGITS_ROWS);
        assert_eq!(split.test.len(), DIGITS_TEST_ROWS);
        assert_eq!(split.train.shape, [1, 8, 8]);
        assert_eq!(split.train.images.len(), split.train.len() * 64);
        // The UCI test set's class counts (the table sklearn ships).
        let mut all = split.train.class_counts();
        for (a, b) in all.iter_mut().zip(split.test.class_counts()) {
            *a += b;
        }
        assert_eq!(all, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        assert!(split.test.class_counts().iter().all(|&c| c >= 30));
        assert!(split.train.images.iter().all(|&p| p <= 16));
        // First row of the table: a zero.
        assert_eq!(split.train.labels[0], 0);
        assert_eq!(&split.train.image(0)[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
    }

    #[test]
    fn digits_normalisation_is_the_training_splits() {
        let split = digits().unwrap();
        let n = &split.train.norm;
        assert_eq!(n.scale, 16.0);
        assert_eq!(split.test.norm, *n);
        // The normalised training pixels have mean 0 and std 1.
        let mut out = vec![0f32; 64];
        let (mut sum, mut sq, mut count) = (0f64, 0f64, 0f64);
        for i in 0..split.train.len() {
            split.train.normalized(i, &mut out);
            for &v in &out {
                sum += v as f64;
                sq += (v as f64).powi(2);
                count += 1.0;
            }
        }
        assert!((sum / count).abs() < 1e-4, "mean {}", sum / count);
        assert!((sq / count - 1.0).abs() < 1e-3, "var {}", sq / count);
        assert!(n.mean[0] > 0.2 && n.mean[0] < 0.4, "{n:?}");
    }

    #[test]
    fn malformed_table_rows_are_errors_with_line_numbers() {
        let gz = |text: &str| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, text.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        let row = |label: &str| {
            let mut v = vec!["0"; 64];
            v.push(label);
            v.join(",")
        };
        let good = row("3");
        assert_eq!(parse(&gz(&good)).unwrap().1, [3]);
        let e = parse(&gz(&format!("{good}\n{}", row("10")))).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse(&gz("1,2,3")).unwrap_err();
        assert!(e.to_string().contains("3 values, expected 65"), "{e}");
        assert!(parse(b"not gzip").is_err());
    }
}
