//! A model's configuration: which architecture of the zoo, on which input, with which input
//! pipeline. Checkpoints and model cards store it; everything else derives from it.

use serde::{Deserialize, Serialize};

use super::arch::{self, Architecture, ParamSpec, ResNet, ResNetShape, SeedCnn};
use crate::dataset::ImageInfo;
use crate::preprocess::InputPipeline;
use crate::{Error, Result};

/// The seed CNN's name in job specs.
pub const SEED_CNN: &str = "seed-cnn";
/// ResNet-18 (blocks [2, 2, 2, 2], width 64).
pub const RESNET18: &str = "resnet18";
/// A ResNet of configurable blocks per stage and width.
pub const RESNET: &str = "resnet";
/// Every architecture name a job spec may use.
pub const ARCHITECTURES: [&str; 3] = [SEED_CNN, RESNET18, RESNET];

/// Everything needed to build the model: the architecture and the input it takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture name, one of [`ARCHITECTURES`].
    pub name: String,
    /// The ResNet's structure (for `resnet18` and `resnet`; absent for the seed CNN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnet: Option<ResNetShape>,
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

impl ModelConfig {
    /// The architecture `name` (with `resnet`'s structure where it has one) for a dataset's
    /// images.
    pub fn new(
        name: &str,
        resnet: Option<ResNetShape>,
        image: &ImageInfo,
        classes: usize,
        dropout: f64,
        norm_mean: f32,
        norm_std: f32,
    ) -> Result<Self> {
        let resnet = match name {
            RESNET18 => Some(resnet.unwrap_or_else(ResNetShape::resnet18)),
            RESNET => Some(resnet.unwrap_or_else(ResNetShape::small)),
            _ => resnet,
        };
        let cfg = ModelConfig {
            name: name.into(),
            resnet,
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

    /// The seed CNN for a dataset's images.
    pub fn seed_cnn(
        image: &ImageInfo,
        classes: usize,
        dropout: f64,
        norm_mean: f32,
        norm_std: f32,
    ) -> Result<Self> {
        Self::new(SEED_CNN, None, image, classes, dropout, norm_mean, norm_std)
    }

    /// Checks the configuration can be built.
    pub fn validate(&self) -> Result<()> {
        match (self.name.as_str(), &self.resnet) {
            (SEED_CNN, None) => {
                let side = SeedCnn::feature_side;
                if side(self.height) == 0 || side(self.width) == 0 {
                    return Err(Error::invalid(
                        "model",
                        format!(
                            "{}x{} images are too small for {SEED_CNN} (at least {m}x{m})",
                            self.height,
                            self.width,
                            m = arch::seed_cnn::MIN_SIDE
                        ),
                    ));
                }
            }
            (RESNET18, Some(shape)) if shape.is_resnet18() => {
                ResNet::new(shape.clone(), self.channels, self.height, self.width, 2)?;
            }
            (RESNET, Some(shape)) => {
                ResNet::new(shape.clone(), self.channels, self.height, self.width, 2)?;
            }
            (SEED_CNN | RESNET18, Some(_)) => {
                return Err(Error::invalid(
                    "model",
                    format!(
                        "{} has a fixed structure; name `{RESNET}` to choose blocks and width",
                        self.name
                    ),
                ));
            }
            (name, _) => {
                return Err(Error::invalid(
                    "model.name",
                    format!(
                        "unknown model {name:?}; available: {}",
                        ARCHITECTURES.join(", ")
                    ),
                ));
            }
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

    /// The network. The configuration is assumed valid ([`ModelConfig::validate`]: every
    /// constructor and loader checks it); a ResNet name without a structure gets its default.
    pub fn arch(&self) -> Box<dyn Architecture> {
        match self.name.as_str() {
            RESNET18 | RESNET => {
                let shape = self.resnet.clone().unwrap_or_else(|| {
                    if self.name == RESNET18 {
                        ResNetShape::resnet18()
                    } else {
                        ResNetShape::small()
                    }
                });
                Box::new(ResNet {
                    stem: arch::Stem::for_input(self.height, self.width),
                    shape,
                    channels: self.channels,
                    classes: self.classes,
                })
            }
            _ => Box::new(SeedCnn {
                channels: self.channels,
                height: self.height,
                width: self.width,
                classes: self.classes,
            }),
        }
    }

    /// The parameter tensors, in flat order.
    pub fn layout(&self) -> Vec<ParamSpec> {
        self.arch().layout()
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        self.layout().iter().map(ParamSpec::len).sum()
    }

    /// Features per image dropout acts on: the length of one image's keep-mask.
    pub fn dropout_features(&self) -> usize {
        self.arch().dropout_features()
    }

    /// Model input pixels normalised as the network sees them: `(p - norm_mean) / norm_std`.
    pub fn normalised(&self, pixels: &[f32]) -> Vec<f32> {
        let (mean, inv_std) = (self.norm_mean, 1.0 / self.norm_std);
        pixels.iter().map(|p| (p - mean) * inv_std).collect()
    }

    /// The initial parameters, drawn from the seed so every run with the same seed starts from
    /// the same point (each architecture's layout says how each tensor is drawn).
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        arch::init_params(&self.layout(), seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_image as image;

    #[test]
    fn layout_matches_the_pytorch_model_on_28x28() {
        let cfg = ModelConfig::seed_cnn(&image(28), 2, 0.5, 0.0, 1.0).unwrap();
        // 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5: 64*5*5 = 1600 features.
        assert_eq!(cfg.layout()[4].shape, vec![64, 1600]);
        assert_eq!(cfg.num_params(), 320 + 18_496 + 102_464 + 130);
        let p = cfg.init_params(1);
        assert_eq!(p.len(), cfg.num_params());
        assert_eq!(p, cfg.init_params(1));
        assert_ne!(p, cfg.init_params(2));
        let bound = 1.0 / 3.0; // conv1: fan_in 9
        assert!(p[..320].iter().all(|v| v.abs() <= bound));
        assert!(ModelConfig::seed_cnn(&image(8), 2, 0.5, 0.0, 1.0).is_err());
    }

    #[test]
    fn resnets_are_configured_by_name_and_checked() {
        let r18 = ModelConfig::new(RESNET18, None, &image(28), 2, 0.0, 0.0, 1.0).unwrap();
        // ResNet-18 on one channel and two classes: 11,689,512 less the 3x3-stem and class
        // layer differences from torchvision's 3-channel 7x7 stem and 1000 classes.
        let want = 11_689_512 - 64 * 3 * 49 + 64 * 9 - 1000 * 513 + 2 * 513;
        assert_eq!(r18.num_params(), want);
        assert_eq!(r18.dropout_features(), 512);
        // Kaiming-normal convolutions: conv1 (fan-out 64 x 9) has std sqrt(2/576).
        let p = r18.init_params(3);
        let conv1 = &p[..576];
        let var = conv1.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 576.0;
        assert!((var / (2.0 / 576.0) - 1.0).abs() < 0.2, "{var}");
        // GroupNorm scale 1, shift 0.
        assert!(p[576..640].iter().all(|&v| v == 1.0));
        assert!(p[640..704].iter().all(|&v| v == 0.0));

        let small = ModelConfig::new(RESNET, None, &image(28), 2, 0.0, 0.0, 1.0).unwrap();
        assert_eq!(small.resnet, Some(ResNetShape::small()));
        let json = serde_json::to_string(&small).unwrap();
        assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), small);

        let custom = ResNetShape {
            blocks: vec![1, 1],
            width: 8,
            norm: crate::model::Norm::Group,
        };
        let err = ModelConfig::new(RESNET18, Some(custom.clone()), &image(28), 2, 0.0, 0.0, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fixed structure"), "{err}");
        let err = ModelConfig::new("vgg", None, &image(28), 2, 0.0, 0.0, 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.name") && err.contains("resnet18"),
            "{err}"
        );
        assert!(ModelConfig::new(RESNET, Some(custom), &image(28), 2, 0.0, 0.0, 1.0).is_ok());
    }
}
