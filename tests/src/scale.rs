//! The scale benchmark: a ResNet-18 (11.2M parameters, 45 MB of f32) trained by real processes
//! over loopback, a coordinator, eight workers and, with sharded aggregation, K aggregators;
//! global batch 1024. Per reduction setup it measures, per step: the bytes the coordinator, the
//! busiest aggregator and the busiest worker received over TCP (the kernel's count for each
//! established connection, `bytes_received` in `ss -tinp`); the step time; and the peak
//! resident memory (`VmHWM`) of the coordinator and of the largest aggregator. Each setup gets
//! fresh processes, so the peaks are its own.
//!
//! The images are 8x8, so that eight workers on a few cores compute a step in seconds: the
//! parameter count, and so every byte on the wire and in the coordinator, is ResNet-18's.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ctcluster_common::dataset::{SynthOptions, write_synthetic};
use ctcluster_common::storage::StoreUrl;
use serde::Serialize;

use crate::chaos::{status, submit, wait_step};
use crate::procs::{Proc, start_aggregator, start_coordinator, start_worker};

/// One way of reducing a step.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleCase {
    /// What it is, for the table.
    pub name: String,
    /// Samples per micro-batch.
    pub micro_batch_size: u32,
    /// Micro-batches per task (summed on the worker).
    pub micro_batches_per_task: u32,
    /// Aggregator processes holding the parameters (0: the coordinator).
    pub aggregators: usize,
}

/// What one setup measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    /// The setup.
    pub case: ScaleCase,
    /// Workers.
    pub workers: usize,
    /// Global batch.
    pub batch_size: u32,
    /// Micro-batches a step (leaves of the reduction tree).
    pub micro_batches: u32,
    /// Results the coordinator receives a step.
    pub results_per_step: u32,
    /// Seconds a step (mean over the timed steps).
    pub step_seconds: f64,
    /// Bytes the coordinator received a step.
    pub coordinator_received_bytes_per_step: f64,
    /// Bytes the worker that received most received a step.
    pub busiest_worker_received_bytes_per_step: f64,
    /// Bytes the aggregator that received most received a step (0 without aggregators).
    pub busiest_aggregator_received_bytes_per_step: f64,
    /// Bytes the busiest process of all received a step.
    pub busiest_process_received_bytes_per_step: f64,
    /// The coordinator's peak resident memory, bytes.
    pub coordinator_peak_rss_bytes: u64,
    /// The largest aggregator's peak resident memory, bytes (0 without aggregators).
    pub aggregator_peak_rss_bytes: u64,
}

/// Bytes received so far over the established TCP connections of the coordinator listening on
/// `port`: what the coordinator received (its side of every connection to `port`), and what
/// each other process received on its connections to `port`, by pid. From the kernel's
/// per-connection counters (`ss -tinp`).
fn received(port: u16) -> (u64, HashMap<u32, u64>) {
    let out = Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut coordinator, mut by_pid) = (0u64, HashMap::new());
    // A header line (addresses and owner), then indented lines of counters.
    let mut header: Option<(bool, bool, Option<u32>)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ends_with_port = |i: usize| {
                fields
                    .get(i)
                    .is_some_and(|a| a.rsplit(':').next() == Some(port.to_string().as_str()))
            };
            let pid = line
                .split("pid=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok());
            header = Some((ends_with_port(2), ends_with_port(3), pid));
            continue;
        }
        let Some((local, peer, pid)) = header else {
            continue;
        };
        let bytes: u64 = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("bytes_received:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if local {
            coordinator += bytes;
        } else if peer && let Some(pid) = pid {
            *by_pid.entry(pid).or_default() += bytes;
        }
    }
    (coordinator, by_pid)
}

/// Peak resident memory of a process, bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes the benchmark's dataset (8x8 synthetic images) under `dir`.
pub async fn dataset(dir: &Path, train: usize) -> StoreUrl {
    let ds = StoreUrl::parse(&format!("{}/ds", dir.display())).unwrap();
    let opts = SynthOptions {
        train,
        test: 16,
        size: 8,
        seed: 5,
    };
    write_synthetic(&ds, opts).await.unwrap();
    ds
}

/// Runs one setup: a fresh coordinator and `workers` workers, `warmup` steps, then `steps`
/// measured ones.
pub async fn run_case(
    dir: &Path,
    ds: &StoreUrl,
    case: &ScaleCase,
    workers: usize,
    batch_size: u32,
    warmup: u64,
    steps: u64,
) -> ScaleRow {
    let tag = format!(
        "{}-{}-{}",
        case.micro_batch_size, case.micro_batches_per_task, case.aggregators
    );
    let state = dir.join(format!("state-{tag}"));
    std::fs::create_dir_all(&state).unwrap();
    let aggregators: Vec<(Proc, u16)> = (0..case.aggregators)
        .map(|_| start_aggregator(None))
        .collect();
    let urls: Vec<String> = aggregators
        .iter()
        .map(|(_, port)| format!("http://127.0.0.1:{port}"))
        .collect();
    let joined = urls.join(",");
    let flags: Vec<&str> = if urls.is_empty() {
        vec![]
    } else {
        vec!["--aggregators", &joined]
    };
    let (coordinator, listening) = start_coordinator(&state, &flags);
    let url = format!("http://127.0.0.1:{}", listening.port);
    let procs: Vec<Proc> = (0..workers)
        .map(|i| start_worker(&url, &format!("scale-{i}"), &[], &[]))
        .collect();
    let spec = format!(
        "name: scale\ndataset: {}\noutput: {}/out-{tag}\nbatch_size: {batch_size}\n\
         micro_batch_size: {}\nmicro_batches_per_task: {}\naggregators: {}\nepochs: 1000\nmax_steps: {}\n\
         min_workers: {workers}\nmodel:\n  name: resnet18\n  dropout: 0\n\
         validation:\n  fraction: 0\ncheckpoint:\n  every_steps: 1000000\n",
        ds.as_str(),
        dir.display(),
        case.micro_batch_size,
        case.micro_batches_per_task,
        case.aggregators,
        warmup + steps + 1,
    );
    let job = submit(&url, spec).await;
    let s = wait_step(&url, &job, warmup).await;
    assert!(s.step >= warmup, "the job stopped: {}", s.message);
    let t0 = Instant::now();
    let coordinator_pid = coordinator.0.id();
    let worker_pids: Vec<u32> = procs.iter().map(|p| p.0.id()).collect();
    let ports: Vec<u16> = aggregators.iter().map(|(_, p)| *p).collect();
    let (c0, w0) = received(listening.port);
    let a0: Vec<_> = ports.iter().map(|&p| received(p)).collect();
    let s = wait_step(&url, &job, warmup + steps).await;
    assert!(s.step >= warmup + steps, "the job stopped: {}", s.message);
    let elapsed = t0.elapsed().as_secs_f64();
    let (c1, w1) = received(listening.port);
    let a1: Vec<_> = ports.iter().map(|&p| received(p)).collect();
    // A worker receives on its connections to the coordinator and to every aggregator.
    let got = |p: &u32, before: &HashMap<u32, u64>, after: &HashMap<u32, u64>| {
        after
            .get(p)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(p).copied().unwrap_or(0))
    };
    let busiest = worker_pids
        .iter()
        .map(|p| {
            got(p, &w0, &w1)
                + a0.iter()
                    .zip(&a1)
                    .map(|((_, b), (_, a))| got(p, b, a))
                    .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let busiest_aggregator = a0
        .iter()
        .zip(&a1)
        .map(|((b, _), (a, _))| a.saturating_sub(*b))
        .max()
        .unwrap_or(0);
    let aggregator_peak = aggregators
        .iter()
        .map(|(p, _)| peak_rss(p.0.id()))
        .max()
        .unwrap_or(0);
    let peak = peak_rss(coordinator_pid);
    let coordinator_received = c1.saturating_sub(c0);
    let per_step = |b: u64| b as f64 / steps as f64;
    let micro_batches = batch_size.div_ceil(case.micro_batch_size);
    let row = ScaleRow {
        case: case.clone(),
        workers,
        batch_size,
        micro_batches,
        results_per_step: micro_batches.div_ceil(case.micro_batches_per_task),
        step_seconds: elapsed / steps as f64,
        coordinator_received_bytes_per_step: per_step(coordinator_received),
        busiest_worker_received_bytes_per_step: per_step(busiest),
        busiest_aggregator_received_bytes_per_step: per_step(busiest_aggregator),
        busiest_process_received_bytes_per_step: per_step(
            coordinator_received.max(busiest).max(busiest_aggregator),
        ),
        coordinator_peak_rss_bytes: peak,
        aggregator_peak_rss_bytes: aggregator_peak,
    };
    // The job is not needed to its end.
    let _ = status(&url, &job).await;
    drop(procs);
    drop(coordinator);
    drop(aggregators);
    tokio::time::sleep(Duration::from_millis(100)).await;
    row
}
