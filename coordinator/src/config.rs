//! The coordinator's command line and its validated configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use clap::Parser;
use ctcluster_common::local_file::{MAX_PEM_BYTES, read_limited};
use ctcluster_common::shards::MAX_SHARDS;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Result};

use crate::admission::Limits;
use crate::auth::{Security, UsersTable};
use crate::connections::ConnectionLimits;
use crate::scope::StorageScope;
use crate::tls::TlsFiles;

fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>> {
    read_limited(path, MAX_PEM_BYTES, flag)
        .map_err(|e| Error::invalid("tls", format!("{flag} {}: {e}", path.display())))
}

/// TLS and users from the flags: all four files (a coordinator) or the three TLS files (an
/// aggregator, which has no users), or `--insecure`.
fn security_from(a: &Args) -> Result<(Security, Option<TlsFiles>)> {
    let aggregator = a.role == Role::Aggregator;
    if aggregator && a.users.is_some() {
        return Err(Error::invalid(
            "tls",
            "an aggregator has no users: drop --users (it admits the cluster CA's certificates: \
             workers to fetch and push, the coordinator (--coordinator-name) to steer shards)",
        ));
    }
    // An aggregator has no users; the coordinator needs its users file.
    let users_given = a.users.is_some() || aggregator;
    match (
        &a.tls_cert,
        &a.tls_key,
        &a.client_ca,
        users_given,
        a.insecure,
    ) {
        (None, None, None, _, true) if a.users.is_none() => Ok((Security::Insecure, None)),
        (Some(cert), Some(key), Some(ca), true, false) => {
            let users = match &a.users {
                Some(path) => UsersTable::from_file(path)?,
                None => UsersTable::fixed(&Default::default())?,
            };
            let files = TlsFiles {
                cert_pem: read_file("--tls-cert", cert)?,
                key_pem: read_file("--tls-key", key)?,
                client_ca_pem: read_file("--client-ca", ca)?,
            };
            Ok((
                Security::Tls {
                    users: Arc::new(users),
                },
                Some(files),
            ))
        }
        (_, _, _, _, true) => Err(Error::invalid(
            "tls",
            "--insecure cannot be combined with --tls-cert, --tls-key, --client-ca or --users",
        )),
        _ if aggregator => Err(Error::invalid(
            "tls",
            "an aggregator serves TLS only: give --tls-cert, --tls-key and --client-ca \
             (`ctctl certs init DIR --aggregators N` creates them), or --insecure for plain text \
             on a trusted network",
        )),
        _ => Err(Error::invalid(
            "tls",
            "the coordinator serves TLS only: give --tls-cert, --tls-key, --client-ca and --users \
             (`ctctl certs init DIR` creates them), or --insecure for plain text on a trusted network",
        )),
    }
}

/// The aggregators' URLs: at most [`MAX_SHARDS`], none twice, each `https://` when the
/// coordinator serves TLS (gradients and parameters never travel in plain text from a TLS
/// cluster) and `http://` when it does not.
fn aggregators_from(urls: &[String], tls: bool) -> Result<Vec<String>> {
    if urls.len() > MAX_SHARDS {
        return Err(Error::invalid(
            "aggregators",
            format!("{} given; at most {MAX_SHARDS}", urls.len()),
        ));
    }
    let scheme = if tls { "https://" } else { "http://" };
    for (i, u) in urls.iter().enumerate() {
        if !u.starts_with(scheme) || u.len() > 512 {
            return Err(Error::invalid(
                "aggregators",
                format!(
                    "{u:?} is not an {scheme} URL ({})",
                    if tls {
                        "this coordinator serves TLS, and so do its aggregators"
                    } else {
                        "this coordinator serves plain text (--insecure), and so do its aggregators"
                    }
                ),
            ));
        }
        if urls[..i].contains(u) {
            return Err(Error::invalid("aggregators", format!("{u} is given twice")));
        }
    }
    Ok(urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect())
}

/// Command-line arguments of `ctcluster-coordinator`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ctcluster-coordinator",
    version,
    about = "ctcluster's gRPC coordinator"
)]
pub struct Args {
    /// What this process is: the `coordinator` (plans, schedules, checkpoints) or an
    /// `aggregator` (holds a shard of sharded jobs' parameters; see --aggregators).
    #[arg(long, env = "CT_ROLE", value_enum, default_value_t = Role::Coordinator)]
    pub role: Role,
    /// Sharded aggregation: the aggregators' URLs, in order (repeat, or comma-separate in the
    /// variable). A job with `aggregators: K` in its spec splits its parameters and Adam state
    /// over the first K. `https://` URLs when the coordinator serves TLS: it then shows the
    /// aggregators its own certificate (--tls-cert) and checks theirs against --client-ca.
    #[arg(long, env = "CT_AGGREGATORS", value_delimiter = ',')]
    pub aggregators: Vec<String>,
    /// On an aggregator serving TLS: the common name of the coordinator's certificate. Only
    /// that certificate may install, step, read and drop shards; any other the cluster CA
    /// signed (a worker's) may only fetch parameters and push gradients.
    #[arg(
        long,
        env = "CT_COORDINATOR_NAME",
        default_value = "ctcluster coordinator"
    )]
    pub coordinator_name: String,
    /// Address to listen on.
    #[arg(long, env = "CT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// URL where job records are kept (the coordinator's own state).
    #[arg(long, env = "CT_STATE_URL", default_value = "./ctcluster-state")]
    pub state_url: String,
    /// How often workers send heartbeats, in milliseconds.
    #[arg(long, env = "CT_HEARTBEAT_MS", default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// A worker silent for this long (milliseconds) is dropped and its tasks handed to others.
    #[arg(long, env = "CT_WORKER_LEASE_MS", default_value_t = 3000)]
    pub worker_lease_ms: u64,
    /// Traces (when exported, see `OTEL_EXPORTER_OTLP_ENDPOINT`) record every step of the
    /// first epoch, then every Nth step; evaluations, checkpoints and failures always. 0 traces
    /// no steps.
    #[arg(long, env = "CT_TRACE_EVERY_STEPS", default_value_t = 10)]
    pub trace_every_steps: u64,
    /// A URL prefix jobs may read datasets and checkpoints from (repeat, or comma-separate in
    /// the variable). With no --allow-read/--allow-write, jobs may use any URL.
    #[arg(long, env = "CT_ALLOW_READ", value_delimiter = ',')]
    pub allow_read: Vec<String>,
    /// A URL prefix jobs may write their output under (and read from).
    #[arg(long, env = "CT_ALLOW_WRITE", value_delimiter = ',')]
    pub allow_write: Vec<String>,
    /// The coordinator's TLS certificate (PEM; `ctctl certs init` makes one).
    #[arg(long, env = "CT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "CT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate that signs worker certificates (PEM).
    #[arg(long, env = "CT_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The users file: names, admin flags, sha256 of their bearer tokens (YAML).
    #[arg(long, env = "CT_USERS")]
    pub users: Option<PathBuf>,
    /// Serve plain text with no authentication (a warning is printed). Only for a trusted
    /// private network.
    #[arg(long, env = "CT_INSECURE")]
    pub insecure: bool,
    /// Read the users file again this often (milliseconds) and take changes (new, removed or
    /// expiring tokens) without a restart; 0 never.
    #[arg(long, env = "CT_USERS_RELOAD_MS", default_value_t = 2000)]
    pub users_reload_ms: u64,
    /// Most coordinator memory one job may hold, in MiB (parameters, Adam state, a step's
    /// gradients, the data plan); larger jobs are refused at submit.
    #[arg(long, env = "CT_MAX_JOB_MEMORY_MB", default_value_t = 4096)]
    pub max_job_memory_mb: u64,
    /// Most coordinator memory all unfinished jobs together may hold, in MiB.
    #[arg(long, env = "CT_MEMORY_BUDGET_MB", default_value_t = 12288)]
    pub memory_budget_mb: u64,
    /// Most unfinished jobs one user may have.
    #[arg(long, env = "CT_MAX_JOBS_PER_USER", default_value_t = 8)]
    pub max_jobs_per_user: usize,
    /// Most unfinished jobs in all.
    #[arg(long, env = "CT_MAX_ACTIVE_JOBS", default_value_t = 32)]
    pub max_active_jobs: usize,
    /// Most open connections; further ones wait until one closes.
    #[arg(long, env = "CT_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Most concurrent requests (HTTP/2 streams) on one connection.
    #[arg(long, env = "CT_MAX_STREAMS_PER_CONNECTION", default_value_t = 64)]
    pub max_streams_per_connection: u32,
    /// A connection with no traffic for this long (seconds) is closed; live peers answer the
    /// keepalive pings sent every third of it.
    #[arg(long, env = "CT_IDLE_TIMEOUT_S", default_value_t = 60)]
    pub idle_timeout_s: u64,
    /// On SIGTERM (preemption), every running job is checkpointed at the step it completed
    /// last and the process exits within this many seconds (what spot instances give).
    #[arg(long, env = "CT_SHUTDOWN_GRACE_S", default_value_t = 15)]
    pub shutdown_grace_s: u64,
    /// Also serve the gRPC health protocol (`grpc.health.v1`) in plain text on this address,
    /// for probes that speak no TLS (Kubernetes' gRPC probes). The main port serves it too.
    #[arg(long, env = "CT_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Once listening, write the addresses to this file (`grpc ADDR`, and `health ADDR` with
    /// --health-listen), written whole or not at all: for supervisors and tests that let the
    /// coordinator pick free ports (`--listen 127.0.0.1:0`).
    #[arg(long, env = "CT_ADDR_FILE")]
    pub addr_file: Option<std::path::PathBuf>,
}

/// What a `ctcluster-coordinator` process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The coordinator: jobs, workers, checkpoints.
    Coordinator,
    /// An aggregator: shards of sharded jobs' parameters.
    Aggregator,
}

/// Validated coordinator settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where job records live.
    pub state_url: StoreUrl,
    /// Heartbeat period asked of workers.
    pub heartbeat: Duration,
    /// Silence after which a worker is dropped.
    pub worker_lease: Duration,
    /// After the first epoch, traces record every Nth step (0: none).
    pub trace_every_steps: u64,
    /// Where jobs may read and write.
    pub scope: StorageScope,
    /// How callers are authenticated.
    pub security: Security,
    /// TLS material; `None` serves plain text (only with [`Security::Insecure`]).
    pub tls: Option<TlsFiles>,
    /// How often the users file is read again (`None`: never).
    pub users_reload: Option<Duration>,
    /// Limits on jobs (memory, counts).
    pub limits: Limits,
    /// Limits on connections.
    pub connections: ConnectionLimits,
    /// How long a stop may take: jobs checkpoint within it, then the process ends regardless.
    pub shutdown_grace: Duration,
    /// Where the plain-text health listener binds (`None`: the main port only).
    pub health_listen: Option<SocketAddr>,
    /// Where to write the bound addresses once listening (`None`: nowhere).
    pub addr_file: Option<std::path::PathBuf>,
    /// Sharded aggregation: the aggregators' URLs, in order.
    pub aggregators: Vec<String>,
    /// On an aggregator with TLS: the certificate name allowed to steer shards.
    pub coordinator_name: String,
}

impl CoordinatorConfig {
    /// Settings for tests and the demo: records under `state_url`, short lease.
    pub fn local(state_url: StoreUrl) -> Self {
        CoordinatorConfig {
            heartbeat: Duration::from_millis(500),
            worker_lease: Duration::from_secs(3),
            trace_every_steps: 10,
            scope: StorageScope::default().protecting_state(state_url.as_str()),
            state_url,
            security: Security::Insecure,
            tls: None,
            users_reload: Some(Duration::from_secs(2)),
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            shutdown_grace: Duration::from_secs(15),
            health_listen: None,
            addr_file: None,
            aggregators: Vec::new(),
            coordinator_name: "ctcluster coordinator".into(),
        }
    }
}

impl CoordinatorConfig {
    /// Whether a step is traced in detail: every step of epoch 0, then every Nth.
    pub fn traces_step(&self, epoch: u32, step: u64) -> bool {
        epoch == 0 || (self.trace_every_steps > 0 && step.is_multiple_of(self.trace_every_steps))
    }
}

impl TryFrom<&Args> for CoordinatorConfig {
    type Error = Error;

    fn try_from(a: &Args) -> Result<Self> {
        if a.heartbeat_ms == 0 || a.worker_lease_ms <= a.heartbeat_ms {
            return Err(Error::invalid(
                "worker-lease-ms",
                "must be larger than heartbeat-ms, which must be positive",
            ));
        }
        let scope = StorageScope::new(&a.allow_read, &a.allow_write)
            .map_err(|e| Error::invalid("storage scope", e))?
            .protecting_state(&a.state_url);
        let (security, tls) = security_from(a)?;
        let positive = |flag: &str, v: u64| {
            if v == 0 {
                Err(Error::invalid(flag, "must be positive"))
            } else {
                Ok(v)
            }
        };
        let limits = Limits {
            job_bytes: positive("max-job-memory-mb", a.max_job_memory_mb)?.saturating_mul(1 << 20),
            total_bytes: positive("memory-budget-mb", a.memory_budget_mb)?.saturating_mul(1 << 20),
            jobs_per_user: positive("max-jobs-per-user", a.max_jobs_per_user as u64)? as usize,
            active_jobs: positive("max-active-jobs", a.max_active_jobs as u64)? as usize,
        };
        let connections = ConnectionLimits {
            max_connections: positive("max-connections", a.max_connections as u64)? as usize,
            max_streams: u32::try_from(positive(
                "max-streams-per-connection",
                u64::from(a.max_streams_per_connection),
            )?)
            .unwrap_or(u32::MAX),
            idle_timeout: Duration::from_secs(positive("idle-timeout-s", a.idle_timeout_s)?),
            ..ConnectionLimits::default()
        };
        let aggregators = aggregators_from(&a.aggregators, tls.is_some())?;
        if a.coordinator_name.is_empty() || a.coordinator_name.len() > 256 {
            return Err(Error::invalid(
                "coordinator-name",
                "must be a certificate common name of 1 to 256 bytes",
            ));
        }
        Ok(CoordinatorConfig {
            aggregators,
            coordinator_name: a.coordinator_name.clone(),
            security,
            tls,
            users_reload: (a.users_reload_ms > 0).then(|| Duration::from_millis(a.users_reload_ms)),
            limits,
            connections,
            shutdown_grace: Duration::from_secs(positive("shutdown-grace-s", a.shutdown_grace_s)?),
            health_listen: a.health_listen,
            addr_file: a.addr_file.clone(),
            scope,
            state_url: StoreUrl::parse(&a.state_url)?,
            heartbeat: Duration::from_millis(a.heartbeat_ms),
            worker_lease: Duration::from_millis(a.worker_lease_ms),
            trace_every_steps: a.trace_every_steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregator_urls_are_checked_and_match_the_coordinators_tls() {
        let urls = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            aggregators_from(&urls(&["http://a:1/", "http://b:2"]), false).unwrap(),
            urls(&["http://a:1", "http://b:2"])
        );
        assert_eq!(
            aggregators_from(&urls(&["https://a:1/"]), true).unwrap(),
            urls(&["https://a:1"])
        );
        assert!(aggregators_from(&[], true).unwrap().is_empty());
        let err = |u: &[&str], tls| aggregators_from(&urls(u), tls).unwrap_err().to_string();
        assert!(err(&["http://a:1"], true).contains("not an https:// URL"));
        assert!(err(&["https://a:1"], false).contains("not an http:// URL"));
        assert!(err(&["a:1"], false).contains("not an http:// URL"));
        assert!(err(&["http://a:1", "http://a:1"], false).contains("given twice"));
        let many: Vec<String> = (0..=MAX_SHARDS).map(|i| format!("http://a{i}:1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(err(&many, false).contains("at most"));
    }

    #[test]
    fn an_aggregator_serves_tls_without_users() {
        let dir = std::env::temp_dir().join(format!("ct-agg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str| {
            let p = dir.join(name);
            std::fs::write(&p, b"-----BEGIN CERTIFICATE-----\n").unwrap();
            p.display().to_string()
        };
        let (cert, key, ca, users) = (file("c.pem"), file("k.pem"), file("ca.pem"), file("u.yaml"));
        let config = |args: &[&str]| {
            let mut all = vec!["ctcluster-coordinator"];
            all.extend_from_slice(args);
            CoordinatorConfig::try_from(&Args::try_parse_from(all).unwrap())
        };
        let tls = ["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca];
        let aggregator = [&["--role", "aggregator"][..], &tls[..]].concat();
        let c = config(&aggregator).unwrap();
        assert!(c.tls.is_some() && matches!(c.security, Security::Tls { .. }));
        assert_eq!(c.coordinator_name, "ctcluster coordinator");
        let err = |args: &[&str]| config(args).unwrap_err().to_string();
        assert!(err(&[&aggregator[..], &["--users", &users]].concat()).contains("has no users"));
        assert!(err(&["--role", "aggregator"]).contains("an aggregator serves TLS only"));
        // The coordinator still needs its users file.
        assert!(err(&tls).contains("the coordinator serves TLS only"));
        assert!(
            err(&[&aggregator[..], &["--coordinator-name", ""]].concat())
                .contains("coordinator-name")
        );
        let insecure = config(&["--role", "aggregator", "--insecure"]).unwrap();
        assert!(insecure.tls.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
