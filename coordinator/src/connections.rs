//! Connections: accepted under a limit on how many are open, with a bounded TLS handshake,
//! closed when idle. Each connection holds a permit of the connection semaphore until it
//! closes; at the limit the listener stops accepting (new peers wait in the kernel's backlog)
//! instead of taking in more than it can serve.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::tls::{ClientCert, PeerInfo, TlsAcceptor, TlsStream};

/// Limits on the coordinator's connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most concurrent requests (HTTP/2 streams) on one connection.
    pub max_streams: u32,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// How long a client may take over its TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            max_streams: 64,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionLimits {
    /// How often the server pings each connection (HTTP/2 keepalive): a third of the idle
    /// timeout, so a live peer's answers keep its connection open.
    pub fn keepalive_interval(&self) -> Duration {
        self.idle_timeout / 3
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// One accepted connection: plain or TLS, what its handshake established, its idle timer and
/// its place under the connection limit.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    idle: Pin<Box<Sleep>>,
    idle_after: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn touch(&mut self) {
        let at = Instant::now() + self.idle_after;
        self.idle.as_mut().reset(at);
    }

    /// Ready with an error once the connection has been idle too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

macro_rules! on_io {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($s) => $e,
            Io::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match on_io!(this, s => Pin::new(s).poll_read(cx, buf)) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = on_io!(this, s => Pin::new(s).poll_write(cx, buf));
        if r.is_ready() {
            this.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        on_io!(this, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        on_io!(this, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = on_io!(this, s => Pin::new(s).poll_write_vectored(cx, bufs));
        if r.is_ready() {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections under the limits until `stop`, running TLS handshakes (when `tls` is
/// given) concurrently inside this task, so that nothing outlives it; ready connections go to
/// the server through `tx`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    tx: mpsc::Sender<Conn>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut handshakes = FuturesUnordered::new();
    let mut last_warned: Option<Instant> = None;
    loop {
        // A permit first: at the limit, nothing more is accepted until a connection closes.
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                if let Some(conn) = done
                    && tx.send(conn).await.is_err()
                {
                    return;
                }
                continue;
            }
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
            Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                drop(permit);
                if let Some(conn) = done
                    && tx.send(conn).await.is_err()
                {
                    return;
                }
                continue;
            }
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if slots.available_permits() == 0 {
            let now = Instant::now();
            if last_warned.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
                tracing::warn!(
                    limit = limits.max_connections,
                    "connection limit reached; new connections wait"
                );
                last_warned = Some(now);
            }
        }
        let idle_after = limits.idle_timeout;
        let idle = Box::pin(tokio::time::sleep(idle_after));
        match &tls {
            None => {
                let _ = tcp.set_nodelay(true);
                let info = PeerInfo {
                    remote: Some(addr),
                    cert: ClientCert::None,
                };
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info,
                    idle,
                    idle_after,
                    _permit: permit,
                };
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = limits.handshake_timeout;
                handshakes.push(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok((stream, info))) => Some(Conn {
                            io: Io::Tls(Box::new(stream)),
                            info,
                            idle,
                            idle_after,
                            _permit: permit,
                        }),
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "TLS handshake timed out");
                            None
                        }
                    }
                });
            }
        }
    }
}
