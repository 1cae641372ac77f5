//! `ctcluster-coordinator`: parse flags, bind, serve until SIGTERM or ctrl-c.

use clap::Parser;
use ctcluster_coordinator::config::Role;
use ctcluster_coordinator::{Args, CoordinatorConfig, serve, serve_aggregator};

#[tokio::main]
async fn main() {
    ctcluster_common::alloc::keep_freed_memory();
    let telemetry = ctcluster_common::telemetry::init("ctcluster-coordinator", "info");
    let args = Args::parse();
    if telemetry.exporting() {
        tracing::info!("exporting traces over OTLP");
    }
    let result = run(args).await;
    telemetry.shutdown().await;
    if let Err(e) = result {
        eprintln!("ctcluster-coordinator: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = CoordinatorConfig::try_from(&args)?;
    if args.role == Role::Aggregator {
        if config.tls.is_none() {
            tracing::warn!("--insecure: serving plain text with no authentication");
        }
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "aggregator listening");
        serve_aggregator(listener, config, shutdown_signal()).await?;
        tracing::info!("aggregator stopped");
        return Ok(());
    }
    if config.tls.is_none() {
        tracing::warn!(
            "--insecure: serving plain text with no authentication; anyone who can reach this \
             port can submit jobs and read results. Use only on a trusted private network."
        );
    }
    if !config.scope.is_restricted() {
        tracing::warn!(
            "no --allow-read/--allow-write: jobs may read and write any URL this coordinator's \
             credentials reach"
        );
    } else {
        tracing::info!(scope = %config.scope.describe(), "storage scope");
    }
    tracing::debug!(
        every_steps = config.trace_every_steps,
        "detailed step traces"
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, state = %config.state_url, "coordinator listening");
    serve(listener, config, shutdown_signal()).await?;
    tracing::info!("coordinator stopped");
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
