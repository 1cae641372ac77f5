//! `ctcluster-gpu-check`: the seed CNN's training step through the worker's compute path on a
//! LibTorch device (CUDA by default) next to the pure-Rust CPU backend, on the same data, seed
//! and steps. Prints both loss curves, their largest difference, and images/s of each; writes
//! the same as JSON to `--out` if given.
//!
//! `ctcluster-gpu-check [--device cuda:0] [--steps 30] [--timed-steps 50] [--out FILE]`

use std::time::Instant;

use burn::tensor::Device;
use ctcluster_common::dataset::{ImageInfo, PixelType};
use ctcluster_common::model::{BatchInput, ModelConfig, dropout_keep_mask, train_batch};
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::rng::{KeyedRng, derive};
use ctcluster_common::spec::AdamSpec;
use ctcluster_worker::device::parse_device;

const BATCH: usize = 128;
const MICRO: usize = 32;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A learnable batch: bright blob (class 1) or not (class 0), from (seed, step).
fn batch(step: u64, start: usize, n: usize) -> BatchInput {
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

/// `steps` optimizer steps (4 micro-batches of 32, summed, Adam); returns the loss per step.
fn train(model: &ModelConfig, device: &Device, steps: u64) -> Vec<f64> {
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
        params = adam.step(params, sum).expect("adam");
        losses.push(loss / BATCH as f64);
    }
    losses
}

/// Forward/backward images/s at batch 128 (one pass), after warm-up.
fn throughput(model: &ModelConfig, device: &Device, steps: u64) -> f64 {
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device_name = arg(&args, "--device").unwrap_or_else(|| "cuda:0".into());
    let steps: u64 = arg(&args, "--steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let timed: u64 = arg(&args, "--timed-steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let device = parse_device(&device_name).unwrap_or_else(|e| panic!("{e}"));
    let image = ImageInfo {
        height: 28,
        width: 28,
        channels: 1,
        pixel_type: PixelType::U8,
    };
    let model = ModelConfig::seed_cnn(&image, 2, 0.5, 90.0, 50.0).expect("model");

    let cpu_losses = train(&model, &Device::flex(), steps);
    let dev_losses = train(&model, &device, steps);
    let max_diff = cpu_losses
        .iter()
        .zip(&dev_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("step  loss(cpu flex)  loss({device_name})");
    for (i, (a, b)) in cpu_losses.iter().zip(&dev_losses).enumerate() {
        println!("{i:>4}  {a:>14.6}  {b:>14.6}");
    }
    println!("largest loss difference over {steps} steps: {max_diff:.3e}");
    let cpu_ips = throughput(&model, &Device::flex(), timed.min(20));
    let dev_ips = throughput(&model, &device, timed);
    println!(
        "forward+backward, batch {BATCH}: cpu flex {cpu_ips:.0} images/s, {device_name} {dev_ips:.0} images/s"
    );
    let json = serde_json::json!({
        "device": device_name,
        "steps": steps,
        "loss_cpu": cpu_losses,
        "loss_device": dev_losses,
        "max_loss_diff": max_diff,
        "images_per_sec_cpu_flex": cpu_ips,
        "images_per_sec_device": dev_ips,
    });
    if let Some(out) = arg(&args, "--out") {
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .expect("write --out");
    }
}
