//! The worker's health listener: `grpc.health.v1` in plain text on `--health-listen`, served
//! from a task this listener owns and stops when dropped (the worker's run ends).

use std::net::SocketAddr;

use ctcluster_common::health::{Health, serve_plain};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::WorkerError;

/// A running health listener; stopped on drop.
pub struct HealthListener {
    stop: CancellationToken,
    task: JoinHandle<()>,
    local: SocketAddr,
}

impl HealthListener {
    /// Binds `addr` and serves `health` there.
    pub async fn start(addr: SocketAddr, health: Health) -> Result<HealthListener, WorkerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| WorkerError::Config(format!("--health-listen {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| WorkerError::Config(format!("--health-listen {addr}: {e}")))?;
        let stop = CancellationToken::new();
        let serving = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = serve_plain(listener, health, serving).await {
                tracing::error!(error = %e, "health listener stopped");
            }
        });
        Ok(HealthListener { stop, task, local })
    }
}

impl HealthListener {
    /// The address it listens on (the port chosen when `--health-listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for HealthListener {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}
