//! Chaos on real processes: four workers, five of them SIGKILLed at random steps (replacements
//! started) and the coordinator SIGKILLed and restarted once, during one job whose workers are
//! handed two micro-batches a task; the result equals an undisturbed run's with one a task.

use ctcluster_tests::chaos::{ChaosOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_workers_and_the_coordinator_loses_nothing_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = ChaosOptions {
        dir: tmp.path().to_path_buf(),
        workers: 4,
        worker_kills: 5,
        coordinator_kills: 1,
        train: 960,
        epochs: 3,
        seed: 7,
        // The kills land mid-block: a worker's two micro-batches are redone whole elsewhere.
        micro_batches_per_task: 2,
        compare: true,
    };
    let report = run(&opts).await;
    eprintln!("chaos report: {}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.state, "succeeded");
    assert!(
        report.watch_followed_to_the_end,
        "ctctl watch did not survive the coordinator kill"
    );
    assert_eq!((report.worker_kills, report.coordinator_kills), (5, 1));
    assert_eq!(report.audit.len(), 3, "{:?}", report.audit);
    for epoch in &report.audit {
        assert!(
            epoch.exactly_once,
            "epoch {} did not use every sample exactly once: {epoch:?}",
            epoch.epoch
        );
    }
    // Checkpoints every 5 steps: a coordinator kill redoes at most the 5 steps since the last.
    assert!(
        report.coordinator_steps_lost.iter().all(|&n| n <= 5),
        "{:?}",
        report.coordinator_steps_lost
    );
    assert_eq!(
        report.equals_undisturbed,
        Some(true),
        "the result differs from an undisturbed run"
    );
}

/// A worker process SIGKILLed while it holds a block of two micro-batches (it sleeps 3 s before
/// computing each task): its lease lapses, the block goes back to the queue whole, another
/// worker computes it, and the parameters and Adam state are those of an undisturbed run with
/// one micro-batch a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_block_changes_nothing() {
    use ctcluster_common::checkpoint::Checkpoint;
    use ctcluster_common::storage::StoreUrl;
    use ctcluster_tests::chaos::{status, submit, wait_end};
    use ctcluster_tests::procs::{start_coordinator, start_worker};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let ds = ctcluster_tests::synthetic(&format!("{root}/ds"), 256, 8, 3).await;
    let (_coordinator, listening) = start_coordinator(
        &tmp.path().join("state"),
        &["--heartbeat-ms", "200", "--worker-lease-ms", "1000"],
    );
    let url = format!("http://127.0.0.1:{}", listening.port);
    let spec = |out: &str, per_task: u32| {
        format!(
            "name: mid-block\ndataset: {}\noutput: {root}/{out}\nbatch_size: 32\nmicro_batch_size: 8\n\
             micro_batches_per_task: {per_task}\nmax_steps: 6\nepochs: 2\nseed: 4\nvalidation:\n  fraction: 0\n",
            ds.as_str()
        )
    };
    let mut slow = start_worker(&url, "slow", &["--fault-delay-ms", "3000"], &[]);
    let job = submit(&url, spec("killed", 2)).await;
    // The slow worker takes the first block as soon as the job plans its first step.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status(&url, &job).await.total_steps == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        status(&url, &job).await.step,
        0,
        "no step can end while it sleeps"
    );
    slow.kill();
    // Its lease lapses (1 s) and the block goes back to the queue; only then does another
    // worker join (one there earlier could take a straggler's copy instead).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status(&url, &job).await.requeued_tasks == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed worker's block was not put back in the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _fast = start_worker(&url, "fast", &[], &[]);
    let killed = wait_end(&url, &job).await;
    assert_eq!(
        ctctl::render::state_name(killed.state),
        "succeeded",
        "{}",
        killed.message
    );
    let calm = wait_end(&url, &submit(&url, spec("calm", 1)).await).await;
    let load = |s: &ctcluster_proto::JobStatus| {
        let url = StoreUrl::parse(&s.checkpoint).unwrap();
        async move { Checkpoint::load(&url).await.unwrap() }
    };
    let (a, b) = (load(&killed).await, load(&calm).await);
    assert_eq!(a.state.step.0, 6);
    assert!(
        a.params == b.params && a.adam == b.adam,
        "a block redone after its worker was killed changed the result"
    );
}

/// Sharded aggregation on real processes: a job's parameters and Adam state on two aggregator
/// processes, one of them SIGKILLed mid-run and started again on its port. The coordinator
/// notices, the job resumes from its newest checkpoint (every 4 steps) once the aggregator
/// answers, and ends with the parameters and Adam state of an undisturbed run without
/// aggregators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_killed_mid_run_changes_nothing() {
    use ctcluster_common::checkpoint::Checkpoint;
    use ctcluster_common::storage::StoreUrl;
    use ctcluster_tests::chaos::{submit, wait_end, wait_step};
    use ctcluster_tests::procs::{start_aggregator, start_coordinator, start_worker};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let ds = ctcluster_tests::synthetic(&format!("{root}/ds"), 480, 8, 3).await;
    let (_first, p0) = start_aggregator(None);
    let (mut second, p1) = start_aggregator(None);
    let aggregators = format!("http://127.0.0.1:{p0},http://127.0.0.1:{p1}");
    let (_coordinator, listening) = start_coordinator(
        &tmp.path().join("state"),
        &[
            "--heartbeat-ms",
            "200",
            "--worker-lease-ms",
            "1000",
            "--aggregators",
            &aggregators,
        ],
    );
    let url = format!("http://127.0.0.1:{}", listening.port);
    let spec = |out: &str, aggregators: u32| {
        format!(
            "name: sharded\ndataset: {}\noutput: {root}/{out}\nbatch_size: 32\nmicro_batch_size: 8\n\
             micro_batches_per_task: 2\naggregators: {aggregators}\nmax_steps: 40\nepochs: 4\nseed: 4\n\
             checkpoint:\n  every_steps: 4\nvalidation:\n  fraction: 0.1\n",
            ds.as_str()
        )
    };
    // Workers that take a while per task, so that the kill lands mid-run.
    let _workers: Vec<_> = (0..2)
        .map(|i| start_worker(&url, &format!("w{i}"), &["--fault-delay-ms", "60"], &[]))
        .collect();
    let job = submit(&url, spec("killed", 2)).await;
    let before = wait_step(&url, &job, 10).await;
    second.kill();
    let (_second, port) = start_aggregator(Some(p1));
    assert_eq!(port, p1);
    let killed = wait_end(&url, &job).await;
    assert_eq!(
        ctctl::render::state_name(killed.state),
        "succeeded",
        "{}",
        killed.message
    );
    assert!(
        killed.resumes >= 1,
        "the job did not resume after the kill at step {}: {}",
        before.step,
        killed.message
    );
    let calm = wait_end(&url, &submit(&url, spec("calm", 0)).await).await;
    let load = |s: &ctcluster_proto::JobStatus| {
        let url = StoreUrl::parse(&s.checkpoint).unwrap();
        async move { Checkpoint::load(&url).await.unwrap() }
    };
    let (a, b) = (load(&killed).await, load(&calm).await);
    assert_eq!(a.state.step.0, 40);
    assert!(
        a.params == b.params && a.adam == b.adam,
        "an aggregator killed mid-run changed the result (resumed from step {:?})",
        killed.resumed_from_step
    );
}
