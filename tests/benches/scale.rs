//! Benchmark: the reduction at scale on real processes (see `ctcluster_tests::scale`): a
//! ResNet-18, eight workers, global batch 1024, for today's path (one micro-batch of 32 a
//! task), pre-reduction on the workers (blocks of four micro-batches, one result a worker a
//! step) and twice the micro-batches (16 samples each), side by side: bytes the coordinator and
//! the busiest worker received a step, step time, the coordinator's peak resident memory.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ctcluster-tests --bench scale`
//! prints a Markdown table and writes `scale.json` beside the bench binary.

use ctcluster_tests::scale::{ScaleCase, dataset, run_case};

const WORKERS: usize = 8;
const BATCH: u32 = 1024;
const WARMUP: u64 = 1;
const STEPS: u64 = 3;

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 2 * BATCH as usize).await;
    let cases = [
        ("one micro-batch of 32 a task", 32, 1),
        ("blocks of 4 micro-batches (pre-reduction)", 32, 4),
        ("one micro-batch of 16 a task", 16, 1),
    ];
    println!(
        "\nReduction at scale: ResNet-18 (8x8 images), {WORKERS} worker processes and a \
         coordinator on loopback, batch {BATCH}, {STEPS} steps timed\n"
    );
    println!(
        "| setup | micro-batches | results a step | step s | coordinator MB received a step | busiest worker MB received a step | coordinator peak RSS MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, micro, per_task) in cases {
        let case = ScaleCase {
            name: name.into(),
            micro_batch_size: micro,
            micro_batches_per_task: per_task,
        };
        let r = run_case(tmp.path(), &ds, &case, WORKERS, BATCH, WARMUP, STEPS).await;
        println!(
            "| {name} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} |",
            r.micro_batches,
            r.results_per_step,
            r.step_seconds,
            r.coordinator_received_bytes_per_step / 1e6,
            r.busiest_worker_received_bytes_per_step / 1e6,
            r.coordinator_peak_rss_bytes as f64 / 1e6,
        );
        rows.push(r);
    }
    let out = ctcluster_tests::procs::bin_dir().join("scale.json");
    std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("\nwritten to {}", out.display());
}
