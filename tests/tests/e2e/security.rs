//! Security: who may call what (TLS, worker certificates, user tokens, job owners) and what
//! jobs may touch (storage scope).

use ctcluster_common::storage::StoreUrl;
use ctcluster_coordinator::CoordinatorConfig;
use ctcluster_coordinator::scope::StorageScope;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, spec, synthetic};
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

/// A TLS channel to the cluster, trusting its CA, optionally with a client identity.
async fn channel(cluster: &Cluster, ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(cluster.url.clone())
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
    let foreign = ctctl::certs::generate(&[], 1, &[]).unwrap();
    let (my_cert, my_key) = (
        bundle.get("worker-0.pem").unwrap(),
        bundle.get("worker-0-key.pem").unwrap(),
    );

    // A client without a token.
    let mut bare = ClientServiceClient::new(channel(&cluster, ca, None).await);
    let e = bare.list_jobs(pb::ListJobsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A client with a wrong token.
    let wrong = ctctl::Target::secure(&cluster.url, ca.to_vec(), "ctc_0123456789");
    let e = ctctl::jobs::list(&wrong, ctctl::cli::Format::Json)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown token"), "{e}");
    // A worker without a certificate.
    let mut w = WorkerServiceClient::new(channel(&cluster, ca, None).await);
    let e = w.register(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificate"), "{e:?}");
    // A worker with a certificate from another CA.
    let foreign_id = (
        foreign.get("worker-0.pem").unwrap(),
        foreign.get("worker-0-key.pem").unwrap(),
    );
    let mut w = WorkerServiceClient::new(channel(&cluster, ca, Some(foreign_id)).await);
    let e = w.register(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("certificate refused"), "{e:?}");
    // A genuine worker certificate cannot use the client API...
    let mut as_worker =
        ClientServiceClient::new(channel(&cluster, ca, Some((my_cert, my_key))).await);
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
        channel(&cluster, ca, None).await,
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
