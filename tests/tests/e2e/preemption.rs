//! Preemption: SIGTERM to the coordinator (what a spot instance or a Kubernetes eviction sends)
//! checkpoints every running job at the step it completed last and exits 0 within the grace;
//! the restarted coordinator resumes the job from that step, and it ends bit-identical to an
//! undisturbed run. SIGTERM to a worker: it finishes its task in flight, says goodbye (the
//! coordinator drops it at once) and exits 0; the job ends as an undisturbed run.

use std::path::Path;
use std::time::{Duration, Instant};

use ctcluster_proto as pb;
use ctcluster_tests::{
    Proc, final_checkpoint, job_until, restart_coordinator, spec, start_coordinator, submit_as,
    synthetic,
};
use ctctl::Target;

const GRACE: [&str; 2] = ["--shutdown-grace-s", "15"];

fn succeeded_or_failed(s: &pb::JobStatus) -> bool {
    s.state == pb::JobState::Succeeded as i32 || s.state == pb::JobState::Failed as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_every_job_at_its_step_and_the_resumed_job_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("ds");
    synthetic(data.to_str().unwrap(), 600, 16, 6).await;
    let state = root.join("state");
    let out = root.join("out").display().to_string();
    let (mut coord, listening) = start_coordinator(&state, &GRACE);
    let port = listening.port;
    let url = format!("http://127.0.0.1:{port}");
    let target = Target::insecure(&url);
    let _worker = Proc::start(
        "ctcluster-worker",
        &["--coordinator", &url, "--insecure"],
        &[],
    );
    // No periodic checkpoint before the end: whatever is there after the SIGTERM was written
    // for it.
    let yaml = spec(
        "preempted",
        data.to_str().unwrap(),
        &out,
        "epochs: 8\nbatch_size: 32\nseed: 5\ncheckpoint:\n  every_steps: 100000\n",
    );
    let job = submit_as(&target, yaml.clone()).await.unwrap();
    job_until(&target, &job, |s| s.step >= 4).await;

    let signalled = Instant::now();
    coord.terminate("coordinator");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(15), "exited after {took:?}");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("jobs").join(format!("{job}.json"))).unwrap(),
    )
    .unwrap();
    let step = record["step"].as_u64().unwrap();
    assert!(step >= 4, "{record}");
    let checkpoints = Path::new(&out).join(&job).join("checkpoints");
    let mut written: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        vec![format!("step-{step:010}")],
        "one checkpoint, at the step the job was on"
    );
    assert!(
        checkpoints
            .join(&written[0])
            .join("manifest.json")
            .is_file(),
        "the checkpoint is complete"
    );
    println!("SIGTERM at step {step}: checkpointed and exited 0 in {took:?}");

    // The restarted coordinator resumes from that step; the job ends as an undisturbed run.
    let _coord = restart_coordinator(port, &state, &GRACE);
    let resumed = job_until(&target, &job, succeeded_or_failed).await;
    assert_eq!(
        resumed.state,
        pb::JobState::Succeeded as i32,
        "{}",
        resumed.message
    );
    assert_eq!(resumed.resumed_from_step, Some(step));
    let calm = submit_as(&target, yaml).await.unwrap();
    let calm = job_until(&target, &calm, succeeded_or_failed).await;
    assert_eq!(
        calm.state,
        pb::JobState::Succeeded as i32,
        "{}",
        calm.message
    );
    let (a, b) = (
        final_checkpoint(&resumed).await,
        final_checkpoint(&calm).await,
    );
    assert!(
        a.params == b.params && a.adam == b.adam,
        "the preempted job ended elsewhere than an undisturbed one"
    );
}

/// The registered workers' names.
async fn worker_names(target: &Target) -> Vec<String> {
    ctcluster_tests::try_worker_names(target)
        .await
        .expect("the coordinator answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_finishes_its_task_says_goodbye_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("ds");
    synthetic(data.to_str().unwrap(), 480, 16, 8).await;
    let state = root.join("state");
    let out = root.join("out").display().to_string();
    // A long lease: a worker that left without a word would stay listed for a minute.
    let (_coord, listening) = start_coordinator(&state, &["--worker-lease-ms", "60000"]);
    let url = format!("http://127.0.0.1:{}", listening.port);
    let target = Target::insecure(&url);
    // Slow tasks (200 ms), so that the signal finds a task in flight.
    let worker = |name: &str| {
        Proc::start(
            "ctcluster-worker",
            &[
                "--coordinator",
                &url,
                "--insecure",
                "--name",
                name,
                "--fault-delay-ms",
                "200",
            ],
            &[],
        )
    };
    let mut w0 = worker("w0");
    let _w1 = worker("w1");
    let yaml = spec(
        "worker-stop",
        data.to_str().unwrap(),
        &out,
        "epochs: 3\nbatch_size: 32\nmicro_batch_size: 8\nseed: 9\n",
    );
    let job = submit_as(&target, yaml.clone()).await.unwrap();
    job_until(&target, &job, |s| s.step >= 2).await;
    assert_eq!(worker_names(&target).await.len(), 2);

    let signalled = Instant::now();
    w0.terminate("worker");
    let took = signalled.elapsed();
    // Gone from the coordinator at once (its goodbye), not after the lease.
    assert_eq!(worker_names(&target).await, ["w1"]);
    println!("worker SIGTERM: exited 0 and said goodbye in {took:?}");

    let done = job_until(&target, &job, succeeded_or_failed).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.message
    );
    assert_eq!(done.rejected_results, 0, "a result was refused: {done:?}");
    let calm = ctcluster_tests::Cluster::start(&root.join("calm").display().to_string(), 1).await;
    let calm_status = calm
        .run(&yaml.replace(&out, &root.join("calm-out").display().to_string()))
        .await;
    let (a, b) = (
        final_checkpoint(&done).await,
        final_checkpoint(&calm_status).await,
    );
    assert!(
        a.params == b.params && a.adam == b.adam,
        "the job whose worker stopped ended elsewhere than an undisturbed one"
    );
    calm.stop().await;
}
