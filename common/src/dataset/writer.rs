//! Writing a dataset: shards as rows arrive, the manifest last.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::manifest::{
    Deidentification, FORMAT, ImageInfo, MANIFEST_FILE, Manifest, PixelStats, ShardInfo, SplitInfo,
};
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
    deidentification: Option<Deidentification>,
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
            deidentification: None,
        })
    }

    /// Seals every shard with `key` (AES-256-GCM); the manifest records the key's id.
    pub fn encrypt_with(mut self, key: DataKey) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.key = Some((key, format!("dataset-{id}")));
        self
    }

    /// Records in the manifest how the images were de-identified.
    pub fn deidentified(mut self, how: Deidentification) -> Self {
        self.deidentification = Some(how);
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
            deidentification: self.deidentification,
        };
        manifest.validate(self.out.as_str())?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Compute(format!("manifest encoding: {e}")))?;
        self.out.join(MANIFEST_FILE)?.put(json).await?;
        Ok(manifest)
    }
}
