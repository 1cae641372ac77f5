//! `manifest.json`: what a dataset holds, written after every shard so a reader never sees a
//! half-written dataset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::seal::Encryption;
use crate::storage::StoreUrl;
use crate::{Error, Result};

/// The manifest's file name inside a dataset prefix.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The format tag every manifest carries.
pub const FORMAT: &str = "ctcluster.dataset.v1";
/// Largest image side accepted (pixels).
pub const MAX_SIDE: u32 = 4096;
/// Most classes accepted.
pub const MAX_CLASSES: usize = 10_000;
/// Longest sample id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Most shards one split may list (each is checked against its file before a job is planned).
pub const MAX_SHARDS_PER_SPLIT: usize = 65_536;
/// Largest `manifest.json` read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The element type of stored pixels; data keeps its source precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    /// 8-bit unsigned (most PNG/JPEG, MedMNIST).
    U8,
    /// 16-bit unsigned (16-bit PNG, raw detector values).
    U16,
    /// 16-bit signed (CT in Hounsfield units).
    I16,
    /// 32-bit float.
    F32,
}

impl PixelType {
    /// Bytes per stored pixel.
    pub fn size(self) -> usize {
        match self {
            PixelType::U8 => 1,
            PixelType::U16 | PixelType::I16 => 2,
            PixelType::F32 => 4,
        }
    }

    /// Appends the pixels in `bytes` (little-endian) to `out` as f32.
    pub fn extend_f32(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            PixelType::U8 => out.extend(bytes.iter().map(|&b| f32::from(b))),
            PixelType::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f32::from(u16::from_le_bytes([b[0], b[1]]))),
            ),
            PixelType::I16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
            ),
            PixelType::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
    }
}

/// Shape and type of every image in the dataset (stored row-major, height x width x channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Rows of pixels.
    pub height: u32,
    /// Columns of pixels.
    pub width: u32,
    /// 1 for grayscale, 3 for RGB.
    pub channels: u32,
    /// Element type.
    pub pixel_type: PixelType,
}

impl ImageInfo {
    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// Bytes per stored image.
    pub fn bytes(&self) -> usize {
        self.pixels() * self.pixel_type.size()
    }
}

/// Pixel statistics over the training split, used for normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelStats {
    /// Mean pixel value.
    pub mean: f64,
    /// Standard deviation of pixel values.
    pub std: f64,
    /// Smallest pixel value.
    pub min: f64,
    /// Largest pixel value.
    pub max: f64,
}

/// One Arrow IPC file of a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// File name relative to the dataset prefix.
    pub file: String,
    /// Rows in the file.
    pub rows: u64,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// Rows per class, indexed like `Manifest::classes`.
    pub per_class: Vec<u64>,
}

/// The sum of counts, `None` if it overflows (a forged count).
fn checked_sum(counts: &[u64]) -> Option<u64> {
    counts.iter().try_fold(0u64, |a, &b| a.checked_add(b))
}

impl ShardInfo {
    /// The fewest and most bytes a shard file with this many rows of `image` can have. Its
    /// images alone take `rows x image bytes`; ids (at most [`MAX_ID_BYTES`]), labels, Arrow's
    /// framing and a seal add at most `MAX_ID_BYTES + 64` bytes a row and 1 MiB a file. A file
    /// outside these bounds does not hold the rows the manifest says.
    pub fn size_bounds(&self, image: &ImageInfo) -> (u64, u64) {
        let per_row = image.bytes() as u64;
        let min = self.rows.saturating_mul(per_row);
        let max = self
            .rows
            .saturating_mul(per_row + MAX_ID_BYTES as u64 + 64)
            .saturating_add(1 << 20);
        (min, max)
    }
}

/// One split (train, val, test).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    /// Rows in the split.
    pub rows: u64,
    /// Rows per class.
    pub per_class: Vec<u64>,
    /// The split's shards, in order.
    pub shards: Vec<ShardInfo>,
}

/// A dataset's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Image shape and pixel type.
    pub image: ImageInfo,
    /// Class names; labels index this list.
    pub classes: Vec<String>,
    /// Splits by name.
    pub splits: BTreeMap<String, SplitInfo>,
    /// Pixel statistics of the training split.
    pub pixel_stats: PixelStats,
    /// The shards' Arrow columns, name -> type (documentation for other readers; the codec
    /// checks the real schema of every shard).
    #[serde(default = "shard_columns")]
    pub schema: BTreeMap<String, String>,
    /// Where the data came from (free text).
    #[serde(default)]
    pub source: String,
    /// Set when the shards are sealed (AES-256-GCM): which key opens them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Set when the images were de-identified on ingest (DICOM): the profile and which
    /// pseudonym key was used, by fingerprint (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deidentification: Option<Deidentification>,
}

/// How a dataset's images were de-identified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deidentification {
    /// The confidentiality profile applied.
    pub profile: String,
    /// The first 8 bytes of the pseudonym key's sha256, in hex.
    pub key_fingerprint: String,
}

/// The columns every shard has: `id` utf8, `label` int32, `image` binary (raw little-endian
/// pixels, height x width x channels, of the manifest's pixel type).
pub fn shard_columns() -> BTreeMap<String, String> {
    [("id", "utf8"), ("label", "int32"), ("image", "binary")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Manifest {
    /// Checks the manifest is self-consistent and within limits; `location` names it in errors.
    pub fn validate(&self, location: &str) -> Result<()> {
        let bad = |reason: String| Err(Error::dataset(location, reason));
        if self.format != FORMAT {
            return bad(format!("format {:?} is not {FORMAT:?}", self.format));
        }
        let im = &self.image;
        if im.height == 0 || im.width == 0 || im.height > MAX_SIDE || im.width > MAX_SIDE {
            return bad(format!(
                "image {}x{} is outside 1..={MAX_SIDE} pixels a side",
                im.height, im.width
            ));
        }
        if let Some(e) = &self.encryption {
            if e.algorithm != crate::seal::ALGORITHM {
                return bad(format!(
                    "encryption {:?} is not {}",
                    e.algorithm,
                    crate::seal::ALGORITHM
                ));
            }
            crate::seal::check_key_id(&e.key_id)?;
        }
        if im.channels != 1 && im.channels != 3 {
            return bad(format!("{} channels (1 or 3 supported)", im.channels));
        }
        if self.classes.len() < 2 || self.classes.len() > MAX_CLASSES {
            return bad(format!(
                "{} classes (2..={MAX_CLASSES} supported)",
                self.classes.len()
            ));
        }
        if !self.splits.contains_key("train") {
            return bad("no train split".into());
        }
        for (name, split) in &self.splits {
            if split.per_class.len() != self.classes.len() {
                return bad(format!("split {name}: per_class has the wrong length"));
            }
            if split.shards.len() > MAX_SHARDS_PER_SPLIT {
                return bad(format!(
                    "split {name}: {} shards (at most {MAX_SHARDS_PER_SPLIT})",
                    split.shards.len()
                ));
            }
            let mut rows = 0u64;
            for shard in &split.shards {
                let safe = !shard.file.is_empty()
                    && !shard.file.contains(['/', '\\'])
                    && shard.file != ".."
                    && shard.file != ".";
                if !safe {
                    return bad(format!(
                        "split {name}: bad shard file name {:?}",
                        shard.file
                    ));
                }
                if shard.sha256.len() != 64 || !shard.sha256.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return bad(format!("shard {}: sha256 is not 64 hex digits", shard.file));
                }
                if shard.rows > u64::from(u32::MAX) {
                    return bad(format!(
                        "shard {}: {} rows (at most {} a shard)",
                        shard.file,
                        shard.rows,
                        u32::MAX
                    ));
                }
                if shard.per_class.len() != self.classes.len()
                    || checked_sum(&shard.per_class) != Some(shard.rows)
                {
                    return bad(format!(
                        "shard {}: per_class does not add up to rows",
                        shard.file
                    ));
                }
                rows = rows.saturating_add(shard.rows);
            }
            if rows != split.rows {
                return bad(format!(
                    "split {name}: shards hold {rows} rows but the split says {}",
                    split.rows
                ));
            }
        }
        Ok(())
    }

    /// The named split, or an error listing the ones there are.
    pub fn split(&self, name: &str, location: &str) -> Result<&SplitInfo> {
        self.splits.get(name).ok_or_else(|| {
            Error::dataset(
                location,
                format!(
                    "no split {name:?}; it has {}",
                    self.splits.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }
}

/// Reads and validates `manifest.json` under a dataset URL.
pub async fn load_manifest(dataset: &StoreUrl) -> Result<Manifest> {
    Ok(load_manifest_with_sha(dataset).await?.0)
}

/// [`load_manifest`], with the sha256 of the manifest's bytes (which name every shard by its
/// own sha256, so it identifies the whole dataset).
pub async fn load_manifest_with_sha(dataset: &StoreUrl) -> Result<(Manifest, String)> {
    let url = dataset.join(MANIFEST_FILE)?;
    let bytes = url
        .get_bounded(MAX_MANIFEST_BYTES, "a dataset manifest")
        .await
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound {
                what: format!("no dataset here, {MANIFEST_FILE}"),
                location: dataset.as_str().into(),
            },
            other => other,
        })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::dataset(url.as_str(), format!("not a valid manifest: {e}")))?;
    manifest.validate(url.as_str())?;
    Ok((manifest, crate::checkpoint::sha(&bytes)))
}

/// Checks the row counts the manifest declares for a split against the shard files really
/// there: each file's size (as the store reports it, nothing is read) must lie within
/// [`ShardInfo::size_bounds`]. What plans a job over the split (and sizes memory by its rows)
/// calls this first, so that a manifest claiming more rows than its files hold is refused
/// with the shard named instead of being believed.
pub async fn verify_shard_sizes(
    dataset: &StoreUrl,
    manifest: &Manifest,
    split: &str,
) -> Result<()> {
    use futures::TryStreamExt;
    let info = manifest.split(split, dataset.as_str())?;
    let image = manifest.image;
    futures::stream::iter(info.shards.iter().map(Ok))
        .try_for_each_concurrent(16, |shard| async move {
            let url = dataset.join(&shard.file)?;
            let size = url.size().await?;
            let (min, max) = shard.size_bounds(&image);
            if size < min || size > max {
                return Err(Error::dataset(
                    url.as_str(),
                    format!(
                        "the manifest says {} rows of {} bytes, but the file has {size} bytes \
                         (a shard of {} rows has {min}..={max})",
                        shard.rows,
                        image.bytes(),
                        shard.rows
                    ),
                ));
            }
            Ok(())
        })
        .await
}
