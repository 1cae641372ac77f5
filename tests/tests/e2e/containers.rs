//! The real images as a cluster: an S3-compatible server, the coordinator and two workers as
//! containers of ctcluster's images (deploy/docker, built here from this build's binaries on a
//! debootstrapped Debian base) on a private Docker network, `ctctl` in a container of its own.
//! A job trains to the end while one worker container is killed, the other is disconnected from
//! the network and reconnected, and the coordinator container is stopped (SIGTERM: it
//! checkpoints and exits 0 within its grace) and started again (it resumes); the result equals
//! an undisturbed run's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ctcluster_common::checkpoint::Checkpoint;
use ctcluster_common::storage::StoreUrl;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, bin_dir, has_ended, try_job_status};
use ctctl::Target;

const TAG: &str = "e2e";
const KEY: &str = "ctcluster-test";
const SECRET: &str = "ctcluster-test-secret";

/// Runs `docker ARGS`; its stdout, or a panic with its stderr.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker: {e} (the container tests need Docker Engine)"));
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers and the network of one test, removed on drop.
struct Net {
    name: String,
    containers: Vec<String>,
}

impl Net {
    fn create() -> Net {
        let name = format!("ctc-e2e-{}", std::process::id());
        let _ = Command::new("docker")
            .args(["network", "rm", &name])
            .output();
        docker(&["network", "create", &name]);
        Net {
            name,
            containers: Vec::new(),
        }
    }

    /// Starts a detached container on the network, named `<network>-<name>` with `name` as its
    /// host name there.
    fn run(&mut self, name: &str, options: &[&str], image: &str, args: &[&str]) -> String {
        let full = format!("{}-{name}", self.name);
        let _ = Command::new("docker").args(["rm", "-f", &full]).output();
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &full,
            "--network",
            &self.name,
            "--network-alias",
            name,
        ];
        all.extend_from_slice(options);
        all.push(image);
        all.extend_from_slice(args);
        docker(&all);
        self.containers.push(full.clone());
        full
    }

    /// Runs `ctctl ARGS` in a throwaway container on the network.
    fn ctctl(&self, mounts: &[&str], args: &[&str]) -> String {
        let mut all = vec!["run", "--rm", "--network", &self.name];
        all.extend_from_slice(mounts);
        all.extend_from_slice(&S3_ENV);
        all.extend_from_slice(&["-e", "CTCTL_COORDINATOR=http://coordinator:50051"]);
        all.extend_from_slice(&["-e", "CTCTL_INSECURE=true"]);
        let image = format!("ctcluster-ctctl:{TAG}");
        all.push(&image);
        all.extend_from_slice(args);
        docker(&all)
    }

    /// A container's address on the network (it may change when the container restarts).
    fn address(&self, container: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.name
            ),
            container,
        ])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking()
                && let Ok(out) = Command::new("docker")
                    .args(["logs", "--tail", "20", c])
                    .output()
            {
                eprintln!(
                    "--- {c}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// The object-store settings every container gets (the S3 server is `s3` on the network).
const S3_ENV: [&str; 10] = [
    "-e",
    "AWS_ACCESS_KEY_ID=ctcluster-test",
    "-e",
    "AWS_SECRET_ACCESS_KEY=ctcluster-test-secret",
    "-e",
    "AWS_ENDPOINT_URL=http://s3:9000",
    "-e",
    "AWS_ALLOW_HTTP=true",
    "-e",
    "AWS_REGION=us-east-1",
];

/// Builds the images from the binaries this test runs with (once per build of them).
fn build_images() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker/build-images");
    let bins = bin_dir();
    let out = Command::new(&script)
        .args([
            "--bin-dir",
            bins.to_str().unwrap(),
            "--tag",
            TAG,
            "--test-server",
        ])
        .output()
        .expect("run deploy/docker/build-images");
    assert!(
        out.status.success(),
        "build-images: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// The job's status from the host, at the coordinator container's current address; `None`
/// while it is down or restarting.
async fn status(net: &Net, coordinator: &str, job: &str) -> Option<pb::JobStatus> {
    let addr = net.address(coordinator);
    if addr.is_empty() {
        return None;
    }
    try_job_status(&Target::insecure(&format!("http://{addr}:50051")), job).await
}

/// Polls (bounded) until the job reaches `step` or ends.
async fn until_step(net: &Net, coordinator: &str, job: &str, step: u64) -> pb::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(s) = status(net, coordinator, job).await
            && (s.step >= step || has_ended(&s))
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the job never reached step {step}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The checkpoint an `s3://bucket/...` URL names, read from the S3 server's folder.
async fn checkpoint_in(s3_root: &Path, url: &str) -> Checkpoint {
    let key = url.strip_prefix("s3://").expect("an s3:// checkpoint URL");
    let path = s3_root.join(key);
    Checkpoint::load(&StoreUrl::parse(path.to_str().unwrap()).unwrap())
        .await
        .expect("load checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containerised_cluster_survives_a_killed_worker_a_cut_one_and_a_restart() {
    build_images();
    let tmp = tempfile::tempdir().unwrap();
    let s3_root = tmp.path().join("s3");
    std::fs::create_dir_all(s3_root.join("bucket")).unwrap();
    // The containers run as uid 10001.
    for dir in [&s3_root, &s3_root.join("bucket")] {
        Command::new("chmod").arg("0777").arg(dir).status().unwrap();
    }
    let mut net = Net::create();
    let mount = format!("{}:/data", s3_root.display());
    net.run(
        "s3",
        &["-v", &mount],
        &format!("ctcluster-s3-test:{TAG}"),
        &["--access-key", KEY, "--secret-key", SECRET, "/data"],
    );
    let made = net.ctctl(
        &[],
        &[
            "dataset",
            "synth",
            "--kind",
            "lesion",
            "--out",
            "s3://bucket/ds",
            "--train",
            "768",
            "--test",
            "64",
        ],
    );
    assert!(made.contains("768 rows"), "{made}");

    let mut options: Vec<&str> = S3_ENV.to_vec();
    let coord_args = [
        "--listen",
        "0.0.0.0:50051",
        "--insecure",
        "--state-url",
        "s3://bucket/state",
        "--worker-lease-ms",
        "3000",
        "--shutdown-grace-s",
        "15",
    ];
    let coordinator = net.run(
        "coordinator",
        &options,
        &format!("ctcluster-coordinator:{TAG}"),
        &coord_args,
    );
    options.extend_from_slice(&["-e", "CT_FAULT_DELAY_MS=150"]);
    let worker_image = format!("ctcluster-worker:{TAG}");
    let workers: Vec<String> = (0..2)
        .map(|i| {
            net.run(
                &format!("w{i}"),
                &options,
                &worker_image,
                &[
                    "--coordinator",
                    "http://coordinator:50051",
                    "--insecure",
                    "--name",
                    &format!("cw{i}"),
                ],
            )
        })
        .collect();

    let job_yaml = "name: containers\ndataset: s3://bucket/ds\noutput: s3://bucket/out\n\
                    epochs: 5\nbatch_size: 64\nmicro_batch_size: 16\nseed: 17\n\
                    checkpoint:\n  every_steps: 8\n";
    let spec = tmp.path().join("job.yaml");
    std::fs::write(&spec, job_yaml).unwrap();
    let spec_mount = format!("{}:/job.yaml:ro", spec.display());
    let job = net.ctctl(&["-v", &spec_mount], &["submit", "/job.yaml"]);
    assert!(job.starts_with("job-"), "{job}");
    until_step(&net, &coordinator, &job, 3).await;

    docker(&["kill", &workers[0]]);
    let s = until_step(&net, &coordinator, &job, 0).await.step;
    let s = until_step(&net, &coordinator, &job, s + 3).await;
    println!(
        "worker container killed; the job went on to step {}",
        s.step
    );

    docker(&["network", "disconnect", &net.name, &workers[1]]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    docker(&[
        "network",
        "connect",
        "--alias",
        "w1",
        &net.name,
        &workers[1],
    ]);
    let back = Instant::now();
    let s = until_step(&net, &coordinator, &job, s.step + 3).await;
    println!(
        "worker container cut off for 5 s and reconnected; step {} after {:?}",
        s.step,
        back.elapsed()
    );
    assert!(
        !has_ended(&s),
        "the job ended before the coordinator's restart"
    );

    // The coordinator container is stopped (SIGTERM; SIGKILL only after 30 s) and started
    // again: it checkpoints at its step and exits 0 within its 15 s grace, although two of its
    // connections lead to peers that vanished without a word.
    let stopping = Instant::now();
    docker(&["stop", "-t", "30", &coordinator]);
    let stopped = stopping.elapsed();
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &coordinator]);
    assert_eq!(exit, "0", "the coordinator exited with {exit} on SIGTERM");
    assert!(
        stopped < Duration::from_secs(15),
        "the coordinator took {stopped:?} to stop"
    );
    docker(&["start", &coordinator]);
    println!("coordinator container stopped (exit 0) in {stopped:?}, then started again");
    // A submit step that runs again (a restarted JobSet) follows the resumed job.
    let again = net.ctctl(&["-v", &spec_mount], &["submit", "--once", "/job.yaml"]);
    assert_eq!(again, job, "submit --once started a second job");
    let done = until_step(&net, &coordinator, &job, u64::MAX).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.message
    );
    assert!(done.resumed_from_step.is_some(), "{done:?}");
    let watched = net.ctctl(&[], &["status", &job]);
    assert!(watched.contains("succeeded"), "{watched}");

    // The same job undisturbed, in this process, from the same dataset in the S3 server's folder.
    let calm = Cluster::start(&tmp.path().join("calm-state").display().to_string(), 2).await;
    let calm_yaml = job_yaml
        .replace(
            "s3://bucket/ds",
            &s3_root.join("bucket/ds").display().to_string(),
        )
        .replace(
            "s3://bucket/out",
            &tmp.path().join("calm-out").display().to_string(),
        );
    let calm_status = calm.run(&calm_yaml).await;
    let a = checkpoint_in(&s3_root, &done.checkpoint).await;
    let b = ctcluster_tests::final_checkpoint(&calm_status).await;
    assert_eq!(done.step, calm_status.step);
    assert!(
        a.params == b.params && a.adam == b.adam,
        "the disturbed containerised job ended elsewhere than an undisturbed one"
    );
    calm.stop().await;
}
