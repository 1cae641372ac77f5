//! The real binaries as a user runs them: an S3-compatible server (s3s-fs, as `ctcluster-s3`), the coordinator and
//! two workers as processes, and `ctctl` for everything a user types.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ctcluster_proto as pb;
use ctcluster_tests::{
    Proc, addr_file_path, binary, final_checkpoint, reported_port, start_coordinator,
};
use pb::client_service_client::ClientServiceClient;
use tonic::transport::Channel;

const KEY: &str = "ctcluster-test";
const SECRET: &str = "ctcluster-test-secret";

fn s3_env(cmd: &mut Command, s3_port: u16) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3_port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn")
}

fn ctctl(s3_port: u16, coordinator: &str, args: &[&str]) -> String {
    ctctl_as(s3_port, coordinator, None, args)
}

/// `ctctl` with the cluster CA and a user's token file from a `ctctl certs init` folder.
fn ctctl_as(
    s3_port: u16,
    coordinator: &str,
    certs: Option<(&Path, &str)>,
    args: &[&str],
) -> String {
    let mut cmd = Command::new(binary("ctctl"));
    s3_env(&mut cmd, s3_port)
        .env("CTCTL_COORDINATOR", coordinator)
        .args(args);
    if let Some((dir, user)) = certs {
        cmd.env("CTCTL_CA", dir.join("ca.pem"))
            .env("CTCTL_TOKEN_FILE", dir.join(format!("{user}.token")));
    }
    let out = cmd.output().expect("run ctctl");
    assert!(
        out.status.success(),
        "ctctl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(s3_port: u16, bin: &str, args: &[&str]) -> Proc {
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3_port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    Proc::start(bin, args, &env)
}

fn start_s3(root: &Path) -> (Proc, u16) {
    std::fs::create_dir_all(root.join("bucket")).unwrap();
    ctcluster_tests::start_s3(root, KEY, SECRET)
}

#[test]
fn binaries_train_from_s3_and_ctctl_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s3, s3_port) = start_s3(&tmp.path().join("s3"));
    let none = "https://127.0.0.1:1";
    // A secure cluster, as a new user makes one: `ctctl certs init`.
    let certs = tmp.path().join("certs");
    let made = ctctl(
        s3_port,
        none,
        &["certs", "init", certs.to_str().unwrap(), "--workers", "2"],
    );
    assert!(made.contains("ctcluster-coordinator --tls-cert"), "{made}");
    let c = |name: &str| certs.join(name).display().to_string();
    let admin = Some((certs.as_path(), "admin"));

    let summary = ctctl(
        s3_port,
        none,
        &[
            "dataset",
            "synth",
            "--kind",
            "lesion",
            "--out",
            "s3://bucket/ds",
            "--train",
            "600",
            "--test",
            "64",
        ],
    );
    assert!(
        summary.contains("train") && summary.contains("600 rows"),
        "{summary}"
    );
    assert!(
        tmp.path().join("s3/bucket/ds/manifest.json").is_file(),
        "the dataset is in the S3 server's folder"
    );

    // The coordinator picks its port and reports it; its restart takes the same one.
    let addr_file = addr_file_path("coordinator");
    let addr_file = addr_file.to_str().unwrap();
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let state_args = |listen: &str| {
        [
            "--listen",
            listen,
            "--addr-file",
            addr_file,
            "--state-url",
            "s3://bucket/state",
            "--worker-lease-ms",
            "3000",
            "--tls-cert",
            &c("coordinator.pem"),
            "--tls-key",
            &c("coordinator-key.pem"),
            "--client-ca",
            &c("ca.pem"),
            "--users",
            &c("users.yaml"),
            "--allow-read",
            "s3://bucket/ds",
            "--allow-write",
            "s3://bucket/out",
        ]
        .map(String::from)
    };
    let first = state_args(&listen(0));
    let mut coord = spawn(
        s3_port,
        "ctcluster-coordinator",
        &first.each_ref().map(String::as_str),
    );
    let port = reported_port(&mut coord, Path::new(addr_file), "coordinator");
    let coordinator = format!("https://127.0.0.1:{port}");
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            spawn(
                s3_port,
                "ctcluster-worker",
                &[
                    "--coordinator",
                    &coordinator,
                    "--name",
                    &format!("w{i}"),
                    "--ca",
                    &c("ca.pem"),
                    "--cert",
                    &c(&format!("worker-{i}.pem")),
                    "--key",
                    &c(&format!("worker-{i}-key.pem")),
                ],
            )
        })
        .collect();

    let spec = tmp.path().join("job.yaml");
    std::fs::write(
        &spec,
        "name: s3-job\ndataset: s3://bucket/ds\noutput: s3://bucket/out\nbatch_size: 64\nepochs: 2\ncheckpoint:\n  every_steps: 4\n  keep: 2\n",
    )
    .unwrap();
    let id = ctctl_as(
        s3_port,
        &coordinator,
        admin,
        &["submit", spec.to_str().unwrap()],
    )
    .trim()
    .to_string();
    assert!(id.starts_with("job-"), "{id}");
    let watched = ctctl_as(s3_port, &coordinator, admin, &["watch", &id]);
    assert!(watched.contains("succeeded"), "{watched}");

    let json: serde_json::Value = serde_json::from_str(&ctctl_as(
        s3_port,
        &coordinator,
        admin,
        &["status", &id, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["state"], "succeeded");
    assert_eq!(json["epoch"], 1);
    assert_eq!(json["step"], json["total_steps"]);
    assert!(json["step"].as_u64().unwrap() >= 2 * 8, "{json}");
    for m in ["train_loss", "val_loss", "val_accuracy"] {
        assert!(
            json["metrics"][m].as_f64().unwrap().is_finite(),
            "metrics.{m}: {json}"
        );
    }
    let checkpoint = json["checkpoint"].as_str().unwrap();
    assert!(
        checkpoint.starts_with(&format!("s3://bucket/out/{id}/checkpoints/step-")),
        "{checkpoint}"
    );
    let model = json["model"].as_str().unwrap();
    assert!(
        tmp.path()
            .join(format!("s3/bucket/out/{id}/model.safetensors"))
            .is_file()
    );
    assert!(ctctl_as(s3_port, &coordinator, admin, &["list"]).contains(&id));

    let eval: serde_json::Value = serde_json::from_str(&ctctl(
        s3_port,
        none,
        &[
            "evaluate",
            "--local",
            "--model",
            model,
            "--dataset",
            "s3://bucket/ds",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(eval["samples"], 64);
    assert!(eval["accuracy"].as_f64().unwrap() > 0.5, "{eval}");
    // The same evaluation on the cluster's workers (a job): the same report, written beside
    // the model's job.
    let on_cluster: serde_json::Value = serde_json::from_str(&ctctl_as(
        s3_port,
        &coordinator,
        admin,
        &[
            "evaluate",
            "--model",
            model,
            "--dataset",
            "s3://bucket/ds",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    for field in [
        "samples",
        "accuracy",
        "roc_auc",
        "roc_auc_ci95",
        "confusion",
        "per_class",
        "ece",
        "roc_curve",
    ] {
        assert_eq!(on_cluster[field], eval[field], "{field}");
    }
    let (a, b) = (
        eval["loss"].as_f64().unwrap(),
        on_cluster["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "{a} {b}");
    let reports: Vec<_> = std::fs::read_dir(tmp.path().join("s3/bucket/out"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path().join("evaluation.json");
            p.is_file().then_some(p)
        })
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");

    // Workers and coordinator stop cleanly on SIGTERM.
    for (i, w) in workers.iter_mut().enumerate() {
        w.terminate(&format!("worker {i}"));
    }
    coord.terminate("coordinator");

    // A restarted coordinator still knows the job: its record lives in the object store.
    let again = state_args(&listen(port));
    let mut restarted = spawn(
        s3_port,
        "ctcluster-coordinator",
        &again.each_ref().map(String::as_str),
    );
    reported_port(
        &mut restarted,
        Path::new(addr_file),
        "restarted coordinator",
    );
    let json: serde_json::Value = serde_json::from_str(&ctctl_as(
        s3_port,
        &coordinator,
        admin,
        &["status", &id, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["state"], "succeeded");
    assert_eq!(json["checkpoint"].as_str().unwrap(), checkpoint);
}

fn local(cmd: &str, args: &[&str]) -> Proc {
    Proc::start(cmd, args, &[])
}

async fn status(client: &mut ClientServiceClient<Channel>, id: &str) -> pb::JobStatus {
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_step(
    client: &mut ClientServiceClient<Channel>,
    id: &str,
    step: u64,
) -> pb::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = status(client, id).await;
        if s.step >= step || ctctl::render::is_terminal(s.state) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} stuck at step {}",
            s.step
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_nothing_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let out = ctctl(
        0,
        "http://127.0.0.1:1",
        &[
            "dataset",
            "synth",
            "--kind",
            "lesion",
            "--out",
            &format!("{root}/ds"),
            "--train",
            "640",
            "--test",
            "8",
        ],
    );
    assert!(out.contains("640 rows"), "{out}");
    let (_coord, listening) = start_coordinator(
        &tmp.path().join("state"),
        &["--heartbeat-ms", "200", "--worker-lease-ms", "1000"],
    );
    let url = format!("http://127.0.0.1:{}", listening.port);
    let worker = |name: &str| {
        local(
            "ctcluster-worker",
            &["--coordinator", &url, "--name", name, "--insecure"],
        )
    };
    let mut workers = [worker("w0"), worker("w1")];
    let mut client = ClientServiceClient::connect(url.clone()).await.unwrap();
    let spec = |out: &str| {
        format!(
            "name: chaos\ndataset: {root}/ds\noutput: {root}/{out}\nbatch_size: 32\nmicro_batch_size: 8\nepochs: 2\nseed: 3\nvalidation:\n  fraction: 0.1\n"
        )
    };
    let submitter = client.clone();
    let submit = |yaml: String| {
        let mut c = submitter.clone();
        async move {
            c.submit(pb::SubmitRequest { spec_yaml: yaml })
                .await
                .unwrap()
                .into_inner()
                .job_id
        }
    };
    let id = submit(spec("killed")).await;
    // Kill a worker mid-step three times, each time starting a replacement.
    let mut recoveries = Vec::new();
    for (k, at) in [6u64, 14, 22].into_iter().enumerate() {
        wait_step(&mut client, &id, at).await;
        let victim = k % workers.len();
        workers[victim].kill();
        let killed = Instant::now();
        let before = status(&mut client, &id).await.step;
        workers[victim] = worker(&format!("replacement-{k}"));
        wait_step(&mut client, &id, before + 2).await;
        recoveries.push(killed.elapsed());
    }
    let mut c = client.clone();
    let mut stream = c
        .watch(pb::WatchRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut killed_run = None;
    while let Some(s) = stream.message().await.unwrap() {
        killed_run = Some(s);
    }
    let killed_run = killed_run.unwrap();
    assert_eq!(
        killed_run.state,
        pb::JobState::Succeeded as i32,
        "{}",
        killed_run.message
    );
    eprintln!("worker SIGKILL: time from kill to two more steps done: {recoveries:?}");

    let calm = submit(spec("calm")).await;
    let mut stream = c
        .watch(pb::WatchRequest { job_id: calm })
        .await
        .unwrap()
        .into_inner();
    let mut calm_run = None;
    while let Some(s) = stream.message().await.unwrap() {
        calm_run = Some(s);
    }
    let calm_run = calm_run.unwrap();
    assert_eq!(calm_run.state, pb::JobState::Succeeded as i32);
    assert_eq!(killed_run.step, calm_run.step);
    let (a, b) = (
        final_checkpoint(&killed_run).await,
        final_checkpoint(&calm_run).await,
    );
    assert!(a.params == b.params, "killing workers changed the result");
    assert!(a.adam == b.adam);
}

#[test]
fn ctctl_demo_trains_the_head_ct_phantom_and_writes_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(binary("ctctl"))
        .args(["demo", "--dir"])
        .arg(tmp.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ctctl demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctctl demo failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("head-CT"), "{text}");
    let accuracy: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("test accuracy"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no test accuracy in {text}"));
    // Three classes: chance is 0.33; haemorrhage and ischaemia are learnt in 5 epochs.
    assert!(
        accuracy >= 0.8,
        "demo test accuracy {accuracy} < 0.8\n{text}"
    );
    assert!(tmp.path().join("report/index.html").is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("head-ct/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["image"]["pixel_type"], "i16");
    assert_eq!(
        manifest["classes"],
        serde_json::json!(["normal", "haemorrhage", "ischaemia"])
    );
}
