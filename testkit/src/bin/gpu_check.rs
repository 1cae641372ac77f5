//! `ctcluster-gpu-check`: the seed CNN's training step through the worker's compute path on a
//! LibTorch device (CUDA by default) next to the pure-Rust CPU backend, on the same data, seed
//! and steps. Prints both loss curves, their largest difference, and images/s of each; writes
//! the same as JSON to `--out` if given.
//!
//! `ctcluster-gpu-check [--device cuda:0] [--steps 30] [--timed-steps 50] [--out FILE]
//! [--dump DIR]`
//!
//! `--dump DIR` also writes the inputs of every step and the parameters after them (on the pure-
//! Rust backend in single and double precision and on the device) as little-endian f32 files,
//! for `tests/python/precision_drift.py` to replay in PyTorch.

use std::path::Path;

use burn::tensor::Device;
use ctcluster_common::model::Precision;
use ctcluster_testkit::backend_check::{
    BATCH, MICRO, Update, agreement, seed_cnn_28, step_batches, throughput, train, train_with,
};
use ctcluster_worker::device::parse_device;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn write_f32(dir: &Path, name: &str, values: impl IntoIterator<Item = f32>) {
    let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    let path = dir.join(format!("{name}.f32"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The normalised inputs of `steps` steps, the initial parameters and the parameters after the
/// steps on each backend.
fn dump(dir: &Path, model: &ctcluster_common::model::ModelConfig, device: &Device, steps: u64) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let batches: Vec<_> = (0..steps).flat_map(|s| step_batches(s, MICRO)).collect();
    // As the model normalises: (p - mean) x (1 / std), in f32.
    let inv_std = 1.0 / model.norm_std;
    let norm = |p: &f32| (p - model.norm_mean) * inv_std;
    write_f32(
        dir,
        "pixels",
        batches.iter().flat_map(|b| b.pixels.iter().map(norm)),
    );
    write_f32(
        dir,
        "labels",
        batches
            .iter()
            .flat_map(|b| b.labels.iter().map(|&l| l as f32)),
    );
    write_f32(
        dir,
        "masks",
        batches
            .iter()
            .flat_map(|b| b.keep_mask.clone().unwrap_or_default()),
    );
    write_f32(dir, "params_init", model.init_params(1));
    let flex = Device::flex();
    write_f32(dir, "params_flex_f32", train(model, &flex, steps).1);
    write_f32(
        dir,
        "params_flex_f64",
        train_with(model, &flex, steps, Update::Adam, Precision::F64).1,
    );
    write_f32(dir, "params_device", train(model, device, steps).1);
    println!(
        "inputs and parameters of {steps} steps written to {}",
        dir.display()
    );
}

fn main() {
    ctcluster_common::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let device_name = arg(&args, "--device").unwrap_or_else(|| "cuda:0".into());
    let steps: u64 = arg(&args, "--steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let timed: u64 = arg(&args, "--timed-steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let device = parse_device(&device_name).unwrap_or_else(|e| panic!("{e}"));
    let model = seed_cnn_28();
    if let Some(dir) = arg(&args, "--dump") {
        dump(Path::new(&dir), &model, &device, steps);
    }

    let (cpu_losses, _) = train(&model, &Device::flex(), steps);
    let (dev_losses, _) = train(&model, &device, steps);
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
    // The machine-independent agreement check the LibTorch test runs (see backend_check::agreement).
    let agreement = agreement::compare(&model, &Device::flex(), &device);
    println!("{device_name} against cpu flex:\n{agreement}");
    let verdict = agreement.verdict();
    match &verdict {
        Ok(()) => println!("agreement: ok"),
        Err(e) => println!("agreement: FAILED: {e}"),
    }
    // Whole steps (forward, backward, Adam) at batch 128: in one pass, and as the worker runs
    // them by default (micro-batches of 32). The pure-Rust backend gets fewer steps: it is slower.
    let cpu_ips = throughput(&model, &Device::flex(), timed.min(20), BATCH);
    let dev_ips = throughput(&model, &device, timed, BATCH);
    let cpu_ips_micro = throughput(&model, &Device::flex(), timed.min(20), MICRO);
    let dev_ips_micro = throughput(&model, &device, timed, MICRO);
    println!("training step (forward+backward+Adam), batch 128, images/s (median of 3 rounds):");
    println!("  in one pass:              cpu flex {cpu_ips:>6.0}   {device_name} {dev_ips:>6.0}");
    println!(
        "  as {} micro-batches of {MICRO}: cpu flex {cpu_ips_micro:>6.0}   {device_name} {dev_ips_micro:>6.0}",
        BATCH / MICRO
    );
    let json = serde_json::json!({
        "device": device_name,
        "steps": steps,
        "loss_cpu": cpu_losses,
        "loss_device": dev_losses,
        "max_loss_diff": max_diff,
        "agreement": {
            "grad_f64": agreement.grad_f64,
            "adam_f64": agreement.adam_f64,
            "sgd_f32": agreement.sgd_f32,
            "loss_f32": agreement.loss_f32,
            "grad_f32": agreement.grad_f32,
            "adam_f32": agreement.adam_f32,
            "adam_f32_vs_f64": agreement.adam_f32_vs_f64,
            "ok": verdict.is_ok(),
        },
        "images_per_sec_cpu_flex": cpu_ips,
        "images_per_sec_device": dev_ips,
        "images_per_sec_cpu_flex_micro32": cpu_ips_micro,
        "images_per_sec_device_micro32": dev_ips_micro,
    });
    if let Some(out) = arg(&args, "--out") {
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .expect("write --out");
    }
}
