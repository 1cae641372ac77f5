//! Reading local files whole, with a limit: the file's size is checked before anything is
//! read, and the bytes are counted as they come (a file that grows meanwhile is still cut off).

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Largest PEM file (certificate, key, CA) read.
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// Largest single image file (PNG, JPEG, `.npy`, DICOM) read: a 4096x4096 RGB image of 16-bit
/// samples is 96 MiB uncompressed.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Largest array file (`.npy`, `.npz`) read, and the most an `.npz` archive may unpack to.
pub const MAX_ARRAY_FILE_BYTES: u64 = 8 << 30;

/// Reads `path` whole if it holds at most `limit` bytes; `what` names it in errors.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let io = |source: std::io::Error| Error::Io {
        path: format!("{what} {}", path.display()),
        source,
    };
    let too_large = |size: u64| Error::TooLarge {
        location: path.display().to_string(),
        what: what.to_string(),
        size,
        limit,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_over_the_limit_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.npz");
        std::fs::write(&path, vec![7u8; 100]).unwrap();
        assert_eq!(read_limited(&path, 100, "an archive").unwrap().len(), 100);
        let e = read_limited(&path, 99, "an archive").unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooLarge {
                    size: 100,
                    limit: 99,
                    ..
                }
            ),
            "{e}"
        );
        // A sparse 64 GiB file costs nothing to refuse.
        let sparse = dir.path().join("sparse.npy");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        assert!(read_limited(&sparse, MAX_ARRAY_FILE_BYTES, "an array").is_err());
        assert!(read_limited(&dir.path().join("missing"), 1, "x").is_err());
    }
}
