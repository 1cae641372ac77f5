//! Shared by the benchmarks: the dataset they train on and the distributed step's throughput.

use std::time::Instant;

use ctcluster_common::dataset::{SynthOptions, write_synthetic};
use ctcluster_common::storage::StoreUrl;
use ctcluster_proto as pb;

use crate::{Cluster, shared_data, spec};

/// Global batch of the benchmarks.
pub const BATCH: usize = 128;
/// Micro-batch (task) size.
pub const MICRO: usize = 32;
/// Steps run before timing starts.
pub const WARMUP: u64 = 5;

/// PneumoniaMNIST's training split in memory (synthetic images when `../shared/data` is
/// absent), with a description.
pub async fn dataset() -> (StoreUrl, String) {
    let ds = StoreUrl::parse("memory://bench/ds").unwrap();
    if let Some(data) = shared_data() {
        crate::ingest_npz(&data.join("pneumoniamnist/pneumoniamnist.npz"), &ds).await;
        (
            ds,
            "PneumoniaMNIST train split, ingested (4682 x 28x28 u8)".into(),
        )
    } else {
        write_synthetic(
            &ds,
            SynthOptions {
                train: 4096,
                test: 16,
                size: 28,
                seed: 1,
            },
        )
        .await
        .unwrap();
        (ds, "synthetic 28x28 (../shared/data absent)".into())
    }
}

/// The full distributed step: coordinator and `workers` workers over gRPC on loopback, each
/// task `per_task` micro-batches (summed on the worker).
pub async fn distributed(
    ds: &StoreUrl,
    workers: usize,
    steps: u64,
    prefetch: bool,
    per_task: u32,
) -> f64 {
    let mut cluster = Cluster::start(
        &format!("memory://bench-state-{workers}-{prefetch}-{per_task}/s"),
        0,
    )
    .await;
    cluster.prefetch = prefetch;
    for _ in 0..workers {
        cluster.add_worker();
    }
    let job = cluster
        .submit(&spec(
            "bench",
            ds.as_str(),
            &format!("memory://bench-out-{workers}-{prefetch}-{per_task}/o"),
            &format!(
                "batch_size: {BATCH}\nmicro_batch_size: {MICRO}\nmicro_batches_per_task: {per_task}\nepochs: 50\nmax_steps: {}\nvalidation:\n  fraction: 0\ncheckpoint:\n  every_steps: 1000000\n",
                steps + WARMUP
            ),
        ))
        .await
        .unwrap();
    let mut client = cluster.client().await;
    let mut stream = client
        .watch(pb::WatchRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    let (mut t0, mut t1) = (None, None);
    while let Some(s) = stream.message().await.unwrap() {
        if s.step >= WARMUP && t0.is_none() {
            t0 = Some((Instant::now(), s.step));
        }
        if s.step >= steps + WARMUP && t1.is_none() {
            t1 = Some((Instant::now(), s.step));
        }
    }
    cluster.stop().await;
    let ((a, sa), (b, sb)) = (t0.unwrap(), t1.unwrap());
    ((sb - sa) as usize * BATCH) as f64 / (b - a).as_secs_f64()
}
