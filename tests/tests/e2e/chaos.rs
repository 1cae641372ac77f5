//! Chaos on real processes: four workers, five of them SIGKILLed at random steps (replacements
//! started) and the coordinator SIGKILLed and restarted once, during one job.

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
