//! The same training steps on two backends, for checking a backend against the pure-Rust one:
//! a generated 28x28 two-class batch keyed by (step, sample), the seed CNN, Adam on the flat
//! parameters. Used by `ctcluster-gpu-check` and by the LibTorch test.

use std::time::Instant;

use burn::tensor::Device;
use ctcluster_common::dataset::{ImageInfo, PixelType};
use ctcluster_common::model::{BatchInput, ModelConfig, dropout_keep_mask, train_batch};
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::rng::{KeyedRng, derive};
use ctcluster_common::spec::AdamSpec;

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
        masks.extend(dropout_keep_mask(0.5, 1, 0, step, &format!("s{i}")));
    }
    BatchInput {
        pixels,
        labels,
        keep_mask: Some(masks),
    }
}

/// `steps` optimizer steps (4 micro-batches of 32, summed, Adam); returns the loss per step and
/// the final parameters.
pub fn train(model: &ModelConfig, device: &Device, steps: u64) -> (Vec<f64>, Vec<f32>) {
    train_with(model, device, steps, None)
}

/// [`train`], with plain gradient descent at `sgd_lr` instead of Adam when given (to tell the
/// kernels' differences from what Adam makes of them).
pub fn train_with(
    model: &ModelConfig,
    device: &Device,
    steps: u64,
    sgd_lr: Option<f32>,
) -> (Vec<f64>, Vec<f32>) {
    let mut params = model.init_params(1);
    let mut adam = FlatAdam::new(&AdamSpec::default());
    let mut losses = Vec::new();
    for step in 0..steps {
        let mut sum = vec![0f32; params.len()];
        let mut loss = 0.0;
        for m in 0..BATCH / MICRO {
            let out = train_batch(model, &params, &batch(step, m * MICRO, MICRO), device)
                .expect("train step");
            loss += out.loss_sum;
            sum.iter_mut().zip(&out.grad).for_each(|(s, g)| *s += g);
        }
        sum.iter_mut().for_each(|g| *g /= BATCH as f32);
        params = match sgd_lr {
            Some(lr) => params.iter().zip(&sum).map(|(p, g)| p - lr * g).collect(),
            None => adam.step(params, sum).expect("adam"),
        };
        losses.push(loss / BATCH as f64);
    }
    (losses, params)
}

/// Forward/backward images/s at batch 128 (one pass), after warm-up.
pub fn throughput(model: &ModelConfig, device: &Device, steps: u64) -> f64 {
    let params = model.init_params(1);
    let b = batch(0, 0, BATCH);
    for _ in 0..5 {
        train_batch(model, &params, &b, device).expect("warm-up");
    }
    let start = Instant::now();
    for _ in 0..steps {
        train_batch(model, &params, &b, device).expect("timed step");
    }
    (steps as usize * BATCH) as f64 / start.elapsed().as_secs_f64()
}

#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;
    use ctcluster_common::model::train_batch;

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn libtorch_cpu_matches_the_pure_rust_backend() {
        let model = seed_cnn_28();
        #[allow(deprecated)]
        let libtorch = Device::libtorch();
        // One gradient: the same maths through different kernels.
        let params = model.init_params(1);
        let b = batch(0, 0, MICRO);
        let g_flex = train_batch(&model, &params, &b, &Device::flex())
            .unwrap()
            .grad;
        let g_tch = train_batch(&model, &params, &b, &libtorch).unwrap().grad;
        let grad_rel = rel_l2(&g_flex, &g_tch);
        // Twenty Adam steps: Adam divides by sqrt(v), so tiny kernel differences in near-zero
        // gradients grow into full-size update differences; the target is 1e-4.
        let (flex_losses, flex) = train(&model, &Device::flex(), 20);
        let (tch_losses, tch) = train(&model, &libtorch, 20);
        let rel = rel_l2(&flex, &tch);
        // The same 20 steps with plain gradient descent: what the kernels alone make of it.
        let (_, flex_sgd) = train_with(&model, &Device::flex(), 20, Some(0.05));
        let (_, tch_sgd) = train_with(&model, &libtorch, 20, Some(0.05));
        let sgd_rel = rel_l2(&flex_sgd, &tch_sgd);
        // Where the Adam difference sits: parameters that moved apart by more than half a step.
        let apart = flex
            .iter()
            .zip(&tch)
            .filter(|(a, b)| (*a - *b).abs() > 5e-4)
            .count();
        let (worst, worst_diff) = flex
            .iter()
            .zip(&tch)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
        let mut offset = 0;
        let layer = model
            .layout()
            .into_iter()
            .find(|p| {
                offset += p.len();
                worst < offset
            })
            .map_or("?", |p| p.name);
        eprintln!("largest difference {worst_diff:e} at parameter {worst} ({layer})");
        eprintln!(
            "libtorch vs flex: first gradient relative L2 {grad_rel:e}; parameters after 20 steps {rel:e} with Adam ({apart} of {} parameters more than 5e-4 apart), {sgd_rel:e} with gradient descent; last loss {} vs {}",
            flex.len(),
            flex_losses[19],
            tch_losses[19]
        );
        assert!(
            sgd_rel <= 1e-4,
            "gradient descent parameter relative L2 difference {sgd_rel}"
        );
        assert!(
            grad_rel <= 1e-5,
            "gradient relative L2 difference {grad_rel}"
        );
        assert!(rel <= 1e-3, "parameter relative L2 difference {rel}");
        assert!((flex_losses[19] - tch_losses[19]).abs() < 1e-4);
        assert!(flex_losses[19] < flex_losses[0], "the model did not learn");
    }
}
