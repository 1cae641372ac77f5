//! Benchmark: the coordinator's reduce + Adam for the seed CNN and a ResNet-18-sized model
//! (11.7M parameters) with 1 to 16 simulated workers' gradients, against the memory-bandwidth
//! bound of the passes it must make: the fixed reduction tree's W - 1 pairwise sums (read two
//! gradients, write one), the division by the batch (read and write one), and Adam's pass (read
//! p, g, m, v, write p, m, v): (3 (W - 1) + 9) x 4 bytes a parameter. The bandwidth is this machine's, measured here with
//! a triad (a = b + s c) on 1 and all threads, the best of the two, over a working set (1.2 GB)
//! larger than the largest case's (0.9 GB), so that neither fits in a cache.
//!
//! `cargo bench -p ctcluster-tests --bench reduce_adam` prints a Markdown table and writes
//! `reduce_adam.json` beside the bench binary. "burn" is an older path (a zeroed sum vector
//! summed left to right, then burn's tensor Adam), kept for comparison.

use std::time::Instant;

use ctcluster_common::dataset::{ImageInfo, PixelType};
use ctcluster_common::model::ModelConfig;
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::reduce_tree::{Partial, TreeFold, into_mean};
use ctcluster_common::spec::AdamSpec;
use ctcluster_common::tensor_bytes::{extend_f32_from_le_bytes, f32_to_le_bytes};
use ctcluster_proto as pb;
use ctcluster_testkit::reference_adam::BurnAdam;
use prost::Message;

const RESNET18: usize = 11_689_512;

fn triad(n: usize, threads: usize) -> f64 {
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let chunk = n.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a
                .chunks_mut(chunk)
                .zip(b.chunks(chunk))
                .zip(c.chunks(chunk))
            {
                s.spawn(move || {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + 0.5 * z;
                    }
                });
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(&a);
    }
    // Reads b and c, writes a.
    (3 * n * 4) as f64 / best
}

fn grads(n: usize, workers: usize) -> Vec<Vec<f32>> {
    (0..workers)
        .map(|w| {
            (0..n)
                .map(|i| ((i * 7 + w * 13) % 101) as f32 * 1e-4 - 5e-3)
                .collect()
        })
        .collect()
}

/// Seconds per reduce + Adam step (median of `reps`), fused path or burn's.
fn time_step(n: usize, workers: usize, reps: usize, fused: bool) -> f64 {
    let spec = AdamSpec::default();
    let template = grads(n, workers);
    let mut params = vec![0.01f32; n];
    let mut fused_adam = FlatAdam::new(&spec);
    let mut burn_adam = BurnAdam::new(&spec);
    let mut times = Vec::new();
    for rep in 0..reps + 2 {
        let g = template.clone();
        let start = Instant::now();
        if fused {
            // The coordinator's path: each gradient folded into the step's reduction tree as
            // it arrives (here in order), then the mean and the fused Adam pass.
            let mut fold = TreeFold::new(workers as u32).unwrap();
            for (i, grad) in g.into_iter().enumerate() {
                let leaf = Partial {
                    grad,
                    loss_sum: 0.0,
                    samples: 1,
                    correct: 0,
                };
                fold.push_leaf(i as u32, leaf).unwrap();
            }
            let sum = into_mean(fold.finish().unwrap().grad, 128);
            params = fused_adam.step(params, sum).unwrap();
            if rep >= 2 {
                times.push(start.elapsed().as_secs_f64());
            }
            continue;
        } else {
            let mut sum = vec![0f32; n];
            for r in &g {
                for (s, x) in sum.iter_mut().zip(r) {
                    *s += *x;
                }
            }
            sum.iter_mut().for_each(|s| *s /= 128.0);
            params = burn_adam.step(params, sum).unwrap();
        }
        if rep >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
        drop(g);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Seconds to serialise one gradient push as the worker does (f32 -> bytes, 1 MiB chunk
/// messages, protobuf encoding) and to deserialise it as the coordinator does (protobuf
/// decoding, bytes -> f32); median of `reps`.
fn wire(n: usize, reps: usize) -> (f64, f64, usize) {
    let grad: Vec<f32> = (0..n).map(|i| i as f32 * 1e-6).collect();
    let (mut enc, mut dec, mut size) = (Vec::new(), Vec::new(), 0);
    for _ in 0..reps {
        let start = Instant::now();
        let bytes = bytes::Bytes::from(f32_to_le_bytes(&grad));
        let frames: Vec<Vec<u8>> = (0..bytes.len())
            .step_by(pb::CHUNK_BYTES)
            .map(|s| {
                let e = (s + pb::CHUNK_BYTES).min(bytes.len());
                pb::ResultChunk {
                    part: Some(pb::result_chunk::Part::Gradient(bytes.slice(s..e))),
                }
                .encode_to_vec()
            })
            .collect();
        enc.push(start.elapsed().as_secs_f64());
        size = frames.iter().map(Vec::len).sum();
        let start = Instant::now();
        let mut out = Vec::with_capacity(n);
        for f in &frames {
            if let Some(pb::result_chunk::Part::Gradient(b)) =
                pb::ResultChunk::decode(f.as_slice()).unwrap().part
            {
                extend_f32_from_le_bytes(&mut out, &b, "gradient").unwrap();
            }
        }
        dec.push(start.elapsed().as_secs_f64());
        assert_eq!(out.len(), n);
    }
    enc.sort_by(f64::total_cmp);
    dec.sort_by(f64::total_cmp);
    (enc[reps / 2], dec[reps / 2], size)
}

fn main() {
    // As the binaries do (common::alloc).
    ctcluster_common::alloc::keep_freed_memory();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // 3 x 100M floats: 1.2 GB, more than 16 ResNet-18 gradients plus p, m and v.
    let n_big = 100 << 20;
    let bw = triad(n_big, 1).max(triad(n_big, threads));
    let seed = ModelConfig::seed_cnn(
        &ImageInfo {
            height: 28,
            width: 28,
            channels: 1,
            pixel_type: PixelType::U8,
        },
        2,
        0.5,
        0.0,
        1.0,
    )
    .unwrap()
    .num_params();
    println!(
        "\nreduce + Adam, {threads} CPU threads, memory bandwidth (triad) {:.1} GB/s\n",
        bw / 1e9
    );
    println!("| model | parameters | workers | burn ms | fused ms | bound ms | fused / bound |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, n, reps) in [("seed CNN", seed, 50), ("ResNet-18 size", RESNET18, 5)] {
        for workers in [1, 2, 4, 8, 16] {
            let burn = time_step(n, workers, reps, false);
            let fused = time_step(n, workers, reps, true);
            let bound = ((3 * (workers - 1) + 9) * n * 4) as f64 / bw;
            println!(
                "| {name} | {n} | {workers} | {:.3} | {:.3} | {:.3} | {:.2}x |",
                burn * 1e3,
                fused * 1e3,
                bound * 1e3,
                fused / bound
            );
            rows.push(serde_json::json!({
                "model": name, "parameters": n, "workers": workers,
                "burn_seconds": burn, "fused_seconds": fused, "bound_seconds": bound,
            }));
        }
    }
    println!("\nwire cost per step (batch 128 as 4 micro-batches of 32), per worker\n");
    println!(
        "| model | workers | MB per step per worker | serialise ms per push | deserialise ms per push |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut wire_rows = Vec::new();
    for (name, n, reps) in [("seed CNN", seed, 50), ("ResNet-18 size", RESNET18, 5)] {
        let (enc, dec, push_bytes) = wire(n, reps);
        for workers in [1usize, 2, 4] {
            // One parameter fetch a step, and one push per micro-batch it computes.
            let bytes = 4 * n + (4 / workers) * push_bytes;
            println!(
                "| {name} | {workers} | {:.2} | {:.3} | {:.3} |",
                bytes as f64 / 1e6,
                enc * 1e3,
                dec * 1e3
            );
            wire_rows.push(serde_json::json!({
                "model": name, "workers": workers, "bytes_per_step": bytes,
                "serialise_seconds": enc, "deserialise_seconds": dec,
            }));
        }
    }
    let json = serde_json::json!({"benchmark": "reduce_adam", "threads": threads, "bandwidth_bytes_per_sec": bw, "rows": rows, "wire": wire_rows});
    let path = ctcluster_tests::bin_dir().join("reduce_adam.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}
