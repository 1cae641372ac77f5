//! Job life cycle: cancel, and a coordinator restart that resumes a running job exactly.

use ctcluster_common::storage::StoreUrl;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, final_checkpoint, spec, synthetic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_job_and_the_next_one_runs() {
    let ds = synthetic("memory://cancel/ds", 400, 8, 2).await;
    let cluster = Cluster::start("memory://cancel/state", 1).await;
    let id = cluster
        .submit(&spec(
            "long",
            ds.as_str(),
            "memory://cancel/out",
            "epochs: 1000\nbatch_size: 32\n",
        ))
        .await
        .unwrap();
    cluster.wait_for_step(&id, 3).await;
    let mut c = cluster.client().await;
    c.cancel_job(pb::CancelJobRequest { job_id: id.clone() })
        .await
        .unwrap();
    let s = cluster.wait(&id).await;
    assert_eq!(s.state, pb::JobState::Cancelled as i32);
    let missing = c
        .cancel_job(pb::CancelJobRequest {
            job_id: "job-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    cluster
        .run(&spec(
            "next",
            ds.as_str(),
            "memory://cancel/out",
            "epochs: 1\n",
        ))
        .await;
    let jobs = c
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].id, id, "listed in submission order");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_resumes_the_job_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let ds = synthetic(&format!("{root}/ds"), 1200, 8, 4).await;
    let job_spec = |out: &str| {
        spec(
            "restart",
            ds.as_str(),
            out,
            "batch_size: 128\nepochs: 3\nseed: 5\ncheckpoint:\n  every_steps: 5\n  keep: 2\n",
        )
    };
    let state = format!("{root}/state");
    let first = Cluster::start(&state, 2).await;
    let id = first
        .submit(&job_spec(&format!("{root}/out")))
        .await
        .unwrap();
    first.wait_for_step(&id, 12).await;
    first.stop().await;
    // Damage the newest checkpoint as a crash in the middle of writing could: the restarted
    // coordinator must skip it, say so, and resume from the one before.
    let checkpoints = ctcluster_common::checkpoint::list_complete(
        &StoreUrl::parse(&format!("{root}/out/{id}")).unwrap(),
    )
    .await
    .unwrap();
    let newest = checkpoints.last().unwrap().join("params.bin").unwrap();
    let bytes = newest.get().await.unwrap();
    newest.put(bytes.slice(..bytes.len() / 3)).await.unwrap();

    let second = Cluster::start(&state, 2).await;
    let resumed = second.wait(&id).await;
    assert_eq!(
        resumed.state,
        pb::JobState::Succeeded as i32,
        "{}",
        resumed.message
    );
    let straight = second.run(&job_spec(&format!("{root}/straight"))).await;
    second.stop().await;
    let (a, b) = (
        final_checkpoint(&resumed).await,
        final_checkpoint(&straight).await,
    );
    assert_eq!(a.state.step, b.state.step);
    assert!(a.params == b.params, "parameters differ after the restart");
    assert!(a.adam == b.adam, "Adam state differs after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_workers_the_job_waits_and_says_why() {
    let ds = synthetic("memory://min-workers/ds", 300, 8, 2).await;
    let mut cluster = Cluster::start("memory://min-workers/state", 1).await;
    let yaml = spec(
        "needs-two",
        ds.as_str(),
        "memory://min-workers/out",
        "epochs: 1\nmin_workers: 2\n",
    );
    let id = cluster.submit(&yaml).await.unwrap();
    // The one worker may register after the job starts waiting: the message follows the count.
    let waiting = cluster
        .poll_status(&id, |s| {
            s.state == pb::JobState::Waiting as i32 && s.message.contains("1 of min_workers")
        })
        .await;
    assert!(
        waiting.message.contains("1 of min_workers 2"),
        "{}",
        waiting.message
    );
    assert_eq!(waiting.step, 0);
    cluster.add_worker();
    let done = cluster.wait(&id).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.message
    );
    assert!(done.message.is_empty(), "{}", done.message);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_slow_worker_and_why() {
    let ds = synthetic("memory://slow-worker/ds", 800, 8, 2).await;
    let mut cluster = Cluster::start("memory://slow-worker/state", 0).await;
    cluster.add_worker_with(ctcluster_worker::Faults {
        delay: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    });
    cluster.add_worker();
    cluster.add_worker();
    let yaml = spec(
        "slow",
        ds.as_str(),
        "memory://slow-worker/out",
        "epochs: 2\nbatch_size: 64\nmicro_batch_size: 16\n",
    );
    let id = cluster.submit(&yaml).await.unwrap();
    let named = cluster
        .poll_status(&id, |s| s.slowest_worker.contains("test-worker-0"))
        .await;
    let mut c = cluster.client().await;
    // What a user sees: `ctctl status -o json`.
    let text = ctctl::jobs::status(&cluster.target, &id, ctctl::cli::Format::Json)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    let slowest = status["slowest_worker"].as_str().unwrap_or_default();
    let reason = status["slowest_reason"].as_str().unwrap_or_default();
    assert!(slowest.contains("test-worker-0"), "{text}");
    assert!(reason.starts_with("computing"), "{text}");
    assert!(
        named.step <= 6,
        "named within a few steps (at step {})",
        named.step
    );
    let table = status["worker_table"].as_array().unwrap();
    assert_eq!(table.len(), 3, "{text}");
    let slow_row = table.iter().find(|w| w["name"] == "test-worker-0").unwrap();
    let fast_row = table.iter().find(|w| w["name"] != "test-worker-0").unwrap();
    assert!(
        slow_row["compute_seconds"].as_f64() > fast_row["compute_seconds"].as_f64(),
        "{text}"
    );
    let workers = c
        .list_workers(pb::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(workers.workers.len(), 3);
    assert!(workers.workers.iter().all(|w| w.last_seen_ms < 3000));
    let mut c2 = c.clone();
    c2.cancel_job(pb::CancelJobRequest { job_id: id.clone() })
        .await
        .unwrap();
    cluster.wait(&id).await;
    cluster.stop().await;
}
