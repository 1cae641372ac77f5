//! `ctcluster-gpu-check`: the seed CNN's training step through the worker's compute path on a
//! LibTorch device (CUDA by default) next to the pure-Rust CPU backend, on the same data, seed
//! and steps. Prints both loss curves, their largest difference, and images/s of each; writes
//! the same as JSON to `--out` if given.
//!
//! `ctcluster-gpu-check [--device cuda:0] [--steps 30] [--timed-steps 50] [--out FILE]`

use burn::tensor::Device;
use ctcluster_worker::backend_check::{BATCH, seed_cnn_28, throughput, train};
use ctcluster_worker::device::parse_device;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
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
    let model = seed_cnn_28();

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
