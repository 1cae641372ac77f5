//! The seed CNN's configuration, its flat parameter layout and its initialisation.
//!
//! Parameters live as one flat f32 vector in this order (PyTorch's layout and names, so the
//! exported safetensors load into an `nn.Module` with the same attribute names):
//! `conv1.weight [32,C,3,3]`, `conv1.bias [32]`, `conv2.weight [64,32,3,3]`, `conv2.bias [64]`,
//! `fc1.weight [64,F]`, `fc1.bias [64]`, `fc2.weight [K,64]`, `fc2.bias [K]`, where F is
//! 64 x the spatial size after two (3x3 valid conv, 2x2 max-pool) stages and K the class count.

use serde::{Deserialize, Serialize};

use crate::dataset::ImageInfo;
use crate::preprocess::InputPipeline;
use crate::rng::{KeyedRng, derive};
use crate::{Error, Result};

/// The built-in architecture's name in job specs.
pub const SEED_CNN: &str = "seed-cnn";
/// Channels of the first convolution.
pub const CONV1: usize = 32;
/// Channels of the second convolution.
pub const CONV2: usize = 64;
/// Width of the hidden dense layer.
pub const HIDDEN: usize = 64;

/// Everything needed to build the model: the architecture and the input it takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture name.
    pub name: String,
    /// Input channels.
    pub channels: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
    /// Dropout probability before the last layer.
    pub dropout: f64,
    /// Mean subtracted from every pixel before the model sees it.
    pub norm_mean: f32,
    /// Standard deviation pixels are divided by.
    pub norm_std: f32,
    /// Windowing and augmentation applied by the workers before normalisation (stored images
    /// are resized to `height` x `width`).
    #[serde(default, skip_serializing_if = "InputPipeline::is_identity")]
    pub input: InputPipeline,
}

/// One named parameter tensor of the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// PyTorch-style name, e.g. `conv1.weight`.
    pub name: &'static str,
    /// Shape, PyTorch's order.
    pub shape: Vec<usize>,
    /// Inputs feeding one output (for initialisation).
    pub fan_in: usize,
}

impl ParamSpec {
    /// Elements in the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn after_stage(side: usize) -> usize {
    // 3x3 valid convolution, then 2x2 max-pool with floor.
    side.saturating_sub(2) / 2
}

impl ModelConfig {
    /// The seed CNN for a dataset's images.
    pub fn seed_cnn(
        image: &ImageInfo,
        classes: usize,
        dropout: f64,
        norm_mean: f32,
        norm_std: f32,
    ) -> Result<Self> {
        let cfg = ModelConfig {
            name: SEED_CNN.into(),
            channels: image.channels as usize,
            height: image.height as usize,
            width: image.width as usize,
            classes,
            dropout,
            norm_mean,
            norm_std,
            input: InputPipeline::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the configuration can be built.
    pub fn validate(&self) -> Result<()> {
        if self.name != SEED_CNN {
            return Err(Error::invalid(
                "model.name",
                format!("unknown model {:?}", self.name),
            ));
        }
        if self.feature_side(self.height) == 0 || self.feature_side(self.width) == 0 {
            return Err(Error::invalid(
                "model",
                format!(
                    "{}x{} images are too small for {SEED_CNN} (at least 10x10)",
                    self.height, self.width
                ),
            ));
        }
        if self.channels == 0 || self.classes < 2 || !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "model",
                "channels, classes or dropout out of range",
            ));
        }
        if !(self.norm_std.is_finite() && self.norm_std > 0.0 && self.norm_mean.is_finite()) {
            return Err(Error::invalid(
                "model",
                "normalisation must be finite with std > 0",
            ));
        }
        self.input.validate()
    }

    fn feature_side(&self, side: usize) -> usize {
        after_stage(after_stage(side))
    }

    /// Features entering the first dense layer.
    pub fn flat_features(&self) -> usize {
        CONV2 * self.feature_side(self.height) * self.feature_side(self.width)
    }

    /// The parameter tensors, in flat order.
    pub fn layout(&self) -> Vec<ParamSpec> {
        let c = self.channels;
        let f = self.flat_features();
        let k = self.classes;
        let p = |name, shape: Vec<usize>, fan_in| ParamSpec {
            name,
            shape,
            fan_in,
        };
        vec![
            p("conv1.weight", vec![CONV1, c, 3, 3], c * 9),
            p("conv1.bias", vec![CONV1], c * 9),
            p("conv2.weight", vec![CONV2, CONV1, 3, 3], CONV1 * 9),
            p("conv2.bias", vec![CONV2], CONV1 * 9),
            p("fc1.weight", vec![HIDDEN, f], f),
            p("fc1.bias", vec![HIDDEN], f),
            p("fc2.weight", vec![k, HIDDEN], HIDDEN),
            p("fc2.bias", vec![k], HIDDEN),
        ]
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        self.layout().iter().map(ParamSpec::len).sum()
    }

    /// PyTorch's default initialisation (uniform in +-1/sqrt(fan_in) for weights and biases),
    /// drawn from the seed so every run with the same seed starts from the same point.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_params());
        for (i, spec) in self.layout().iter().enumerate() {
            let bound = 1.0 / (spec.fan_in as f32).sqrt();
            let mut rng = KeyedRng::new(derive(&[seed, 0x1417, i as u64]));
            out.extend((0..spec.len()).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PixelType;

    #[test]
    fn layout_matches_the_pytorch_model_on_28x28() {
        let image = ImageInfo {
            height: 28,
            width: 28,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let cfg = ModelConfig::seed_cnn(&image, 2, 0.5, 0.0, 1.0).unwrap();
        // 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5: 64*5*5 = 1600 features.
        assert_eq!(cfg.flat_features(), 1600);
        assert_eq!(cfg.num_params(), 320 + 18_496 + 102_464 + 130);
        let p = cfg.init_params(1);
        assert_eq!(p.len(), cfg.num_params());
        assert_eq!(p, cfg.init_params(1));
        assert_ne!(p, cfg.init_params(2));
        let bound = 1.0 / 3.0; // conv1: fan_in 9
        assert!(p[..320].iter().all(|v| v.abs() <= bound));
        let tiny = ImageInfo {
            height: 8,
            width: 8,
            ..image
        };
        assert!(ModelConfig::seed_cnn(&tiny, 2, 0.5, 0.0, 1.0).is_err());
    }
}
