//! `ctcluster-coordinator`: parse flags, bind, serve until SIGTERM or ctrl-c.

use clap::Parser;
use ctcluster_coordinator::{Args, CoordinatorConfig, serve};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = ctcluster_common::telemetry::init("ctcluster-coordinator", "info");
    let args = Args::parse();
    let config = CoordinatorConfig::try_from(&args)?;
    if telemetry.exporting() {
        tracing::info!(
            every_steps = config.trace_every_steps,
            "exporting traces over OTLP"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, state = %config.state_url, "coordinator listening");
    serve(listener, config, shutdown_signal()).await?;
    tracing::info!("coordinator stopped");
    telemetry.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
