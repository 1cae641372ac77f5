//! One storage suite, run against every kind of store ctcluster keeps things in: in memory, local
//! files, and a real S3-compatible server (s3s-fs over HTTP on loopback, SigV4 and all). Objects,
//! overwrites and concurrent writers, listing, bounded reads, datasets, checkpoints with their
//! retention and incomplete ones, and job records. (A whole training job with its dataset,
//! checkpoints and records in S3 is `processes::binaries_train_from_s3_and_ctctl_reports_json`.)

use std::sync::Arc;

use ctcluster_common::checkpoint::{
    Checkpoint, TrainingState, apply_retention, checkpoint_dir_name, list_complete,
};
use ctcluster_common::dataset::{SynthOptions, load_manifest, load_shard, write_synthetic};
use ctcluster_common::job::{JobRecord, JobState};
use ctcluster_common::model::model_for_job;
use ctcluster_common::optim::AdamSnapshot;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, JobId, Step};
use ctcluster_coordinator::records;
use object_store::aws::AmazonS3Builder;

const KEY: &str = "ctcluster-test";
const SECRET: &str = "ctcluster-test-secret";

fn url(root: &StoreUrl, rel: &str) -> StoreUrl {
    root.join(rel).unwrap()
}

async fn objects(root: &StoreUrl) {
    let a = url(root, "objects/a.bin");
    assert!(
        !a.exists().await.unwrap(),
        "{a:?} exists before it is written"
    );
    assert!(a.get().await.is_err(), "reading a missing object succeeded");
    let big: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i % 251) as u8).collect();
    a.put(big.clone()).await.unwrap();
    assert!(a.exists().await.unwrap());
    assert_eq!(a.size().await.unwrap(), big.len() as u64);
    assert_eq!(a.get().await.unwrap().as_ref(), big.as_slice());
    // An overwrite replaces the whole object, a shorter one too.
    a.put(b"short".to_vec()).await.unwrap();
    assert_eq!(a.get().await.unwrap().as_ref(), b"short");
    assert_eq!(a.size().await.unwrap(), 5);
    a.delete().await.unwrap();
    assert!(!a.exists().await.unwrap());
    a.delete().await.unwrap();
    // An empty object is an object.
    let empty = url(root, "objects/empty");
    empty.put(Vec::new()).await.unwrap();
    assert!(empty.exists().await.unwrap());
    assert_eq!(empty.get().await.unwrap().len(), 0);
}

/// Writers racing on one key: the object is one writer's bytes, whole, never a mix.
async fn concurrent_writers(root: &StoreUrl) {
    let key = url(root, "race/record.json");
    let bodies: Vec<Vec<u8>> = (0..6u8)
        .map(|w| vec![w; (256 << 10) + usize::from(w)])
        .collect();
    let writes = bodies.iter().map(|b| {
        let key = key.clone();
        let b = b.clone();
        tokio::spawn(async move { key.put(b).await })
    });
    for w in futures::future::join_all(writes).await {
        w.unwrap().unwrap();
    }
    let got = key.get().await.unwrap();
    assert!(
        bodies.iter().any(|b| b.as_slice() == got.as_ref()),
        "the object is no single writer's bytes ({} bytes)",
        got.len()
    );
}

async fn listing(root: &StoreUrl) {
    let list = url(root, "list");
    assert!(list.list().await.unwrap().is_empty());
    for k in ["a/1", "a/2/x", "ab/3", "b"] {
        url(&list, k).put(k.as_bytes().to_vec()).await.unwrap();
    }
    assert_eq!(list.list().await.unwrap(), ["a/1", "a/2/x", "ab/3", "b"]);
    // A prefix is a folder: `a` does not take in `ab`.
    assert_eq!(url(&list, "a").list().await.unwrap(), ["1", "2/x"]);
    assert!(url(&list, "none").list().await.unwrap().is_empty());
}

async fn bounded_reads(root: &StoreUrl) {
    let o = url(root, "bounded/o");
    o.put(vec![7u8; 1000]).await.unwrap();
    assert_eq!(
        o.get_bounded(1000, "a test object").await.unwrap().len(),
        1000
    );
    match o.get_bounded(999, "a test object").await {
        Err(Error::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (1000, 999)),
        other => panic!("a 1000-byte object read under a 999-byte limit: {other:?}"),
    }
}

/// A dataset written to the store and read back, and a checkpoint series of its model with
/// retention; an incomplete checkpoint (no manifest) is never taken for one.
async fn datasets_and_checkpoints(root: &StoreUrl) {
    let ds = url(root, "datasets/synth");
    let written = write_synthetic(
        &ds,
        SynthOptions {
            train: 96,
            test: 16,
            size: 28,
            seed: 3,
        },
    )
    .await
    .unwrap();
    let manifest = load_manifest(&ds).await.unwrap();
    assert_eq!(manifest, written);
    let shard = load_shard(&ds, &manifest, "train", 0).await.unwrap();
    let rows = manifest.split("train", ds.as_str()).unwrap().shards[0].rows as usize;
    assert_eq!(shard.ids.len(), rows);
    assert_eq!(shard.pixels.len(), rows * manifest.image.pixels());

    let spec = JobSpec::from_yaml(&format!(
        "name: storage\ndataset: {}\noutput: {}\n",
        ds.as_str(),
        url(root, "out").as_str()
    ))
    .unwrap();
    let model = model_for_job(&spec, &manifest).unwrap();
    let output = url(root, "out/job-1");
    let checkpoint = |step: u64| {
        let params: Vec<f32> = model
            .init_params(step)
            .iter()
            .map(|p| p * step as f32)
            .collect();
        Checkpoint {
            state: TrainingState {
                step: Step(step),
                epoch: 0,
                step_in_epoch: step,
                epoch_loss_sum: 0.5 * step as f64,
                epoch_samples: 32 * step,
                epoch_correct: step,
                spec_yaml: String::new(),
                model: model.clone(),
                adam_time: step,
                best: None,
            },
            adam: AdamSnapshot {
                time: step,
                moment_1: vec![0.25; params.len()],
                moment_2: vec![step as f32; params.len()],
            },
            params,
            sealed_with: None,
        }
    };
    for step in 1..=4 {
        checkpoint(step).write(&output, None).await.unwrap();
        apply_retention(&output, 2).await.unwrap();
    }
    // Step 5 died while it was written: its tensors are there, its manifest is not.
    let partial = url(
        &output,
        &format!("checkpoints/{}", checkpoint_dir_name(Step(5))),
    );
    url(&partial, "params.bin")
        .put(vec![0u8; 64])
        .await
        .unwrap();
    let complete: Vec<String> = list_complete(&output)
        .await
        .unwrap()
        .iter()
        .map(|u| u.as_str().rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        complete,
        [checkpoint_dir_name(Step(3)), checkpoint_dir_name(Step(4))]
    );
    let newest = list_complete(&output).await.unwrap().pop().unwrap();
    let loaded = Checkpoint::load(&newest).await.unwrap();
    let want = checkpoint(4);
    assert_eq!(loaded.params, want.params);
    assert_eq!(loaded.adam, want.adam);
    assert_eq!(loaded.state.step, Step(4));
    assert!(Checkpoint::load(&partial).await.is_err());
    // A tampered tensor is caught by the manifest's hashes.
    url(&newest, "params.bin")
        .put(vec![1u8; want.params.len() * 4])
        .await
        .unwrap();
    assert!(Checkpoint::load(&newest).await.is_err());
}

async fn job_records(root: &StoreUrl) {
    let state = url(root, "state");
    let mut a = JobRecord::queued(
        JobId::try_from("job-a".to_string()).unwrap(),
        "a".into(),
        "name: a\n".into(),
        3,
    );
    let mut b = JobRecord::queued(
        JobId::try_from("job-b".to_string()).unwrap(),
        "b".into(),
        "name: b\n".into(),
        1,
    );
    records::save(&state, &a).await.unwrap();
    records::save(&state, &b).await.unwrap();
    a.state = JobState::Running;
    a.step = 12;
    b.state = JobState::Succeeded;
    records::save(&state, &a).await.unwrap();
    records::save(&state, &b).await.unwrap();
    // A record cut short (a writer killed mid-way on a store without atomic puts) is skipped.
    url(&state, "jobs/job-c.json")
        .put(b"{\"id\": \"job-c\", \"na".to_vec())
        .await
        .unwrap();
    let mut loaded = records::load_all(&state).await.unwrap();
    loaded.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(loaded, [a, b]);
}

async fn conformance(root: &StoreUrl) {
    objects(root).await;
    concurrent_writers(root).await;
    listing(root).await;
    bounded_reads(root).await;
    datasets_and_checkpoints(root).await;
    job_records(root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_conforms() {
    let root = StoreUrl::parse(&format!("memory://conformance-{}/root", std::process::id()));
    conformance(&root.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    let root = StoreUrl::parse(tmp.path().join("root").to_str().unwrap()).unwrap();
    conformance(&root).await;
    assert!(
        tmp.path().join("root/state/jobs/job-a.json").is_file(),
        "the file store writes where it says"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_compatible_server_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = format!("conformance-{}", std::process::id());
    std::fs::create_dir_all(tmp.path().join(&bucket)).unwrap();
    let (_server, port) = ctcluster_tests::start_s3(tmp.path(), KEY, SECRET);
    // Configured in code, not from AWS_* (the tests of this binary share its environment).
    let store = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(KEY)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap();
    StoreUrl::register_store(&format!("s3://{bucket}"), Arc::new(store)).unwrap();
    let root = StoreUrl::parse(&format!("s3://{bucket}/root")).unwrap();
    conformance(&root).await;
    assert!(
        tmp.path()
            .join(&bucket)
            .join("root/state/jobs/job-a.json")
            .is_file(),
        "the objects are in the S3 server's folder"
    );
}
