//! Resume equals uninterrupted: 10 steps, checkpoint, 10 more, equals 20 in one go.

use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::{Cluster, final_checkpoint, spec, synthetic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_at_10_and_resume_to_20_equals_20_uninterrupted() {
    let ds = synthetic("memory://resume/ds", 1200, 16, 5).await;
    let cluster = Cluster::start("memory://resume/state", 2).await;
    // 1080 training samples / 128 = 9 steps an epoch: step 10 is mid-epoch, 20 crosses another.
    let common = "batch_size: 128\nepochs: 4\nseed: 9\ncheckpoint:\n  every_steps: 5\n  keep: 2\n";
    let first = cluster
        .run(&spec(
            "first-half",
            ds.as_str(),
            "memory://resume/a",
            &format!("{common}max_steps: 10\n"),
        ))
        .await;
    assert!(
        first.checkpoint.ends_with("step-0000000010"),
        "{}",
        first.checkpoint
    );
    let resumed = cluster
        .run(&spec(
            "second-half",
            ds.as_str(),
            "memory://resume/b",
            &format!("{common}max_steps: 20\nresume_from: {}\n", first.checkpoint),
        ))
        .await;
    let straight = cluster
        .run(&spec(
            "uninterrupted",
            ds.as_str(),
            "memory://resume/c",
            &format!("{common}max_steps: 20\n"),
        ))
        .await;
    cluster.stop().await;
    let (r, s) = (
        final_checkpoint(&resumed).await,
        final_checkpoint(&straight).await,
    );
    assert_eq!(r.state.step.0, 20);
    assert_eq!(
        (r.state.epoch, r.state.step_in_epoch),
        (s.state.epoch, s.state.step_in_epoch)
    );
    assert!(r.params == s.params, "parameters differ after resume");
    assert_eq!(r.adam.time, 20);
    assert!(r.adam == s.adam, "Adam state differs after resume");
    // Retention kept the newest two complete checkpoints of the first job.
    let job_output =
        StoreUrl::parse(first.checkpoint.rsplit_once("/checkpoints/").unwrap().0).unwrap();
    let kept = ctcluster_common::checkpoint::list_complete(&job_output)
        .await
        .unwrap();
    assert_eq!(kept.len(), 2);
}
