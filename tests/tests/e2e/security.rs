//! Security: who may call what (TLS, worker certificates, user tokens, job owners) and what
//! jobs may touch (storage scope).

use std::path::Path;

use ctcluster_common::storage::StoreUrl;
use ctcluster_coordinator::CoordinatorConfig;
use ctcluster_coordinator::scope::StorageScope;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, Proc, binary, spec, start_coordinator_env, synthetic};
use ctctl::certs::Bundle;
use pb::client_service_client::ClientServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_outside_the_storage_scope_are_refused_at_submit() {
    let ds = synthetic("memory://scoped-data/scans/ds", 300, 8, 1).await;
    let mut config =
        CoordinatorConfig::local(StoreUrl::parse("memory://scoped-results/state").unwrap());
    config.scope = StorageScope::new(
        &["memory://scoped-data/scans".into()],
        &["memory://scoped-results/jobs".into()],
    )
    .unwrap()
    .protecting_state("memory://scoped-results/state");
    let cluster = Cluster::start_with(config, 1).await;
    let good_out = "memory://scoped-results/jobs/a";
    // (dataset, output, extra spec lines, the field the refusal must name)
    let refused = [
        ("file:///etc/passwd", good_out, "", "dataset"),
        ("/etc", good_out, "", "dataset"),
        ("memory://other-bucket/ds", good_out, "", "dataset"),
        (
            "memory://scoped-data/scans-private/ds",
            good_out,
            "",
            "dataset",
        ),
        ("s3://scoped-data/scans/ds", good_out, "", "dataset"),
        ("gs://scoped-data/scans/ds", good_out, "", "dataset"),
        (
            "memory://scoped-data/scans/../secrets",
            good_out,
            "",
            "dataset",
        ),
        (
            "memory://scoped-data/scans/%2E%2E/secrets",
            good_out,
            "",
            "dataset",
        ),
        (ds.as_str(), "memory://scoped-data/scans/out", "", "output"),
        (
            ds.as_str(),
            "memory://scoped-results/state/jobs",
            "",
            "output",
        ),
        (ds.as_str(), "memory://scoped-results", "", "output"),
        (ds.as_str(), "file:///tmp/anywhere", "", "output"),
        (
            ds.as_str(),
            "memory://scoped-results/jobs/../../x",
            "",
            "output",
        ),
        (
            ds.as_str(),
            good_out,
            "resume_from: memory://elsewhere/ck/step-0000000001\n",
            "resume_from",
        ),
    ];
    for (dataset, output, extra, field) in refused {
        let yaml = spec("scoped", dataset, output, extra);
        let err = cluster.submit(&yaml).await.expect_err(&yaml);
        assert!(
            matches!(
                err.code(),
                tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
            ),
            "{dataset} -> {output}: {err:?}"
        );
        assert!(
            err.message().contains(field),
            "the refusal of {dataset} -> {output} names {field}: {}",
            err.message()
        );
    }
    // Inside the scope, a job runs.
    let s = cluster
        .run(&spec("scoped", ds.as_str(), good_out, "epochs: 1\n"))
        .await;
    assert_eq!(
        ctctl::render::state_name(s.state),
        "succeeded",
        "{}",
        s.message
    );
    cluster.stop().await;
}

/// A TLS channel to `url` (the coordinator, an aggregator), trusting the cluster CA,
/// optionally with a client identity.
async fn channel(url: &str, ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn register() -> pb::RegisterRequest {
    pb::RegisterRequest {
        protocol_version: pb::PROTOCOL_VERSION,
        name: "intruder".into(),
        device: "cpu".into(),
    }
}

fn token(bundle: &Bundle, user: &str) -> String {
    String::from_utf8(bundle.get(&format!("{user}.token")).unwrap().to_vec())
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_workers_must_prove_who_they_are() {
    let ds = synthetic("memory://authn/ds", 300, 8, 1).await;
    let (cluster, bundle) = Cluster::start_secure("memory://authn/state", 1).await;
    let ca = bundle.get("ca.pem").unwrap();
    let foreign = Cluster::bundle(1, 0);
    let (my_cert, my_key) = (
        bundle.get("worker-0.pem").unwrap(),
        bundle.get("worker-0-key.pem").unwrap(),
    );

    // A client without a token.
    let mut bare = ClientServiceClient::new(channel(&cluster.url, ca, None).await);
    let e = bare.list_jobs(pb::ListJobsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A client with a wrong token.
    let wrong = ctctl::Target::secure(&cluster.url, ca.to_vec(), "ctc_0123456789");
    let e = ctctl::jobs::list(&wrong, ctctl::cli::Format::Json)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown token"), "{e}");
    // A worker without a certificate.
    let mut w = WorkerServiceClient::new(channel(&cluster.url, ca, None).await);
    let e = w.register(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificate"), "{e:?}");
    // A worker with a certificate from another CA.
    let foreign_id = (
        foreign.get("worker-0.pem").unwrap(),
        foreign.get("worker-0-key.pem").unwrap(),
    );
    let mut w = WorkerServiceClient::new(channel(&cluster.url, ca, Some(foreign_id)).await);
    let e = w.register(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("certificate refused"), "{e:?}");
    // A genuine worker certificate cannot use the client API...
    let mut as_worker =
        ClientServiceClient::new(channel(&cluster.url, ca, Some((my_cert, my_key))).await);
    let e = as_worker
        .submit(pb::SubmitRequest {
            spec_yaml: spec("w", ds.as_str(), "memory://authn/out", ""),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // ...and a user's token cannot use the worker API.
    let alice = ctctl::Target::secure(&cluster.url, ca.to_vec(), &token(&bundle, "alice"));
    let mut w = WorkerServiceClient::with_interceptor(
        channel(&cluster.url, ca, None).await,
        ctctl::connect::Bearer::new(&token(&bundle, "alice")),
    );
    let e = w.register(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A plain-text client does not get through the TLS port.
    let plain = ctctl::Target::insecure(&cluster.url.replace("https://", "http://"));
    assert!(
        ctctl::jobs::list(&plain, ctctl::cli::Format::Json)
            .await
            .is_err()
    );
    // The real worker (certificate from the cluster CA) trains alice's job over mTLS.
    let id = ctctl::jobs::submit_text(
        &alice,
        spec("mtls", ds.as_str(), "memory://authn/out", "epochs: 1\n"),
    )
    .await
    .unwrap();
    let s = cluster.wait(&id).await;
    assert_eq!(
        ctctl::render::state_name(s.state),
        "succeeded",
        "{}",
        s.message
    );
    assert_eq!(s.owner, "alice");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_and_cancel_only_their_own_jobs() {
    let ds = synthetic("memory://owners/ds", 400, 8, 2).await;
    let (cluster, bundle) = Cluster::start_secure("memory://owners/state", 1).await;
    let ca = bundle.get("ca.pem").unwrap().to_vec();
    let alice = ctctl::Target::secure(&cluster.url, ca.clone(), &token(&bundle, "alice"));
    let bob = ctctl::Target::secure(&cluster.url, ca, &token(&bundle, "bob"));
    let id = ctctl::jobs::submit_text(
        &alice,
        spec(
            "long",
            ds.as_str(),
            "memory://owners/out",
            "epochs: 1000\nbatch_size: 32\n",
        ),
    )
    .await
    .unwrap();
    let denied = |r: Result<String, ctctl::CtlError>| match r {
        Err(ctctl::CtlError::Rpc(s)) => assert_eq!(s.code(), Code::PermissionDenied, "{s:?}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    };
    denied(ctctl::jobs::status(&bob, &id, ctctl::cli::Format::Json).await);
    denied(ctctl::jobs::cancel(&bob, &id).await);
    denied(ctctl::watch::watch(&bob, &id).await.map(|s| s.id));
    let dir = tempfile::tempdir().unwrap();
    denied(ctctl::report::report(&bob, &id, dir.path()).await);
    let bobs: serde_json::Value = serde_json::from_str(
        &ctctl::jobs::list(&bob, ctctl::cli::Format::Json)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        bobs.as_array().unwrap().len(),
        0,
        "bob sees no job of alice's"
    );
    let alices: serde_json::Value = serde_json::from_str(
        &ctctl::jobs::list(&alice, ctctl::cli::Format::Json)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(alices[0]["id"], id.as_str());
    assert_eq!(alices[0]["owner"], "alice");
    // Bob's failed cancel did nothing; the admin may cancel anyone's job.
    cluster.wait_for_step(&id, 2).await;
    ctctl::jobs::cancel(&cluster.target, &id).await.unwrap();
    let s = cluster.wait(&id).await;
    assert_eq!(ctctl::render::state_name(s.state), "cancelled");
    cluster.stop().await;
}

fn ctctl_env(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(binary("ctctl"));
    cmd.args(args)
        .env("RUST_LOG", "error")
        .env_remove("CT_KEYRING");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A coordinator and one worker (plain text; this test is about data at rest) with the given
/// keyring.
fn cluster_procs(root: &Path, keyring: Option<&Path>) -> (Vec<Proc>, String) {
    let env: Vec<(&str, String)> = keyring
        .map(|k| vec![("CT_KEYRING", k.display().to_string())])
        .unwrap_or_default();
    let state = tempfile::tempdir_in(root).unwrap().keep();
    let (coordinator, listening) = start_coordinator_env(&state, &[], &env);
    let url = format!("http://127.0.0.1:{}", listening.port);
    let worker = Proc::start(
        "ctcluster-worker",
        &["--coordinator", &url, "--insecure"],
        &env,
    );
    (vec![coordinator, worker], url)
}

fn model_params(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn encrypted_data_and_checkpoints_train_the_same_and_refuse_a_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let keys = root.join("keys");
    let wrong = root.join("wrong-keys");
    let keyring = [("CT_KEYRING", keys.to_str().unwrap())];
    ok(ctctl_env(
        &[],
        &["keys", "new", "site-a", "--dir", keys.to_str().unwrap()],
    ));
    ok(ctctl_env(
        &[],
        &["keys", "new", "site-a", "--dir", wrong.to_str().unwrap()],
    ));
    let plain = root.join("plain").display().to_string();
    let sealed = root.join("sealed").display().to_string();
    let synth = [
        "dataset", "synth", "--kind", "lesion", "--train", "400", "--test", "16", "--seed", "4",
        "--out",
    ];
    ok(ctctl_env(&[], &[&synth[..], &[plain.as_str()]].concat()));
    ok(ctctl_env(
        &keyring,
        &[&synth[..], &[sealed.as_str(), "--encrypt-key", "site-a"]].concat(),
    ));

    // At rest: the shards are sealed and hold none of the images.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("sealed/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["encryption"]["key_id"], "site-a");
    assert_eq!(manifest["encryption"]["algorithm"], "AES-256-GCM");
    let stored = std::fs::read(root.join("sealed/train-00000.arrow")).unwrap();
    assert!(stored.starts_with(b"CTCSEAL1"));
    let clear = std::fs::read(root.join("plain/train-00000.arrow")).unwrap();
    assert!(clear.starts_with(b"ARROW1"), "the plaintext shard is Arrow");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shard = rt.block_on(async {
        let ds = StoreUrl::parse(&plain).unwrap();
        let m = ctcluster_common::dataset::load_manifest(&ds).await.unwrap();
        ctcluster_common::dataset::load_shard(&ds, &m, "train", 0)
            .await
            .unwrap()
    });
    for row in 0..20 {
        let pixels: Vec<u8> = shard.image(row).iter().map(|&p| p as u8).collect();
        assert!(
            !stored.windows(pixels.len()).any(|w| w == pixels.as_slice()),
            "image {row} appears in the sealed shard"
        );
    }

    // Training with the key gives the same model as training on the plaintext.
    let (procs, url) = cluster_procs(root, Some(&keys));
    let job = |name: &str, ds: &str, extra: &str| {
        let file = root.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            spec(
                name,
                ds,
                &root.join("out").display().to_string(),
                &format!("epochs: 2\nseed: 9\ncheckpoint:\n  every_steps: 4\n{extra}"),
            ),
        )
        .unwrap();
        file
    };
    let run = |file: &Path, env: &[(&str, &str)]| {
        ctctl_env(
            env,
            &[
                "--insecure",
                "--coordinator",
                &url,
                "submit",
                "--watch",
                file.to_str().unwrap(),
            ],
        )
    };
    let id_of = |out: &str| out.lines().next().unwrap().trim().to_string();
    let plain_id = id_of(&ok(run(&job("plain", &plain, ""), &[])));
    let sealed_id = id_of(&ok(run(
        &job("sealed", &sealed, "encryption:\n  key_id: site-a\n"),
        &[],
    )));
    let out = root.join("out");
    assert_eq!(
        model_params(&out.join(&plain_id)),
        model_params(&out.join(&sealed_id)),
        "training on the sealed dataset gives the same parameters"
    );
    // Its checkpoints are sealed too, and hold none of the parameters in the clear.
    let last = |id: &str| {
        let mut steps: Vec<_> = std::fs::read_dir(out.join(id).join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        steps.sort();
        steps.pop().unwrap()
    };
    let clear_params = std::fs::read(last(&plain_id).join("params.bin")).unwrap();
    let sealed_params = std::fs::read(last(&sealed_id).join("params.bin")).unwrap();
    assert!(sealed_params.starts_with(b"CTCSEAL1"));
    assert!(!sealed_params.windows(64).any(|w| w == &clear_params[..64]));
    let ck_manifest = std::fs::read_to_string(last(&sealed_id).join("manifest.json")).unwrap();
    assert!(ck_manifest.contains("site-a"), "{ck_manifest}");
    drop(procs);

    // A coordinator without the key refuses the job at submit, naming dataset and key.
    let (procs, url) = cluster_procs(root, None);
    let refused = ctctl_env(
        &[],
        &[
            "--insecure",
            "--coordinator",
            &url,
            "submit",
            job("nokey", &sealed, "").to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("site-a") && msg.contains("sealed"), "{msg}");
    drop(procs);
    // With a wrong key of the same id, the job fails clearly; no garbage tensors.
    let (_procs, url) = cluster_procs(root, Some(&wrong));
    let failed = ctctl_env(
        &[],
        &[
            "--insecure",
            "--coordinator",
            &url,
            "submit",
            "--watch",
            job("wrongkey", &sealed, "").to_str().unwrap(),
        ],
    );
    assert!(!failed.status.success());
    let msg = String::from_utf8_lossy(&failed.stderr);
    assert!(
        msg.contains("site-a") && msg.contains("wrong key") && msg.contains("train-00000.arrow"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_aggregation_over_mtls_changes_no_bit_and_only_the_coordinator_steers() {
    use pb::aggregator_service_client::AggregatorServiceClient;
    let ds = synthetic("memory://mtls-shards/ds", 600, 8, 4).await;
    let bundle = Cluster::bundle(2, 2);
    let aggs = ctcluster_tests::Aggregators::start_secure(2, &bundle).await;
    assert!(aggs.urls.iter().all(|u| u.starts_with("https://")));
    let cluster = Cluster::start_secure_with("memory://mtls-shards/state", 2, &bundle, |c| {
        c.aggregators = aggs.urls.clone()
    })
    .await;
    let run = |k: usize| {
        spec(
            "mtls-shards",
            ds.as_str(),
            &format!("memory://mtls-shards/out-{k}"),
            &format!(
                "batch_size: 96\nmicro_batch_size: 32\naggregators: {k}\nmax_steps: 12\n\
                 epochs: 2\nseed: 3\n"
            ),
        )
    };
    // Two aggregators over mTLS: the same bits as the coordinator stepping alone.
    let sharded = cluster.run(&run(2)).await;
    let alone = cluster.run(&run(0)).await;
    assert_eq!(sharded.step, 12, "{}", sharded.message);
    let (a, b) = (
        ctcluster_tests::final_checkpoint(&sharded).await,
        ctcluster_tests::final_checkpoint(&alone).await,
    );
    assert!(a.params == b.params && a.adam == b.adam);

    let ca = bundle.get("ca.pem").unwrap();
    let id = |name: &str| {
        (
            bundle.get(&format!("{name}.pem")).unwrap(),
            bundle.get(&format!("{name}-key.pem")).unwrap(),
        )
    };
    let status = || pb::AggregatorStatusRequest {
        job_id: "0123456789abcdef".into(),
    };
    // The coordinator's certificate steers.
    let mut coordinator =
        AggregatorServiceClient::new(channel(&aggs.urls[0], ca, Some(id("coordinator"))).await);
    coordinator.aggregator_status(status()).await.unwrap();
    // A worker's certificate fetches and pushes but does not steer: no status, no step, no
    // drop, no read.
    let mut worker =
        AggregatorServiceClient::new(channel(&aggs.urls[0], ca, Some(id("worker-0"))).await);
    let e = worker.aggregator_status(status()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("only the coordinator"), "{e:?}");
    let e = worker
        .apply_step(pb::ApplyStepRequest {
            job_id: "0123456789abcdef".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = worker
        .drop_shard(pb::DropShardRequest {
            job_id: "0123456789abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A worker may fetch (the job is gone: not found, past the gate).
    let e = worker
        .fetch_shard(pb::FetchParametersRequest {
            job_id: "0123456789abcdef".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // No certificate, or one from another CA: refused.
    let mut bare = AggregatorServiceClient::new(channel(&aggs.urls[0], ca, None).await);
    let e = bare.aggregator_status(status()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let foreign = Cluster::bundle(1, 0);
    let foreign_id = (
        foreign.get("coordinator.pem").unwrap(),
        foreign.get("coordinator-key.pem").unwrap(),
    );
    let mut forged =
        AggregatorServiceClient::new(channel(&aggs.urls[0], ca, Some(foreign_id)).await);
    let e = forged.aggregator_status(status()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Plain text does not get through.
    let plain = aggs.urls[0].replace("https://", "http://");
    if let Ok(mut p) = AggregatorServiceClient::connect(plain).await {
        assert!(p.aggregator_status(status()).await.is_err());
    }
    cluster.stop().await;
    aggs.stop().await;
}
