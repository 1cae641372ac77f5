//! Training and evaluation of any architecture of the zoo in burn: forward, summed
//! cross-entropy, backward. The backend is chosen by the `Device` passed in (burn-flex by
//! default, LibTorch where enabled).

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::ModelConfig;
use super::arch::Weights;
use crate::rng::{KeyedRng, derive, hash_str};
use crate::{Error, Result};

/// One batch, ready for the model.
#[derive(Clone, Debug, Default)]
pub struct BatchInput {
    /// Raw pixels (source units), image after image, channels x height x width.
    pub pixels: Vec<f32>,
    /// Class index of every image.
    pub labels: Vec<u32>,
    /// Dropout keep-masks (already scaled by 1/(1-p)), the model's
    /// [`ModelConfig::dropout_features`] values per image; `None` for no dropout.
    pub keep_mask: Option<Vec<f32>>,
}

/// What a training task returns.
#[derive(Clone, Debug)]
pub struct TrainOutput {
    /// Gradient of the summed loss, in the flat parameter layout.
    pub grad: Vec<f32>,
    /// Summed cross-entropy over the batch.
    pub loss_sum: f64,
    /// Images whose arg-max prediction equals the label.
    pub correct: u32,
}

/// What an evaluation task returns.
#[derive(Clone, Debug)]
pub struct EvalOutput {
    /// Summed cross-entropy over the batch.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u32,
    /// Class probabilities, `classes` values per image.
    pub probs: Vec<f32>,
    /// Counts of (true class, predicted class), row-major, `classes` x `classes`.
    pub confusion: Vec<u32>,
    /// The labels, one per image.
    pub labels: Vec<u32>,
}

/// The dropout keep-mask of one sample over `features` features, derived from (seed, epoch,
/// step, sample id) so it is the same whichever worker computes it.
pub fn dropout_keep_mask(
    p: f64,
    features: usize,
    seed: u64,
    epoch: u32,
    step: u64,
    sample_id: &str,
) -> Vec<f32> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let mut rng = KeyedRng::new(derive(&[
        seed,
        0xD50,
        u64::from(epoch),
        step,
        hash_str(sample_id),
    ]));
    (0..features)
        .map(|_| if rng.next_f64() < p { 0.0 } else { scale })
        .collect()
}

/// The floating-point precision a batch is computed in. Training uses `F32`; `F64` is the
/// reference a backend's single-precision results are checked against (the stored parameters
/// and the returned gradient stay f32 either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Single precision: what workers compute in.
    #[default]
    F32,
    /// Double precision, for reference runs.
    F64,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// A tensor's values as f32, whatever precision it was computed in.
pub(crate) fn to_f32<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Compute(format!("{what}: {e:?}")))
}

fn check_batch(cfg: &ModelConfig, batch: &BatchInput) -> Result<usize> {
    let n = batch.labels.len();
    let per = cfg.channels * cfg.height * cfg.width;
    if n == 0 || batch.pixels.len() != n * per {
        return Err(Error::invalid(
            "batch",
            format!("{} pixels for {n} images of {per}", batch.pixels.len()),
        ));
    }
    if let Some(bad) = batch.labels.iter().find(|&&l| l as usize >= cfg.classes) {
        return Err(Error::invalid(
            "batch",
            format!("label {bad} outside 0..{}", cfg.classes),
        ));
    }
    if let Some(mask) = &batch.keep_mask
        && mask.len() != n * cfg.dropout_features()
    {
        return Err(Error::invalid("batch", "dropout mask has the wrong length"));
    }
    Ok(n)
}

fn inputs(
    cfg: &ModelConfig,
    batch: &BatchInput,
    n: usize,
    device: &Device,
    dtype: DType,
) -> (Tensor<4>, Tensor<2>) {
    let pixels = cfg.normalised(&batch.pixels);
    let x = Tensor::<4>::from_data(
        TensorData::new(pixels, vec![n, cfg.channels, cfg.height, cfg.width]),
        (device, dtype),
    );
    let mut onehot = vec![0f32; n * cfg.classes];
    for (i, &l) in batch.labels.iter().enumerate() {
        onehot[i * cfg.classes + l as usize] = 1.0;
    }
    let y = Tensor::<2>::from_data(
        TensorData::new(onehot, vec![n, cfg.classes]),
        (device, dtype),
    );
    (x, y)
}

/// The index of the largest score (the first one on ties): the predicted class.
pub fn argmax(scores: &[f32]) -> usize {
    scores
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

fn count_correct(logits: &[f32], labels: &[u32], classes: usize) -> u32 {
    let mut correct = 0;
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        if argmax(row) == label as usize {
            correct += 1;
        }
    }
    correct
}

/// Counts of (true class, arg-max class), row-major; labels out of range are not counted.
fn confusion_counts(scores: &[f32], labels: &[u32], classes: usize) -> Vec<u32> {
    let mut counts = vec![0u32; classes * classes];
    for (row, &label) in scores.chunks_exact(classes).zip(labels) {
        if (label as usize) < classes {
            counts[label as usize * classes + argmax(row)] += 1;
        }
    }
    counts
}

pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Compute(format!("{what} panicked: {msg}")))
    })
}

/// Forward and backward over one batch: the gradient of the summed cross-entropy.
/// `device` is a plain device; autodiff is enabled on it here.
pub fn train_batch(
    cfg: &ModelConfig,
    params: &[f32],
    batch: &BatchInput,
    device: &Device,
) -> Result<TrainOutput> {
    train_batch_in(cfg, params, batch, device, Precision::F32)
}

/// [`train_batch`] computed in the given precision.
pub fn train_batch_in(
    cfg: &ModelConfig,
    params: &[f32],
    batch: &BatchInput,
    device: &Device,
    precision: Precision,
) -> Result<TrainOutput> {
    let n = check_batch(cfg, batch)?;
    let dtype = precision.dtype();
    guarded("training step", || {
        let device = device.clone().autodiff();
        let arch = cfg.arch();
        let mut weights = Weights::new(arch.layout(), params, &device, dtype, true)?;
        let (x, y) = inputs(cfg, batch, n, &device, dtype);
        let keep = batch.keep_mask.as_ref().map(|m| {
            Tensor::<2>::from_data(
                TensorData::new(m.clone(), vec![n, arch.dropout_features()]),
                (&device, dtype),
            )
        });
        let logits = arch.forward(&mut weights, x, keep)?;
        let loss = (log_softmax(logits.clone(), 1) * y).sum().neg();
        let grads = loss.backward();
        // At the precision it was computed in (f64 for reference runs).
        let loss_sum = loss
            .into_data()
            .try_into_vec_as::<f64>()
            .map_err(|e| Error::Compute(format!("loss: {e:?}")))?[0];
        let logits = to_f32(logits, "logits")?;
        Ok(TrainOutput {
            grad: weights.grads(&grads)?,
            loss_sum,
            correct: count_correct(&logits, &batch.labels, cfg.classes),
        })
    })
}

/// Forward only (no dropout): loss, correct count and probabilities.
pub fn eval_batch(
    cfg: &ModelConfig,
    params: &[f32],
    batch: &BatchInput,
    device: &Device,
) -> Result<EvalOutput> {
    let n = check_batch(cfg, batch)?;
    guarded("evaluation", || {
        let arch = cfg.arch();
        let mut weights = Weights::new(arch.layout(), params, device, DType::F32, false)?;
        let (x, y) = inputs(cfg, batch, n, device, DType::F32);
        let logits = arch.forward(&mut weights, x, None)?;
        weights.finish()?;
        let log_probs = log_softmax(logits, 1);
        let loss = (log_probs.clone() * y).sum().neg();
        let loss_sum = to_f32(loss, "loss")?[0];
        let probs = to_f32(log_probs.exp(), "probs")?;
        Ok(EvalOutput {
            loss_sum: f64::from(loss_sum),
            correct: count_correct(&probs, &batch.labels, cfg.classes),
            confusion: confusion_counts(&probs, &batch.labels, cfg.classes),
            probs,
            labels: batch.labels.clone(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::seed_cnn::{channels_last_pays, conv3x3_as_matmul};
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    use crate::model::test_image as image;

    fn cfg() -> ModelConfig {
        ModelConfig::seed_cnn(&image(12), 3, 0.0, 100.0, 50.0).unwrap()
    }

    /// A two-stage ResNet of width 4 on 12x12 (the small stem), or on 64x64 (the ImageNet stem).
    fn resnet(side: u32) -> ModelConfig {
        resnet_with(side, crate::model::Norm::Group)
    }

    fn resnet_with(side: u32, norm: crate::model::Norm) -> ModelConfig {
        let shape = crate::model::ResNetShape {
            blocks: vec![1, 1],
            width: 4,
            norm,
        };
        ModelConfig::new(
            crate::model::RESNET,
            Some(shape),
            &image(side),
            3,
            0.0,
            100.0,
            50.0,
        )
        .unwrap()
    }

    fn batch_of(cfg: &ModelConfig, n: usize, seed: u64) -> BatchInput {
        let mut rng = KeyedRng::new(seed);
        let per = cfg.channels * cfg.height * cfg.width;
        BatchInput {
            pixels: (0..n * per).map(|_| rng.next_f32() * 255.0).collect(),
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            keep_mask: None,
        }
    }

    fn batch(n: usize, seed: u64) -> BatchInput {
        batch_of(&cfg(), n, seed)
    }

    #[test]
    fn pooling_before_relu_gives_the_same_values_and_gradients_bit_for_bit() {
        use burn::tensor::activation::relu;
        use burn::tensor::module::max_pool2d;
        use burn::tensor::ops::MaxPoolOptions;
        let dev = Device::flex().autodiff();
        let mut rng = KeyedRng::new(9);
        // Half negative, odd sides (the pool drops the last row and column), and windows
        // whose maximum is negative or zero.
        let mut v: Vec<f32> = (0..2 * 3 * 9 * 7)
            .map(|_| rng.next_f32() * 2.0 - 1.0)
            .collect();
        v[..4].fill(0.0);
        let r: Vec<f32> = (0..2 * 3 * 4 * 3).map(|_| rng.next_f32()).collect();
        let run = |pool_first: bool| {
            let x = Tensor::<4>::from_data(TensorData::new(v.clone(), vec![2, 3, 9, 7]), &dev)
                .require_grad();
            let pool = MaxPoolOptions::new([2, 2]);
            let y = if pool_first {
                relu(max_pool2d(x.clone(), pool))
            } else {
                max_pool2d(relu(x.clone()), pool)
            };
            let weights =
                Tensor::<4>::from_data(TensorData::new(r.clone(), vec![2, 3, 4, 3]), &dev);
            let grads = (y.clone() * weights).sum().backward();
            let g = x.grad(&grads).expect("x's gradient").into_data();
            (
                y.into_data().try_to_vec::<f32>().unwrap(),
                g.try_to_vec::<f32>().unwrap(),
            )
        };
        let (before, after) = (run(false), run(true));
        assert!(
            before
                .0
                .iter()
                .zip(&after.0)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert!(
            before
                .1
                .iter()
                .zip(&after.1)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert!(after.1.iter().any(|g| *g != 0.0) && after.1.contains(&0.0));
    }

    #[test]
    fn the_matmul_convolution_equals_conv2d() {
        let dev = Device::flex();
        let mut rng = KeyedRng::new(5);
        let mut tensor = |shape: Vec<usize>| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            TensorData::new(v, shape)
        };
        // Three input channels, a non-square image: the channel and kernel order must match.
        let x = Tensor::<4>::from_data(tensor(vec![2, 3, 7, 9]), &dev);
        let w = Tensor::<4>::from_data(tensor(vec![4, 3, 3, 3]), &dev);
        let b = Tensor::<1>::from_data(tensor(vec![4]), &dev);
        let want = conv2d(
            x.clone(),
            w.clone(),
            Some(b.clone()),
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        let want = to_f32(want, "want").unwrap();
        // burn-flex keeps NCHW (its results are those of before the layout choice), with or
        // without autodiff.
        assert!(!channels_last_pays(&dev) && !channels_last_pays(&dev.clone().autodiff()));
        // Both layouts (channels last: what LibTorch gets).
        for channels_last in [false, true] {
            let got = conv3x3_as_matmul(x.clone(), w.clone(), b.clone(), channels_last);
            assert_eq!(got.dims(), [2, 4, 5, 7]);
            let got = to_f32(got, "got").unwrap();
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "channels last {channels_last}, element {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn double_precision_is_computed_in_f64_and_agrees_with_single() {
        let cfg = cfg();
        let params = cfg.init_params(3);
        let mut b = batch(8, 4);
        b.keep_mask = Some(dropout_keep_mask(0.5, 64, 1, 0, 0, "x").repeat(8));
        let dev = Device::flex();
        let single = train_batch(&cfg, &params, &b, &dev).unwrap();
        let double = train_batch_in(&cfg, &params, &b, &dev, Precision::F64).unwrap();
        assert_eq!(double.grad.len(), single.grad.len());
        assert_eq!(double.correct, single.correct);
        let num: f64 = single
            .grad
            .iter()
            .zip(&double.grad)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let den: f64 = double.grad.iter().map(|g| f64::from(*g).powi(2)).sum();
        assert!((num / den).sqrt() < 1e-5, "{}", (num / den).sqrt());
        assert!((double.loss_sum - single.loss_sum).abs() < 1e-4);
        // Different arithmetic, not the same kernels run twice: the rounding differs somewhere.
        assert_ne!(single.grad, double.grad);
    }

    /// Backward against central differences on a middle coordinate of every tensor, and the
    /// confusion counts against the labels.
    fn check_gradient(cfg: &ModelConfig, h: f32) {
        check_gradient_at(cfg, &cfg.init_params(3), h);
    }

    fn check_gradient_at(cfg: &ModelConfig, params: &[f32], h: f32) {
        let params = params.to_vec();
        let b = batch_of(cfg, 4, 9);
        let dev = Device::flex();
        let out = train_batch(cfg, &params, &b, &dev).unwrap();
        assert_eq!(out.grad.len(), params.len());
        let eval = eval_batch(cfg, &params, &b, &dev).unwrap();
        assert!(
            (eval.loss_sum - out.loss_sum).abs() < 1e-4,
            "{} vs {}",
            eval.loss_sum,
            out.loss_sum
        );
        // The confusion counts hold every image once, row = its label, and their diagonal is
        // the correct count.
        assert_eq!(eval.confusion.len(), 9);
        assert_eq!(eval.confusion.iter().sum::<u32>(), 4);
        for class in 0..3 {
            let row: u32 = eval.confusion[class * 3..class * 3 + 3].iter().sum();
            let want = b.labels.iter().filter(|&&l| l == class as u32).count() as u32;
            assert_eq!(row, want, "row {class}");
        }
        assert_eq!(
            eval.confusion[0] + eval.confusion[4] + eval.confusion[8],
            eval.correct
        );
        // Central differences on a coordinate of each tensor. ReLU and max-pool make the loss
        // piecewise smooth with kinks close together: a small step, in double precision.
        let layout = cfg.layout();
        let mut offset = 0;
        for spec in &layout {
            let i = offset + spec.len() / 2;
            offset += spec.len();
            let mut plus = params.clone();
            plus[i] += h;
            let mut minus = params.clone();
            minus[i] -= h;
            // The loss in double precision: the differences are the step's effect, not rounding.
            let loss = |p: &[f32]| {
                train_batch_in(cfg, p, &b, &dev, Precision::F64)
                    .unwrap()
                    .loss_sum
            };
            let (lp, lm) = (loss(&plus), loss(&minus));
            let numeric = (lp - lm) / (f64::from(plus[i]) - f64::from(minus[i]));
            let analytic = f64::from(out.grad[i]);
            assert!(
                (numeric - analytic).abs() <= 3e-2 * analytic.abs().max(0.05),
                "{} {}: numeric {numeric} analytic {analytic}",
                cfg.name,
                spec.name
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        check_gradient(&cfg(), 1e-5);
    }

    #[test]
    fn resnet_gradients_match_finite_differences_with_both_stems() {
        check_gradient(&resnet(12), 1e-5);
        let large = resnet(64);
        assert!(large.layout()[0].shape == vec![4, 1, 7, 7]);
        check_gradient(&large, 1e-5);
        // Without normalisation the branch's last scale starts at 0, where the block's ReLU
        // has a kink wherever its shortcut is 0: checked a little away from the start.
        let plain = resnet_with(12, crate::model::Norm::None);
        let mut rng = KeyedRng::new(8);
        let moved: Vec<f32> = plain
            .init_params(3)
            .iter()
            .map(|v| v + (rng.next_f32() - 0.5) * 0.2)
            .collect();
        check_gradient_at(&plain, &moved, 1e-5);
    }

    /// The gradient of a batch is the sum of its halves' (what the coordinator's reduction
    /// relies on): no statistic crosses images.
    fn check_halves(cfg: &ModelConfig) {
        let params = cfg.init_params(5);
        let whole = batch_of(cfg, 6, 1);
        let per = cfg.channels * cfg.height * cfg.width;
        let dev = Device::flex();
        let g = train_batch(cfg, &params, &whole, &dev).unwrap().grad;
        let half = |r: std::ops::Range<usize>| BatchInput {
            pixels: whole.pixels[r.start * per..r.end * per].to_vec(),
            labels: whole.labels[r].to_vec(),
            keep_mask: None,
        };
        let a = train_batch(cfg, &params, &half(0..3), &dev).unwrap().grad;
        let b = train_batch(cfg, &params, &half(3..6), &dev).unwrap().grad;
        for i in 0..g.len() {
            assert!(
                (a[i] + b[i] - g[i]).abs() <= 1e-4 * g[i].abs().max(1.0),
                "{} index {i}",
                cfg.name
            );
        }
    }

    #[test]
    fn summed_gradients_of_halves_equal_the_whole() {
        check_halves(&cfg());
        check_halves(&resnet(12));
        check_halves(&resnet_with(12, crate::model::Norm::None));
    }

    #[test]
    fn bad_batches_are_errors_not_panics() {
        let cfg = cfg();
        let params = cfg.init_params(5);
        let dev = Device::flex();
        let mut b = batch(2, 1);
        b.labels[1] = 7;
        assert!(train_batch(&cfg, &params, &b, &dev).is_err());
        assert!(train_batch(&cfg, &params[1..], &batch(2, 1), &dev).is_err());
        let mask = dropout_keep_mask(0.5, 64, 1, 0, 3, "a");
        assert_eq!(mask, dropout_keep_mask(0.5, 64, 1, 0, 3, "a"));
        assert_ne!(mask, dropout_keep_mask(0.5, 64, 1, 0, 4, "a"));
        assert!(mask.iter().all(|&m| m == 0.0 || m == 2.0));
    }
}
