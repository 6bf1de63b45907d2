//! Image folders (`train/<class>/<image>`, `test/<class>/<image>`) and
//! gzipped tar archives of one (`.tar.gz`, `.tgz`, optionally with one
//! top-level directory above `train/` and `test/`).
//!
//! Layout rules, the same for both: classes are the directories of
//! `train/`, sorted by name (label = position); `test/` must have exactly
//! the same classes; a class's images are its `.jpg`, `.jpeg` and `.png`
//! files (any case), sorted by name; names starting with `.` are ignored
//! (`.DS_Store`, the `.qatc-cache` directory). Anything else inside
//! `train/` or `test/` (a file beside the class directories, a non-image
//! file or a directory inside a class) is an error naming it, and so are an
//! empty class, a missing `train/` or `test/`, an undecodable image and an
//! image whose size differs from the first.
//!
//! Colour: a folder whose images are all grayscale gives 1-channel images,
//! normalised by its training split's mean and standard deviation and
//! augmented by shifts of up to 2 pixels without flips (MNIST-like data);
//! any other folder gives RGB images (grayscale ones replicated, see
//! `decode`; a grayscale split beside a colour one too) with the seed's
//! CIFAR-10 normalisation and augmentation.
//!
//! Decoding runs once: each split is cached (see `cache`); an archive is
//! not even read again while its size and modification time are unchanged.

use crate::cache::{file_stamp, user_cache_dir, CachePlaces, Cached, Fnv};
use crate::dataset::{Augment, Dataset, Normalize, Split};
use crate::decode::{decode_all, default_threads, ImageEntry, ImageSource};
use crate::error::DataError;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The version of the decoded-pixel format, part of every cache key.
const FORMAT: &str = "qatc-data images v2 gray-or-rgb chw";

/// How image folders are decoded and cached.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Where the cache goes when it cannot go next to the data (`None`: no
    /// fallback). Default: `${XDG_CACHE_HOME:-$HOME/.cache}/qatc/data`.
    pub fallback_cache: Option<PathBuf>,
    /// Whether to read and write the decode cache at all.
    pub use_cache: bool,
    /// Decoding threads. Default: the available cores.
    pub threads: usize,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            fallback_cache: user_cache_dir(),
            use_cache: true,
            threads: default_threads(),
        }
    }
}

/// Whether `dir` looks like an image folder.
pub fn is_image_folder(dir: &Path) -> bool {
    dir.join("train").is_dir() || dir.join("test").is_dir()
}

/// Whether `path` names a gzipped tar archive.
pub fn is_archive(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// What a name inside a split is.
#[derive(PartialEq)]
enum Kind {
    Hidden,
    Image,
    Other,
}

fn kind(name: &str) -> Kind {
    if name.starts_with('.') {
        return Kind::Hidden;
    }
    let lower = name.to_ascii_lowercase();
    if [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e)) {
        Kind::Image
    } else {
        Kind::Other
    }
}

const NOT_A_CLASS: &str = "not a class directory (a split holds one directory per class)";
const NOT_AN_IMAGE: &str = "not a .jpg, .jpeg or .png image";
const NESTED_DIR: &str = "a directory inside a class directory (images go directly in it)";

/// Labels are `u16`.
const MAX_CLASSES: usize = u16::MAX as usize + 1;

/// The label of the class at `index`, or an error past `MAX_CLASSES`.
fn class_label(split: &Path, index: usize) -> Result<u16, DataError> {
    u16::try_from(index).map_err(|_| DataError::TooManyClasses {
        path: split.to_path_buf(),
        max: MAX_CLASSES,
    })
}

/// One split of a folder as listed: classes, images and the cache key.
struct Listed {
    classes: Vec<String>,
    entries: Vec<ImageEntry>,
    key: u64,
}

fn sorted_dir(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        // `DirEntry::metadata` stats relative to the open directory (half
        // the time of a stat by full path over 60,000 files) but does not
        // follow links: a linked file or class directory is stat-ed again.
        let meta = match entry.metadata() {
            Ok(m) if !m.file_type().is_symlink() => m,
            _ => std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?,
        };
        out.push((entry.file_name().to_string_lossy().into_owned(), path, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Lists `root/<split>`.
fn list_split(root: &Path, split: &'static str) -> Result<Listed, DataError> {
    let dir = root.join(split);
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir,
            what: "an image folder needs train/<class>/ and test/<class>/ directories",
        });
    }
    let mut classes = Vec::new();
    let mut entries = Vec::new();
    let mut key = Fnv::new().str(FORMAT).str(split);
    for (name, path, meta) in sorted_dir(&dir)? {
        match (kind(&name), meta.is_dir()) {
            (Kind::Hidden, _) => continue,
            (_, false) => {
                return Err(DataError::StrayFile {
                    path,
                    why: NOT_A_CLASS,
                })
            }
            _ => {}
        }
        let label = class_label(&dir, classes.len())?;
        let before = entries.len();
        for (file, path, meta) in sorted_dir(&path)? {
            match kind(&file) {
                Kind::Hidden => continue,
                _ if meta.is_dir() => {
                    return Err(DataError::StrayFile {
                        path,
                        why: NESTED_DIR,
                    })
                }
                Kind::Other => {
                    return Err(DataError::StrayFile {
                        path,
                        why: NOT_AN_IMAGE,
                    })
                }
                Kind::Image => {}
            }
            key = file_stamp(key.str(&name).str(&file), &meta).u64(label as u64);
            entries.push(ImageEntry {
                path,
                source: ImageSource::File,
                label,
            });
        }
        if entries.len() == before {
            return Err(DataError::EmptyClass { path });
        }
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses { path: dir });
    }
    Ok(Listed {
        classes,
        entries,
        key: key.finish(),
    })
}

fn check_classes(path: &Path, train: &[String], test: &[String]) -> Result<(), DataError> {
    if train == test {
        return Ok(());
    }
    Err(DataError::ClassMismatch {
        path: path.to_path_buf(),
        train: train.join(", "),
        test: test.join(", "),
    })
}

/// Decodes a listed split, or reads it from the cache.
fn load_split(
    listed: Listed,
    places: &CachePlaces,
    opts: &FolderOptions,
) -> Result<Cached, DataError> {
    if opts.use_cache {
        if let Some(cached) = places.load(listed.key) {
            if cached.classes == listed.classes {
                return Ok(cached);
            }
        }
    }
    let decoded = decode_all(&listed.entries, opts.threads)?;
    let cached = Cached {
        shape: decoded.shape,
        classes: listed.classes,
        labels: listed.entries.iter().map(|e| e.label).collect(),
        images: decoded.images,
    };
    if opts.use_cache {
        places.store(listed.key, &cached);
    }
    Ok(cached)
}

fn split_of(name: &str, train: Cached, test: Cached) -> Result<Split, DataError> {
    let (norm, augment) = if train.shape[0] == 1 {
        (
            Normalize::fit(&train.images, train.shape, 255.0),
            GRAY_AUGMENT,
        )
    } else {
        (Normalize::cifar10(), Augment::cifar10())
    };
    let dataset = |c: Cached| Dataset {
        name: name.to_string(),
        shape: c.shape,
        classes: c.classes,
        images: c.images,
        labels: c.labels,
        norm: norm.clone(),
        augment,
    };
    Ok(Split {
        train: dataset(train),
        test: dataset(test),
    })
}

/// Grayscale folders are mostly handwriting and glyphs (MNIST-like), which
/// a mirror turns into other symbols: small shifts only.
const GRAY_AUGMENT: Augment = Augment {
    pad: 2,
    hflip: false,
};

/// Opens the image folder `dir`.
pub fn open_folder(dir: &Path, opts: &FolderOptions) -> Result<Split, DataError> {
    let train = list_split(dir, "train")?;
    let test = list_split(dir, "test")?;
    check_classes(&dir.join("test"), &train.classes, &test.classes)?;
    let places = |split: &str| {
        let local = dir.join(".qatc-cache").join(format!("{split}.bin"));
        CachePlaces::new(dir, local, split, opts.fallback_cache.as_deref())
    };
    let mut train = load_split(train, &places("train"), opts)?;
    let mut test = load_split(test, &places("test"), opts)?;
    unify_channels(&mut train, &mut test);
    check_shapes(&dir.join("test"), &train, &test)?;
    split_of(&data_name(dir), train, test)
}

/// When one split is grayscale and the other colour, the grayscale one
/// becomes RGB too (its plane replicated), so both have one channel count.
fn unify_channels(train: &mut Cached, test: &mut Cached) {
    let (train_c, test_c) = (train.shape[0], test.shape[0]);
    for (gray, colour) in [(train, test_c), (test, train_c)] {
        if gray.shape[0] == 1 && colour == 3 {
            let plane = gray.shape[1] * gray.shape[2];
            let mut rgb = Vec::with_capacity(gray.images.len() * 3);
            for luma in gray.images.chunks_exact(plane.max(1)) {
                for _ in 0..3 {
                    rgb.extend_from_slice(luma);
                }
            }
            gray.images = rgb;
            gray.shape[0] = 3;
        }
    }
}

/// The test images must have the training images' size.
fn check_shapes(test_dir: &Path, train: &Cached, test: &Cached) -> Result<(), DataError> {
    if train.shape == test.shape {
        return Ok(());
    }
    Err(DataError::ImageSize {
        path: test_dir.to_path_buf(),
        got_w: test.shape[2] as u32,
        got_h: test.shape[1] as u32,
        first: test_dir.with_file_name("train"),
        w: train.shape[2] as u32,
        h: train.shape[1] as u32,
    })
}

fn data_name(path: &Path) -> String {
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "images".into());
    name.trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz")
        .to_string()
}

/// Opens a gzipped tar archive of an image folder.
pub fn open_archive(path: &Path, opts: &FolderOptions) -> Result<Split, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let key = |split: &str| file_stamp(Fnv::new().str(FORMAT).str("archive"), &meta).str(split);
    let parent = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let places = |split: &str| {
        let local = parent
            .join(".qatc-cache")
            .join(format!("{file_name}-{split}.bin"));
        CachePlaces::new(path, local, split, opts.fallback_cache.as_deref())
    };
    let (train_places, test_places) = (places("train"), places("test"));
    let (train_key, test_key) = (key("train").finish(), key("test").finish());
    if opts.use_cache {
        if let (Some(train), Some(test)) =
            (train_places.load(train_key), test_places.load(test_key))
        {
            let (mut train, mut test) = (train, test);
            unify_channels(&mut train, &mut test);
            if train.classes == test.classes && train.shape == test.shape {
                return split_of(&data_name(path), train, test);
            }
        }
    }
    let [train, test] = list_archive(path)?;
    check_classes(&path.join("test"), &train.classes, &test.classes)?;
    let mut train = load_split(
        Listed {
            key: train_key,
            ..train
        },
        &train_places,
        opts,
    )?;
    let mut test = load_split(
        Listed {
            key: test_key,
            ..test
        },
        &test_places,
        opts,
    )?;
    unify_channels(&mut train, &mut test);
    check_shapes(&path.join("test"), &train, &test)?;
    split_of(&data_name(path), train, test)
}

/// An archive split's members: class -> file name -> (path, bytes).
type MemberClasses = BTreeMap<String, BTreeMap<String, (PathBuf, Vec<u8>)>>;

/// Reads every member of the archive into memory, as two listed splits.
fn list_archive(path: &Path) -> Result<[Listed; 2], DataError> {
    let bad = |e: std::io::Error| DataError::Archive {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(gz);
    let mut splits: [(bool, MemberClasses); 2] = Default::default();
    for member in archive.entries().map_err(bad)? {
        let mut member = member.map_err(bad)?;
        let kind_of_entry = member.header().entry_type();
        let inner = member.path().map_err(bad)?.into_owned();
        let parts: Vec<String> = inner
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let is_split = |s: &String| s == "train" || s == "test";
        let rel = match parts.iter().position(is_split) {
            Some(k) if k <= 1 => &parts[k..],
            _ => continue,
        };
        if rel.iter().any(|p| kind(p) == Kind::Hidden) {
            continue;
        }
        let (seen, classes) = &mut splits[usize::from(rel[0] == "test")];
        *seen = true;
        let member_path = path.join(&inner);
        let stray = |why| {
            Err(DataError::StrayFile {
                path: member_path.clone(),
                why,
            })
        };
        let is_dir = kind_of_entry.is_dir();
        match rel.len() {
            1 => {}
            2 if is_dir => {
                classes.entry(rel[1].clone()).or_default();
            }
            2 => return stray(NOT_A_CLASS),
            3 if is_dir => return stray(NESTED_DIR),
            3 if kind(&rel[2]) != Kind::Image => return stray(NOT_AN_IMAGE),
            3 if kind_of_entry.is_file() => {
                let mut bytes = Vec::with_capacity(member.size() as usize);
                member.read_to_end(&mut bytes).map_err(bad)?;
                classes
                    .entry(rel[1].clone())
                    .or_default()
                    .insert(rel[2].clone(), (member_path, bytes));
            }
            3 => {}
            _ => return stray(NESTED_DIR),
        }
    }
    let [train, test] = splits;
    Ok([
        listed_split(path, "train", train)?,
        listed_split(path, "test", test)?,
    ])
}

/// One split of an archive, checked, as entries in label and name order.
fn listed_split(
    path: &Path,
    split: &str,
    (seen, classes): (bool, MemberClasses),
) -> Result<Listed, DataError> {
    let split_path = path.join(split);
    if !seen {
        return Err(DataError::Missing {
            path: split_path,
            what: "the archive holds no train/<class>/ or no test/<class>/ directory",
        });
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses { path: split_path });
    }
    let mut entries = Vec::new();
    let mut names = Vec::new();
    if classes.len() > MAX_CLASSES {
        class_label(&split_path, classes.len())?;
    }
    for (label, (class, files)) in classes.into_iter().enumerate() {
        if files.is_empty() {
            return Err(DataError::EmptyClass {
                path: split_path.join(&class),
            });
        }
        for (member_path, bytes) in files.into_values() {
            entries.push(ImageEntry {
                path: member_path,
                source: ImageSource::Memory(bytes),
                label: label as u16,
            });
        }
        names.push(class);
    }
    Ok(Listed {
        classes: names,
        entries,
        key: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_run_out_after_65536_classes() {
        let split = Path::new("d/train");
        assert_eq!(class_label(split, 65_535).unwrap(), 65_535);
        let e = class_label(split, 65_536).unwrap_err();
        assert_eq!(e.to_string(), "d/train: more than 65536 class directories");
    }

    #[test]
    fn names_are_sorted_into_kinds() {
        assert!(kind(".DS_Store") == Kind::Hidden);
        assert!(kind("a.JPEG") == Kind::Image);
        assert!(kind("b.png") == Kind::Image);
        assert!(kind("c.gif") == Kind::Other);
        assert!(is_archive(Path::new("x/cifar.tar.gz")));
        assert!(is_archive(Path::new("cifar.tgz")));
        assert!(!is_archive(Path::new("cifar.tar")));
    }
}
