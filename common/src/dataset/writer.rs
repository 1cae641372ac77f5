//! Writing a dataset: shards as rows arrive, the manifest last.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::manifest::{
    FORMAT, ImageInfo, MANIFEST_FILE, Manifest, PixelStats, PixelType, ShardInfo, SplitInfo,
};
use super::npz::read_npz;
use super::shard::encode_shard;
use crate::seal::{DataKey, Encryption, aad};
use crate::storage::StoreUrl;
use crate::{Error, Result};

#[derive(Default)]
struct PendingSplit {
    info: SplitInfo,
    ids: Vec<String>,
    labels: Vec<i32>,
    images: Vec<Vec<u8>>,
}

#[derive(Default)]
struct StatsAcc {
    n: f64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

/// Builds a dataset under a URL: add rows, then `finish` writes the manifest.
pub struct DatasetWriter {
    out: StoreUrl,
    image: ImageInfo,
    classes: Vec<String>,
    shard_rows: usize,
    splits: BTreeMap<String, PendingSplit>,
    stats: StatsAcc,
    source: String,
    scratch: Vec<f32>,
    /// The sealing key and the dataset's binding (a random id, recorded in the manifest).
    key: Option<(DataKey, String)>,
}

impl DatasetWriter {
    /// A writer for images of one shape, `shard_rows` rows per shard.
    pub fn new(
        out: StoreUrl,
        image: ImageInfo,
        classes: Vec<String>,
        shard_rows: usize,
        source: impl Into<String>,
    ) -> Result<Self> {
        if shard_rows == 0 {
            return Err(Error::invalid("shard_rows", "must be at least 1"));
        }
        Ok(DatasetWriter {
            out,
            image,
            classes,
            shard_rows,
            splits: BTreeMap::new(),
            stats: StatsAcc {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                ..Default::default()
            },
            source: source.into(),
            scratch: Vec::new(),
            key: None,
        })
    }

    /// Seals every shard with `key` (AES-256-GCM); the manifest records the key's id.
    pub fn encrypt_with(mut self, key: DataKey) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.key = Some((key, format!("dataset-{id}")));
        self
    }

    /// Adds one image (raw little-endian pixels of the declared type) to a split.
    pub async fn add(
        &mut self,
        split: &str,
        id: String,
        label: u32,
        pixels: Vec<u8>,
    ) -> Result<()> {
        if pixels.len() != self.image.bytes() {
            return Err(Error::invalid(
                "image",
                format!(
                    "{id}: {} bytes, expected {}",
                    pixels.len(),
                    self.image.bytes()
                ),
            ));
        }
        if label as usize >= self.classes.len() {
            return Err(Error::invalid(
                "label",
                format!("{id}: label {label} is outside 0..{}", self.classes.len()),
            ));
        }
        let label_i32 = i32::try_from(label).map_err(|_| Error::invalid("label", "too large"))?;
        if split == "train" {
            self.scratch.clear();
            self.image.pixel_type.extend_f32(&pixels, &mut self.scratch);
            for &v in &self.scratch {
                let v = f64::from(v);
                self.stats.n += 1.0;
                self.stats.sum += v;
                self.stats.sum_sq += v * v;
                self.stats.min = self.stats.min.min(v);
                self.stats.max = self.stats.max.max(v);
            }
        }
        let classes = self.classes.len();
        let pending = self.splits.entry(split.to_string()).or_default();
        if pending.info.per_class.is_empty() {
            pending.info.per_class = vec![0; classes];
        }
        pending.ids.push(id);
        pending.labels.push(label_i32);
        pending.images.push(pixels);
        if pending.ids.len() >= self.shard_rows {
            let sealing = self.key.as_ref().map(|(k, b)| (k, b.as_str()));
            Self::flush(&self.out, split, pending, classes, sealing).await?;
        }
        Ok(())
    }

    async fn flush(
        out: &StoreUrl,
        split: &str,
        p: &mut PendingSplit,
        classes: usize,
        key: Option<(&DataKey, &str)>,
    ) -> Result<()> {
        if p.ids.is_empty() {
            return Ok(());
        }
        let file = format!("{split}-{:05}.arrow", p.info.shards.len());
        let bytes = encode_shard(&p.ids, &p.labels, &p.images)?;
        // Sealed shards are bound to the dataset and their file name; the sha256 covers the
        // stored bytes.
        let bytes = match key {
            Some((k, binding)) => k.seal(&aad(Some(binding), &file), &bytes)?,
            None => bytes,
        };
        let mut per_class = vec![0u64; classes];
        for &l in &p.labels {
            per_class[l as usize] += 1;
        }
        let rows = p.ids.len() as u64;
        p.info.rows += rows;
        for (total, n) in p.info.per_class.iter_mut().zip(&per_class) {
            *total += n;
        }
        p.info.shards.push(ShardInfo {
            file: file.clone(),
            rows,
            sha256: hex::encode(Sha256::digest(&bytes)),
            per_class,
        });
        out.join(&file)?.put(bytes).await?;
        p.ids.clear();
        p.labels.clear();
        p.images.clear();
        Ok(())
    }

    /// The bytes of a file written beside the shards (a report, a metadata sidecar) as they
    /// are stored: sealed, bound to this dataset and the file's name, when the shards are.
    pub fn seal_extra(&self, name: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        match &self.key {
            Some((k, binding)) => k.seal(&aad(Some(binding), name), &bytes),
            None => Ok(bytes),
        }
    }

    /// Writes the remaining shards, then the manifest.
    pub async fn finish(mut self) -> Result<Manifest> {
        let classes = self.classes.len();
        let sealing = self.key.as_ref().map(|(k, b)| (k, b.as_str()));
        for (name, pending) in self.splits.iter_mut() {
            Self::flush(&self.out, name, pending, classes, sealing).await?;
        }
        let s = &self.stats;
        if s.n == 0.0 {
            return Err(Error::invalid("dataset", "the train split is empty"));
        }
        let mean = s.sum / s.n;
        let manifest = Manifest {
            format: FORMAT.into(),
            image: self.image,
            classes: self.classes,
            splits: self.splits.into_iter().map(|(k, v)| (k, v.info)).collect(),
            schema: super::manifest::shard_columns(),
            pixel_stats: PixelStats {
                mean,
                std: (s.sum_sq / s.n - mean * mean).max(0.0).sqrt(),
                min: s.min,
                max: s.max,
            },
            source: self.source,
            encryption: self
                .key
                .as_ref()
                .map(|(k, binding)| Encryption::bound(k, binding)),
        };
        manifest.validate(self.out.as_str())?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Compute(format!("manifest encoding: {e}")))?;
        self.out.join(MANIFEST_FILE)?.put(json).await?;
        Ok(manifest)
    }
}

/// Converts a MedMNIST-style `.npz` (`train_images`, `train_labels`, `val_*`, `test_*`) into a
/// dataset; each split present is kept as the dataset's split of the same name.
pub async fn convert_npz(
    npz: &Path,
    out: &StoreUrl,
    class_names: Option<Vec<String>>,
    shard_rows: usize,
) -> Result<Manifest> {
    convert_npz_sealed(npz, out, class_names, shard_rows, None).await
}

/// [`convert_npz`], sealing the shards with `key` when given.
pub async fn convert_npz_sealed(
    npz: &Path,
    out: &StoreUrl,
    class_names: Option<Vec<String>>,
    shard_rows: usize,
    key: Option<DataKey>,
) -> Result<Manifest> {
    let what = npz.display().to_string();
    let arrays = read_npz(npz)?;
    let train = arrays
        .get("train_images")
        .ok_or_else(|| Error::invalid(&what, "no train_images array"))?;
    let (height, width, channels) = match train.shape.as_slice() {
        [_, h, w] => (*h, *w, 1),
        [_, h, w, c] => (*h, *w, *c),
        other => {
            return Err(Error::invalid(
                &what,
                format!("train_images has shape {other:?}; expected (N, H, W) or (N, H, W, C)"),
            ));
        }
    };
    let pixel_type = match train.descr.as_str() {
        "|u1" | "u1" => PixelType::U8,
        "<u2" => PixelType::U16,
        "<i2" => PixelType::I16,
        "<f4" => PixelType::F32,
        other => {
            return Err(Error::invalid(
                &what,
                format!("pixel dtype {other} not supported"),
            ));
        }
    };
    let dim = |v: usize| u32::try_from(v).map_err(|_| Error::invalid(&what, "image too large"));
    let image = ImageInfo {
        height: dim(height)?,
        width: dim(width)?,
        channels: dim(channels)?,
        pixel_type,
    };
    let mut splits = Vec::new();
    let mut max_label = 0i64;
    for split in ["train", "val", "test"] {
        let (Some(images), Some(labels)) = (
            arrays.get(&format!("{split}_images")),
            arrays.get(&format!("{split}_labels")),
        ) else {
            continue;
        };
        if images.descr != train.descr || images.shape.get(1..) != train.shape.get(1..) {
            return Err(Error::invalid(
                &what,
                format!("{split}_images differs from train_images in dtype or shape"),
            ));
        }
        let labels = labels.to_i64(&format!("{what}:{split}_labels"))?;
        if labels.len() != images.shape[0] {
            return Err(Error::invalid(
                &what,
                format!(
                    "{split}: {} labels for {} images (multi-label arrays are not supported)",
                    labels.len(),
                    images.shape[0]
                ),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l < 0) {
            return Err(Error::invalid(
                &what,
                format!("{split}: negative label {bad}"),
            ));
        }
        max_label = max_label.max(labels.iter().copied().max().unwrap_or(0));
        splits.push((split, images, labels));
    }
    let classes = match class_names {
        Some(names) => {
            if (max_label as usize) >= names.len() {
                return Err(Error::invalid(
                    "classes",
                    format!(
                        "{} names given but labels go up to {max_label}",
                        names.len()
                    ),
                ));
            }
            names
        }
        None => (0..=max_label.max(1)).map(|i| i.to_string()).collect(),
    };
    let mut writer = DatasetWriter::new(
        out.clone(),
        image,
        classes,
        shard_rows,
        format!("npz:{what}"),
    )?;
    if let Some(k) = key {
        writer = writer.encrypt_with(k);
    }
    let per_image = image.bytes();
    for (split, images, labels) in splits {
        for (i, label) in labels.iter().enumerate() {
            let pixels = images.data[i * per_image..(i + 1) * per_image].to_vec();
            let label = u32::try_from(*label).map_err(|_| Error::invalid("label", "too large"))?;
            writer
                .add(split, format!("{split}-{i:06}"), label, pixels)
                .await?;
        }
    }
    writer.finish().await
}
