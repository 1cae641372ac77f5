//! A corpus of hostile inputs, thrown at a running coordinator while a job trains beside them:
//! each gets a clear error (code and message checked), the coordinator keeps serving, and the
//! job beside them ends with exactly the parameters of an undisturbed run.

use std::sync::Arc;

use arrow_array::{BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use ctcluster_common::checkpoint::sha;
use ctcluster_common::dataset::encode_shard;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::tensor_bytes::f32_to_le_bytes;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, final_checkpoint, spec, synthetic};
use pb::worker_service_client::WorkerServiceClient;
use tonic::Code;

/// Checks a refusal: one of `codes`, and a message containing `needle`. Returns a line for
/// the corpus listing.
fn refused<T: std::fmt::Debug>(
    name: &str,
    r: Result<T, tonic::Status>,
    codes: &[Code],
    needle: &str,
) -> String {
    let e = r.expect_err(name);
    assert!(codes.contains(&e.code()), "{name}: {e:?}");
    assert!(
        e.message().contains(needle),
        "{name}: {:?} lacks {needle:?}",
        e.message()
    );
    format!("{name}: {:?} {}", e.code(), e.message())
}

/// A dataset under `memory://hostile-data/<name>` copied from the good one, then changed by
/// `edit` (manifest as JSON, first train shard's bytes); the shard's sha256 is updated unless
/// `keep_sha`.
async fn bad_dataset(
    good: &StoreUrl,
    name: &str,
    keep_sha: bool,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<u8>),
) -> String {
    let url = format!("memory://hostile-data/{name}");
    let ds = StoreUrl::parse(&url).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&good.join("manifest.json").unwrap().get().await.unwrap()).unwrap();
    for split in ["train", "test"] {
        for shard in manifest["splits"][split]["shards"]
            .as_array()
            .unwrap()
            .clone()
        {
            let file = shard["file"].as_str().unwrap();
            let bytes = good.join(file).unwrap().get().await.unwrap();
            ds.join(file).unwrap().put(bytes.to_vec()).await.unwrap();
        }
    }
    let shard_file = manifest["splits"]["train"]["shards"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let mut shard = good
        .join(&shard_file)
        .unwrap()
        .get()
        .await
        .unwrap()
        .to_vec();
    edit(&mut manifest, &mut shard);
    if !keep_sha && manifest["splits"]["train"]["shards"][0].is_object() {
        manifest["splits"]["train"]["shards"][0]["sha256"] = sha(&shard).into();
    }
    ds.join(&shard_file).unwrap().put(shard).await.unwrap();
    ds.join("manifest.json")
        .unwrap()
        .put(serde_json::to_vec(&manifest).unwrap())
        .await
        .unwrap();
    url
}

/// A shard with the right column names but `label` stored as text.
fn wrong_schema_shard(rows: usize, image_bytes: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("image", DataType::Binary, false),
    ]));
    let ids: Vec<String> = (0..rows).map(|i| format!("x{i}")).collect();
    let images = vec![vec![0u8; image_bytes]; rows];
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(&ids)),
            Arc::new(StringArray::from_iter_values(ids.iter().map(|_| "cat"))),
            Arc::new(BinaryArray::from_iter_values(&images)),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = arrow_ipc::writer::FileWriter::try_new(&mut buf, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    buf
}

/// A valid shard of `rows` images with the given labels and pixel bytes.
fn shard_with(rows: usize, label: impl Fn(usize) -> i32, image: Vec<u8>) -> Vec<u8> {
    let ids: Vec<String> = (0..rows).map(|i| format!("train-{i:06}")).collect();
    let labels: Vec<i32> = (0..rows).map(label).collect();
    encode_shard(&ids, &labels, &vec![image; rows]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_clear_errors_and_a_job_beside_them_is_unharmed() {
    let good = synthetic("memory://hostile-data/good", 600, 16, 3).await;
    let mut cluster = Cluster::start("memory://hostile/state", 1).await;
    let out = "memory://hostile/out";
    let bystander = spec(
        "bystander",
        good.as_str(),
        out,
        "epochs: 3\nbatch_size: 64\nseed: 11\n",
    );
    let job = cluster.submit(&bystander).await.unwrap();
    let mut corpus = Vec::new();

    // ---- job specs, refused at submit
    let s = |extra: &str| spec("x", good.as_str(), out, extra);
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n".to_string();
    let specs: Vec<(&str, String, &str)> = vec![
        (
            "malformed YAML",
            "name: x\ndataset: [unclosed\n".into(),
            "spec",
        ),
        ("unknown field", s("learning_rate: 0.1\n"), "learning_rate"),
        ("batch size 0", s("batch_size: 0\n"), "batch_size"),
        (
            "giant batch size",
            s("batch_size: 1000000000\n"),
            "batch_size",
        ),
        ("giant epoch count", s("epochs: 4000000000\n"), "epochs"),
        (
            "NaN learning rate",
            s("optimizer:\n  lr: .nan\n"),
            "optimizer.lr",
        ),
        (
            "negative learning rate",
            s("optimizer:\n  lr: -1\n"),
            "optimizer.lr",
        ),
        (
            "micro-batch over batch",
            s("batch_size: 8\nmicro_batch_size: 64\n"),
            "micro_batch_size",
        ),
        (
            "validation fraction 1.5",
            s("validation:\n  fraction: 1.5\n"),
            "validation.fraction",
        ),
        (
            "unknown model",
            s("model:\n  name: resnet-9000\n"),
            "model.name",
        ),
        ("YAML alias bomb", bomb, "spec"),
        (
            "deeply nested YAML",
            format!("name: {}\n", "[".repeat(20_000)),
            "spec",
        ),
        (
            "spec over 64 KiB",
            s(&format!("# {}\n", "x".repeat(70_000))),
            "at most 65536",
        ),
        (
            "unknown URL scheme",
            spec("x", "ftp://host/data", out, ""),
            "unknown scheme",
        ),
        (
            "'..' in the output",
            spec("x", good.as_str(), "memory://hostile/../etc", ""),
            "..",
        ),
        (
            "missing dataset",
            spec("x", "memory://hostile-data/none", out, ""),
            "none",
        ),
        (
            "missing resume checkpoint",
            s("resume_from: memory://hostile/out/j/checkpoints/step-0000000001\n"),
            "resume_from",
        ),
    ];
    for (name, yaml, needle) in specs {
        corpus.push(refused(
            name,
            cluster.submit(&yaml).await,
            &[Code::InvalidArgument, Code::NotFound],
            needle,
        ));
    }
    // Bigger than the gRPC message limit: refused by the transport before any parsing.
    corpus.push(refused(
        "9 MiB spec",
        cluster.submit(&"x".repeat(9 << 20)).await,
        &[Code::OutOfRange, Code::ResourceExhausted],
        "",
    ));

    // ---- datasets: refused at submit (manifest) or failing their job (shards)
    let bad_manifests: Vec<(&str, String, &str)> = vec![
        (
            "manifest is not JSON",
            {
                let url = "memory://hostile-data/notjson";
                StoreUrl::parse(url)
                    .unwrap()
                    .join("manifest.json")
                    .unwrap()
                    .put(b"{ nope".to_vec())
                    .await
                    .unwrap();
                url.into()
            },
            "manifest",
        ),
        (
            "giant declared image",
            bad_dataset(&good, "giant", false, |m, _| {
                m["image"]["height"] = 1_000_000.into()
            })
            .await,
            "pixels a side",
        ),
        (
            "100001 classes",
            bad_dataset(&good, "classes", false, |m, _| {
                m["classes"] = (0..100_001)
                    .map(|i| format!("c{i}"))
                    .collect::<Vec<_>>()
                    .into()
            })
            .await,
            "classes",
        ),
        (
            "no train split",
            bad_dataset(&good, "notrain", false, |m, _| {
                m["splits"].as_object_mut().unwrap().remove("train");
            })
            .await,
            "train",
        ),
    ];
    for (name, url, needle) in bad_manifests {
        corpus.push(refused(
            name,
            cluster.submit(&spec("x", &url, out, "")).await,
            &[Code::InvalidArgument, Code::NotFound],
            needle,
        ));
    }
    let image = 28 * 28;
    let bad_shards: Vec<(&str, String, &str)> = vec![
        (
            // Too short for the rows its manifest declares: refused at submit by its size.
            "truncated shard",
            bad_dataset(&good, "truncated", true, |_, b| b.truncate(b.len() / 2)).await,
            "the manifest says",
        ),
        (
            // The right size, other bytes: refused by its sha256 when read.
            "altered shard",
            bad_dataset(&good, "altered", true, |_, b| {
                let mid = b.len() / 2;
                b[mid..mid + 64].fill(0xA5);
            })
            .await,
            "sha256",
        ),
        (
            "shard with the wrong schema",
            bad_dataset(&good, "schema", false, |m, b| {
                let rows = m["splits"]["train"]["shards"][0]["rows"].as_u64().unwrap() as usize;
                *b = wrong_schema_shard(rows, image);
            })
            .await,
            "column label",
        ),
        (
            "negative label",
            bad_dataset(&good, "neglabel", false, |m, b| {
                let rows = m["splits"]["train"]["shards"][0]["rows"].as_u64().unwrap() as usize;
                *b = shard_with(rows, |i| if i == 5 { -3 } else { 0 }, vec![1; image]);
            })
            .await,
            "label",
        ),
        (
            "label beyond the classes",
            bad_dataset(&good, "biglabel", false, |m, b| {
                let rows = m["splits"]["train"]["shards"][0]["rows"].as_u64().unwrap() as usize;
                *b = shard_with(
                    rows,
                    |i| if i == 7 { 2_000_000_000 } else { 1 },
                    vec![1; image],
                );
            })
            .await,
            "label",
        ),
        (
            "NaN pixels",
            bad_dataset(&good, "nan", false, |m, b| {
                m["image"]["pixel_type"] = "f32".into();
                let rows = m["splits"]["train"]["shards"][0]["rows"].as_u64().unwrap() as usize;
                // Only the first train shard is rewritten as f32: the others go.
                m["splits"]["train"]["shards"]
                    .as_array_mut()
                    .unwrap()
                    .truncate(1);
                m["splits"]["train"]["rows"] = rows.into();
                // The other splits' u8 shards no longer fit the manifest (checked at start).
                m["splits"]
                    .as_object_mut()
                    .unwrap()
                    .retain(|k, _| k == "train");
                let mut px = vec![0.5f32; image];
                px[100] = f32::NAN;
                *b = shard_with(rows, |_| 0, f32_to_le_bytes(&px));
            })
            .await,
            "NaN",
        ),
        (
            "image of the wrong size",
            bad_dataset(&good, "short", false, |m, b| {
                let rows = m["splits"]["train"]["shards"][0]["rows"].as_u64().unwrap() as usize;
                *b = shard_with(rows, |_| 0, vec![1; 10]);
            })
            .await,
            "bytes",
        ),
        (
            "row count unlike the manifest",
            bad_dataset(&good, "rows", false, |_, b| {
                *b = shard_with(3, |_| 0, vec![1; image]);
            })
            .await,
            "rows",
        ),
    ];
    for (name, url, needle) in bad_shards {
        let id = match cluster.submit(&spec("x", &url, out, "epochs: 1\n")).await {
            Ok(id) => id,
            Err(e) => {
                corpus.push(refused(
                    name,
                    Err::<(), _>(e),
                    &[Code::InvalidArgument],
                    needle,
                ));
                continue;
            }
        };
        let s = cluster.wait(&id).await;
        assert_eq!(s.state, pb::JobState::Failed as i32, "{name}: {s:?}");
        assert!(
            s.message.contains(needle),
            "{name}: {:?} lacks {needle:?}",
            s.message
        );
        assert!(
            s.message.contains(&url),
            "{name}: {:?} names no dataset",
            s.message
        );
        corpus.push(format!("{name}: job failed: {}", s.message));
    }

    // ---- worker and client RPCs
    let mut w = WorkerServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    corpus.push(refused(
        "protocol version 999",
        w.register(pb::RegisterRequest {
            protocol_version: 999,
            name: "old".into(),
            device: "cpu".into(),
        })
        .await,
        &[Code::FailedPrecondition],
        "protocol version 999",
    ));
    corpus.push(refused(
        "heartbeat from an unknown worker",
        w.heartbeat(pb::HeartbeatRequest {
            worker_id: "worker-999999".into(),
        })
        .await,
        &[Code::NotFound],
        "worker-999999",
    ));
    corpus.push(refused(
        "malformed worker id",
        w.heartbeat(pb::HeartbeatRequest {
            worker_id: "../../etc".into(),
        })
        .await,
        &[Code::InvalidArgument],
        "worker",
    ));
    corpus.push(refused(
        "parameters of an unknown job",
        w.fetch_parameters(pb::FetchParametersRequest {
            job_id: "job-000000000000".into(),
            version: 0,
        })
        .await,
        &[Code::NotFound],
        "job-000000000000",
    ));
    let rogue = w
        .register(pb::RegisterRequest {
            protocol_version: pb::PROTOCOL_VERSION,
            name: "rogue".into(),
            device: "cpu".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let gradient_only = vec![pb::ResultChunk {
        part: Some(pb::result_chunk::Part::Gradient(vec![0u8; 8].into())),
    }];
    corpus.push(refused(
        "result without a header",
        w.push_result(futures::stream::iter(gradient_only)).await,
        &[Code::InvalidArgument],
        "header",
    ));
    let task = loop {
        let r = w
            .fetch_work(pb::FetchWorkRequest {
                worker_id: rogue.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(t) = r.task.filter(|t| t.kind == pb::TaskKind::Train as i32) {
            break t;
        }
    };
    let n = task.num_params as usize;
    let header = |len: usize, step: u64, loss: f64| pb::ResultHeader {
        worker_id: rogue.clone(),
        job_id: task.job.as_ref().unwrap().job_id.clone(),
        task_id: task.task_id,
        step,
        samples: task.samples.len() as u32,
        loss_sum: loss,
        gradient_len: len as u64,
        ..Default::default()
    };
    let push = |h: pb::ResultHeader, g: Vec<f32>| {
        let mut w = w.clone();
        async move {
            let msgs = vec![
                pb::ResultChunk {
                    part: Some(pb::result_chunk::Part::Header(h)),
                },
                pb::ResultChunk {
                    part: Some(pb::result_chunk::Part::Gradient(f32_to_le_bytes(&g).into())),
                },
            ];
            w.push_result(futures::stream::iter(msgs)).await
        }
    };
    // Each refusal re-queues the task; the rogue keeps the same task id for its next lie,
    // which the coordinator no longer holds for it, so it answers "not accepted" or refuses.
    corpus.push(refused(
        "wrong-length gradient",
        push(header(3, task.step, 1.0), vec![0.0; 3]).await,
        &[Code::InvalidArgument],
        "gradient values",
    ));
    let mut nan = vec![0.0f32; n];
    nan[17] = f32::NAN;
    let again = |w: &WorkerServiceClient<tonic::transport::Channel>| {
        let (mut w, rogue) = (w.clone(), rogue.clone());
        async move {
            loop {
                let r = w
                    .fetch_work(pb::FetchWorkRequest {
                        worker_id: rogue.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if let Some(t) = r.task.filter(|t| t.kind == pb::TaskKind::Train as i32) {
                    return t;
                }
            }
        }
    };
    let t = again(&w).await;
    let h = |len: usize, step: u64, loss: f64| pb::ResultHeader {
        task_id: t.task_id,
        samples: t.samples.len() as u32,
        ..header(len, step, loss)
    };
    corpus.push(refused(
        "NaN gradient",
        push(h(n, t.step, 1.0), nan).await,
        &[Code::InvalidArgument],
        "NaN",
    ));
    let t = again(&w).await;
    let h = |len: usize, step: u64, loss: f64| pb::ResultHeader {
        task_id: t.task_id,
        samples: t.samples.len() as u32,
        ..header(len, step, loss)
    };
    corpus.push(refused(
        "stale step",
        push(h(n, t.step + 7, 1.0), vec![0.0; n]).await,
        &[Code::InvalidArgument],
        "step",
    ));
    let t = again(&w).await;
    let h = |len: usize, step: u64, loss: f64| pb::ResultHeader {
        task_id: t.task_id,
        samples: t.samples.len() as u32,
        ..header(len, step, loss)
    };
    corpus.push(refused(
        "infinite loss",
        push(h(n, t.step, f64::INFINITY), vec![0.0; n]).await,
        &[Code::InvalidArgument],
        "loss",
    ));
    let huge = vec![pb::ResultChunk {
        part: Some(pb::result_chunk::Part::Gradient(vec![0u8; 9 << 20].into())),
    }];
    corpus.push(refused(
        "9 MiB result message",
        w.clone().push_result(futures::stream::iter(huge)).await,
        &[Code::OutOfRange, Code::ResourceExhausted],
        "",
    ));
    w.goodbye(pb::GoodbyeRequest {
        worker_id: rogue.clone(),
    })
    .await
    .unwrap();
    let mut c = cluster.client().await;
    corpus.push(refused(
        "malformed job id",
        c.get_job(pb::GetJobRequest {
            job_id: "'; drop table".into(),
        })
        .await,
        &[Code::InvalidArgument],
        "job",
    ));
    corpus.push(refused(
        "cancel of an unknown job",
        c.cancel_job(pb::CancelJobRequest {
            job_id: "job-000000000000".into(),
        })
        .await,
        &[Code::NotFound],
        "job-000000000000",
    ));

    println!("{} hostile inputs:\n{}", corpus.len(), corpus.join("\n"));
    assert!(corpus.len() >= 30, "{} inputs", corpus.len());

    // The job beside them succeeded, with the parameters of an undisturbed run.
    let disturbed = cluster.wait(&job).await;
    assert_eq!(
        disturbed.state,
        pb::JobState::Succeeded as i32,
        "{}",
        disturbed.message
    );
    assert!(
        disturbed.rejected_results >= 3,
        "the rogue's results were refused"
    );
    cluster.add_worker();
    let calm = cluster.run(&bystander).await;
    let (a, b) = (
        final_checkpoint(&disturbed).await,
        final_checkpoint(&calm).await,
    );
    assert!(
        a.params == b.params && a.adam == b.adam,
        "the hostile inputs changed the result"
    );
    cluster.stop().await;
}
