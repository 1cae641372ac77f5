//! Assembling a batch from decoded shards: each image preprocessed as the model's input
//! pipeline says. The one way batches are built, by the worker (training and evaluation
//! tasks), local evaluation and the benchmarks, so that the same sample becomes the same input
//! everywhere.

use crate::dataset::{DecodedShard, ImageInfo};
use crate::preprocess::Draw;
use crate::{Error, Result};

use super::{BatchInput, ModelConfig};

/// A batch being built, sample by sample.
pub struct BatchBuilder<'a> {
    model: &'a ModelConfig,
    source: &'a ImageInfo,
    /// Stored images are already the model's input (no window, no resizing, no augmentation,
    /// one channel): copied as they are.
    raw: bool,
    batch: BatchInput,
}

impl<'a> BatchBuilder<'a> {
    /// An empty batch for `model`, of images stored as `source` describes, with room for
    /// `images` of them.
    pub fn new(model: &'a ModelConfig, source: &'a ImageInfo, images: usize) -> Self {
        let raw = model.input.is_identity()
            && (source.height as usize, source.width as usize) == (model.height, model.width)
            && source.channels == 1;
        let per_image = model.height * model.width * source.channels as usize;
        BatchBuilder {
            model,
            source,
            raw,
            batch: BatchInput {
                pixels: Vec::with_capacity(images.saturating_mul(per_image)),
                labels: Vec::with_capacity(images),
                keep_mask: None,
            },
        }
    }

    /// Adds row `row` of `shard`, augmented by `draw` (training) or not.
    pub fn push(&mut self, shard: &DecodedShard, row: usize, draw: Option<&Draw>) -> Result<()> {
        let Some(&label) = shard.labels.get(row) else {
            return Err(Error::invalid(
                "row",
                format!("{row} is past the shard's {} rows", shard.labels.len()),
            ));
        };
        let image = shard.image(row);
        if self.raw {
            self.batch.pixels.extend_from_slice(image);
        } else {
            self.model.input.apply(
                image,
                self.source,
                self.model.height,
                self.model.width,
                draw,
                &mut self.batch.pixels,
            );
        }
        self.batch.labels.push(label);
        Ok(())
    }

    /// Adds the dropout keep-mask of the sample pushed last.
    pub fn push_keep_mask(&mut self, mask: &[f32]) {
        self.batch
            .keep_mask
            .get_or_insert_with(Vec::new)
            .extend_from_slice(mask);
    }

    /// Samples so far.
    pub fn len(&self) -> usize {
        self.batch.labels.len()
    }

    /// Whether no sample was added.
    pub fn is_empty(&self) -> bool {
        self.batch.labels.is_empty()
    }

    /// The batch.
    pub fn finish(self) -> BatchInput {
        self.batch
    }
}
