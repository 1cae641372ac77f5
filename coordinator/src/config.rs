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
    /// Traces (when exported, see `OTEL_EXPORTER_OTLP_ENDPOINT`) record every step of the
    /// first epoch, then every Nth step; evaluations, checkpoints and failures always. 0 traces
    /// no steps.
    #[arg(long, env = "CT_TRACE_EVERY_STEPS", default_value_t = 10)]
    pub trace_every_steps: u64,
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
}

impl CoordinatorConfig {
    /// Settings for tests and the demo: records under `state_url`, short lease.
    pub fn local(state_url: StoreUrl) -> Self {
        CoordinatorConfig {
            state_url,
            heartbeat: Duration::from_millis(500),
            worker_lease: Duration::from_secs(3),
            trace_every_steps: 10,
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
        Ok(CoordinatorConfig {
            state_url: StoreUrl::parse(&a.state_url)?,
            heartbeat: Duration::from_millis(a.heartbeat_ms),
            worker_lease: Duration::from_millis(a.worker_lease_ms),
            trace_every_steps: a.trace_every_steps,
        })
    }
}
