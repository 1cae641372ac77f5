//! The coordinator's command line and its validated configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Result};

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
}

impl CoordinatorConfig {
    /// Settings for tests and the demo: records under `state_url`, short lease.
    pub fn local(state_url: StoreUrl) -> Self {
        CoordinatorConfig {
            state_url,
            heartbeat: Duration::from_millis(500),
            worker_lease: Duration::from_secs(3),
        }
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
        Ok(CoordinatorConfig {
            state_url: StoreUrl::parse(&a.state_url)?,
            heartbeat: Duration::from_millis(a.heartbeat_ms),
            worker_lease: Duration::from_millis(a.worker_lease_ms),
        })
    }
}
