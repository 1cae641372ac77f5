//! Tenants: two users and an admin on one TLS coordinator. Every path from one user to the
//! other's data is refused (each spec field that names storage, each RPC that takes a job id,
//! a worker speaking for another certificate's worker), sharing is explicit, per-user storage
//! prefixes apply, and tokens are revoked or expire without a restart.

use std::time::Duration;

use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, client_for, spec, submit_as, synthetic};
use ctctl::Target;
use ctctl::certs::Bundle;
use pb::worker_service_client::WorkerServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn token(bundle: &Bundle, user: &str) -> String {
    String::from_utf8(bundle.get(&format!("{user}.token")).unwrap().to_vec())
        .unwrap()
        .trim()
        .to_string()
}

/// Asserts a `PermissionDenied` whose message names `field` and says nothing of `secret`.
fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, field: &str, secret: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    assert!(
        e.message().contains(field),
        "{what}: {:?} lacks {field}",
        e.message()
    );
    assert!(
        !e.message().contains(secret),
        "{what}: {:?} tells of {secret}",
        e.message()
    );
}

/// A worker-service client over TLS with one of the bundle's worker certificates.
async fn worker_channel(
    cluster: &Cluster,
    bundle: &Bundle,
    n: usize,
) -> WorkerServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(bundle.get("ca.pem").unwrap()))
        .identity(Identity::from_pem(
            bundle.get(&format!("worker-{n}.pem")).unwrap(),
            bundle.get(&format!("worker-{n}-key.pem")).unwrap(),
        ));
    let channel = Endpoint::from_shared(cluster.url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    WorkerServiceClient::new(channel)
}

/// Polls (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reach_only_their_own_data_unless_it_is_shared() {
    let ds = synthetic("memory://tenants/data/ds", 300, 8, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.yaml");
    let (cluster, bundle) =
        Cluster::start_secure_from_file("memory://tenants/state", 2, &users_file).await;
    let ca = bundle.get("ca.pem").unwrap().to_vec();
    let alice = Target::secure(&cluster.url, ca.clone(), &token(&bundle, "alice"));
    let bob = Target::secure(&cluster.url, ca.clone(), &token(&bundle, "bob"));
    let admin = cluster.target.clone();
    let out = "memory://tenants/out";
    let small = "epochs: 1\nbatch_size: 64\nseed: 3\ncheckpoint:\n  every_steps: 2\n";

    // Alice trains a private job and a shared one.
    let private = submit_as(&alice, spec("private", ds.as_str(), out, small))
        .await
        .unwrap();
    let shared = submit_as(
        &alice,
        spec(
            "shared",
            ds.as_str(),
            out,
            &format!("{small}share_with: [bob]\n"),
        ),
    )
    .await
    .unwrap();
    let private_s = cluster.wait(&private).await;
    let shared_s = cluster.wait(&shared).await;
    for s in [&private_s, &shared_s] {
        assert_eq!(s.state, pb::JobState::Succeeded as i32, "{}", s.message);
    }
    let private_dir = format!("{out}/{private}");
    let private_ck = private_s.checkpoint.clone();

    // Every spec field that names storage, pointed into alice's private job by bob.
    let refusals = [
        (
            "resume_from",
            format!("{small}resume_from: {private_ck}\n"),
            ds.as_str().to_string(),
            out.to_string(),
        ),
        (
            "dataset",
            small.to_string(),
            private_dir.clone(),
            out.to_string(),
        ),
        (
            "dataset",
            small.to_string(),
            format!("{private_dir}/checkpoints"),
            out.to_string(),
        ),
        (
            "output",
            small.to_string(),
            ds.as_str().to_string(),
            format!("{private_dir}/mine"),
        ),
        (
            "output",
            small.to_string(),
            ds.as_str().to_string(),
            private_dir.clone(),
        ),
    ];
    for (field, extra, dataset, output) in refusals {
        denied(
            &format!("bob's {field} into alice's job"),
            submit_as(&bob, spec("b", &dataset, &output, &extra)).await,
            field,
            "alice",
        );
    }
    // Every RPC that takes a job id.
    let mut b = client_for(&bob).await;
    let id = || pb::GetJobRequest {
        job_id: private.clone(),
    };
    denied("get_job", b.get_job(id()).await, "another user", "alice");
    denied(
        "get_job_report",
        b.get_job_report(id()).await,
        "another user",
        "alice",
    );
    denied(
        "cancel_job",
        b.cancel_job(pb::CancelJobRequest {
            job_id: private.clone(),
        })
        .await,
        "another user",
        "alice",
    );
    denied(
        "watch",
        b.watch(pb::WatchRequest {
            job_id: private.clone(),
        })
        .await
        .map(|_| ()),
        "another user",
        "alice",
    );
    let listed = b
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "bob lists alice's jobs: {listed:?}");
    // Workers: bob sees the pool, not its host names; the admin does.
    let pool = b
        .list_workers(pb::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pool.workers.len(), 2);
    assert!(
        pool.workers.iter().all(|w| !w.name.contains("test-worker")),
        "{pool:?}"
    );
    let full = client_for(&admin)
        .await
        .list_workers(pb::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        full.workers.iter().all(|w| w.name.contains("test-worker")),
        "{full:?}"
    );

    // What alice shares, bob may resume from; the result is bob's.
    let resumed = submit_as(
        &bob,
        spec(
            "from-shared",
            ds.as_str(),
            out,
            &format!(
                "epochs: 2\nbatch_size: 64\nseed: 3\nresume_from: {}\n",
                shared_s.checkpoint
            ),
        ),
    )
    .await
    .expect("a shared checkpoint");
    let s = cluster.wait(&resumed).await;
    assert_eq!(s.state, pb::JobState::Succeeded as i32, "{}", s.message);
    assert_eq!(s.owner, "bob");
    assert_eq!(s.resumed_from_step, Some(shared_s.step));
    // The admin may read any job's checkpoints (to recover a user's run, say).
    let by_admin = submit_as(
        &admin,
        spec(
            "admin",
            ds.as_str(),
            out,
            &format!("{small}resume_from: {private_ck}\n"),
        ),
    )
    .await
    .expect("admins read every job's output");
    cluster.wait(&by_admin).await;

    // A worker speaks only for itself: worker-1's certificate registers, worker-0's cannot
    // renew, push for, or unregister that id.
    let mut w1 = worker_channel(&cluster, &bundle, 1).await;
    let mut w0 = worker_channel(&cluster, &bundle, 0).await;
    let id1 = w1
        .register(pb::RegisterRequest {
            protocol_version: pb::PROTOCOL_VERSION,
            name: "w1".into(),
            device: "cpu".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let hb = |id: &str| pb::HeartbeatRequest {
        worker_id: id.into(),
    };
    denied(
        "heartbeat as another worker",
        w0.heartbeat(hb(&id1)).await,
        "certificate",
        "alice",
    );
    denied(
        "fetch_work as another worker",
        w0.fetch_work(pb::FetchWorkRequest {
            worker_id: id1.clone(),
        })
        .await,
        "certificate",
        "alice",
    );
    let header = pb::ResultChunk {
        part: Some(pb::result_chunk::Part::Header(pb::ResultHeader {
            worker_id: id1.clone(),
            task_id: 1,
            ..Default::default()
        })),
    };
    denied(
        "push as another worker",
        w0.push_result(futures::stream::iter(vec![header])).await,
        "certificate",
        "alice",
    );
    denied(
        "goodbye for another worker",
        w0.goodbye(pb::GoodbyeRequest {
            worker_id: id1.clone(),
        })
        .await,
        "certificate",
        "alice",
    );
    w1.heartbeat(hb(&id1)).await.expect("its own certificate");
    w1.goodbye(pb::GoodbyeRequest { worker_id: id1 })
        .await
        .unwrap();

    // Per-user prefixes from the users file, taken without a restart.
    let mut users: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&users_file).unwrap()).unwrap();
    for u in users["users"].as_sequence_mut().unwrap() {
        if u["name"] == "bob" {
            u["read"] = serde_norway::to_value(["memory://tenants/data"]).unwrap();
            u["write"] = serde_norway::to_value(["memory://tenants/bob"]).unwrap();
        }
    }
    std::fs::write(&users_file, serde_norway::to_string(&users).unwrap()).unwrap();
    eventually("bob's prefixes apply", async || {
        match submit_as(&bob, spec("p", ds.as_str(), out, small)).await {
            Err(e) => {
                assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                assert!(
                    e.message().contains("output") && e.message().contains("users file"),
                    "{e:?}"
                );
                true
            }
            Ok(id) => {
                cluster.wait(&id).await;
                false
            }
        }
    })
    .await;
    let inside = submit_as(&bob, spec("p", ds.as_str(), "memory://tenants/bob", small))
        .await
        .expect("inside bob's prefixes");
    cluster.wait(&inside).await;
    denied(
        "a dataset outside bob's read prefixes",
        submit_as(
            &bob,
            spec(
                "p",
                "memory://tenants/elsewhere/ds",
                "memory://tenants/bob",
                small,
            ),
        )
        .await,
        "dataset",
        "alice",
    );

    // Revocation and expiry, without a restart: bob's entry removed, alice's token expired.
    for u in users["users"].as_sequence_mut().unwrap() {
        if u["name"] == "alice" {
            u["expires"] = "2001-01-01".into();
        }
    }
    users["users"]
        .as_sequence_mut()
        .unwrap()
        .retain(|u| u["name"] != "bob");
    std::fs::write(&users_file, serde_norway::to_string(&users).unwrap()).unwrap();
    eventually("bob's token is revoked", async || {
        matches!(
            client_for(&bob).await.list_jobs(pb::ListJobsRequest {}).await,
            Err(e) if e.code() == Code::Unauthenticated && e.message().contains("unknown token")
        )
    })
    .await;
    let e = client_for(&alice)
        .await
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("expired"), "{e:?}");
    // A broken users file is not taken: the admin still gets in.
    std::fs::write(&users_file, "users: [ {broken").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client_for(&admin)
        .await
        .list_jobs(pb::ListJobsRequest {})
        .await
        .expect("the previous users stay");
    cluster.stop().await;
}
