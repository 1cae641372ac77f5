//! The seed CNN learns real chest X-rays (PneumoniaMNIST) on a two-worker cluster.

use ctcluster_common::dataset::convert_npz;
use ctcluster_common::evaluate::evaluate;
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::{Cluster, shared_data, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_cnn_learns_pneumonia_on_two_workers() {
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED: ../shared/data is absent (CI always has it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ds = StoreUrl::parse(&tmp.path().join("pneumonia").display().to_string()).unwrap();
    let manifest = convert_npz(
        &data.join("pneumoniamnist/pneumoniamnist.npz"),
        &ds,
        Some(vec!["normal".into(), "pneumonia".into()]),
        2048,
    )
    .await
    .unwrap();
    assert_eq!(manifest.splits["train"].rows, 4708);
    assert_eq!(manifest.splits["train"].per_class, vec![1214, 3494]);
    assert_eq!(manifest.splits["val"].rows, 524);
    assert_eq!(manifest.splits["test"].rows, 624);

    let cluster = Cluster::start("memory://learning/state", 2).await;
    let out = tmp.path().join("out").display().to_string();
    let status = cluster
        .run(&spec(
            "pneumonia-seed-cnn",
            ds.as_str(),
            &out,
            "batch_size: 128\nepochs: 5\noptimizer:\n  lr: 0.001\nseed: 1\nvalidation:\n  split: val\n",
        ))
        .await;
    cluster.stop().await;
    let m = status.metrics.unwrap();
    let val = m.val_accuracy.unwrap();
    let test = evaluate(&status.model, ds.as_str(), "test").await.unwrap();
    eprintln!(
        "pneumonia: val_accuracy {val:.4} val_loss {:.4} test_accuracy {:.4} test_auc {:.4} steps {}",
        m.val_loss.unwrap(),
        test.accuracy,
        test.roc_auc.unwrap(),
        status.step
    );
    assert_eq!(status.step, 5 * 4708u64.div_ceil(128));
    assert!(val >= 0.88, "validation accuracy {val} < 0.88");
    assert!(
        test.accuracy >= 0.80,
        "test accuracy {} < 0.80",
        test.accuracy
    );
    assert_eq!(test.samples, 624);
}
