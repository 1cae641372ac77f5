//! `ctcluster-worker`: parse flags, work until SIGTERM or ctrl-c, say goodbye, exit.

use clap::Parser;
use ctcluster_worker::{Args, WorkerConfig, run_worker};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    ctcluster_common::alloc::keep_freed_memory();
    let telemetry = ctcluster_common::telemetry::init("ctcluster-worker", "info");
    let args = Args::parse();
    let result = run(args).await;
    telemetry.shutdown().await;
    if let Err(e) = result {
        eprintln!("ctcluster-worker: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), ctcluster_worker::WorkerError> {
    let config = WorkerConfig::try_from(&args)?;
    if config.tls.is_none() {
        tracing::warn!("--insecure: talking plain text to the coordinator, without a certificate");
    }
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping after the task in flight");
        trigger.cancel();
    });
    let result = run_worker(config, shutdown).await;
    signals.abort();
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
