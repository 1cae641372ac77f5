//! The seed CNN learns real chest X-rays (PneumoniaMNIST), ingested with `ctctl ingest npz`
//! and trained with worker-side augmentation on a two-worker cluster.

use ctcluster_common::dataset::load_manifest;
use ctcluster_common::evaluate::evaluate;
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::{Cluster, shared_data, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_cnn_learns_pneumonia_with_augmentation_on_two_workers() {
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED: ../shared/data is absent (CI always has it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ds = StoreUrl::parse(&tmp.path().join("pneumonia").display().to_string()).unwrap();
    let report = ctctl::ingest::ingest_report(ctctl::ingest::IngestSource::Npz {
        file: data.join("pneumoniamnist/pneumoniamnist.npz"),
        args: ctctl::ingest::IngestArgs {
            out: ds.as_str().to_string(),
            shard_rows: 2048,
            size: None,
            on_shape: ctctl::ingest::OnShape::Drop,
            classes: Some(vec!["normal".into(), "pneumonia".into()]),
            val_fraction: 0.0,
            test_fraction: 0.0,
            split_seed: 0,
            encrypt_key: None,
        },
    })
    .await
    .unwrap();
    // This copy of PneumoniaMNIST holds exact duplicates: within splits, and train images
    // that are also validation images. Nothing else is wrong with it, and no test image
    // appears in train or val.
    use ctctl::ingest::Reason;
    let count = |r: Reason| report.dropped.iter().filter(|d| d.reason == r).count();
    let (dups, leaks) = (count(Reason::Duplicate), count(Reason::CrossSplitDuplicate));
    eprintln!(
        "pneumonia ingest: {dups} duplicates within a split, {leaks} train images also in val"
    );
    assert_eq!(dups + leaks, report.dropped.len(), "{:?}", report.dropped);
    assert!(
        report
            .dropped
            .iter()
            .all(|d| d.reason == Reason::Duplicate || d.detail.contains("in split val")),
        "{:?}",
        report.dropped
    );
    let manifest = load_manifest(&ds).await.unwrap();
    let total: u64 = manifest.splits.values().map(|s| s.rows).sum();
    assert_eq!(total as usize, 4708 + 524 + 624 - report.dropped.len());
    let train_rows = manifest.splits["train"].rows;
    assert!(train_rows > 4650, "{train_rows}");
    let cluster = Cluster::start("memory://learning/state", 2).await;
    let out = tmp.path().join("out").display().to_string();
    let status = cluster
        .run(&spec(
            "pneumonia-seed-cnn",
            ds.as_str(),
            &out,
            "batch_size: 128\nepochs: 5\noptimizer:\n  lr: 0.001\nseed: 1\nvalidation:\n  split: val\naugment:\n  crop_padding: 2\n  rotation_degrees: 10\n  intensity: 0.1\n",
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
    assert_eq!(status.step, 5 * train_rows.div_ceil(128));
    assert!(val >= 0.88, "validation accuracy {val} < 0.88");
    assert!(
        test.accuracy >= 0.83,
        "test accuracy {} < 0.83",
        test.accuracy
    );
    assert!(test.samples > 615, "{}", test.samples);
}
