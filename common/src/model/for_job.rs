//! The model a job trains: the spec's architecture and input pipeline on the dataset's images.

use super::ModelConfig;
use crate::Result;
use crate::dataset::{ImageInfo, Manifest};
use crate::preprocess::InputPipeline;
use crate::spec::JobSpec;

/// The model configuration for `spec` on a dataset described by `manifest`: input size after
/// `preprocess.resize`, normalisation, window and augmentation.
pub fn model_for_job(spec: &JobSpec, manifest: &Manifest) -> Result<ModelConfig> {
    let mut image: ImageInfo = manifest.image;
    if let Some([h, w]) = spec.preprocess.resize {
        image.height = h;
        image.width = w;
    }
    let stats = manifest.pixel_stats;
    let (mean, std) = spec.preprocess.normalization(stats.mean, stats.std)?;
    let mut model = ModelConfig::new(
        &spec.model.name,
        spec.model.resnet_shape()?,
        &image,
        manifest.classes.len(),
        spec.model.dropout,
        mean,
        std,
    )?;
    model.input = InputPipeline {
        window: spec.preprocess.window()?,
        augment: spec.augment,
    };
    model.validate()?;
    Ok(model)
}
