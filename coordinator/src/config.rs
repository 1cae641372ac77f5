//! The coordinator's command line and its validated configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ctcluster_common::auth::UsersFile;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Result};

use crate::auth::Security;
use crate::scope::StorageScope;
use crate::tls::TlsFiles;

fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::invalid("tls", format!("{flag} {}: {e}", path.display())))
}

/// TLS and users from the flags: all four files, or `--insecure`.
fn security_from(a: &Args) -> Result<(Security, Option<TlsFiles>)> {
    match (&a.tls_cert, &a.tls_key, &a.client_ca, &a.users, a.insecure) {
        (None, None, None, None, true) => Ok((Security::Insecure, None)),
        (Some(cert), Some(key), Some(ca), Some(users), false) => {
            let text = String::from_utf8(read_file("--users", users)?)
                .map_err(|e| Error::invalid("users file", e.to_string()))?;
            let users = UsersFile::from_yaml(&text, &users.display().to_string())?;
            let files = TlsFiles {
                cert_pem: read_file("--tls-cert", cert)?,
                key_pem: read_file("--tls-key", key)?,
                client_ca_pem: read_file("--client-ca", ca)?,
            };
            Ok((Security::tls(&users), Some(files)))
        }
        (_, _, _, _, true) => Err(Error::invalid(
            "tls",
            "--insecure cannot be combined with --tls-cert, --tls-key, --client-ca or --users",
        )),
        _ => Err(Error::invalid(
            "tls",
            "the coordinator serves TLS only: give --tls-cert, --tls-key, --client-ca and --users \
             (`ctctl certs init DIR` creates them), or --insecure for plain text on a trusted network",
        )),
    }
}

/// Command-line arguments of `ctcluster-coordinator`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ctcluster-coordinator",
    version,
    about = "ctcluster's gRPC coordinator"
)]
pub struct Args {
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
        Ok(CoordinatorConfig {
            security,
            tls,
            scope,
            state_url: StoreUrl::parse(&a.state_url)?,
            heartbeat: Duration::from_millis(a.heartbeat_ms),
            worker_lease: Duration::from_millis(a.worker_lease_ms),
            trace_every_steps: a.trace_every_steps,
        })
    }
}
