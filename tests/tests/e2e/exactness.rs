//! Data parallelism is exact: the result does not depend on the number of workers.

use ctcluster_common::dataset::{SynthOptions, write_synthetic};
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::{Cluster, final_checkpoint, rel_l2, spec};

async fn params_after_20_steps(workers: usize, dataset: &str, dropout: f64) -> Vec<f32> {
    let cluster = Cluster::start(
        &format!("memory://exact-state-{workers}-{dropout}/s"),
        workers,
    )
    .await;
    let status = cluster
        .run(&spec(
            "exactness",
            dataset,
            &format!("memory://exact-out-{workers}-{dropout}/o"),
            &format!(
                "batch_size: 128\nmicro_batch_size: 32\nmax_steps: 20\nepochs: 3\nseed: 11\nmodel:\n  dropout: {dropout}\n"
            ),
        ))
        .await;
    cluster.stop().await;
    assert_eq!(status.step, 20);
    final_checkpoint(&status).await.params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_two_and_three_workers_give_identical_parameters() {
    let ds = StoreUrl::parse("memory://exactness/ds").unwrap();
    write_synthetic(
        &ds,
        SynthOptions {
            train: 1200,
            test: 16,
            size: 28,
            seed: 3,
        },
    )
    .await
    .unwrap();
    for dropout in [0.0, 0.5] {
        let one = params_after_20_steps(1, ds.as_str(), dropout).await;
        for workers in [2, 3] {
            let many = params_after_20_steps(workers, ds.as_str(), dropout).await;
            let diff = rel_l2(&many, &one);
            eprintln!(
                "dropout {dropout}: {workers} workers vs 1: relative L2 {diff:e}, bit-identical {}",
                many == one
            );
            assert!(diff <= 1e-6, "{workers} workers differ from 1 by {diff}");
            assert!(
                many == one,
                "{workers} workers are not bit-identical to 1 (dropout {dropout})"
            );
        }
    }
}
