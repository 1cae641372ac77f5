//! The model zoo's one abstraction: an [`Architecture`] names its parameter tensors (PyTorch's
//! names and shapes, in flat order), says how each is initialised from the seed, runs the forward
//! pass on weights read from the flat f32 vector, and names the layer a class-activation map
//! reads from. Each architecture lives in its own file.

pub mod resnet;
pub mod seed_cnn;
mod weights;

use burn::tensor::Tensor;

pub use resnet::{Norm, ResNet, ResNetShape, Stem};
pub use seed_cnn::SeedCnn;
pub use weights::Weights;

use crate::Result;
use crate::rng::{KeyedRng, derive};

/// How a parameter tensor is initialised from the seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in +-1/sqrt(fan_in): PyTorch's default for `Conv2d` and `Linear`.
    Uniform {
        /// Inputs feeding one output.
        fan_in: usize,
    },
    /// Normal with standard deviation sqrt(2 / fan_out): Kaiming's, in fan-out mode, which
    /// torchvision's ResNets use for their convolutions.
    KaimingNormal {
        /// Outputs one input feeds (output channels x kernel area).
        fan_out: usize,
    },
    /// Every element the same value (a norm's scale 1 and shift 0).
    Constant(f32),
}

/// One named parameter tensor of a layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// PyTorch-style name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Shape, PyTorch's order.
    pub shape: Vec<usize>,
    /// Its initialisation.
    pub init: Init,
}

impl ParamSpec {
    /// A tensor named `name` of `shape`, initialised by `init`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, init: Init) -> Self {
        ParamSpec {
            name: name.into(),
            shape,
            init,
        }
    }

    /// Elements in the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the CAM layer's cells sit on the input: cell `i` (along either axis) is centred on input
/// pixel `offset + stride x i` (pixel `p`'s centre being coordinate `p`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CamGeometry {
    /// Input pixels between neighbouring cells.
    pub stride: f32,
    /// The input coordinate of cell 0's centre.
    pub offset: f32,
}

/// A network of the zoo, for one input size and class count.
pub trait Architecture {
    /// The parameter tensors, in flat order.
    fn layout(&self) -> Vec<ParamSpec>;

    /// Features per image that dropout acts on (the input of the last linear layer): the length
    /// of one image's keep-mask.
    fn dropout_features(&self) -> usize;

    /// The layer class-activation maps read from (its PyTorch module name).
    fn cam_layer(&self) -> &'static str;

    /// Where that layer's cells sit on the input.
    fn cam_geometry(&self) -> CamGeometry;

    /// The network up to and including [`Architecture::cam_layer`]: its activations,
    /// `[images, channels, h, w]`, for `x`, `[images, channels, height, width]` normalised.
    /// Reads the weights of those layers from `weights`, in layout order.
    fn trunk(&self, weights: &mut Weights, x: Tensor<4>) -> Result<Tensor<4>>;

    /// The rest: class scores before the softmax, `[images, classes]`, from the CAM layer's
    /// activations, with dropout's keep-mask `[images, dropout_features]` applied before the
    /// last layer when given. Reads the remaining weights.
    fn head(
        &self,
        weights: &mut Weights,
        cam: Tensor<4>,
        keep: Option<Tensor<2>>,
    ) -> Result<Tensor<2>>;

    /// Logits for `x`: the trunk, then the head.
    fn forward(
        &self,
        weights: &mut Weights,
        x: Tensor<4>,
        keep: Option<Tensor<2>>,
    ) -> Result<Tensor<2>> {
        let cam = self.trunk(weights, x)?;
        self.head(weights, cam, keep)
    }
}

/// The initial flat parameter vector of `layout`, drawn from `seed`: each tensor from its own
/// keyed stream, so a tensor's values do not depend on the tensors before it.
pub fn init_params(layout: &[ParamSpec], seed: u64) -> Vec<f32> {
    let mut out = Vec::with_capacity(layout.iter().map(ParamSpec::len).sum());
    for (i, spec) in layout.iter().enumerate() {
        let mut rng = KeyedRng::new(derive(&[seed, 0x1417, i as u64]));
        let n = spec.len();
        match spec.init {
            Init::Uniform { fan_in } => {
                let bound = 1.0 / (fan_in as f32).sqrt();
                out.extend((0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound));
            }
            Init::KaimingNormal { fan_out } => {
                let std = (2.0 / fan_out as f64).sqrt();
                out.extend((0..n).map(|_| (rng.next_normal() * std) as f32));
            }
            Init::Constant(v) => out.extend(std::iter::repeat_n(v, n)),
        }
    }
    out
}
