//! Benchmark: the reduction at scale on real processes (see `ctcluster_tests::scale`): a
//! ResNet-18, eight workers, global batch 1024, for the coordinator alone (one micro-batch of
//! 32 a task), pre-reduction on the workers (blocks of four micro-batches, one result a worker
//! a step), twice the micro-batches (16 samples each), and sharded aggregation over K = 2 and
//! 4 aggregator processes, side by side: bytes the coordinator, the busiest aggregator, the
//! busiest worker and the busiest process received a step, step time, peak resident memory.
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
        ("one micro-batch of 32 a task", 32, 1, 0),
        ("blocks of 4 micro-batches (pre-reduction)", 32, 4, 0),
        ("one micro-batch of 16 a task", 16, 1, 0),
        ("K = 2 aggregators", 32, 1, 2),
        ("K = 4 aggregators", 32, 1, 4),
        ("K = 4 aggregators, blocks of 4", 32, 4, 4),
    ];
    println!(
        "\nReduction at scale: ResNet-18 (8x8 images), {WORKERS} worker processes and a \
         coordinator on loopback, batch {BATCH}, {STEPS} steps timed\n"
    );
    println!(
        "| setup | micro-batches | results a step | step s | coordinator MB received a step | busiest aggregator MB | busiest worker MB | busiest process MB | coordinator peak RSS MB | aggregator peak RSS MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, micro, per_task, aggregators) in cases {
        let case = ScaleCase {
            name: name.into(),
            micro_batch_size: micro,
            micro_batches_per_task: per_task,
            aggregators,
        };
        let r = run_case(tmp.path(), &ds, &case, WORKERS, BATCH, WARMUP, STEPS).await;
        println!(
            "| {name} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.micro_batches,
            r.results_per_step,
            r.step_seconds,
            r.coordinator_received_bytes_per_step / 1e6,
            r.busiest_aggregator_received_bytes_per_step / 1e6,
            r.busiest_worker_received_bytes_per_step / 1e6,
            r.busiest_process_received_bytes_per_step / 1e6,
            r.coordinator_peak_rss_bytes as f64 / 1e6,
            r.aggregator_peak_rss_bytes as f64 / 1e6,
        );
        rows.push(r);
    }
    let out = ctcluster_tests::procs::bin_dir().join("scale.json");
    std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("\nwritten to {}", out.display());
}
