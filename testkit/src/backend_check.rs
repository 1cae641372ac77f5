//! The same training steps on two backends, for checking a backend against the pure-Rust one:
//! a generated 28x28 two-class batch keyed by (step, sample), the seed CNN, Adam on the flat
//! parameters. Used by `ctcluster-gpu-check` and by the LibTorch test.

use std::time::Instant;

use burn::tensor::Device;
use ctcluster_common::dataset::{ImageInfo, PixelType};
use ctcluster_common::model::{
    BatchInput, ModelConfig, Precision, dropout_keep_mask, train_batch_in,
};
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::rng::{KeyedRng, derive};
use ctcluster_common::spec::AdamSpec;

pub mod agreement;

/// The seed CNN on 28x28 grayscale, two classes, dropout 0.5.
pub fn seed_cnn_28() -> ModelConfig {
    let image = ImageInfo {
        height: 28,
        width: 28,
        channels: 1,
        pixel_type: PixelType::U8,
    };
    ModelConfig::seed_cnn(&image, 2, 0.5, 90.0, 50.0).expect("a valid model")
}

/// Global batch of a step.
pub const BATCH: usize = 128;
/// Micro-batch size.
pub const MICRO: usize = 32;

/// A learnable batch: bright blob (class 1) or not (class 0), from (seed, step).
pub fn batch(step: u64, start: usize, n: usize) -> BatchInput {
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    let mut masks = Vec::with_capacity(n * 64);
    for i in start..start + n {
        let mut rng = KeyedRng::new(derive(&[7, step, i as u64]));
        let label = (rng.next_u64() % 2) as u32;
        let (cx, cy) = (6.0 + rng.next_f32() * 16.0, 6.0 + rng.next_f32() * 16.0);
        for y in 0..28 {
            for x in 0..28 {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                let blob = if label == 1 && d2 < 9.0 { 120.0 } else { 0.0 };
                pixels.push(60.0 + blob + rng.next_f32() * 60.0);
            }
        }
        labels.push(label);
        masks.extend(dropout_keep_mask(0.5, 64, 1, 0, step, &format!("s{i}")));
    }
    BatchInput {
        pixels,
        labels,
        keep_mask: Some(masks),
    }
}

/// The micro-batches of one step: the batch of 128 in pieces of `micro`.
pub fn step_batches(step: u64, micro: usize) -> Vec<BatchInput> {
    (0..BATCH / micro)
        .map(|m| batch(step, m * micro, micro))
        .collect()
}

/// How a step applies the summed gradient.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    /// Adam with the job defaults (what training uses).
    Adam,
    /// Plain gradient descent at this learning rate: what the kernels' differences make of the
    /// parameters without Adam's per-parameter normalisation.
    Sgd(f32),
}

/// Parameters and optimizer state of a run of steps.
struct Trainer<'a> {
    model: &'a ModelConfig,
    device: &'a Device,
    precision: Precision,
    update: Update,
    params: Vec<f32>,
    adam: FlatAdam,
    fault: Option<GradientFault>,
}

/// A planted error applied to every gradient a backend returns: what a broken kernel would do.
/// Only the checker's own test uses it, to show that a wrong gradient fails the check.
pub type GradientFault = fn(&mut [f32]);

impl<'a> Trainer<'a> {
    fn new(
        model: &'a ModelConfig,
        device: &'a Device,
        update: Update,
        precision: Precision,
    ) -> Self {
        Trainer {
            model,
            device,
            precision,
            update,
            params: model.init_params(1),
            adam: FlatAdam::new(&AdamSpec::default()),
            fault: None,
        }
    }

    /// One step as the cluster takes it: each micro-batch's gradient (a worker's task), summed
    /// in order and divided by the batch, then the update (the coordinator's part). Returns the
    /// mean loss.
    fn step(&mut self, batches: &[BatchInput]) -> f64 {
        let mut sum = vec![0f32; self.params.len()];
        let mut loss = 0.0;
        for b in batches {
            let mut out = train_batch_in(self.model, &self.params, b, self.device, self.precision)
                .expect("train step");
            if let Some(fault) = self.fault {
                fault(&mut out.grad);
            }
            loss += out.loss_sum;
            sum.iter_mut().zip(&out.grad).for_each(|(s, g)| *s += g);
        }
        sum.iter_mut().for_each(|g| *g /= BATCH as f32);
        let params = std::mem::take(&mut self.params);
        self.params = match self.update {
            Update::Sgd(lr) => params.iter().zip(&sum).map(|(p, g)| p - lr * g).collect(),
            Update::Adam => self.adam.step(params, sum).expect("adam"),
        };
        loss / BATCH as f64
    }
}

/// `steps` optimizer steps (4 micro-batches of 32, summed, Adam) in single precision; returns
/// the loss per step and the final parameters.
pub fn train(model: &ModelConfig, device: &Device, steps: u64) -> (Vec<f64>, Vec<f32>) {
    train_with(model, device, steps, Update::Adam, Precision::F32)
}

/// [`train`] with the given update rule, the batches computed in the given precision (the
/// parameters, their sum and Adam stay f32).
pub fn train_with(
    model: &ModelConfig,
    device: &Device,
    steps: u64,
    update: Update,
    precision: Precision,
) -> (Vec<f64>, Vec<f32>) {
    run_steps(Trainer::new(model, device, update, precision), steps)
}

fn run_steps(mut trainer: Trainer<'_>, steps: u64) -> (Vec<f64>, Vec<f32>) {
    let losses = (0..steps)
        .map(|step| trainer.step(&step_batches(step, MICRO)))
        .collect();
    (losses, trainer.params)
}

/// Images/s of whole training steps after warm-up: a batch of 128 as micro-batches of `micro`
/// (forward and backward each, gradients summed, as a worker does), then the Adam update (the
/// coordinator's part). The median of three rounds of `steps` steps.
pub fn throughput(model: &ModelConfig, device: &Device, steps: u64, micro: usize) -> f64 {
    let mut trainer = Trainer::new(model, device, Update::Adam, Precision::F32);
    let batches = step_batches(0, micro);
    for _ in 0..3 {
        trainer.step(&batches);
    }
    let mut rounds: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..steps {
                trainer.step(&batches);
            }
            (steps as usize * BATCH) as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[1]
}

#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;

    /// LibTorch on the CPU against the pure-Rust backend: judged by what holds for every
    /// correct backend on any CPU (see `agreement`); the single-precision drift is printed.
    #[test]
    fn libtorch_cpu_matches_the_pure_rust_backend() {
        let model = seed_cnn_28();
        #[allow(deprecated)]
        let libtorch = Device::libtorch();
        let report = agreement::compare(&model, &Device::flex(), &libtorch);
        eprintln!("libtorch against flex:\n{report}");
        report.verdict().expect("libtorch computes the same steps");
        let (first, last) = report.loss_first_last;
        assert!(
            last < first,
            "the model did not learn: loss {first} -> {last}"
        );
    }
}
