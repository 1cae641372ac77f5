//! The CNN models: the zoo of architectures (burn layers over a flat f32 parameter vector), their
//! configuration, and training and evaluation steps.

pub mod arch;
mod batch;
mod compute;
mod config;
mod explain;
mod for_job;
mod micro;

pub use arch::{Architecture, Norm, ParamSpec, ResNetShape};
pub use batch::BatchBuilder;
/// The device computations run on (burn's; `Device::flex()` is the pure-Rust CPU backend).
pub use burn::tensor::Device;
pub use compute::{
    BatchInput, EvalOutput, Precision, TrainOutput, argmax, dropout_keep_mask, eval_batch,
    train_batch, train_batch_in,
};
pub use config::{ARCHITECTURES, ModelConfig, RESNET, RESNET18, SEED_CNN};
pub use explain::{Explanation, Method, SMOOTHGRAD_NOISE, SMOOTHGRAD_SAMPLES, explain};
pub use for_job::model_for_job;
pub use micro::train_micro_batches;

/// A square single-channel 8-bit image description, for tests.
#[cfg(test)]
pub(crate) fn test_image(side: u32) -> crate::dataset::ImageInfo {
    crate::dataset::ImageInfo {
        height: side,
        width: side,
        channels: 1,
        pixel_type: crate::dataset::PixelType::U8,
    }
}
