//! Each class of error reaches a client as its own gRPC code, over real gRPC: clients (and
//! `ctctl`'s exit codes) branch on codes, never on messages.

use std::sync::Arc;
use std::time::Duration;

use ctcluster_common::storage::StoreUrl;
use ctcluster_coordinator::CoordinatorConfig;
use ctcluster_coordinator::scope::StorageScope;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, spec, synthetic};
use object_store::RetryConfig;
use object_store::aws::AmazonS3Builder;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_class_reaches_the_client_as_its_code() {
    let ds = synthetic("memory://codes/ds", 64, 8, 1).await;
    // An S3 endpoint nobody listens on (a port bound, then released), tried once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = AmazonS3Builder::new()
        .with_bucket_name("codes-unreachable")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("k")
        .with_secret_access_key("s")
        .with_retry(RetryConfig {
            max_retries: 0,
            retry_timeout: Duration::from_secs(2),
            ..RetryConfig::default()
        })
        .build()
        .unwrap();
    StoreUrl::register_store("s3://codes-unreachable", Arc::new(unreachable)).unwrap();

    let mut config = CoordinatorConfig::local(StoreUrl::parse("memory://codes/state").unwrap());
    config.scope = StorageScope::new(
        &["memory://codes/".into(), "s3://codes-unreachable/".into()],
        &["memory://codes/out/".into()],
    )
    .unwrap()
    .protecting_state("memory://codes/state");
    config.limits.jobs_per_user = 1;
    // No workers: the first job stays unfinished, holding the one job a user may have.
    let cluster = Cluster::start_with(config, 0).await;
    let out = "memory://codes/out";
    // A refused submit of a job reading `dataset`: the status a client sees.
    let refused = async |dataset: &str| {
        cluster
            .submit(&spec("x", dataset, out, ""))
            .await
            .expect_err("refused")
    };

    // InvalidArgument: a malformed spec.
    let malformed = cluster.submit("name: x\ndataset: [unclosed\n").await;
    assert_eq!(malformed.unwrap_err().code(), Code::InvalidArgument);
    // NotFound: a dataset that is not there, and a job that does not exist.
    assert_eq!(refused("memory://codes/none").await.code(), Code::NotFound);
    let mut client = cluster.client().await;
    let missing = client
        .get_job(pb::GetJobRequest {
            job_id: "job-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // PermissionDenied: a dataset outside the storage scope.
    assert_eq!(
        refused("memory://elsewhere/ds").await.code(),
        Code::PermissionDenied
    );
    // Unavailable: the dataset's store does not answer.
    let err = refused("s3://codes-unreachable/ds").await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("codes-unreachable"), "{err:?}");
    // FailedPrecondition: a worker of another protocol version.
    let mut workers = pb::worker_service_client::WorkerServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let old = workers
        .register(pb::RegisterRequest {
            protocol_version: pb::PROTOCOL_VERSION + 1,
            name: "from-the-future".into(),
            device: "cpu".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition, "{old:?}");
    // ResourceExhausted: a second unfinished job past the user's limit of one.
    cluster
        .submit(&spec("first", ds.as_str(), out, "epochs: 1\n"))
        .await
        .expect("the first job is accepted");
    let second = cluster
        .submit(&spec("second", ds.as_str(), out, "epochs: 1\n"))
        .await;
    assert_eq!(second.unwrap_err().code(), Code::ResourceExhausted);
    cluster.stop().await;
}
