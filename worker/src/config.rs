//! The worker's command line and validated configuration.

use std::path::{Path, PathBuf};

use clap::Parser;

/// Command-line arguments of `ctcluster-worker`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ctcluster-worker",
    version,
    about = "ctcluster's GPU/CPU worker"
)]
pub struct Args {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "CT_COORDINATOR",
        default_value = "https://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// The cluster CA certificate (PEM), to check the coordinator's certificate.
    #[arg(long, env = "CT_CA")]
    pub ca: Option<PathBuf>,
    /// This worker's certificate (PEM), signed by the cluster CA (`ctctl certs init` makes them).
    #[arg(long, env = "CT_CERT")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "CT_KEY")]
    pub key: Option<PathBuf>,
    /// Talk plain text to an `--insecure` coordinator (a warning is printed).
    #[arg(long, env = "CT_INSECURE")]
    pub insecure: bool,
    /// Name shown in status tables (default: host name and process id).
    #[arg(long, env = "CT_WORKER_NAME")]
    pub name: Option<String>,
    /// Compute device: `cpu` (pure-Rust burn-flex backend).
    #[arg(long, env = "CT_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Do not fetch and prepare the next task while one computes (on by default; turning it off
    /// can help on a machine whose cores are all busy with compute and coordinator alike).
    #[arg(long, env = "CT_NO_PREFETCH")]
    pub no_prefetch: bool,
    /// Serve the gRPC health protocol (`grpc.health.v1`, plain text) on this address: `liveness`
    /// SERVING while the process runs; `""` and `readiness` SERVING only while the worker is
    /// registered with a coordinator that answers its heartbeats.
    #[arg(long, env = "CT_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Once the health listener is bound, write its address to this file (`health ADDR`),
    /// written whole or not at all: for tests and supervisors that let it pick a free port.
    #[arg(long, env = "CT_ADDR_FILE")]
    pub addr_file: Option<std::path::PathBuf>,
    /// Fault injection for tests (off by default): replace every Nth training gradient with NaN.
    #[arg(long, env = "CT_FAULT_NAN_EVERY", hide = true)]
    pub fault_nan_every: Option<u64>,
    /// Fault injection for tests (off by default): sleep this long before computing each task.
    #[arg(long, env = "CT_FAULT_DELAY_MS", hide = true)]
    pub fault_delay_ms: Option<u64>,
}

/// Deliberate faults, for testing how the cluster copes. All off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every Nth training result carries a NaN gradient.
    pub nan_every: Option<u64>,
    /// Every task is delayed this long (a slow worker).
    pub delay: Option<std::time::Duration>,
}

/// The worker's TLS identity and trust.
#[derive(Clone)]
pub struct WorkerTls {
    /// The cluster CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The worker's certificate (PEM).
    pub cert_pem: Vec<u8>,
    /// Its key (PEM).
    pub key_pem: Vec<u8>,
}

impl WorkerTls {
    /// The client side of TLS for the coordinator and the aggregators: trust the cluster CA,
    /// show the worker's certificate.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

impl std::fmt::Debug for WorkerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerTls { .. }")
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, crate::WorkerError> {
    ctcluster_common::local_file::read_limited(
        path,
        ctcluster_common::local_file::MAX_PEM_BYTES,
        flag,
    )
    .map_err(|e| crate::WorkerError::Config(format!("{flag} {}: {e}", path.display())))
}

/// Validated worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's URL.
    pub coordinator: String,
    /// Display name.
    pub name: String,
    /// Device name, as given.
    pub device: String,
    /// Deliberate faults (tests only).
    pub faults: Faults,
    /// TLS; `None` talks plain text (`--insecure`).
    pub tls: Option<WorkerTls>,
    /// Fetch and prepare the next task while one computes.
    pub prefetch: bool,
    /// Where the health listener binds (`None`: no health listener).
    pub health_listen: Option<std::net::SocketAddr>,
    /// Where to write the health listener's address once bound (`None`: nowhere).
    pub addr_file: Option<std::path::PathBuf>,
}

impl TryFrom<&Args> for WorkerConfig {
    type Error = crate::WorkerError;

    fn try_from(a: &Args) -> Result<Self, Self::Error> {
        crate::device::parse_device(&a.device)?;
        let tls = match (&a.ca, &a.cert, &a.key, a.insecure) {
            (None, None, None, true) => {
                if !a.coordinator.starts_with("http://") {
                    return Err(crate::WorkerError::Config(format!(
                        "--insecure talks plain text: --coordinator {:?} must be http://",
                        a.coordinator
                    )));
                }
                None
            }
            (Some(ca), Some(cert), Some(key), false) => {
                if !a.coordinator.starts_with("https://") {
                    return Err(crate::WorkerError::Config(format!(
                        "--coordinator {:?} must be an https:// URL (or pass --insecure)",
                        a.coordinator
                    )));
                }
                Some(WorkerTls {
                    ca_pem: read("--ca", ca)?,
                    cert_pem: read("--cert", cert)?,
                    key_pem: read("--key", key)?,
                })
            }
            (_, _, _, true) => {
                return Err(crate::WorkerError::Config(
                    "--insecure cannot be combined with --ca, --cert or --key".into(),
                ));
            }
            _ => {
                return Err(crate::WorkerError::Config(
                    "workers talk TLS with a client certificate: give --ca, --cert and --key \
                     (`ctctl certs init DIR` creates them), or --insecure for plain text"
                        .into(),
                ));
            }
        };
        let name = a.name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        });
        if a.fault_nan_every == Some(0) {
            return Err(crate::WorkerError::Config(
                "--fault-nan-every must be at least 1".into(),
            ));
        }
        Ok(WorkerConfig {
            coordinator: a.coordinator.clone(),
            name,
            device: a.device.clone(),
            faults: Faults {
                nan_every: a.fault_nan_every,
                delay: a.fault_delay_ms.map(std::time::Duration::from_millis),
            },
            tls,
            prefetch: !a.no_prefetch,
            health_listen: a.health_listen,
            addr_file: a.addr_file.clone(),
        })
    }
}
