//! Serving both services on a pre-bound listener until a shutdown future resolves: TLS with
//! authentication gates, or plain text in `--insecure` mode.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ctcluster_proto as pb;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::auth::{Security, UsersTable, client_gate, worker_gate};
use crate::client_api::ClientApi;
use crate::config::CoordinatorConfig;
use crate::connections::{Conn, accept_loop};
use crate::error::CoordError;
use crate::state::Coordinator;
use crate::tls::TlsAcceptor;
use crate::worker_api::WorkerApi;
use ctcluster_common::addr_file::write_addr_file;
use ctcluster_common::health::{Health, serve_plain};

/// How long open connections may take to close once the coordinator stops (at most the
/// shutdown grace).
const CONNECTION_DRAIN: Duration = Duration::from_secs(2);

/// Largest block of request headers accepted.
const MAX_HEADER_BYTES: u32 = 64 << 10;

/// Runs a coordinator on `listener` until `shutdown` resolves, then stops its jobs (leaving
/// them resumable) and returns.
pub async fn serve(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordError> {
    let tls = config
        .tls
        .as_ref()
        .map(TlsAcceptor::new)
        .transpose()
        .map_err(|e| CoordError::bad("tls", e))?;
    let security = config.security.clone();
    let limits = config.connections.clone();
    let reload = config.users_reload;
    let grace = config.shutdown_grace;
    let health = Health::new().await;
    let health_listener = bind_health(&config, &listener).await?;
    let coord = Coordinator::new(config);
    if let Some(listener) = health_listener {
        let (health, stop) = (health.clone(), coord.shutdown.clone());
        coord.tracker.spawn(async move {
            if let Err(e) = serve_plain(listener, health, stop).await {
                tracing::error!(error = %e, "health listener stopped");
            }
        });
    }
    coord.start().await?;
    // Ready once the job records are loaded and the jobs they hold are resumed.
    health.set_ready(true).await;
    if let (Security::Tls { users }, Some(every)) = (&security, reload)
        && users.reloads()
    {
        let (users, stop) = (users.clone(), coord.shutdown.clone());
        coord
            .tracker
            .spawn(async move { reload_users(users, every, stop).await });
    }
    let client = InterceptedService::new(
        pb::client_service_server::ClientServiceServer::new(ClientApi::new(coord.clone()))
            .max_decoding_message_size(pb::MAX_MESSAGE_BYTES),
        client_gate(security.clone()),
    );
    let worker = InterceptedService::new(
        pb::worker_service_server::WorkerServiceServer::new(WorkerApi::new(coord.clone()))
            .max_decoding_message_size(pb::MAX_MESSAGE_BYTES),
        worker_gate(security),
    );
    let stop = coord.shutdown.clone();
    let coord_for_stop: Arc<Coordinator> = coord.clone();
    let (stopping_tx, mut stopping_rx) = watch::channel::<Option<Instant>>(None);
    let stopping_health = health.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
        let _ = stopping_tx.send(Some(Instant::now()));
        stopping_health.set_ready(false).await;
        // Stop the long polls and watches before the server drains its connections; the job
        // drivers checkpoint meanwhile.
        coord_for_stop.shutdown.cancel();
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_interval()))
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .http2_max_pending_accept_reset_streams(Some(64))
        .add_service(client)
        .add_service(worker)
        .add_service(health.service());
    // Connections come from our own accept loop (connection limit, TLS handshake with a
    // deadline, idle timeout); TCP_NODELAY is set on each (without it Nagle's algorithm and
    // delayed ACKs stall every small exchange by tens of milliseconds).
    let (tx, rx) = mpsc::channel::<Conn>(64);
    let stop_accepting = CancellationToken::new();
    let accepting = tokio::spawn(accept_loop(
        listener,
        tls,
        limits,
        tx,
        stop_accepting.clone(),
    ));
    let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    let serving = router.serve_with_incoming_shutdown(incoming, signal);
    // Once stopping, open connections get a short drain: long polls and watches have ended,
    // and a connection whose peer vanished without a word (a killed container, a cut link)
    // would otherwise hold the server until its keepalive gives up. The job drivers checkpoint
    // meanwhile; a late result is of no use to a stopped round.
    let mut drain_rx = stopping_rx.clone();
    let drained = async move {
        let since = drain_rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|at| *at);
        let Some(since) = since else {
            // The server ended without a stop signal: nothing to bound.
            return std::future::pending().await;
        };
        tokio::time::sleep_until(since + grace.min(CONNECTION_DRAIN)).await;
    };
    let result = tokio::select! {
        r = serving => r,
        () = drained => {
            tracing::warn!(
                drain_s = grace.min(CONNECTION_DRAIN).as_secs_f64(),
                "connections still open after the drain; closing them"
            );
            Ok(())
        }
    };
    stop_accepting.cancel();
    let _ = accepting.await;
    // Jobs checkpoint within the grace counted from the signal; past it the process ends
    // anyway (a half-written checkpoint has no manifest and is never loaded).
    let since = stopping_rx
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|at| *at)
        .unwrap_or_else(Instant::now);
    if tokio::time::timeout_at(since + grace, coord.stop())
        .await
        .is_err()
    {
        tracing::error!(
            grace_s = grace.as_secs_f64(),
            "jobs did not stop within the shutdown grace; exiting"
        );
    }
    result.map_err(|e| CoordError::bad("listener", e.to_string()))
}

/// Binds the plain-text health listener (with `--health-listen`) and writes `--addr-file`: the
/// main listener's address and the health listener's. Both roles start this way.
pub(crate) async fn bind_health(
    config: &CoordinatorConfig,
    listener: &TcpListener,
) -> Result<Option<TcpListener>, CoordError> {
    let health_listener = match config.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| CoordError::bad("health-listen", format!("{addr}: {e}")))?,
        ),
        None => None,
    };
    if let Some(path) = &config.addr_file {
        let local = |l: &TcpListener| {
            l.local_addr()
                .map_err(|e| CoordError::bad("listen", e.to_string()))
        };
        let mut addrs = vec![("grpc", local(listener)?)];
        if let Some(h) = &health_listener {
            addrs.push(("health", local(h)?));
        }
        write_addr_file(path, &addrs)?;
    }
    Ok(health_listener)
}

/// Reads the users file again every `every` until `stop`; a change takes effect at once, a
/// broken file is logged and the users stay as they were.
async fn reload_users(users: Arc<UsersTable>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let table = users.clone();
        match tokio::task::spawn_blocking(move || table.reload()).await {
            Ok(Ok(true)) => tracing::info!("users file changed; reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "users file not reloaded; the previous users stay")
            }
            Err(e) => tracing::error!(error = %e, "users file reload panicked"),
        }
    }
}
