//! Image folders (`train/<class>/<image>`, `test/<class>/<image>`) and
//! gzipped tar archives of one (`.tar.gz`, `.tgz`, optionally with one
//! top-level directory above `train/` and `test/`).
//!
//! Layout rules, the same for both: classes are the directories of
//! `train/`, sorted by name (label = position); `test/` must have exactly
//! the same classes; a class's images are its `.jpg`, `.jpeg` and `.png`
//! files (any case), sorted by name. Like torchvision's `ImageFolder`,
//! files that are not images by their name are skipped: hidden ones
//! (`.DS_Store`, `._x.jpg`), OS metadata (`Thumbs.db`), text (`README`,
//! `notes.txt`), and files beside the class directories; each split that
//! skipped any says how many in one line on stderr (and
//! [`Dataset::skipped`]). A directory inside a class is an error naming
//! it, and so are an empty class (no images), a missing `train/` or
//! `test/`, an image whose size differs from the first, and a file with an
//! image name that does not decode, unless [`FolderOptions::skip_broken`]
//! (environment `QATC_SKIP_BROKEN_IMAGES=1`) skips and counts those too.
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
use crate::dataset::{Augment, Dataset, Normalize, Skipped, Split};
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
    /// Skip (and count) files with an image name that do not decode,
    /// instead of stopping with an error naming the first. Default: off,
    /// unless the environment sets `QATC_SKIP_BROKEN_IMAGES=1`.
    pub skip_broken: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            fallback_cache: user_cache_dir(),
            use_cache: true,
            threads: default_threads(),
            skip_broken: std::env::var("QATC_SKIP_BROKEN_IMAGES").is_ok_and(|v| v == "1"),
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
    /// Files skipped for not being images by name, and the first of them.
    not_images: usize,
    first_skipped: Option<PathBuf>,
}

impl Listed {
    fn skip(&mut self, path: PathBuf) {
        self.not_images += 1;
        self.first_skipped.get_or_insert(path);
    }
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
    let mut listed = Listed {
        classes: Vec::new(),
        entries: Vec::new(),
        key: 0,
        not_images: 0,
        first_skipped: None,
    };
    let mut key = Fnv::new().str(FORMAT).str(split);
    for (name, path, meta) in sorted_dir(&dir)? {
        match (kind(&name), meta.is_dir()) {
            // A hidden directory (`.ipynb_checkpoints`) is no class.
            (Kind::Hidden, true) => continue,
            (_, false) => {
                listed.skip(path);
                continue;
            }
            _ => {}
        }
        let Listed {
            classes, entries, ..
        } = &mut listed;
        let label = class_label(&dir, classes.len())?;
        let before = entries.len();
        let mut skipped = Vec::new();
        for (file, path, meta) in sorted_dir(&path)? {
            match kind(&file) {
                Kind::Hidden if meta.is_dir() => continue,
                _ if meta.is_dir() => {
                    return Err(DataError::StrayFile {
                        path,
                        why: NESTED_DIR,
                    })
                }
                Kind::Hidden | Kind::Other => {
                    skipped.push(path);
                    continue;
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
        for path in skipped {
            listed.skip(path);
        }
    }
    if listed.classes.is_empty() {
        return Err(DataError::NoClasses { path: dir });
    }
    listed.key = key.finish();
    Ok(listed)
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

/// Decodes a listed split, or reads it from the cache; says (one line on
/// stderr) what it skipped.
fn load_split(
    listed: Listed,
    split: &Path,
    places: &CachePlaces,
    opts: &FolderOptions,
) -> Result<(Cached, Skipped), DataError> {
    let key = cache_key(listed.key, opts);
    let mut skipped = Skipped {
        not_images: listed.not_images,
        broken: 0,
    };
    let mut first_broken = None;
    let cached = match places
        .load(key)
        .filter(|c| opts.use_cache && c.classes == listed.classes)
    {
        Some(cached) => {
            skipped.broken = listed.entries.len().saturating_sub(cached.labels.len());
            cached
        }
        None => {
            let decoded = decode_all(&listed.entries, opts.threads, opts.skip_broken)?;
            skipped.broken = decoded.broken.len();
            first_broken = decoded
                .broken
                .first()
                .map(|&i| listed.entries[i].path.clone());
            let labels: Vec<u16> = listed
                .entries
                .iter()
                .enumerate()
                .filter(|(i, _)| decoded.broken.binary_search(i).is_err())
                .map(|(_, e)| e.label)
                .collect();
            // A class whose images all failed to decode is empty.
            for (label, class) in listed.classes.iter().enumerate() {
                if !labels.contains(&(label as u16)) {
                    return Err(DataError::EmptyClass {
                        path: split.join(class),
                    });
                }
            }
            let cached = Cached {
                shape: decoded.shape,
                classes: listed.classes,
                labels,
                images: decoded.images,
            };
            if opts.use_cache {
                places.store(key, &cached);
            }
            cached
        }
    };
    report_skipped(
        split,
        &skipped,
        listed.first_skipped.as_deref(),
        first_broken.as_deref(),
    );
    Ok((cached, skipped))
}

/// The cache key of a split listed as `key`: skipping broken images gives
/// other contents, so another entry.
fn cache_key(key: u64, opts: &FolderOptions) -> u64 {
    if opts.skip_broken {
        Fnv::new().u64(key).str("skip broken").finish()
    } else {
        key
    }
}

/// The one line per split that skipped something.
fn report_skipped(split: &Path, s: &Skipped, first: Option<&Path>, broken: Option<&Path>) {
    let mut parts = Vec::new();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if s.not_images > 0 {
        let e = first.map_or(String::new(), |p| format!(", e.g. {}", p.display()));
        parts.push(format!(
            "{} file{} that {} not .jpg, .jpeg or .png images (hidden files, OS metadata, text{e})",
            s.not_images,
            plural(s.not_images),
            if s.not_images == 1 { "is" } else { "are" }
        ));
    }
    if s.broken > 0 {
        let e = broken.map_or(String::new(), |p| format!(", e.g. {}", p.display()));
        parts.push(format!(
            "{} broken image{} that did not decode (QATC_SKIP_BROKEN_IMAGES=1{e})",
            s.broken,
            plural(s.broken)
        ));
    }
    if !parts.is_empty() {
        eprintln!("{}: skipped {}", split.display(), parts.join("; "));
    }
}

fn split_of(
    name: &str,
    (train, train_skipped): (Cached, Skipped),
    (test, test_skipped): (Cached, Skipped),
) -> Result<Split, DataError> {
    let (norm, augment) = if train.shape[0] == 1 {
        (
            Normalize::fit(&train.images, train.shape, 255.0),
            GRAY_AUGMENT,
        )
    } else {
        (Normalize::cifar10(), Augment::cifar10())
    };
    let dataset = |c: Cached, skipped: Skipped| Dataset {
        name: name.to_string(),
        shape: c.shape,
        classes: c.classes,
        images: c.images,
        labels: c.labels,
        norm: norm.clone(),
        augment,
        skipped,
    };
    Ok(Split {
        train: dataset(train, train_skipped),
        test: dataset(test, test_skipped),
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
    let (mut train, train_skipped) = load_split(train, &dir.join("train"), &places("train"), opts)?;
    let (mut test, test_skipped) = load_split(test, &dir.join("test"), &places("test"), opts)?;
    unify_channels(&mut train, &mut test);
    check_shapes(&dir.join("test"), &train, &test)?;
    split_of(
        &data_name(dir),
        (train, train_skipped),
        (test, test_skipped),
    )
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
        // The archive is not read again: what it skipped was said then.
        if let (Some(train), Some(test)) = (
            train_places.load(cache_key(train_key, opts)),
            test_places.load(cache_key(test_key, opts)),
        ) {
            let (mut train, mut test) = (train, test);
            unify_channels(&mut train, &mut test);
            if train.classes == test.classes && train.shape == test.shape {
                return split_of(
                    &data_name(path),
                    (train, Skipped::default()),
                    (test, Skipped::default()),
                );
            }
        }
    }
    let [train, test] = list_archive(path)?;
    check_classes(&path.join("test"), &train.classes, &test.classes)?;
    let decode = |listed: Listed, key: u64, places: &CachePlaces, split: &str| {
        load_split(Listed { key, ..listed }, &path.join(split), places, opts)
    };
    let (mut train, train_skipped) = decode(train, train_key, &train_places, "train")?;
    let (mut test, test_skipped) = decode(test, test_key, &test_places, "test")?;
    unify_channels(&mut train, &mut test);
    check_shapes(&path.join("test"), &train, &test)?;
    split_of(
        &data_name(path),
        (train, train_skipped),
        (test, test_skipped),
    )
}

/// An archive split's members: class -> file name -> (path, bytes).
type MemberClasses = BTreeMap<String, BTreeMap<String, (PathBuf, Vec<u8>)>>;

/// An archive split as read: whether it was seen, its classes, and the
/// members skipped for not being images (sorted later).
#[derive(Default)]
struct MemberSplit {
    seen: bool,
    classes: MemberClasses,
    skipped: Vec<PathBuf>,
}

/// Reads every member of the archive into memory, as two listed splits.
fn list_archive(path: &Path) -> Result<[Listed; 2], DataError> {
    let bad = |e: std::io::Error| DataError::Archive {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(gz);
    let mut splits: [MemberSplit; 2] = Default::default();
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
        let MemberSplit {
            seen,
            classes,
            skipped,
        } = &mut splits[usize::from(rel[0] == "test")];
        *seen = true;
        let member_path = path.join(&inner);
        let is_dir = kind_of_entry.is_dir();
        if rel.iter().any(|p| kind(p) == Kind::Hidden) {
            if !is_dir {
                skipped.push(member_path);
            }
            continue;
        }
        let stray = |why| {
            Err(DataError::StrayFile {
                path: member_path.clone(),
                why,
            })
        };
        match rel.len() {
            1 => {}
            2 if is_dir => {
                classes.entry(rel[1].clone()).or_default();
            }
            2 => skipped.push(member_path),
            3 if is_dir => return stray(NESTED_DIR),
            3 if kind(&rel[2]) != Kind::Image => {
                // The class exists even if it holds no image (then empty).
                classes.entry(rel[1].clone()).or_default();
                skipped.push(member_path)
            }
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
    MemberSplit {
        seen,
        classes,
        mut skipped,
    }: MemberSplit,
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
    skipped.sort();
    Ok(Listed {
        classes: names,
        entries,
        key: 0,
        not_images: skipped.len(),
        first_skipped: skipped.into_iter().next(),
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
