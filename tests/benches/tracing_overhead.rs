//! Benchmark: step throughput with traces exported over OTLP vs not exported.
//!
//! `cargo bench -p ctcluster-tests --bench tracing_overhead` (options: `--steps N`,
//! `--rounds N`). Each measurement is a fresh child process (this binary again) running a
//! coordinator and two workers in-process over loopback gRPC, set up through the same
//! `telemetry::init` the binaries use: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a real
//! OTLP receiver served by this process, or without it. Runs alternate (plain, exported, ...)
//! so drift hits both alike; the medians are compared. Prints a Markdown table and writes
//! `tracing_overhead.json` in the target dir.

use std::process::Command;

use ctcluster_tests::bench::{BATCH, MICRO, dataset, distributed};
use ctcluster_tests::otlp::OtlpReceiver;

const CHILD: &str = "CTCLUSTER_TRACING_BENCH_CHILD";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One measurement, in this (child) process.
async fn child(steps: u64, export: bool) {
    let telemetry = ctcluster_common::telemetry::init("ctcluster-bench", "warn");
    assert_eq!(
        telemetry.exporting(),
        export,
        "OTEL_* variables not as expected"
    );
    let (ds, _) = dataset().await;
    let ips = distributed(&ds, 2, steps, true, 1).await;
    telemetry.shutdown().await;
    println!("IMAGES_PER_SEC {ips}");
}

fn run_child(steps: u64, endpoint: Option<&str>) -> f64 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--steps", &steps.to_string()])
        .env(CHILD, "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if let Some(e) = endpoint {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", e);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("IMAGES_PER_SEC "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure in {text}"))
}

#[tokio::main]
async fn main() {
    // As the binaries do (common::alloc).
    ctcluster_common::alloc::keep_freed_memory();
    let steps = arg("--steps", 60);
    if std::env::var_os(CHILD).is_some() {
        let export = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        child(steps, export).await;
        return;
    }
    let rounds = arg("--rounds", 4);
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint.clone();
    let (plain, exported) = tokio::task::spawn_blocking(move || {
        let (mut plain, mut exported) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, too.
            if round % 2 == 0 {
                plain.push(run_child(steps, None));
                exported.push(run_child(steps, Some(&endpoint)));
            } else {
                exported.push(run_child(steps, Some(&endpoint)));
                plain.push(run_child(steps, None));
            }
        }
        (plain, exported)
    })
    .await
    .unwrap();
    let spans = receiver.spans().len();
    receiver.stop().await;
    assert!(spans > 0, "the exporting runs sent no spans");
    let (p, e) = (median(plain.clone()), median(exported.clone()));
    let overhead = (p - e) / p * 100.0;
    let (_, what) = dataset().await;
    println!(
        "\ntracing overhead: coordinator + 2 workers in one process, gRPC on loopback, {what}, batch {BATCH} as {} x {MICRO}, {steps} steps per run, {rounds} runs each\n",
        BATCH / MICRO
    );
    println!("| traces | runs (images/s) | median images/s |");
    println!("|---|---|---:|");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("| not exported | {} | {p:.0} |", fmt(&plain));
    println!(
        "| exported over OTLP/gRPC ({spans} spans received) | {} | {e:.0} |",
        fmt(&exported)
    );
    println!("\noverhead of exporting: {overhead:.2}% (target < 2%)");
    let json = serde_json::json!({
        "benchmark": "tracing_overhead",
        "dataset": what,
        "steps_per_run": steps,
        "rounds": rounds,
        "not_exported_images_per_sec": plain,
        "exported_images_per_sec": exported,
        "median_not_exported": p,
        "median_exported": e,
        "overhead_percent": overhead,
        "spans_received": spans,
    });
    let path = ctcluster_tests::bin_dir().join("tracing_overhead.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("written to {}", path.display());
}
