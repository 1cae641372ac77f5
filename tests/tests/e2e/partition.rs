//! Network faults between hosts: the coordinator and two workers each in a network namespace of
//! their own, with their own addresses, joined by veth links (and the test to the coordinator
//! by one more). A worker whose link goes down is dropped within the lease and the job goes on
//! without it; when the link is back, the worker registers again. A coordinator whose links all
//! drop for a few seconds loses nothing: the job ends bit-identical to an undisturbed run.
//!
//! Needs root (`ip netns`); where namespaces cannot be made the test says why and skips.

use std::time::{Duration, Instant};

use ctcluster_proto as pb;
use ctcluster_tests::netns::Hosts;
use ctcluster_tests::{
    Cluster, final_checkpoint, has_ended, spec, synthetic, try_job_status, try_worker_names,
};
use ctctl::Target;

/// The coordinator drops a worker silent for this long.
const LEASE_MS: u64 = 3000;

/// Polls (bounded by `within`) until `ok` holds of the registered workers' names; returns how
/// long that took.
async fn workers_until(
    target: &Target,
    within: Duration,
    what: &str,
    ok: impl Fn(&[String]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let names = try_worker_names(target).await;
        if let Some(names) = &names
            && ok(names)
        {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: still {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls (bounded) until the job's step reaches `step`, tolerating an unreachable coordinator.
async fn step_at_least(target: &Target, job: &str, step: u64) -> pb::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = try_job_status(target, job).await {
            assert!(
                !has_ended(&s) || s.state == pb::JobState::Succeeded as i32,
                "the job failed: {}",
                s.message
            );
            if s.step >= step || has_ended(&s) {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the job never reached step {step}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_worker_is_dropped_and_rejoins_and_a_coordinator_blip_loses_nothing() {
    let hosts = match Hosts::create(&["coord", "w0", "w1"]) {
        Ok(h) => h,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces cannot be created here ({why})");
            return;
        }
    };
    let client_link = hosts
        .link(None, "coord", 10)
        .expect("link test-coordinator");
    let w0_link = hosts
        .link(Some("coord"), "w0", 11)
        .expect("link coordinator-w0");
    let w1_link = hosts
        .link(Some("coord"), "w1", 12)
        .expect("link coordinator-w1");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("ds");
    synthetic(data.to_str().unwrap(), 960, 32, 11).await;
    let state = root.join("state").display().to_string();
    let lease = LEASE_MS.to_string();
    let _coord = hosts.start(
        "coord",
        "ctcluster-coordinator",
        &[
            "--listen",
            "0.0.0.0:50051",
            "--insecure",
            "--state-url",
            &state,
            "--worker-lease-ms",
            &lease,
        ],
    );
    let target = Target::insecure(&format!("http://{}:50051", client_link.addr_b));
    // Each worker reaches the coordinator at the coordinator's end of its own link. A slow
    // task (150 ms) keeps the job running through the faults.
    let worker = |name: &str, link: &ctcluster_tests::netns::Link| {
        hosts.start(
            name,
            "ctcluster-worker",
            &[
                "--coordinator",
                &format!("http://{}:50051", link.addr_a),
                "--insecure",
                "--name",
                name,
                "--fault-delay-ms",
                "150",
            ],
        )
    };
    let _w0 = worker("w0", &w0_link);
    let _w1 = worker("w1", &w1_link);
    workers_until(
        &target,
        Duration::from_secs(30),
        "both workers register",
        |n| n.len() == 2,
    )
    .await;

    let out = root.join("out").display().to_string();
    let yaml = spec(
        "partitioned",
        data.to_str().unwrap(),
        &out,
        "epochs: 6\nbatch_size: 64\nmicro_batch_size: 16\nseed: 13\ncheckpoint:\n  every_steps: 10\n",
    );
    let job = ctcluster_tests::submit_as(&target, yaml.clone())
        .await
        .expect("submit");
    step_at_least(&target, &job, 3).await;

    // w1's link goes down: it is dropped within the lease, and the job goes on with w0.
    hosts.set_link(&w1_link, false);
    let dropped = workers_until(
        &target,
        Duration::from_millis(LEASE_MS) * 4,
        "w1 is dropped",
        |n| n == ["w0"],
    )
    .await;
    let at = step_at_least(&target, &job, 0).await.step;
    let later = step_at_least(&target, &job, at + 3).await;
    println!(
        "w1 cut off: dropped after {dropped:?} (lease {LEASE_MS} ms); the job went on from step {at} to {}",
        later.step
    );
    assert!(
        !has_ended(&later),
        "the job ended before the worker came back"
    );

    // The link is back: w1 registers again.
    hosts.set_link(&w1_link, true);
    let rejoined = workers_until(&target, Duration::from_secs(60), "w1 rejoins", |n| {
        n.len() == 2 && n.iter().any(|w| w == "w1")
    })
    .await;
    println!("w1's link restored: registered again after {rejoined:?}");

    // Every link of the coordinator drops for 3 s (workers and the test alike).
    let before = step_at_least(&target, &job, 0).await;
    assert!(
        !has_ended(&before),
        "the job ended before the coordinator's blip"
    );
    for link in [&client_link, &w0_link, &w1_link] {
        hosts.set_link(link, false);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for link in [&client_link, &w0_link, &w1_link] {
        hosts.set_link(link, true);
    }
    let blip_at = Instant::now();
    let after = step_at_least(&target, &job, before.step + 3).await;
    println!(
        "coordinator cut off for 3 s at step {}: step {} reached {:?} after the links came back",
        before.step,
        after.step,
        blip_at.elapsed()
    );

    let done = step_at_least(&target, &job, u64::MAX).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.message
    );

    // The same job undisturbed (in this process, two workers on loopback): same bits.
    let calm_state = root.join("calm-state").display().to_string();
    let calm = Cluster::start(&calm_state, 2).await;
    let calm_yaml = yaml.replace(&out, &root.join("calm-out").display().to_string());
    let calm_status = calm.run(&calm_yaml).await;
    let (a, b) = (
        final_checkpoint(&done).await,
        final_checkpoint(&calm_status).await,
    );
    assert_eq!(done.step, calm_status.step);
    assert!(
        a.params == b.params && a.adam == b.adam,
        "the partitioned job ended elsewhere than an undisturbed one"
    );
    calm.stop().await;
}
