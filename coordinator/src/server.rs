//! Serving both services on a pre-bound listener until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use ctcluster_proto as pb;
use tokio::net::TcpListener;

use crate::client_api::ClientApi;
use crate::config::CoordinatorConfig;
use crate::error::CoordError;
use crate::state::Coordinator;
use crate::worker_api::WorkerApi;

/// Largest message accepted (gradient chunks are 1 MiB; specs are small).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Runs a coordinator on `listener` until `shutdown` resolves, then stops its jobs (leaving
/// them resumable) and returns.
pub async fn serve(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordError> {
    let coord = Coordinator::new(config);
    coord.start().await?;
    let client = pb::client_service_server::ClientServiceServer::new(ClientApi::new(coord.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let worker = pb::worker_service_server::WorkerServiceServer::new(WorkerApi::new(coord.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let stop = coord.shutdown.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
    };
    let coord_for_stop: Arc<Coordinator> = coord.clone();
    let result = tonic::transport::Server::builder()
        .add_service(client)
        .add_service(worker)
        // TCP_NODELAY matters: without it Nagle's algorithm and delayed ACKs stall every small
        // request/response exchange by tens of milliseconds.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                signal.await;
                // Stop the long polls and watches before the server drains its connections.
                coord_for_stop.shutdown.cancel();
            },
        )
        .await;
    coord.stop().await;
    result.map_err(|e| CoordError::bad("listener", e.to_string()))
}
