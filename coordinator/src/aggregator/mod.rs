//! The aggregator role (`ctcluster-coordinator --role aggregator`): holds one contiguous shard
//! of each sharded job's parameters and Adam state. Workers fetch the shard's parameters from
//! it and push the shard's range of their gradients to it, which it folds into the step's
//! reduction tree as they arrive; the coordinator, which still plans and schedules, installs
//! the shard, tells it to apply each step once every task has reported, and reads it back for
//! checkpoints. An aggregator keeps nothing on disk: after a crash the coordinator installs
//! the shard again from the newest checkpoint (see `driver::shards`).

mod service;
pub mod shard;

use std::future::Future;

use ctcluster_common::health::{Health, serve_plain};
use ctcluster_proto as pb;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

pub use service::{AggregatorApi, MAX_JOBS, MAX_PARAMS_HELD};

use crate::auth::worker_gate;
use crate::config::CoordinatorConfig;
use crate::connections::{Conn, accept_loop};
use crate::error::CoordError;
use crate::server::bind_health;
use crate::tls::TlsAcceptor;

/// How long open connections may take to close once the aggregator stops.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the aggregator role on `listener` until `shutdown` resolves: TLS with the cluster
/// CA's client certificates (the coordinator's, named `coordinator_name`, steers shards;
/// workers' fetch and push), or plain text with `--insecure`.
pub async fn serve_aggregator(
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
    let health = Health::new().await;
    let stop = CancellationToken::new();
    let health_listener = bind_health(&config, &listener).await?;
    let tasks = tokio_util::task::TaskTracker::new();
    if let Some(l) = health_listener {
        let (health, stop) = (health.clone(), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = serve_plain(l, health, stop).await {
                tracing::error!(error = %e, "health listener stopped");
            }
        });
    }
    health.set_ready(true).await;
    let api = InterceptedService::new(
        pb::aggregator_service_server::AggregatorServiceServer::new(AggregatorApi::new(
            tls.is_some().then(|| config.coordinator_name.clone()),
        ))
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES),
        worker_gate(config.security.clone()),
    );
    let limits = config.connections.clone();
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_interval()))
        .add_service(api)
        .add_service(health.service());
    let (tx, rx) = mpsc::channel::<Conn>(64);
    tasks.spawn(accept_loop(listener, tls, limits, tx, stop.clone()));
    let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    let serving = router.serve_with_incoming_shutdown(incoming, signal);
    // Once stopping, open connections (workers keep theirs) get a short drain.
    let drained = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        }
    };
    let result = tokio::select! {
        r = serving => r,
        () = drained => Ok(()),
    };
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    result.map_err(|e| CoordError::bad("listener", e.to_string()))
}
