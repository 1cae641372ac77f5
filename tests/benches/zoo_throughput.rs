//! Benchmark: training images/s of each architecture of the zoo on 28x28 single-channel inputs
//! on the CPU (one process, forward + backward of micro-batches of 32 and Adam, the pure-Rust
//! backend), to set beside `tests/python/torch_zoo.py` doing the same steps in PyTorch eager on
//! the same threads (`./scripts/bench` runs both and reports the ratio).
//!
//! `cargo bench -p ctcluster-tests --bench zoo_throughput [-- --steps N]`. Prints a Markdown
//! table and writes `zoo_throughput.json` in the target dir.

use std::time::Instant;

use ctcluster_common::dataset::{ImageInfo, PixelType};
use ctcluster_common::model::{
    BatchInput, Device, ModelConfig, Norm, RESNET, RESNET18, ResNetShape, SEED_CNN, train_batch,
};
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::rng::KeyedRng;
use ctcluster_common::spec::AdamSpec;

/// Images per optimizer step.
const BATCH: usize = 64;
/// Images per forward/backward pass.
const MICRO: usize = 32;

/// The architectures measured: name in the table, spec name, ResNet structure.
fn zoo() -> Vec<(&'static str, &'static str, Option<ResNetShape>)> {
    vec![
        ("seed-cnn", SEED_CNN, None),
        (
            "resnet [1,1,1,1] width 16",
            RESNET,
            Some(ResNetShape::small()),
        ),
        (
            "resnet [1,1,1,1] width 16, norm none",
            RESNET,
            Some(ResNetShape {
                norm: Norm::None,
                ..ResNetShape::small()
            }),
        ),
        ("resnet18", RESNET18, Some(ResNetShape::resnet18())),
    ]
}

fn images_per_sec(model: &ModelConfig, steps: usize) -> f64 {
    let per = model.height * model.width;
    let mut rng = KeyedRng::new(1);
    let pixels: Vec<f32> = (0..BATCH * per).map(|_| rng.next_f32() * 255.0).collect();
    let labels: Vec<u32> = (0..BATCH).map(|i| (i % 2) as u32).collect();
    let device = Device::flex();
    let mut params = model.init_params(1);
    let mut adam = FlatAdam::new(&AdamSpec::default());
    let mut start = Instant::now();
    // One step of warm-up (allocations, kernels chosen).
    for step in 0..=steps {
        if step == 1 {
            start = Instant::now();
        }
        let mut sum = vec![0f32; params.len()];
        for m in 0..BATCH / MICRO {
            let batch = BatchInput {
                pixels: pixels[m * MICRO * per..(m + 1) * MICRO * per].to_vec(),
                labels: labels[m * MICRO..(m + 1) * MICRO].to_vec(),
                keep_mask: None,
            };
            let out = train_batch(model, &params, &batch, &device).unwrap();
            for (s, g) in sum.iter_mut().zip(&out.grad) {
                *s += g;
            }
        }
        sum.iter_mut().for_each(|g| *g /= BATCH as f32);
        params = adam.step(params, sum).unwrap();
    }
    (steps * BATCH) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    ctcluster_common::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let steps: Option<usize> = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let image = ImageInfo {
        height: 28,
        width: 28,
        channels: 1,
        pixel_type: PixelType::U8,
    };
    let mut rows = Vec::new();
    println!(
        "\nzoo train step on the CPU (burn-flex), 28x28x1, batch {BATCH} as 2 x {MICRO}, {threads} threads\n"
    );
    println!("| architecture | parameters | images/s |");
    println!("|---|---:|---:|");
    for (label, name, shape) in zoo() {
        let model = ModelConfig::new(name, shape, &image, 2, 0.0, 128.0, 64.0).unwrap();
        // ResNet-18 costs about a hundred times the seed CNN per image: fewer steps.
        let n = steps.unwrap_or(if name == RESNET18 { 3 } else { 20 });
        let ips = images_per_sec(&model, n);
        println!("| {label} | {} | {ips:.1} |", model.num_params());
        rows.push(serde_json::json!({
            "architecture": label, "parameters": model.num_params(), "steps": n,
            "images_per_sec": ips,
        }));
    }
    let json = serde_json::json!({
        "benchmark": "zoo_throughput",
        "batch": BATCH,
        "micro_batch": MICRO,
        "threads": threads,
        "rows": rows,
    });
    let path = ctcluster_tests::bin_dir().join("zoo_throughput.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}
