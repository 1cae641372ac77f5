//! What `ctctl predict` and `ctctl explain` read: each INPUT is a dataset (a URL, or a local
//! folder holding `manifest.json`), an image file (PNG, JPEG, `.npy`, DICOM) or a folder of
//! them (walked in name order, DICOM files often having no extension).

use std::path::{Path, PathBuf};

use ctcluster_common::local_file::{MAX_IMAGE_FILE_BYTES, read_limited};
use ctcluster_common::storage::StoreUrl;

use crate::ingest::{Decoded, decode_shown};

/// Most files one folder INPUT may hold.
pub const MAX_FOLDER_FILES: usize = 1_000_000;

/// One INPUT, resolved.
#[derive(Clone, Debug)]
pub enum Input {
    /// A dataset prefix.
    Dataset(StoreUrl),
    /// Image files (one for a file INPUT, every image of a folder INPUT).
    Files(Vec<PathBuf>),
    /// An INPUT that is neither (its row carries the reason).
    Missing(String),
}

/// The decoder for a file, from its extension: `png`, `jpeg`, `npy` or `dicom` (`.dcm`,
/// `.dicom`, `.ima` or no extension); `None` for anything else.
pub fn kind_of(path: &Path) -> Option<&'static str> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => Some("png"),
        Some("jpg" | "jpeg") => Some("jpeg"),
        Some("npy") => Some("npy"),
        Some("dcm" | "dicom" | "ima") | None => Some("dicom"),
        Some(_) => None,
    }
}

/// Resolves one INPUT: a URL with a scheme or a folder with `manifest.json` is a dataset, a
/// folder is walked for images (files of other types are skipped; the count is returned), a
/// file is itself.
pub fn resolve(input: &str) -> (Input, usize) {
    let path = Path::new(input);
    if input.contains("://") || path.join("manifest.json").is_file() {
        return match StoreUrl::parse(input) {
            Ok(url) => (Input::Dataset(url), 0),
            Err(e) => (Input::Missing(e.to_string()), 0),
        };
    }
    if path.is_dir() {
        let mut files = Vec::new();
        let mut skipped = 0;
        if let Err(e) = walk(path, &mut files, &mut skipped) {
            return (Input::Missing(e), skipped);
        }
        files.sort();
        return (Input::Files(files), skipped);
    }
    if path.is_file() {
        return (Input::Files(vec![path.to_path_buf()]), 0);
    }
    (Input::Missing("no such file, folder or dataset".into()), 0)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut usize) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        // Symbolic links are not followed: a link cycle would never end.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            walk(&path, files, skipped)?;
        } else if kind.is_file() {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden || kind_of(&path).is_none() || is_dicomdir(&path) {
                *skipped += 1;
            } else {
                files.push(path);
            }
        }
        if files.len() > MAX_FOLDER_FILES {
            return Err(format!(
                "{} holds more than {MAX_FOLDER_FILES} images; name sub-folders instead",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// A DICOMDIR (a media index, no pixels).
fn is_dicomdir(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

/// Reads and decodes one image file, image by image, or says why it cannot: the same decoders
/// (and limits) as `ctctl ingest`, and the same refusal of DICOM images that may show
/// identifying text. Every frame of a multi-frame DICOM object is an image: `f` gets it with
/// its frame (0-based, and the count); other files give one image and `None`.
pub fn read_images(path: &Path, mut f: impl FnMut(Option<(u32, u32)>, Result<Decoded, String>)) {
    let Some(kind) = kind_of(path) else {
        return f(
            None,
            Err("unsupported file type (PNG, JPEG, .npy or DICOM are read)".into()),
        );
    };
    let bytes = match read_limited(path, MAX_IMAGE_FILE_BYTES, "an image file") {
        Ok(b) => b,
        Err(e) => return f(None, Err(e.to_string())),
    };
    decode_shown(kind, &bytes, |frame, img| {
        let img = img.and_then(|img| match img.non_finite() {
            0 => Ok(img),
            n => Err(format!("{n} NaN or infinite values")),
        });
        f(frame, img)
    });
}

/// How an image of a file is named in the output: the file's name, and for a frame of a
/// multi-frame object `#frameN` (1-based).
pub fn frame_name(file: &str, frame: Option<(u32, u32)>) -> String {
    match frame {
        Some((n, _)) => format!("{file}#frame{}", n + 1),
        None => file.to_string(),
    }
}

/// A stable id for a decoded image that says nothing of the patient or the file name: the
/// first 16 hex digits of the sha256 of its shape, type and pixel values.
pub fn image_id(img: &Decoded) -> String {
    let hash = img.content_hash();
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("img-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_extensions_and_folders_are_walked_in_order() {
        assert_eq!(kind_of(Path::new("a/B.PNG")), Some("png"));
        assert_eq!(kind_of(Path::new("x.jpeg")), Some("jpeg"));
        assert_eq!(kind_of(Path::new("IM000123")), Some("dicom"));
        assert_eq!(kind_of(Path::new("notes.txt")), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("s1")).unwrap();
        for f in [
            "s1/b.dcm",
            "s1/a.dcm",
            "c.png",
            "readme.txt",
            ".hidden.png",
            "DICOMDIR",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let (input, skipped) = resolve(&dir.path().display().to_string());
        let Input::Files(files) = input else {
            panic!("{input:?}")
        };
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["c.png", "s1/a.dcm", "s1/b.dcm"]);
        assert_eq!(skipped, 3);
        assert!(matches!(resolve("/no/such/thing").0, Input::Missing(_)));
        assert!(matches!(resolve("s3://bucket/ds").0, Input::Dataset(_)));
        let mut read = Vec::new();
        read_images(&dir.path().join("c.png"), |frame, img| {
            read.push((frame, img))
        });
        assert_eq!(read.len(), 1);
        let err = read[0].1.as_ref().unwrap_err();
        assert!(read[0].0.is_none() && err.contains("PNG"), "{err}");
        assert_eq!(frame_name("a.dcm", Some((2, 5))), "a.dcm#frame3");
    }
}
