//! Serving both services on a pre-bound listener until a shutdown future resolves: TLS with
//! authentication gates, or plain text in `--insecure` mode.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ctcluster_proto as pb;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;

use crate::auth::{client_gate, worker_gate};
use crate::client_api::ClientApi;
use crate::config::CoordinatorConfig;
use crate::error::CoordError;
use crate::state::Coordinator;
use crate::tls::{TlsAcceptor, TlsConn};
use crate::worker_api::WorkerApi;

/// Largest message accepted (gradient chunks are 1 MiB; specs are small).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let coord = Coordinator::new(config);
    coord.start().await?;
    let client = InterceptedService::new(
        pb::client_service_server::ClientServiceServer::new(ClientApi::new(coord.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        client_gate(security.clone()),
    );
    let worker = InterceptedService::new(
        pb::worker_service_server::WorkerServiceServer::new(WorkerApi::new(coord.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        worker_gate(security),
    );
    let stop = coord.shutdown.clone();
    let coord_for_stop: Arc<Coordinator> = coord.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
        // Stop the long polls and watches before the server drains its connections.
        coord_for_stop.shutdown.cancel();
    };
    let router = tonic::transport::Server::builder()
        .add_service(client)
        .add_service(worker);
    let result = match tls {
        Some(acceptor) => serve_tls(router, listener, acceptor, signal).await,
        None => {
            // TCP_NODELAY matters: without it Nagle's algorithm and delayed ACKs stall every
            // small request/response exchange by tens of milliseconds.
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                )
                .await
        }
    };
    coord.stop().await;
    result.map_err(|e| CoordError::bad("listener", e.to_string()))
}

async fn serve_tls(
    router: Router,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = mpsc::channel::<TlsConn>(64);
    let stop = CancellationToken::new();
    let accepting = tokio::spawn(accept_loop(listener, acceptor, tx, stop.clone()));
    let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    let result = router.serve_with_incoming_shutdown(incoming, signal).await;
    stop.cancel();
    let _ = accepting.await;
    result
}

/// Accepts connections and runs their handshakes concurrently (inside this task, so nothing
/// outlives it); finished connections go to the server.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<TlsConn>,
    stop: CancellationToken,
) {
    let mut handshakes = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let acceptor = acceptor.clone();
                    handshakes.push(async move {
                        (addr, tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await)
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some((addr, done)) = handshakes.next(), if !handshakes.is_empty() => match done {
                Ok(Ok(conn)) => {
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
            },
        }
    }
}
