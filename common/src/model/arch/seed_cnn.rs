//! The seed CNN: two (3x3 valid convolution, ReLU, 2x2 max-pool) stages, a dense layer of
//! [`HIDDEN`] with ReLU and dropout, and the class layer. Its layout, in PyTorch's names:
//! `conv1.weight [32,C,3,3]`, `conv1.bias [32]`, `conv2.weight [64,32,3,3]`, `conv2.bias [64]`,
//! `fc1.weight [64,F]`, `fc1.bias [64]`, `fc2.weight [K,64]`, `fc2.bias [K]`, where F is 64 x the
//! spatial size after the two stages and K the class count.

use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor};

use super::{Architecture, CamGeometry, Init, ParamSpec, Weights};
use crate::Result;

/// Channels of the first convolution.
pub const CONV1: usize = 32;
/// Channels of the second convolution.
pub const CONV2: usize = 64;
/// Width of the hidden dense layer.
pub const HIDDEN: usize = 64;
/// The smallest image side it takes (two stages leave one pixel).
pub const MIN_SIDE: usize = 10;

/// The seed CNN for one input size and class count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedCnn {
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Classes.
    pub classes: usize,
}

fn after_stage(side: usize) -> usize {
    // 3x3 valid convolution, then 2x2 max-pool with floor.
    side.saturating_sub(2) / 2
}

impl SeedCnn {
    /// Spatial side after the two stages (0: too small).
    pub fn feature_side(side: usize) -> usize {
        after_stage(after_stage(side))
    }

    /// Features entering the first dense layer.
    pub fn flat_features(&self) -> usize {
        CONV2 * Self::feature_side(self.height) * Self::feature_side(self.width)
    }
}

/// Whether a backend's max-pool runs faster on a channels-last input than on NCHW: LibTorch's
/// does (its channels-last kernel is vectorised over channels; the seed CNN's training step
/// went from 3201 to 3514-5163 images/s, README "Benchmark"), burn-flex's does not (it copies
/// the strided input first: 7-10% slower). The one place the model's layout follows the
/// backend; the values are the same either way.
pub(crate) fn channels_last_pays(device: &Device) -> bool {
    device.clone().inner() != Device::flex()
}

/// A 3x3 valid convolution with stride 1 as one batched matrix product: the nine shifted views
/// of `x` (im2col, in the weight's `[c, kh, kw]` order) times the weight, plus the bias. The
/// same sums as `conv2d`, in another order. Laid out as `[n, c_out, h' x w'] = [1, c_out, c x
/// 9] x [n, c x 9, h' x w']`, or with `channels_last` as `[n, h' x w', c_out] = [n, h' x w', c x
/// 9] x [1, c x 9, c_out]`, returned permuted to `[n, c_out, h', w']` without a copy: channels
/// last in memory (see [`channels_last_pays`]).
pub(crate) fn conv3x3_as_matmul(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    channels_last: bool,
) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let c_out = weight.dims()[0];
    let (ho, wo) = (h - 2, w - 2);
    let views = (0..9)
        .map(|k| {
            let (dy, dx) = (k / 3, k % 3);
            x.clone().slice([0..n, 0..c, dy..dy + ho, dx..dx + wo])
        })
        .collect();
    let weight: Tensor<3> = weight.reshape([1, c_out, c * 9]);
    if !channels_last {
        let columns: Tensor<5> = Tensor::stack(views, 2);
        let columns: Tensor<3> = columns.reshape([n, c * 9, ho * wo]);
        let y = weight.matmul(columns) + bias.reshape([1, c_out, 1]);
        return y.reshape([n, c_out, ho, wo]);
    }
    // [n, c, h', w', 9] -> [n, h', w', c, 9] -> [n, h' x w', c x 9].
    let columns: Tensor<5> = Tensor::stack(views, 4);
    let columns: Tensor<3> = columns
        .permute([0, 2, 3, 1, 4])
        .reshape([n, ho * wo, c * 9]);
    let y = columns.matmul(weight.swap_dims(1, 2)) + bias.reshape([1, 1, c_out]);
    y.reshape([n, ho, wo, c_out]).permute([0, 3, 1, 2])
}

impl Architecture for SeedCnn {
    fn layout(&self) -> Vec<ParamSpec> {
        let c = self.channels;
        let f = self.flat_features();
        let k = self.classes;
        let p = |name, shape, fan_in| ParamSpec::new(name, shape, Init::Uniform { fan_in });
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

    fn dropout_features(&self) -> usize {
        HIDDEN
    }

    fn cam_layer(&self) -> &'static str {
        "conv2"
    }

    fn cam_geometry(&self) -> CamGeometry {
        // conv1 (valid) centres output j on input j + 1; the pool averages two of those
        // (2k + 1.5); conv2 (valid) centres on pool cell i + 1: 2i + 3.5.
        CamGeometry {
            stride: 2.0,
            offset: 3.5,
        }
    }

    fn trunk(&self, w: &mut Weights, x: Tensor<4>) -> Result<Tensor<4>> {
        let conv = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let pool = MaxPoolOptions::new([2, 2]);
        // The first convolution as one matrix product (its input needs no gradient): burn
        // computes conv2d's weight gradient as a convolution with the batch as channels, which
        // is many times slower than this product's on both backends (README, Benchmark).
        let channels_last = channels_last_pays(&x.device());
        let x = conv3x3_as_matmul(
            x,
            w.tensor("conv1.weight")?,
            w.tensor("conv1.bias")?,
            channels_last,
        );
        // relu(max) = max(relu): the same values and gradients bit for bit (both exact; the
        // pool's window maximum is where relu lets a gradient through, or none is), with relu
        // and its backward on a quarter of the values.
        let x = relu(max_pool2d(x, pool));
        Ok(relu(conv2d(
            x,
            w.tensor("conv2.weight")?,
            Some(w.tensor("conv2.bias")?),
            conv,
        )))
    }

    fn head(&self, w: &mut Weights, cam: Tensor<4>, keep: Option<Tensor<2>>) -> Result<Tensor<2>> {
        let n = cam.dims()[0];
        let x = max_pool2d(cam, MaxPoolOptions::new([2, 2]));
        let x: Tensor<2> = x.reshape([n, self.flat_features()]);
        let fc1_w: Tensor<2> = w.tensor("fc1.weight")?;
        let fc1_b: Tensor<1> = w.tensor("fc1.bias")?;
        let x = x.matmul(fc1_w.transpose()) + fc1_b.unsqueeze::<2>();
        let mut x = relu(x);
        if let Some(keep) = keep {
            x = x * keep;
        }
        let fc2_w: Tensor<2> = w.tensor("fc2.weight")?;
        let fc2_b: Tensor<1> = w.tensor("fc2.bias")?;
        Ok(x.matmul(fc2_w.transpose()) + fc2_b.unsqueeze::<2>())
    }
}
