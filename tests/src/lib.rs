//! Test harness for ctcluster's end-to-end tests: an in-process cluster (a real coordinator and
//! real workers talking gRPC over loopback) that tests can grow, shrink and query, plus helpers
//! to find the shared real data and the built binaries.

// Every public item says what it is for (denied in CI, like every warning).
#![warn(missing_docs)]

pub mod bench;
pub mod chaos;
pub mod fixtures;
pub mod netns;
pub mod otlp;
pub mod procs;
pub mod scale;

use std::path::PathBuf;
use std::time::Duration;

pub use procs::{
    Listening, Proc, addr_file_path, bin_dir, binary, python, python_script, reported_port,
    restart_coordinator, start_aggregator, start_coordinator, start_coordinator_env, start_s3,
    start_worker, start_worker_with_health, wait_for_addr_file,
};

use ctcluster_common::storage::StoreUrl;
use ctcluster_coordinator::CoordinatorConfig;
use ctcluster_proto as pb;
use ctcluster_worker::{Faults, WorkerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The longest any test waits for a job.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// A coordinator and workers running in this process, on loopback.
pub struct Cluster {
    /// The coordinator's URL.
    pub url: String,
    /// How `ctctl` reaches it (as admin on a secure cluster).
    pub target: ctctl::Target,
    worker_tls: Vec<ctcluster_worker::WorkerTls>,
    stop_coordinator: CancellationToken,
    workers: Vec<CancellationToken>,
    tasks: TaskTracker,
    /// Whether workers added from now on prefetch their next task (default true).
    pub prefetch: bool,
}

impl Cluster {
    /// Starts a coordinator (job records under `state`) and `workers` workers.
    pub async fn start(state: &str, workers: usize) -> Cluster {
        let config = CoordinatorConfig::local(StoreUrl::parse(state).expect("state url"));
        Self::start_with(config, workers).await
    }

    /// Starts a coordinator with TLS, worker certificates and user tokens from a fresh
    /// `ctctl certs` bundle (users `admin`, `alice`, `bob`), and `workers` workers.
    pub async fn start_secure(state: &str, workers: usize) -> (Cluster, ctctl::certs::Bundle) {
        let bundle = Self::bundle(workers, 0);
        let cluster = Self::start_secure_with(state, workers, &bundle, |_| {}).await;
        (cluster, bundle)
    }

    /// A fresh `ctctl certs` bundle: `workers` worker and `aggregators` aggregator
    /// certificates, users `admin`, `alice` and `bob`.
    pub fn bundle(workers: usize, aggregators: usize) -> ctctl::certs::Bundle {
        ctctl::certs::generate(&ctctl::certs::BundleSpec {
            workers: workers.max(1),
            aggregators,
            users: vec!["alice".into(), "bob".into()],
            ..Default::default()
        })
        .expect("certificates")
    }

    /// Like [`Cluster::start_secure`] with a given bundle, and the coordinator's settings
    /// changed by `configure` first.
    pub async fn start_secure_with(
        state: &str,
        workers: usize,
        bundle: &ctctl::certs::Bundle,
        configure: impl FnOnce(&mut CoordinatorConfig),
    ) -> Cluster {
        let tls = ctctl::demo::local_tls(bundle).expect("bundle");
        let mut config = CoordinatorConfig::local(StoreUrl::parse(state).expect("state url"));
        config.security = ctcluster_coordinator::auth::Security::tls(&tls.users).expect("users");
        config.tls = Some(tls.coordinator.clone());
        configure(&mut config);
        Self::launch(config, workers, Some(tls)).await
    }

    /// Like [`Cluster::start_secure`], with the users file written to `users_file` and read
    /// from there, reloaded every 100 ms (tests edit it to revoke or expire tokens).
    pub async fn start_secure_from_file(
        state: &str,
        workers: usize,
        users_file: &std::path::Path,
    ) -> (Cluster, ctctl::certs::Bundle) {
        let bundle = Self::bundle(workers, 0);
        let tls = ctctl::demo::local_tls(&bundle).expect("bundle");
        std::fs::write(users_file, bundle.get("users.yaml").expect("users.yaml"))
            .expect("write the users file");
        let mut config = CoordinatorConfig::local(StoreUrl::parse(state).expect("state url"));
        config.security = ctcluster_coordinator::auth::Security::Tls {
            users: std::sync::Arc::new(
                ctcluster_coordinator::auth::UsersTable::from_file(users_file).expect("users"),
            ),
        };
        config.users_reload = Some(Duration::from_millis(100));
        config.tls = Some(tls.coordinator.clone());
        let cluster = Self::launch(config, workers, Some(tls)).await;
        (cluster, bundle)
    }

    /// Starts a coordinator with the given settings and `workers` workers.
    pub async fn start_with(config: CoordinatorConfig, workers: usize) -> Cluster {
        Self::launch(config, workers, None).await
    }

    async fn launch(
        config: CoordinatorConfig,
        workers: usize,
        tls: Option<ctctl::demo::LocalTls>,
    ) -> Cluster {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (url, target, worker_tls) = match tls {
            Some(t) => {
                let url = format!("https://{addr}");
                let target = ctctl::Target::secure(&url, t.ca_pem.clone(), &t.admin_token);
                (url, target, t.workers)
            }
            None => {
                let url = format!("http://{addr}");
                (url.clone(), ctctl::Target::insecure(&url), Vec::new())
            }
        };
        let stop_coordinator = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stop = stop_coordinator.clone();
        tasks.spawn(async move {
            ctcluster_coordinator::serve(listener, config, stop.cancelled_owned())
                .await
                .expect("coordinator");
        });
        let mut cluster = Cluster {
            url,
            target,
            worker_tls,
            stop_coordinator,
            workers: Vec::new(),
            tasks,
            prefetch: true,
        };
        for _ in 0..workers {
            cluster.add_worker();
        }
        cluster
    }

    /// Starts one more worker; returns its index.
    pub fn add_worker(&mut self) -> usize {
        self.add_worker_with(Faults::default())
    }

    /// Starts one more worker with deliberate faults; returns its index.
    pub fn add_worker_with(&mut self, faults: Faults) -> usize {
        let token = CancellationToken::new();
        let config = WorkerConfig {
            coordinator: self.url.clone(),
            name: format!("test-worker-{}", self.workers.len()),
            device: "cpu".into(),
            faults,
            tls: (!self.worker_tls.is_empty())
                .then(|| self.worker_tls[self.workers.len() % self.worker_tls.len()].clone()),
            prefetch: self.prefetch,
            health_listen: None,
            addr_file: None,
        };
        let stop = token.clone();
        self.tasks.spawn(async move {
            ctcluster_worker::run_worker(config, stop)
                .await
                .expect("worker");
        });
        self.workers.push(token);
        self.workers.len() - 1
    }

    /// A client for the coordinator (the admin on a secure cluster).
    pub async fn client(&self) -> ctctl::connect::Client {
        tokio::time::timeout(
            Duration::from_secs(10),
            ctctl::connect::connect(&self.target),
        )
        .await
        .expect("connect timeout")
        .expect("connect")
    }

    /// Submits a spec; returns the job id or the coordinator's refusal.
    pub async fn submit(&self, spec: &str) -> Result<String, tonic::Status> {
        let mut c = self.client().await;
        Ok(c.submit(pb::SubmitRequest {
            spec_yaml: spec.into(),
        })
        .await?
        .into_inner()
        .job_id)
    }

    /// Polls a job's status (bounded, every 50 ms) until `ok` holds; returns that status.
    pub async fn poll_status(
        &self,
        job: &str,
        ok: impl Fn(&pb::JobStatus) -> bool,
    ) -> pb::JobStatus {
        let mut c = self.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = c
                .get_job(pb::GetJobRequest { job_id: job.into() })
                .await
                .expect("get job")
                .into_inner();
            if ok(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never met: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until a job has taken at least `step` steps.
    pub async fn wait_for_step(&self, job: &str, step: u64) {
        self.watch_until(job, |s| s.step >= step).await;
    }

    /// Waits (bounded) until a job has ended; returns its final status.
    pub async fn wait(&self, job: &str) -> pb::JobStatus {
        self.watch_until(job, |_| false).await
    }

    /// Follows a job's status stream until `done` says so or the job ends; returns the last
    /// status seen.
    async fn watch_until(&self, job: &str, done: impl Fn(&pb::JobStatus) -> bool) -> pb::JobStatus {
        let mut c = self.client().await;
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        let mut stream = c
            .watch(pb::WatchRequest { job_id: job.into() })
            .await
            .expect("watch")
            .into_inner();
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(s))) => {
                    let stop = done(&s);
                    last = Some(s);
                    if stop {
                        break;
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("watch stream failed: {e}"),
                Err(_) => panic!("job {job} did not end within {JOB_TIMEOUT:?}"),
            }
        }
        last.expect("at least one status")
    }

    /// Submits a spec and waits for the job to succeed; panics with its message otherwise.
    pub async fn run(&self, spec: &str) -> pb::JobStatus {
        let id = self.submit(spec).await.expect("submit");
        let s = self.wait(&id).await;
        assert_eq!(
            s.state,
            pb::JobState::Succeeded as i32,
            "job {id} did not succeed: {}",
            s.message
        );
        s
    }

    /// Stops everything and waits for it.
    pub async fn stop(self) {
        for w in &self.workers {
            w.cancel();
        }
        self.stop_coordinator.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(30), self.tasks.wait())
            .await
            .expect("cluster did not stop in time");
    }
}

/// Aggregators (`ctcluster-coordinator --role aggregator`) served in this process on loopback
/// ports they pick; stopped when [`Aggregators::stop`] is called.
pub struct Aggregators {
    /// Their URLs, in order: what `--aggregators` takes.
    pub urls: Vec<String>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Aggregators {
    /// Starts `k` aggregators.
    pub async fn start(k: usize) -> Aggregators {
        Self::launch(k, None).await
    }

    /// Starts `k` aggregators serving TLS with the bundle's `aggregator-N` certificates,
    /// admitting the certificates of its CA (the coordinator's steers).
    pub async fn start_secure(k: usize, bundle: &ctctl::certs::Bundle) -> Aggregators {
        Self::launch(k, Some(bundle)).await
    }

    async fn launch(k: usize, bundle: Option<&ctctl::certs::Bundle>) -> Aggregators {
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let mut urls = Vec::new();
        for i in 0..k {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let mut config =
                CoordinatorConfig::local(StoreUrl::parse("memory://aggregator/s").unwrap());
            match bundle {
                Some(b) => {
                    let file = |name: String| b.get(&name).expect("bundle file").to_vec();
                    config.tls = Some(ctcluster_coordinator::tls::TlsFiles {
                        cert_pem: file(format!("aggregator-{i}.pem")),
                        key_pem: file(format!("aggregator-{i}-key.pem")),
                        client_ca_pem: file("ca.pem".into()),
                    });
                    config.security =
                        ctcluster_coordinator::auth::Security::tls(&Default::default())
                            .expect("no users");
                    urls.push(format!("https://{addr}"));
                }
                None => urls.push(format!("http://{addr}")),
            }
            let stop = stop.clone();
            tasks.spawn(async move {
                ctcluster_coordinator::serve_aggregator(listener, config, stop.cancelled_owned())
                    .await
                    .expect("aggregator");
            });
        }
        Aggregators { urls, stop, tasks }
    }

    /// Stops them and waits.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(30), self.tasks.wait())
            .await
            .expect("aggregators did not stop in time");
    }
}

/// A client of the coordinator at `target` (connecting within 20 s).
pub async fn client_for(target: &ctctl::Target) -> ctctl::connect::Client {
    tokio::time::timeout(Duration::from_secs(20), ctctl::connect::connect(target))
        .await
        .expect("connect timeout")
        .expect("connect")
}

/// Submits a spec as the caller of `target`; returns the job id or the refusal.
pub async fn submit_as(target: &ctctl::Target, yaml: String) -> Result<String, tonic::Status> {
    Ok(client_for(target)
        .await
        .submit(pb::SubmitRequest { spec_yaml: yaml })
        .await?
        .into_inner()
        .job_id)
}

/// A job's status, as the caller of `target` sees it.
pub async fn job_status(target: &ctctl::Target, job: &str) -> pb::JobStatus {
    client_for(target)
        .await
        .get_job(pb::GetJobRequest { job_id: job.into() })
        .await
        .expect("get job")
        .into_inner()
}

/// Polls a job's status (bounded by [`JOB_TIMEOUT`], every 50 ms) until `ok` holds.
pub async fn job_until(
    target: &ctctl::Target,
    job: &str,
    ok: impl Fn(&pb::JobStatus) -> bool,
) -> pb::JobStatus {
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let s = job_status(target, job).await;
        if ok(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's status, or `None` while the coordinator cannot be reached (connecting and asking
/// take at most 3 s each): for tests that cut the coordinator off or restart it.
pub async fn try_job_status(target: &ctctl::Target, job: &str) -> Option<pb::JobStatus> {
    let bound = Duration::from_secs(3);
    let mut client = tokio::time::timeout(bound, ctctl::connect::connect(target))
        .await
        .ok()?
        .ok()?;
    let call = client.get_job(pb::GetJobRequest { job_id: job.into() });
    Some(
        tokio::time::timeout(bound, call)
            .await
            .ok()?
            .ok()?
            .into_inner(),
    )
}

/// The names of the registered workers, or `None` while the coordinator cannot be reached.
pub async fn try_worker_names(target: &ctctl::Target) -> Option<Vec<String>> {
    let bound = Duration::from_secs(3);
    let mut client = tokio::time::timeout(bound, ctctl::connect::connect(target))
        .await
        .ok()?
        .ok()?;
    let call = client.list_workers(pb::ListWorkersRequest {});
    let workers = tokio::time::timeout(bound, call)
        .await
        .ok()?
        .ok()?
        .into_inner()
        .workers;
    Some(workers.into_iter().map(|w| w.name).collect())
}

/// Whether a job has ended (succeeded, failed or cancelled).
pub fn has_ended(s: &pb::JobStatus) -> bool {
    ctctl::render::is_terminal(s.state)
}

/// `../shared/data` from the repository root, if present.
pub fn shared_data() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("../shared/data");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

/// Ingests a MedMNIST-style `.npz` at `url` as `ctctl ingest npz` does by default (the one npz
/// path: cleaning, the archive's splits kept).
pub async fn ingest_npz(npz: &std::path::Path, url: &StoreUrl) {
    ctctl::ingest::ingest(ctctl::ingest::IngestSource::Npz {
        file: npz.to_path_buf(),
        args: ctctl::ingest::IngestArgs::to(url.as_str()),
    })
    .await
    .unwrap_or_else(|e| panic!("ingesting {}: {e}", npz.display()));
}

/// Writes the generated 28x28 lesion dataset at `url` (`train` and `test` images from `seed`).
pub async fn synthetic(url: &str, train: usize, test: usize, seed: u64) -> StoreUrl {
    let ds = StoreUrl::parse(url).expect("dataset url");
    let opts = ctcluster_common::dataset::SynthOptions {
        train,
        test,
        size: 28,
        seed,
    };
    ctcluster_common::dataset::write_synthetic(&ds, opts)
        .await
        .expect("write the synthetic dataset");
    ds
}

/// A minimal job spec over a dataset, writing to `output`.
pub fn spec(name: &str, dataset: &str, output: &str, extra: &str) -> String {
    format!("name: {name}\ndataset: {dataset}\noutput: {output}\n{extra}")
}

/// Reads the final checkpoint of a finished job.
pub async fn final_checkpoint(status: &pb::JobStatus) -> ctcluster_common::checkpoint::Checkpoint {
    let url = StoreUrl::parse(&status.checkpoint).expect("checkpoint url");
    ctcluster_common::checkpoint::Checkpoint::load(&url)
        .await
        .expect("load checkpoint")
}

/// Relative L2 distance between two vectors.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}
