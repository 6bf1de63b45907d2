//! `qatc_data::open` on every kind of data set: the built-in digits,
//! CIFAR-10 binary records, image folders and their archives made here,
//! their cache, and every layout error; and the real CIFAR-10 binary slice
//! in `$QATC_DATA/cifar10-mini-bin` (default `../shared/data` beside the
//! workspace), skipped with a line when it is not there.

use qatc_data::{open, open_with, DataError, FolderOptions, Split};
use std::fs;
use std::path::{Path, PathBuf};

/// Options that keep the fallback cache inside the test's temp dir.
fn opts(tmp: &Path) -> FolderOptions {
    FolderOptions {
        fallback_cache: Some(tmp.join("user-cache")),
        use_cache: true,
        threads: 2,
        skip_broken: false,
    }
}

fn open_dir(dir: &Path, tmp: &Path) -> Result<Split, DataError> {
    open_with(&dir.to_string_lossy(), &opts(tmp))
}

/// Image `k` of a class: pixel (x, y) = (k*40 + x, y*20, class*50 (+1 green)).
fn rgb(class: u8, k: u8, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([k * 40 + x as u8, y as u8 * 20, class * 50 + 1])
    })
}

/// A folder: train/{cat: 3 images, dog: 2}, test/{cat: 1, dog: 1}, 4x3 PNGs.
fn folder(root: &Path) -> PathBuf {
    let dir = root.join("pets");
    for (split, counts) in [("train", [3u8, 2]), ("test", [1, 1])] {
        for (c, (class, n)) in ["cat", "dog"].iter().zip(counts).enumerate() {
            let d = dir.join(split).join(class);
            fs::create_dir_all(&d).unwrap();
            for k in 0..n {
                rgb(c as u8, k, 4, 3)
                    .save(d.join(format!("{k}.png")))
                    .unwrap();
            }
        }
    }
    dir
}

fn expect_err(result: Result<Split, DataError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn digits_is_built_in() {
    let split = open("digits").unwrap();
    assert_eq!(split.train.len(), 1437);
    assert_eq!(split.test.len(), 360);
    assert_eq!(split.train.classes.len(), 10);
    assert_eq!(split.train.augment.pad, 1);
    assert!(!split.train.augment.hflip);
}

#[test]
fn real_cifar10_binary_slice() {
    let Some(dir) = qatc_testdata::shared_data("real_cifar10_binary_slice", "cifar10-mini-bin")
    else {
        return;
    };
    let split = open(&dir.to_string_lossy()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (1000, 500));
    assert_eq!(split.train.shape, [3, 32, 32]);
    assert_eq!(split.train.classes, qatc_data::CIFAR10_CLASSES);
    let raw = fs::read(dir.join("data_batch_1.bin")).unwrap();
    assert_eq!(split.train.labels[0], raw[0] as u16);
    assert_eq!(split.train.image(0), &raw[1..3073]);
    let last = 999 * 3073;
    assert_eq!(split.train.image(999), &raw[last + 1..last + 3073]);
    // Every class is there, none dominates.
    let counts = split.train.class_counts();
    assert!(counts.iter().all(|&c| (50..200).contains(&c)), "{counts:?}");
    assert_eq!(split.train.norm, qatc_data::Normalize::cifar10());
    assert_eq!(split.train.augment, qatc_data::Augment::cifar10());
}

/// The official binary layout, written here: five training files and the
/// test file of 3,073-byte records (label, then 3 x 32 x 32 pixels, planes
/// R, G, B), and `batches.meta.txt`. Every record comes back with its label
/// and bytes, in file order, with CIFAR-10's normalisation and augmentation:
/// what the real slice test checks, on a fresh clone too.
#[test]
fn cifar10_binary_records_written_here() {
    let tmp = tempfile::tempdir().unwrap();
    let record = |label: u8, seed: usize| {
        let mut r = vec![label];
        r.extend((0..3072).map(|j| ((j * 7 + seed * 13) % 256) as u8));
        r
    };
    let mut want_train = Vec::new();
    for file in 1..=5 {
        let mut bytes = Vec::new();
        for k in 0..2 {
            let label = ((file * 2 + k) % 10) as u8;
            let r = record(label, file * 10 + k);
            bytes.extend(&r);
            want_train.push(r);
        }
        fs::write(tmp.path().join(format!("data_batch_{file}.bin")), bytes).unwrap();
    }
    let want_test: Vec<Vec<u8>> = (0..3).map(|k| record(9 - k as u8, 100 + k)).collect();
    fs::write(tmp.path().join("test_batch.bin"), want_test.concat()).unwrap();
    let names: Vec<String> = (0..10).map(|c| format!("class{c}")).collect();
    fs::write(tmp.path().join("batches.meta.txt"), names.join("\n") + "\n").unwrap();
    let split = open(&tmp.path().to_string_lossy()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (10, 3));
    assert_eq!(split.train.shape, [3, 32, 32]);
    assert_eq!(split.train.classes, names);
    for (set, want) in [(&split.train, &want_train), (&split.test, &want_test)] {
        for (i, r) in want.iter().enumerate() {
            assert_eq!(set.labels[i], r[0] as u16, "record {i}");
            assert_eq!(set.image(i), &r[1..], "record {i}");
        }
    }
    assert_eq!(split.train.norm, qatc_data::Normalize::cifar10());
    assert_eq!(split.train.augment, qatc_data::Augment::cifar10());
}

#[test]
fn official_archive_layout_is_found_one_level_down() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("cifar-10-batches-bin");
    fs::create_dir(&inner).unwrap();
    let mut record = vec![7u8];
    record.extend(std::iter::repeat_n(9u8, 3072));
    fs::write(inner.join("data_batch_1.bin"), &record).unwrap();
    fs::write(inner.join("test_batch.bin"), &record).unwrap();
    let split = open(&tmp.path().to_string_lossy()).unwrap();
    assert_eq!(split.train.labels, [7]);
}

#[test]
fn nothing_there_and_unknown_layouts_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let msg = expect_err(open(&missing.to_string_lossy()));
    assert!(
        msg.starts_with(&format!("{}: no such file", missing.display())),
        "{msg}"
    );
    let msg = expect_err(open(&tmp.path().to_string_lossy()));
    assert!(msg.contains("not a data set"), "{msg}");
    let file = tmp.path().join("x.txt");
    fs::write(&file, "hi").unwrap();
    let msg = expect_err(open(&file.to_string_lossy()));
    assert!(msg.contains("x.txt: not a data set"), "{msg}");
}

#[test]
fn image_folder_pixels_labels_and_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let split = open_dir(&dir, tmp.path()).unwrap();
    let train = &split.train;
    assert_eq!(train.name, "pets");
    assert_eq!(train.classes, ["cat", "dog"]);
    assert_eq!(train.shape, [3, 3, 4]);
    assert_eq!(train.labels, [0, 0, 0, 1, 1]);
    assert_eq!(split.test.labels, [0, 1]);
    // Image 4 = dog #1: CHW planes of the PNG's pixels, exactly.
    let img = train.image(4);
    assert_eq!(&img[..4], &[40, 41, 42, 43]); // red, row 0
    assert_eq!(&img[12..16], &[0, 0, 0, 0]); // green, row 0
    assert_eq!(&img[16..20], &[20, 20, 20, 20]); // green, row 1
    assert!(img[24..].iter().all(|&b| b == 51)); // blue
    assert_eq!(train.norm, qatc_data::Normalize::cifar10());
}

#[test]
fn grayscale_and_jpeg_images_become_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let gray = image::GrayImage::from_fn(4, 3, |x, _| image::Luma([x as u8 * 60]));
    gray.save(dir.join("train/cat/3.png")).unwrap();
    rgb(1, 2, 4, 3).save(dir.join("train/dog/2.JPG")).unwrap();
    let train = open_dir(&dir, tmp.path()).unwrap().train;
    assert_eq!(train.labels, [0, 0, 0, 0, 1, 1, 1]);
    let img = train.image(3);
    for c in 0..3 {
        assert_eq!(&img[c * 12..c * 12 + 4], &[0, 60, 120, 180]);
    }
    // JPEG is lossy: close to the source, not equal.
    let jpeg = train.image(6);
    assert!((jpeg[0] as i32 - 80).abs() <= 12, "{}", jpeg[0]);
}

#[test]
fn hidden_files_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    fs::write(dir.join("train/.DS_Store"), "x").unwrap();
    fs::write(dir.join("train/cat/._0.png"), "x").unwrap();
    fs::write(dir.join("README.md"), "beside train/ and test/").unwrap();
    assert_eq!(open_dir(&dir, tmp.path()).unwrap().train.len(), 5);
}

#[test]
fn decoded_splits_are_cached_and_refreshed_when_the_folder_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let first = open_dir(&dir, tmp.path()).unwrap();
    let cache = dir.join(".qatc-cache/train.bin");
    assert!(cache.is_file());
    assert!(dir.join(".qatc-cache/test.bin").is_file());
    // A cache hit gives the same data (proved a hit: the cache is what is read).
    let stamp = fs::metadata(&cache).unwrap().modified().unwrap();
    assert_eq!(open_dir(&dir, tmp.path()).unwrap(), first);
    assert_eq!(fs::metadata(&cache).unwrap().modified().unwrap(), stamp);

    // A new image: re-decoded.
    rgb(0, 5, 4, 3).save(dir.join("train/cat/9.png")).unwrap();
    let second = open_dir(&dir, tmp.path()).unwrap();
    assert_eq!(second.train.len(), 6);

    // Same name and size, new pixels and mtime: re-decoded.
    let path = dir.join("train/cat/0.png");
    rgb(0, 3, 4, 3).save(&path).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let third = open_dir(&dir, tmp.path()).unwrap();
    assert_eq!(third.train.image(0)[0], 120);
    assert_ne!(third.train.images, second.train.images);
}

#[test]
fn cache_goes_to_the_user_cache_when_the_data_dir_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    // A file where the cache directory would go: it cannot be created.
    fs::write(dir.join(".qatc-cache"), "").unwrap();
    let first = open_dir(&dir, tmp.path()).unwrap();
    let user: Vec<_> = fs::read_dir(tmp.path().join("user-cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(user.len(), 2, "{user:?}");
    assert!(user.iter().any(|n| n.ends_with("-train.bin")));
    assert_eq!(open_dir(&dir, tmp.path()).unwrap(), first);
}

#[test]
fn a_damaged_cache_is_decoded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let first = open_dir(&dir, tmp.path()).unwrap();
    fs::write(dir.join(".qatc-cache/train.bin"), b"QATCIMG1 garbage").unwrap();
    assert_eq!(open_dir(&dir, tmp.path()).unwrap(), first);
}

#[test]
fn folder_layout_errors_name_the_file() {
    type Breakage = fn(&Path);
    let cases: [(&str, Breakage, &str); 8] = [
        (
            "missing test",
            |d| fs::remove_dir_all(d.join("test")).unwrap(),
            "test: missing",
        ),
        (
            "empty class",
            |d| fs::create_dir(d.join("train/emu")).unwrap(),
            "train/emu: empty class",
        ),
        (
            "a class of non-images only",
            |d| {
                fs::create_dir(d.join("train/emu")).unwrap();
                fs::write(d.join("train/emu/notes.txt"), "x").unwrap();
                fs::write(d.join("train/emu/.DS_Store"), "x").unwrap();
            },
            "train/emu: empty class",
        ),
        (
            "nested dir",
            |d| fs::create_dir(d.join("train/dog/more")).unwrap(),
            "train/dog/more: stray file: a directory inside",
        ),
        (
            "corrupt image",
            |d| fs::write(d.join("train/dog/1.png"), b"\x89PNG\r\n\x1a\n broken").unwrap(),
            "train/dog/1.png: cannot decode image",
        ),
        (
            "other size",
            |d| rgb(0, 0, 5, 3).save(d.join("train/dog/1.png")).unwrap(),
            "train/dog/1.png: image is 5x3, but",
        ),
        (
            "class mismatch",
            |d| fs::rename(d.join("test/dog"), d.join("test/dingo")).unwrap(),
            "test classes [cat, dingo] differ from train classes [cat, dog]",
        ),
        (
            "no classes",
            |d| {
                fs::remove_dir_all(d.join("train")).unwrap();
                fs::create_dir(d.join("train")).unwrap();
            },
            "train: no class directories",
        ),
    ];
    for (what, breakage, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        breakage(&dir);
        let msg = expect_err(open_dir(&dir, tmp.path()));
        assert!(msg.contains(expected), "{what}: {msg}");
        assert!(msg.contains(&dir.display().to_string()), "{what}: {msg}");
    }
}

/// What real folders hold besides images: skipped and counted per split,
/// the images the same as without them.
#[test]
fn stray_hidden_and_metadata_files_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = folder(&tmp.path().join("clean"));
    let clean = open_dir(&clean, tmp.path()).unwrap();
    let dir = folder(tmp.path());
    fs::write(dir.join("train/cat/notes.txt"), "x").unwrap();
    fs::write(dir.join("train/cat/.DS_Store"), "x").unwrap();
    fs::write(dir.join("train/dog/Thumbs.db"), "x").unwrap();
    fs::write(dir.join("train/README"), "x").unwrap();
    fs::create_dir(dir.join("train/.ipynb_checkpoints")).unwrap();
    fs::write(dir.join("test/labels.csv"), "x").unwrap();
    fs::write(dir.join("test/cat/._0.png"), "AppleDouble").unwrap();
    let split = open_dir(&dir, tmp.path()).unwrap();
    assert_eq!(
        split.train.skipped,
        qatc_data::Skipped {
            not_images: 4,
            broken: 0
        }
    );
    assert_eq!(split.test.skipped.not_images, 2);
    assert_eq!(split.train.images, clean.train.images);
    assert_eq!(split.train.labels, clean.train.labels);
    assert_eq!(split.test.images, clean.test.images);
    // From the cache: the same counts.
    let again = open_dir(&dir, tmp.path()).unwrap();
    assert_eq!(again.train.skipped.not_images, 4);
    assert_eq!(again.test.skipped.not_images, 2);
}

/// A file with an image name that does not decode: an error naming it, or
/// with `skip_broken` skipped and counted.
#[test]
fn a_broken_jpeg_is_an_error_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    // A JPEG start-of-image marker, then nothing a decoder can use.
    fs::write(
        dir.join("train/dog/2.jpg"),
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 cut",
    )
    .unwrap();
    let msg = expect_err(open_dir(&dir, tmp.path()));
    assert!(
        msg.contains("train/dog/2.jpg: cannot decode image"),
        "{msg}"
    );
    let skip = FolderOptions {
        skip_broken: true,
        ..opts(tmp.path())
    };
    for _ in 0..2 {
        // Decoded, then from the cache.
        let split = open_with(&dir.to_string_lossy(), &skip).unwrap();
        assert_eq!(
            split.train.skipped,
            qatc_data::Skipped {
                not_images: 0,
                broken: 1
            }
        );
        assert_eq!(split.train.len(), 5);
        assert_eq!(split.train.labels, [0, 0, 0, 1, 1]);
        assert_eq!(split.test.skipped, qatc_data::Skipped::default());
    }
    // Without the option the cache does not hide the broken image.
    let msg = expect_err(open_dir(&dir, tmp.path()));
    assert!(
        msg.contains("train/dog/2.jpg: cannot decode image"),
        "{msg}"
    );
    // A class whose only image is broken is empty, skipped or not.
    fs::create_dir(dir.join("train/emu")).unwrap();
    fs::create_dir(dir.join("test/emu")).unwrap();
    fs::write(dir.join("train/emu/0.jpg"), b"\xff\xd8 cut").unwrap();
    rgb(2, 0, 4, 3).save(dir.join("test/emu/0.png")).unwrap();
    fs::remove_file(dir.join("train/dog/2.jpg")).unwrap();
    let msg = expect_err(open_with(&dir.to_string_lossy(), &skip));
    assert!(msg.contains("train/emu: empty class"), "{msg}");
}

#[test]
fn test_images_of_another_size_than_train_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    for class in ["cat", "dog"] {
        rgb(0, 0, 6, 6)
            .save(dir.join(format!("test/{class}/0.png")))
            .unwrap();
    }
    let msg = expect_err(open_dir(&dir, tmp.path()));
    assert!(msg.contains("test: image is 6x6"), "{msg}");
}

/// `dir` as a .tar.gz whose members sit under `prefix/` (or at the root).
fn archive(dir: &Path, out: &Path, prefix: &str) {
    let file = fs::File::create(out).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(prefix, dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn archives_open_like_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let from_folder = open_with(
        &dir.to_string_lossy(),
        &FolderOptions {
            use_cache: false,
            ..opts(tmp.path())
        },
    )
    .unwrap();
    for (name, prefix) in [("pets.tar.gz", "pets"), ("flat.tgz", ".")] {
        let path = tmp.path().join(name);
        archive(&dir, &path, prefix);
        let split = open_dir(&path, tmp.path()).unwrap();
        assert_eq!(split.train.images, from_folder.train.images, "{name}");
        assert_eq!(split.test.labels, from_folder.test.labels, "{name}");
        assert_eq!(split.train.classes, from_folder.train.classes, "{name}");
        // Cached next to the archive; the cached copy is the same.
        assert!(tmp
            .path()
            .join(format!(".qatc-cache/{name}-train.bin"))
            .is_file());
        assert_eq!(open_dir(&path, tmp.path()).unwrap(), split);
    }
}

#[test]
fn archive_layout_errors_name_the_member() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    fs::write(dir.join("train/cat/notes.txt"), "x").unwrap();
    fs::write(dir.join("train/cat/.DS_Store"), "x").unwrap();
    fs::write(dir.join("test/README"), "x").unwrap();
    let path = tmp.path().join("bad.tar.gz");
    archive(&dir, &path, "pets");
    // Non-images are skipped and counted, as in a folder.
    let split = open_dir(&path, tmp.path()).unwrap();
    assert_eq!(split.train.skipped.not_images, 2);
    assert_eq!(split.test.skipped.not_images, 1);
    assert_eq!(split.train.len(), 5);
    fs::create_dir(dir.join("train/dog/more")).unwrap();
    archive(&dir, &path, "pets");
    let msg = expect_err(open_dir(&path, tmp.path()));
    assert!(
        msg.contains("bad.tar.gz/pets/train/dog/more: stray file: a directory inside"),
        "{msg}"
    );

    let dir = folder(&tmp.path().join("b"));
    fs::remove_dir_all(dir.join("test")).unwrap();
    archive(&dir, &path, "pets");
    let msg = expect_err(open_dir(&path, tmp.path()));
    assert!(msg.contains("bad.tar.gz/test: missing"), "{msg}");

    fs::write(&path, b"not gzip at all").unwrap();
    let msg = expect_err(open_dir(&path, tmp.path()));
    assert!(msg.contains("bad.tar.gz: bad archive"), "{msg}");
}

/// Like `folder`, with grayscale PNGs: pixel (x, y) = 10k + 20x + y + class.
fn gray_folder(root: &Path) -> PathBuf {
    let dir = root.join("glyphs");
    for (split, n) in [("train", 3u8), ("test", 1)] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let d = dir.join(split).join(class);
            fs::create_dir_all(&d).unwrap();
            for k in 0..n {
                let img = image::GrayImage::from_fn(4, 3, |x, y| {
                    image::Luma([10 * k + 20 * x as u8 + y as u8 + c as u8])
                });
                img.save(d.join(format!("{k}.png"))).unwrap();
            }
        }
    }
    dir
}

#[test]
fn all_grayscale_folders_keep_one_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = gray_folder(tmp.path());
    let split = open_dir(&dir, tmp.path()).unwrap();
    assert_eq!(split.train.shape, [1, 3, 4]);
    assert_eq!(split.test.shape, [1, 3, 4]);
    assert_eq!(split.train.labels, [0, 0, 0, 1, 1, 1]);
    // Image 4 = class b, k = 1: 10 + 20x + y + 1.
    assert_eq!(&split.train.image(4)[..4], &[11, 31, 51, 71]);
    assert_eq!(&split.train.image(4)[4..8], &[12, 32, 52, 72]);
    // Normalised by the training split's own statistics; no flips.
    let norm = &split.train.norm;
    assert_eq!(norm.mean.len(), 1);
    let fitted = qatc_data::Normalize::fit(&split.train.images, [1, 3, 4], 255.0);
    assert_eq!(*norm, fitted);
    assert_eq!(split.test.norm, fitted);
    assert_eq!(
        split.train.augment,
        qatc_data::Augment {
            pad: 2,
            hflip: false
        }
    );
    // The archive of it says the same.
    let path = tmp.path().join("glyphs.tgz");
    archive(&dir, &path, "glyphs");
    assert_eq!(open_dir(&path, tmp.path()).unwrap().train, split.train);
}

#[test]
fn a_grayscale_split_beside_a_colour_one_becomes_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = gray_folder(tmp.path());
    rgb(0, 0, 4, 3).save(dir.join("test/a/0.png")).unwrap();
    for _ in 0..2 {
        // Decoded, then from the cache (where train stays 1-channel).
        let split = open_dir(&dir, tmp.path()).unwrap();
        assert_eq!(split.train.shape, [3, 3, 4]);
        assert_eq!(split.test.shape, [3, 3, 4]);
        let img = split.train.image(4);
        for c in 0..3 {
            assert_eq!(&img[c * 12..c * 12 + 4], &[11, 31, 51, 71]);
        }
        assert_eq!(split.train.norm, qatc_data::Normalize::cifar10());
        assert_eq!(split.train.augment, qatc_data::Augment::cifar10());
    }
}

#[test]
fn linked_class_directories_and_images_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    fs::rename(dir.join("train/dog"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("train/dog")).unwrap();
    rgb(0, 5, 4, 3).save(tmp.path().join("extra.png")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("extra.png"), dir.join("train/cat/7.png")).unwrap();
    let train = open_dir(&dir, tmp.path()).unwrap().train;
    assert_eq!(train.labels, [0, 0, 0, 0, 1, 1]);
    assert_eq!(train.image(3)[0], 200);
}
