//! Data parallelism is exact: the result does not depend on the number of workers.

use ctcluster_proto as pb;
use ctcluster_tests::{Aggregators, Cluster, final_checkpoint, rel_l2, spec, synthetic};
use ctcluster_worker::Faults;

async fn params_after_20_steps(workers: usize, dataset: &str, dropout: f64) -> Vec<f32> {
    let state = format!("memory://exact-state-{workers}-{dropout}/s");
    let cluster = Cluster::start(&state, workers).await;
    run_20_steps(cluster, dataset, &format!("{workers}-{dropout}"), dropout)
        .await
        .0
}

async fn run_20_steps(
    cluster: Cluster,
    dataset: &str,
    tag: &str,
    dropout: f64,
) -> (Vec<f32>, pb::JobStatus) {
    let status = cluster
        .run(&spec(
            "exactness",
            dataset,
            &format!("memory://exact-out-{tag}/o"),
            &format!(
                "batch_size: 128\nmicro_batch_size: 32\nmax_steps: 20\nepochs: 3\nseed: 11\nmodel:\n  dropout: {dropout}\n"
            ),
        ))
        .await;
    cluster.stop().await;
    assert_eq!(status.step, 20);
    (final_checkpoint(&status).await.params, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_two_and_three_workers_give_identical_parameters() {
    let ds = synthetic("memory://exactness/ds", 1200, 16, 3).await;
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

/// A cluster of `workers` workers whose coordinator (records under `state`) has `aggregators`
/// in-process aggregators.
async fn with_aggregators(
    state: &str,
    workers: usize,
    aggregators: usize,
) -> (Cluster, Aggregators) {
    let aggs = Aggregators::start(aggregators).await;
    let mut config = ctcluster_coordinator::CoordinatorConfig::local(
        ctcluster_common::storage::StoreUrl::parse(state).unwrap(),
    );
    config.aggregators = aggs.urls.clone();
    (Cluster::start_with(config, workers).await, aggs)
}

/// Twenty steps of the seed CNN (dropout 0.5) with `workers` workers and gradients sent as
/// `dtype`, to `aggregators` in-process aggregators (0: the coordinator).
async fn params_with_gradient_dtype(
    workers: usize,
    dataset: &str,
    dtype: &str,
    aggregators: usize,
) -> Vec<f32> {
    let tag = format!("{dtype}-{workers}-{aggregators}");
    let (cluster, aggs) = with_aggregators(
        &format!("memory://exact-dtype-{tag}/s"),
        workers,
        aggregators,
    )
    .await;
    let status = cluster
        .run(&spec(
            "exactness-dtype",
            dataset,
            &format!("memory://exact-dtype-{tag}/o"),
            &format!(
                "batch_size: 128\nmicro_batch_size: 32\nmax_steps: 20\nepochs: 3\nseed: 11\nmodel:\n  dropout: 0.5\ngradient_dtype: {dtype}\naggregators: {aggregators}\n"
            ),
        ))
        .await;
    cluster.stop().await;
    aggs.stop().await;
    assert_eq!(status.step, 20, "{}", status.message);
    final_checkpoint(&status).await.params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_gradients_keep_results_identical_across_workers_and_aggregators() {
    let ds = synthetic("memory://exact-bf16/ds", 1200, 16, 3).await;
    let f32_one = params_with_gradient_dtype(1, ds.as_str(), "f32", 0).await;
    let one = params_with_gradient_dtype(1, ds.as_str(), "bf16", 0).await;
    // The gradients really were rounded: not the f32 run's parameters, but close to them.
    let drift = rel_l2(&one, &f32_one);
    eprintln!("bf16 vs f32 gradients after 20 steps: relative L2 {drift:e}");
    assert!(
        one != f32_one,
        "bf16 gradients gave the f32 run's parameters"
    );
    assert!(drift < 0.05, "bf16 gradients drift {drift} from f32's");
    // More workers, and bf16 gradient ranges pushed to two aggregators.
    for (workers, aggregators) in [(2, 0), (3, 0), (2, 2)] {
        let many = params_with_gradient_dtype(workers, ds.as_str(), "bf16", aggregators).await;
        assert!(
            many == one,
            "bf16: {workers} workers and {aggregators} aggregators are not bit-identical to 1 \
             worker and none: relative L2 {:e}",
            rel_l2(&many, &one)
        );
    }
}

/// Twenty steps of the seed CNN (dropout 0.5), batches of 160 as five micro-batches of 32, on
/// `workers` workers each handed `per_task` consecutive micro-batches (summed by the worker in
/// the step's reduction tree), with the parameters and Adam's state on `aggregators` in-process
/// aggregators (0: on the coordinator): the final checkpoint.
async fn with_blocks_and_aggregators(
    workers: usize,
    dataset: &str,
    per_task: u32,
    aggregators: usize,
) -> ctcluster_common::checkpoint::Checkpoint {
    let tag = format!("{workers}-{per_task}-{aggregators}");
    let (cluster, aggs) = with_aggregators(
        &format!("memory://exact-block-{tag}/s"),
        workers,
        aggregators,
    )
    .await;
    let status = cluster
        .run(&spec(
            "exactness-blocks",
            dataset,
            &format!("memory://exact-block-{tag}/o"),
            &format!(
                "batch_size: 160\nmicro_batch_size: 32\nmicro_batches_per_task: {per_task}\n\
                 aggregators: {aggregators}\nmax_steps: 20\nepochs: 3\nseed: 11\nmodel:\n  dropout: 0.5\n"
            ),
        ))
        .await;
    cluster.stop().await;
    aggs.stop().await;
    assert_eq!(status.step, 20, "{}", status.message);
    final_checkpoint(&status).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_reduction_and_sharded_aggregation_change_no_bit() {
    let ds = synthetic("memory://exact-blocks/ds", 1200, 16, 3).await;
    let plain = with_blocks_and_aggregators(1, ds.as_str(), 1, 0).await;
    // Blocks of 2 (the fifth micro-batch alone), of 4 (then one of 1) and of 8 (the whole
    // step, a tree cut short at five leaves), on 1 to 3 workers; then the parameters and
    // Adam's state split over 1, 2 and 3 aggregators (evaluations and checkpoints read them
    // back), with and without blocks.
    for (workers, per_task, aggregators) in [
        (2, 2, 0),
        (3, 4, 0),
        (1, 8, 0),
        (1, 1, 1),
        (2, 2, 2),
        (3, 1, 3),
    ] {
        let run = with_blocks_and_aggregators(workers, ds.as_str(), per_task, aggregators).await;
        assert!(
            run.params == plain.params && run.adam == plain.adam,
            "{workers} workers with {per_task} micro-batches a task and {aggregators} \
             aggregators are not bit-identical to 1 worker with 1 and none: relative L2 {:e}",
            rel_l2(&run.params, &plain.params)
        );
    }
}

/// Three steps of ResNet-18 (GroupNorm, dropout) on images resized to 12x12, with `workers`
/// workers.
async fn resnet18_params(ds: &str, workers: usize) -> Vec<f32> {
    let cluster = Cluster::start(&format!("memory://exact-r18-{workers}/s"), workers).await;
    let status = cluster
        .run(&spec(
            "exact-resnet18",
            ds,
            &format!("memory://exact-r18-{workers}/o"),
            "batch_size: 24\nmicro_batch_size: 4\nmax_steps: 3\nseed: 5\nmodel:\n  name: resnet18\n  dropout: 0.3\npreprocess:\n  resize: [12, 12]\n",
        ))
        .await;
    cluster.stop().await;
    assert_eq!(status.step, 3, "{}", status.message);
    final_checkpoint(&status).await.params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnet18_gives_identical_parameters_on_one_two_and_three_workers() {
    let ds = synthetic("memory://exact-r18/ds", 96, 8, 3).await;
    let one = resnet18_params(ds.as_str(), 1).await;
    // ResNet-18 on one channel (3x3 stem) and two classes.
    assert_eq!(one.len(), 11_168_706);
    for workers in [2, 3] {
        let many = resnet18_params(ds.as_str(), workers).await;
        assert!(
            many == one,
            "{workers} workers are not bit-identical to 1: relative L2 {:e}",
            rel_l2(&many, &one)
        );
    }
}

/// Twenty steps with one faulty and one healthy worker, and the same twenty steps on one clean
/// worker: (faulty run's parameters, its status, the clean parameters).
async fn faulty_vs_clean(tag: &str, faults: Faults) -> (Vec<f32>, pb::JobStatus, Vec<f32>) {
    let ds = synthetic(&format!("memory://exact-{tag}/ds"), 1200, 16, 3).await;
    let clean = params_after_20_steps(1, ds.as_str(), 0.5).await;
    let mut cluster = Cluster::start(&format!("memory://exact-{tag}/state"), 0).await;
    cluster.add_worker_with(faults);
    cluster.add_worker();
    let (faulty, status) = run_20_steps(cluster, ds.as_str(), tag, 0.5).await;
    (faulty, status, clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_gradients_are_rejected_recomputed_and_change_nothing() {
    let faults = Faults {
        nan_every: Some(2),
        ..Faults::default()
    };
    let (faulty, status, clean) = faulty_vs_clean("nan", faults).await;
    assert!(
        status.rejected_results >= 5,
        "NaN pushes rejected: {}",
        status.rejected_results
    );
    assert!(
        faulty == clean,
        "a job with NaN pushes ended with other parameters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straggler_s_tasks_are_reissued_and_change_nothing() {
    let faults = Faults {
        delay: Some(std::time::Duration::from_millis(2500)),
        ..Faults::default()
    };
    let (params, status, clean) = faulty_vs_clean("slow", faults).await;
    eprintln!("straggler: {} tasks re-issued", status.reissued_tasks);
    assert!(status.reissued_tasks >= 1, "no task was re-issued");
    assert!(params == clean, "re-issued tasks changed the result");
}

/// Ten steps on the head-CT phantom with the given preprocessing, on `workers` workers.
async fn ct_params(workers: usize, extra: &str, tag: &str) -> Vec<f32> {
    let ds = format!("memory://exact-ct-{tag}-{workers}/ds");
    let url = ctcluster_common::storage::StoreUrl::parse(&ds).unwrap();
    let opts = ctcluster_common::dataset::HeadCtOptions {
        train: 400,
        test: 8,
        size: 48,
        seed: 5,
    };
    ctcluster_common::dataset::write_head_ct(&url, opts, None)
        .await
        .unwrap();
    let cluster = Cluster::start(&format!("memory://exact-ct-{tag}-{workers}/s"), workers).await;
    let status = cluster
        .run(&spec(
            "exact-augment",
            &ds,
            &format!("memory://exact-ct-{tag}-{workers}/o"),
            &format!("batch_size: 64\nmicro_batch_size: 16\nmax_steps: 10\nseed: 3\n{extra}"),
        ))
        .await;
    cluster.stop().await;
    assert_eq!(status.step, 10, "{}", status.message);
    final_checkpoint(&status).await.params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn augmentation_is_the_same_whichever_worker_draws_it() {
    let window = "preprocess:\n  window: brain\n  resize: [32, 32]\n";
    let augment = format!(
        "{window}augment:\n  crop_padding: 3\n  rotation_degrees: 15\n  hflip: true\n  vflip: true\n  intensity: 0.2\n"
    );
    let one = ct_params(1, &augment, "aug").await;
    let two = ct_params(2, &augment, "aug").await;
    assert!(one == two, "relative L2 {:e}", rel_l2(&two, &one));
    // And the augmentation really changed what the model saw.
    let plain = ct_params(1, window, "plain").await;
    let diff = rel_l2(&plain, &one);
    assert!(
        diff > 1e-3,
        "augmented and plain runs differ by only {diff:e}"
    );
}
