//! ResNet with basic blocks (He et al. 2016), torchvision's layout and names, with GroupNorm in
//! place of BatchNorm: a batch norm's statistics depend on how the global batch is cut into
//! micro-batches, so results would depend on the number of workers; GroupNorm normalises each
//! image on its own (README, Model zoo).
//!
//! Two stems: for inputs under 64 pixels a 3x3 stride-1 convolution and no max-pool (MedMNIST's
//! ResNet-18 (28)); from 64 pixels up torchvision's 7x7 stride-2 convolution and 3x3 stride-2
//! max-pool. Stage `s` (1-based) has `width x 2^(s-1)` channels and, past the first, halves the
//! resolution in its first block. `resnet18` is blocks [2, 2, 2, 2] at width 64.

use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AdaptiveAvgPool2dConfig, MaxPool2dConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use super::{Architecture, CamGeometry, Init, ParamSpec, Weights};
use crate::{Error, Result};

/// Most stages a ResNet may have.
pub const MAX_STAGES: usize = 4;
/// Most blocks in one stage.
pub const MAX_BLOCKS: usize = 16;
/// Widest first stage.
pub const MAX_WIDTH: usize = 256;
/// The smallest image side a ResNet takes.
pub const MIN_SIDE: usize = 8;
/// Input side from which the ImageNet stem is used.
pub const IMAGENET_STEM_FROM: usize = 64;

/// How a ResNet normalises its convolutions' outputs. Neither depends on the batch, so results
/// stay independent of how the batch is cut (and of the worker count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// GroupNorm: each image's channels normalised in groups over the whole image, then a
    /// per-channel scale and shift.
    #[default]
    Group,
    /// No normalisation: only the per-channel scale and shift, the last scale of every residual
    /// branch starting at 0 so each block starts as its shortcut (SkipInit, De and Smith
    /// 2020). Nothing mixes information across the image, so the evidence for a class stays
    /// where it is (README, Model zoo).
    None,
}

impl Norm {
    /// Its name in job specs.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Group => "group",
            Norm::None => "none",
        }
    }
}

/// A ResNet's structure: basic blocks per stage, the first stage's width, the normalisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetShape {
    /// Basic blocks in each stage (1 to 4 stages).
    pub blocks: Vec<usize>,
    /// Channels of the first stage; each later stage doubles it.
    pub width: usize,
    /// The normalisation (GroupNorm unless stated).
    #[serde(default)]
    pub norm: Norm,
}

impl ResNetShape {
    /// ResNet-18: [2, 2, 2, 2] blocks, width 64 (11.2 million parameters on one channel).
    pub fn resnet18() -> Self {
        ResNetShape {
            blocks: vec![2, 2, 2, 2],
            width: 64,
            norm: Norm::Group,
        }
    }

    /// The default of the configurable `resnet`: one block per stage, width 16 (a narrow
    /// ResNet-10, about 1/64 of ResNet-18's multiply-adds).
    pub fn small() -> Self {
        ResNetShape {
            blocks: vec![1, 1, 1, 1],
            width: 16,
            norm: Norm::Group,
        }
    }

    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.blocks.is_empty() || self.blocks.len() > MAX_STAGES {
            return Err(Error::invalid(
                "model.blocks",
                format!(
                    "{} stages; 1 to {MAX_STAGES} are allowed",
                    self.blocks.len()
                ),
            ));
        }
        if let Some(b) = self.blocks.iter().find(|b| !(1..=MAX_BLOCKS).contains(*b)) {
            return Err(Error::invalid(
                "model.blocks",
                format!("a stage of {b} blocks; 1 to {MAX_BLOCKS} are allowed"),
            ));
        }
        if !(2..=MAX_WIDTH).contains(&self.width) || !self.width.is_multiple_of(2) {
            return Err(Error::invalid(
                "model.width",
                format!("{} is not an even number in 2..={MAX_WIDTH}", self.width),
            ));
        }
        Ok(())
    }

    /// Whether this is ResNet-18's structure (whatever the normalisation).
    pub fn is_resnet18(&self) -> bool {
        self.blocks == [2, 2, 2, 2] && self.width == 64
    }

    /// Channels of stage `s` (0-based).
    fn channels(&self, s: usize) -> usize {
        self.width << s
    }
}

/// How the network first reduces the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 3x3 convolution, stride 1, no max-pool: for small images (MedMNIST's 28x28).
    Small,
    /// 7x7 convolution, stride 2, then a 3x3 stride-2 max-pool: torchvision's.
    ImageNet,
}

impl Stem {
    /// The stem for images of `height` x `width`.
    pub fn for_input(height: usize, width: usize) -> Self {
        if height.min(width) >= IMAGENET_STEM_FROM {
            Stem::ImageNet
        } else {
            Stem::Small
        }
    }
}

/// The GroupNorm groups for `channels`: 32 where there are at least two channels per group,
/// fewer (a power of two) for narrow layers, so that no group is a single channel.
pub fn norm_groups(channels: usize) -> usize {
    let mut g = 32;
    while g > 1 && (!channels.is_multiple_of(g) || channels / g < 2) {
        g /= 2;
    }
    g
}

/// A ResNet for one input size and class count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNet {
    /// Its structure.
    pub shape: ResNetShape,
    /// Input channels.
    pub channels: usize,
    /// The stem (from the input size).
    pub stem: Stem,
    /// Classes.
    pub classes: usize,
}

impl ResNet {
    /// A ResNet of `shape` for `channels` x `height` x `width` images and `classes` classes.
    pub fn new(
        shape: ResNetShape,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Self> {
        shape.validate()?;
        if height.min(width) < MIN_SIDE {
            return Err(Error::invalid(
                "model",
                format!(
                    "{height}x{width} images are too small for a ResNet (at least {MIN_SIDE}x{MIN_SIDE})"
                ),
            ));
        }
        Ok(ResNet {
            stem: Stem::for_input(height, width),
            shape,
            channels,
            classes,
        })
    }

    /// The norm layer `prefix` (its weight and bias read from `w`) applied to `x`.
    fn normalise(&self, w: &mut Weights, prefix: &str, x: Tensor<4>) -> Result<Tensor<4>> {
        let channels = x.dims()[1];
        Ok(match self.shape.norm {
            Norm::Group => w.group_norm(prefix, norm_groups(channels))?.forward(x),
            Norm::None => {
                let scale: Tensor<1> = w.tensor(&format!("{prefix}.weight"))?;
                let shift: Tensor<1> = w.tensor(&format!("{prefix}.bias"))?;
                x * scale.reshape([1, channels, 1, 1]) + shift.reshape([1, channels, 1, 1])
            }
        })
    }

    fn stem_kernel(&self) -> usize {
        match self.stem {
            Stem::Small => 3,
            Stem::ImageNet => 7,
        }
    }

    /// Channels entering the class layer.
    fn last_channels(&self) -> usize {
        self.shape.channels(self.shape.blocks.len() - 1)
    }

    /// (name prefix, input channels, output channels, stride) of every block, in order.
    fn blocks(&self) -> Vec<(String, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut c_in = self.shape.width;
        for (s, &n) in self.shape.blocks.iter().enumerate() {
            let c_out = self.shape.channels(s);
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                out.push((format!("layer{}.{b}", s + 1), c_in, c_out, stride));
                c_in = c_out;
            }
        }
        out
    }
}

fn conv(name: String, c_out: usize, c_in: usize, k: usize) -> ParamSpec {
    ParamSpec::new(
        name,
        vec![c_out, c_in, k, k],
        Init::KaimingNormal {
            fan_out: c_out * k * k,
        },
    )
}

fn norm(prefix: &str, c: usize, scale: f32) -> [ParamSpec; 2] {
    [
        ParamSpec::new(format!("{prefix}.weight"), vec![c], Init::Constant(scale)),
        ParamSpec::new(format!("{prefix}.bias"), vec![c], Init::Constant(0.0)),
    ]
}

impl Architecture for ResNet {
    fn layout(&self) -> Vec<ParamSpec> {
        let w = self.shape.width;
        let k = self.stem_kernel();
        // Without normalisation the residual branch's last scale starts at 0 (SkipInit).
        let branch_end = match self.shape.norm {
            Norm::Group => 1.0,
            Norm::None => 0.0,
        };
        let mut out = vec![conv("conv1.weight".into(), w, self.channels, k)];
        out.extend(norm("bn1", w, 1.0));
        for (p, c_in, c_out, stride) in self.blocks() {
            out.push(conv(format!("{p}.conv1.weight"), c_out, c_in, 3));
            out.extend(norm(&format!("{p}.bn1"), c_out, 1.0));
            out.push(conv(format!("{p}.conv2.weight"), c_out, c_out, 3));
            out.extend(norm(&format!("{p}.bn2"), c_out, branch_end));
            if stride != 1 || c_in != c_out {
                out.push(conv(format!("{p}.downsample.0.weight"), c_out, c_in, 1));
                out.extend(norm(&format!("{p}.downsample.1"), c_out, 1.0));
            }
        }
        let f = self.last_channels();
        out.push(ParamSpec::new(
            "fc.weight",
            vec![self.classes, f],
            Init::Uniform { fan_in: f },
        ));
        out.push(ParamSpec::new(
            "fc.bias",
            vec![self.classes],
            Init::Uniform { fan_in: f },
        ));
        out
    }

    fn dropout_features(&self) -> usize {
        self.last_channels()
    }

    fn cam_geometry(&self) -> CamGeometry {
        // Padded 3x3 (and 1x1) convolutions of stride 2 centre output j on input 2j; so do the
        // 7x7 stride-2 stem and the padded 3x3 stride-2 max-pool.
        let stem = match self.stem {
            Stem::Small => 1.0,
            Stem::ImageNet => 4.0,
        };
        CamGeometry {
            stride: stem * (1 << (self.shape.blocks.len() - 1)) as f32,
            offset: 0.0,
        }
    }

    fn cam_layer(&self) -> &'static str {
        ["layer1", "layer2", "layer3", "layer4"][self.shape.blocks.len() - 1]
    }

    fn trunk(&self, w: &mut Weights, x: Tensor<4>) -> Result<Tensor<4>> {
        let x = match self.stem {
            Stem::Small => w.conv2d("conv1", 1, 1, false)?.forward(x),
            Stem::ImageNet => w.conv2d("conv1", 2, 3, false)?.forward(x),
        };
        let mut x = relu(self.normalise(w, "bn1", x)?);
        if self.stem == Stem::ImageNet {
            let pool = MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init();
            x = pool.forward(x);
        }
        for (p, c_in, c_out, stride) in self.blocks() {
            let y = w
                .conv2d(&format!("{p}.conv1"), stride, 1, false)?
                .forward(x.clone());
            let y = relu(self.normalise(w, &format!("{p}.bn1"), y)?);
            let y = w.conv2d(&format!("{p}.conv2"), 1, 1, false)?.forward(y);
            let y = self.normalise(w, &format!("{p}.bn2"), y)?;
            let shortcut = if stride != 1 || c_in != c_out {
                let s = w
                    .conv2d(&format!("{p}.downsample.0"), stride, 0, false)?
                    .forward(x);
                self.normalise(w, &format!("{p}.downsample.1"), s)?
            } else {
                x
            };
            x = relu(y + shortcut);
        }
        Ok(x)
    }

    fn head(&self, w: &mut Weights, cam: Tensor<4>, keep: Option<Tensor<2>>) -> Result<Tensor<2>> {
        let n = cam.dims()[0];
        let pooled = AdaptiveAvgPool2dConfig::new([1, 1]).init().forward(cam);
        let mut features: Tensor<2> = pooled.reshape([n, self.last_channels()]);
        if let Some(keep) = keep {
            features = features * keep;
        }
        Ok(w.linear("fc")?.forward(features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_has_torchvision_names_and_parameter_count() {
        let net = ResNet::new(ResNetShape::resnet18(), 3, 224, 224, 1000).unwrap();
        assert_eq!(net.stem, Stem::ImageNet);
        let layout = net.layout();
        let n: usize = layout.iter().map(ParamSpec::len).sum();
        // torchvision's resnet18: 11,689,512 parameters, BatchNorm's scale and shift being
        // GroupNorm's weight and bias here (running statistics are buffers, not parameters).
        assert_eq!(n, 11_689_512);
        let names: Vec<&str> = layout.iter().map(|p| p.name.as_str()).collect();
        for want in [
            "conv1.weight",
            "bn1.bias",
            "layer1.1.conv2.weight",
            "layer2.0.downsample.0.weight",
            "layer4.1.bn2.weight",
            "fc.bias",
        ] {
            assert!(names.contains(&want), "{want}");
        }
        assert!(!names.contains(&"layer1.0.downsample.0.weight"));
        assert_eq!(net.cam_layer(), "layer4");
        assert_eq!(net.dropout_features(), 512);
    }

    #[test]
    fn small_inputs_get_the_3x3_stem_and_shapes_are_checked() {
        let net = ResNet::new(ResNetShape::resnet18(), 1, 28, 28, 2).unwrap();
        assert_eq!(net.stem, Stem::Small);
        assert_eq!(net.layout()[0].shape, vec![64, 1, 3, 3]);
        assert!(ResNet::new(ResNetShape::resnet18(), 1, 6, 28, 2).is_err());
        let bad = ResNetShape {
            blocks: vec![],
            width: 16,
            norm: Norm::Group,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("model.blocks")
        );
        let odd = ResNetShape {
            blocks: vec![1],
            width: 15,
            norm: Norm::None,
        };
        assert!(
            odd.validate()
                .unwrap_err()
                .to_string()
                .contains("model.width")
        );
        assert_eq!(norm_groups(64), 32);
        assert_eq!(norm_groups(16), 8);
        assert_eq!(norm_groups(24), 8);
        assert_eq!(norm_groups(6), 2);
    }
}
