//! Benchmark: images/s of the full distributed training step (coordinator + workers over gRPC on
//! loopback, 1 and 2 workers) next to one process doing the same forward/backward/Adam with no
//! networking, so the coordination overhead is visible.
//!
//! `cargo bench -p ctcluster-tests --bench step_throughput` (add `-- --steps N` to change the
//! measured steps). Prints a Markdown table and writes `step_throughput.json` in the target dir.

use std::time::Instant;

use burn::tensor::Device;
use ctcluster_common::dataset::{load_manifest, load_shard};
use ctcluster_common::model::{BatchInput, ModelConfig, train_batch};
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::spec::AdamSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::bench::{BATCH, MICRO, WARMUP, dataset, distributed};

struct Row {
    setup: String,
    images_per_sec: f64,
}

/// Forward/backward over micro-batches of 32, sum, Adam: what a step costs with no network.
async fn single_process(ds: &StoreUrl, steps: u64, micro: usize) -> f64 {
    let manifest = load_manifest(ds).await.unwrap();
    let shard = load_shard(ds, &manifest, "train", 0).await.unwrap();
    let s = manifest.pixel_stats;
    let model = ModelConfig::seed_cnn(
        &manifest.image,
        manifest.classes.len(),
        0.5,
        s.mean as f32,
        s.std as f32,
    )
    .unwrap();
    let per = model.channels * model.height * model.width;
    tokio::task::spawn_blocking(move || {
        let device = Device::flex();
        let mut params = model.init_params(1);
        let mut adam = FlatAdam::new(&AdamSpec::default());
        let mut start = Instant::now();
        for step in 0..steps + WARMUP {
            if step == WARMUP {
                start = Instant::now();
            }
            let mut sum = vec![0f32; params.len()];
            for m in 0..BATCH / micro {
                let base = ((step as usize * BATCH) + m * micro) % (shard.labels.len() - micro);
                let batch = BatchInput {
                    pixels: shard.pixels[base * per..(base + micro) * per].to_vec(),
                    labels: shard.labels[base..base + micro].to_vec(),
                    keep_mask: Some(vec![2.0; micro * 64]),
                };
                let out = train_batch(&model, &params, &batch, &device).unwrap();
                for (s, g) in sum.iter_mut().zip(&out.grad) {
                    *s += g;
                }
            }
            sum.iter_mut().for_each(|g| *g /= BATCH as f32);
            params = adam.step(params, sum).unwrap();
        }
        (steps as usize * BATCH) as f64 / start.elapsed().as_secs_f64()
    })
    .await
    .unwrap()
}

#[tokio::main]
async fn main() {
    // As the binaries do (common::alloc).
    ctcluster_common::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(40u64);
    let (ds, what) = dataset().await;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut rows = vec![
        Row {
            setup: format!("single process, batch {BATCH} as 4 x {MICRO}, no network"),
            images_per_sec: single_process(&ds, steps, MICRO).await,
        },
        Row {
            setup: format!("single process, batch {BATCH} in one pass, no network"),
            images_per_sec: single_process(&ds, steps, BATCH).await,
        },
    ];
    for workers in [1, 2] {
        for prefetch in [false, true] {
            rows.push(Row {
                setup: format!(
                    "coordinator + {workers} worker(s), gRPC on loopback, prefetch {}",
                    if prefetch { "on" } else { "off" }
                ),
                images_per_sec: distributed(&ds, workers, steps, prefetch, 1).await,
            });
        }
    }
    // Pre-reduction: each worker is handed two micro-batches a task and pushes one gradient.
    rows.push(Row {
        setup: "coordinator + 2 worker(s), gRPC on loopback, prefetch on, 2 micro-batches a task"
            .into(),
        images_per_sec: distributed(&ds, 2, steps, true, 2).await,
    });
    let base = rows[0].images_per_sec;
    println!("\nseed CNN train step, {what}, {steps} measured steps, {threads} CPU threads\n");
    println!("| setup | images/s | vs single process (4 x {MICRO}) |");
    println!("|---|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2}x |",
            r.setup,
            r.images_per_sec,
            r.images_per_sec / base
        );
    }
    let json = serde_json::json!({
        "benchmark": "step_throughput",
        "dataset": what,
        "batch": BATCH,
        "micro_batch": MICRO,
        "steps": steps,
        "threads": threads,
        "rows": rows.iter().map(|r| serde_json::json!({"setup": r.setup, "images_per_sec": r.images_per_sec})).collect::<Vec<_>>(),
    });
    let path = ctcluster_tests::bin_dir().join("step_throughput.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}
