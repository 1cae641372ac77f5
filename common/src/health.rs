//! The standard gRPC health protocol (`grpc.health.v1.Health`), as Kubernetes' native gRPC
//! probes, `grpc_health_probe` and every gRPC client library's health checker speak it.
//!
//! Two services are reported:
//! - `""` (the server as a whole) and `readiness`: SERVING only while the process can do its
//!   work (the coordinator: its state is loaded and it is not shutting down; a worker: it is
//!   registered with a coordinator that answers its heartbeats);
//! - `liveness`: SERVING for as long as the process runs and its runtime answers; a worker
//!   waiting for its coordinator is alive but not ready, and must not be restarted for it.
//!
//! [`serve_plain`] serves them on a plain-text listener of their own (kubelet's gRPC probes
//! speak no TLS), with a bound on its connections and on each request's time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The service name that follows readiness (as `""` does).
pub const READINESS: &str = "readiness";
/// The service name that follows liveness only.
pub const LIVENESS: &str = "liveness";

/// Most connections the plain health listener holds open at once.
pub const MAX_HEALTH_CONNECTIONS: usize = 32;
/// Most concurrent requests (watches included) on one health connection.
const MAX_HEALTH_STREAMS: u32 = 8;
/// Longest a health request may take.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The statuses a process reports; cheap to clone, shared by every server that serves them.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Alive, not yet ready.
    pub async fn new() -> Health {
        let health = Health {
            reporter: HealthReporter::new(),
        };
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        health.set_ready(false).await;
        health
    }

    /// Marks the process ready (SERVING) or not (NOT_SERVING) under `""` and `readiness`.
    pub async fn set_ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", READINESS] {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Marks the process as stopping: neither ready nor alive (a process on its way out).
    pub async fn set_stopping(&self) {
        self.set_ready(false).await;
        self.reporter
            .set_service_status(LIVENESS, ServingStatus::NotServing)
            .await;
    }

    /// The `grpc.health.v1.Health` service, to add to a server.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }
}

/// Serves `health` in plain text on `listener` until `stop` is cancelled.
pub async fn serve_plain(
    listener: TcpListener,
    health: Health,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = Limited::new(listener, MAX_HEALTH_CONNECTIONS);
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_HEALTH_STREAMS)
        .timeout(HEALTH_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health.service())
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// Accepted connections, each holding one of `max` permits until it closes; at the limit the
/// listener stops accepting (peers wait in the kernel's backlog).
struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    waiting: Option<Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Limited {
    fn new(listener: TcpListener, max: usize) -> Limited {
        Limited {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            waiting: None,
            permit: None,
        }
    }
}

impl Stream for Limited {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.permit.is_none() {
            let permits = this.permits.clone();
            let waiting = this.waiting.get_or_insert_with(|| {
                Box::pin(async move {
                    permits
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed")
                })
            });
            match waiting.as_mut().poll(cx) {
                Poll::Ready(permit) => {
                    this.waiting = None;
                    this.permit = Some(permit);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.listener.poll_accept(cx) {
            Poll::Ready(Ok((stream, _))) => {
                let _ = stream.set_nodelay(true);
                let permit = this.permit.take().expect("taken above");
                Poll::Ready(Some(Ok(Conn {
                    stream,
                    _permit: permit,
                })))
            }
            // A failed accept (a peer gone before we took it, out of descriptors) is skipped;
            // the server goes on.
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "health listener: accept failed");
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One health connection and its place under the limit.
struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
