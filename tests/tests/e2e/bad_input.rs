//! Bad input gets a clear error naming what and where, and the coordinator keeps serving.

use std::time::Duration;

use ctcluster_common::dataset::load_manifest;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::tensor_bytes::f32_to_le_bytes;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, spec, synthetic};
use pb::worker_service_client::WorkerServiceClient;
use tonic::Code;

async fn dataset(name: &str) -> StoreUrl {
    synthetic(&format!("memory://{name}/ds"), 300, 8, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_and_missing_datasets_are_refused_at_submit() {
    let ds = dataset("bad-spec").await;
    let cluster = Cluster::start("memory://bad-spec/state", 1).await;
    let out = "memory://bad-spec/out";
    let cases = [
        (
            spec("x", ds.as_str(), out, "learning_rate: 0.1\n"),
            "learning_rate",
        ),
        (spec("x", ds.as_str(), out, "batch_size: 0\n"), "batch_size"),
        (
            spec("x", ds.as_str(), out, "optimizer:\n  lr: -1\n"),
            "optimizer.lr",
        ),
        (
            spec("x", ds.as_str(), out, "model:\n  name: resnet-9000\n"),
            "model.name",
        ),
        ("name: x\ndataset: [unclosed\n".to_string(), "spec"),
        (spec("x", "ftp://host/data", out, ""), "unknown scheme"),
        (spec("x", "file:///data/../etc/passwd", out, ""), ".."),
        (
            spec(
                "x",
                ds.as_str(),
                out,
                "validation:\n  split: nope\n  fraction: 0.1\n",
            ),
            "nope",
        ),
        (
            spec(
                "x",
                ds.as_str(),
                out,
                "resume_from: memory://bad-spec/out/none/checkpoints/step-0000000001\n",
            ),
            "resume_from",
        ),
    ];
    for (yaml, needle) in &cases {
        let err = cluster.submit(yaml).await.expect_err(yaml);
        assert_eq!(err.code(), Code::InvalidArgument, "{yaml}: {err:?}");
        assert!(
            err.message().contains(needle),
            "error for {yaml:?} does not name {needle:?}: {}",
            err.message()
        );
    }
    // A missing dataset is not found (not bad input), and its error says what and where.
    let missing = spec("x", "memory://bad-spec/no-such-dataset", out, "");
    let err = cluster.submit(&missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("manifest.json not found")
            && err.message().contains("no-such-dataset")
            && err.message().starts_with("dataset: "),
        "{}",
        err.message()
    );
    // And the coordinator still runs the next job.
    let ok = cluster
        .run(&spec(
            "good",
            ds.as_str(),
            out,
            "epochs: 1\nbatch_size: 64\n",
        ))
        .await;
    assert_eq!(ok.step, 5);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shard_fails_its_job_with_the_file_named() {
    let ds = dataset("corrupt").await;
    let manifest = load_manifest(&ds).await.unwrap();
    let shard = ds.join(&manifest.splits["train"].shards[0].file).unwrap();
    let bytes = shard.get().await.unwrap();
    // A shard far shorter than its rows is refused at submit, by its size.
    shard.put(b"ARROW1 but not really".to_vec()).await.unwrap();
    let cluster = Cluster::start("memory://corrupt/state", 1).await;
    let refused = cluster
        .submit(&spec(
            "short",
            ds.as_str(),
            "memory://corrupt/out",
            "epochs: 1
",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("train-00000.arrow")
            && refused.message().contains("the manifest says 300 rows"),
        "{}",
        refused.message()
    );
    // One of the right size with other bytes passes that check and fails on its sha256.
    let mut altered = bytes.to_vec();
    let mid = altered.len() / 2;
    altered[mid..mid + 64].fill(0xA5);
    shard.put(altered).await.unwrap();
    let id = cluster
        .submit(&spec(
            "corrupt",
            ds.as_str(),
            "memory://corrupt/out",
            "epochs: 1\n",
        ))
        .await
        .unwrap();
    let s = cluster.wait(&id).await;
    assert_eq!(s.state, pb::JobState::Failed as i32);
    assert!(
        s.message.contains("train-00000.arrow") && s.message.contains("sha256"),
        "{}",
        s.message
    );
    // With the split given, the coordinator does not read the shard itself: the workers do,
    // report the error, and the job fails after the retries, naming the file.
    let id = cluster
        .submit(&spec(
            "corrupt-2",
            ds.as_str(),
            "memory://corrupt/out",
            "epochs: 1\nvalidation:\n  split: test\n",
        ))
        .await
        .unwrap();
    let s = cluster.wait(&id).await;
    assert_eq!(s.state, pb::JobState::Failed as i32);
    assert!(s.message.contains("train-00000.arrow"), "{}", s.message);
    // The coordinator keeps serving: a clean dataset trains.
    let good = dataset("corrupt-good").await;
    cluster
        .run(&spec(
            "fine",
            good.as_str(),
            "memory://corrupt/out",
            "epochs: 1\n",
        ))
        .await;
    cluster.stop().await;
}

async fn fetch_task(w: &mut WorkerServiceClient<tonic::transport::Channel>, id: &str) -> pb::Task {
    for _ in 0..20 {
        let t = w
            .fetch_work(pb::FetchWorkRequest {
                worker_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(t) = t.task {
            return t;
        }
    }
    panic!("no task handed out");
}

async fn push(
    w: &mut WorkerServiceClient<tonic::transport::Channel>,
    header: pb::ResultHeader,
    gradient: &[f32],
) -> Result<bool, tonic::Status> {
    let msgs = vec![
        pb::ResultChunk {
            part: Some(pb::result_chunk::Part::Header(header)),
        },
        pb::ResultChunk {
            part: Some(pb::result_chunk::Part::Gradient(
                f32_to_le_bytes(gradient).into(),
            )),
        },
    ];
    Ok(w.push_result(futures::stream::iter(msgs))
        .await?
        .into_inner()
        .accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_gradients_are_rejected_and_the_job_goes_on() {
    let ds = dataset("bad-grad").await;
    let mut cluster = Cluster::start("memory://bad-grad/state", 0).await;
    let mut w = WorkerServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let old = w
        .register(pb::RegisterRequest {
            protocol_version: 999,
            name: "old".into(),
            device: "cpu".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition);
    assert!(
        old.message().contains("protocol version 999"),
        "{}",
        old.message()
    );
    let id = w
        .register(pb::RegisterRequest {
            protocol_version: pb::PROTOCOL_VERSION,
            name: "rogue".into(),
            device: "cpu".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let job = cluster
        .submit(&spec(
            "bad-grad",
            ds.as_str(),
            "memory://bad-grad/out",
            "epochs: 1\nbatch_size: 64\nmodel:\n  dropout: 0\n",
        ))
        .await
        .unwrap();
    // A result header for a task, as the rogue worker sends it.
    let header = |t: &pb::Task, len: u64, step: u64| pb::ResultHeader {
        worker_id: id.clone(),
        job_id: t.job.as_ref().map(|j| j.job_id.clone()).unwrap_or_default(),
        task_id: t.task_id,
        step,
        samples: t.samples.len() as u32,
        loss_sum: 1.0,
        correct: 0,
        gradient_len: len,
        ..Default::default()
    };
    let t = fetch_task(&mut w, &id).await;
    let n = t.num_params;
    let err = push(&mut w, header(&t, 3, t.step), &[0.0; 3])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("gradient values"),
        "{}",
        err.message()
    );
    let t = fetch_task(&mut w, &id).await;
    let mut nan = vec![0.0f32; n as usize];
    nan[17] = f32::NAN;
    let err = push(&mut w, header(&t, n, t.step), &nan).await.unwrap_err();
    assert!(
        err.message().contains("value 17") && err.message().contains("NaN"),
        "{}",
        err.message()
    );
    let t = fetch_task(&mut w, &id).await;
    let err = push(&mut w, header(&t, n, t.step + 7), &vec![0.0; n as usize])
        .await
        .unwrap_err();
    assert!(err.message().contains("step"), "{}", err.message());
    // The rogue is the only worker there is, and every result of that task was refused: the
    // job cannot progress, and fails with the last reason instead of retrying without end.
    let s = tokio::time::timeout(Duration::from_secs(60), cluster.wait(&job))
        .await
        .unwrap();
    assert_eq!(s.state, pb::JobState::Failed as i32, "{}", s.message);
    assert!(
        s.message.contains("kept failing") && s.message.contains("step 7"),
        "{}",
        s.message
    );
    assert_eq!(s.rejected_results, 3);

    // With a real worker beside it, the rogue's refused results are computed again by the
    // real one, and the job goes on.
    cluster.add_worker();
    let job = cluster
        .submit(&spec(
            "bad-grad-2",
            ds.as_str(),
            "memory://bad-grad/out",
            "epochs: 3\nbatch_size: 64\nmodel:\n  dropout: 0\n",
        ))
        .await
        .unwrap();
    let lies: [(u64, Vec<f32>, u64); 3] = [
        (3, vec![0.0; 3], 0),
        (n, nan.clone(), 0),
        (n, vec![0.0; n as usize], 7),
    ];
    for (len, gradient, skew) in lies {
        let t = fetch_task(&mut w, &id).await;
        push(&mut w, header(&t, len, t.step + skew), &gradient)
            .await
            .unwrap_err();
    }
    // A gradient in another format than the task asked for (its bytes would decode wrong).
    let t = fetch_task(&mut w, &id).await;
    let bf16 = pb::ResultHeader {
        gradient_dtype: pb::GradientDtype::Bf16 as i32,
        ..header(&t, n, t.step)
    };
    let err = push(&mut w, bf16, &vec![0.0; n as usize / 2])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("bf16") && err.message().contains("f32"),
        "{}",
        err.message()
    );
    w.goodbye(pb::GoodbyeRequest {
        worker_id: id.clone(),
    })
    .await
    .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(300), cluster.wait(&job))
        .await
        .unwrap();
    assert_eq!(s.state, pb::JobState::Succeeded as i32, "{}", s.message);
    let m = s.metrics.unwrap();
    assert!(m.train_loss.unwrap().is_finite() && m.val_loss.unwrap().is_finite());
    assert_eq!(
        s.rejected_results, 4,
        "the wrong-length, NaN, stale-step and wrong-format pushes"
    );
    cluster.stop().await;
}
