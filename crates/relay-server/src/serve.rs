//! [`Relay`]: binding, the accept loop and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use relay_core::Hub;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::limits::RemoteAddr;

/// In a request's extensions when our own accept loop serves it: cancelling it closes the
/// request's TCP connection at once, for handlers that give up on a client hyper would
/// otherwise keep writing to.
#[derive(Clone, Default)]
pub(crate) struct ConnectionAbort(tokio_util::sync::CancellationToken);

impl ConnectionAbort {
    pub(crate) fn abort(&self) {
        self.0.cancel();
    }
}

/// A bound server, ready to [`serve`](Self::serve).
pub struct Relay {
    app: App,
    listener: TcpListener,
    shutdown_timeout: Duration,
}

impl Relay {
    /// Binds `config.listen` and builds the service over `hub`.
    pub async fn bind(config: Config, hub: Hub, auth: Authenticator) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
        Ok(Self {
            app: App::new(config, hub, auth),
            listener,
            shutdown_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The HTTP service.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stops accepting, closes
    /// every WebSocket with 1001, lets in-flight requests finish, all within the configured
    /// shutdown timeout.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            app,
            listener,
            shutdown_timeout,
        } = self;
        let connections = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve_connection(app.clone(), stream, peer));
                    }
                    Err(e) => {
                        // Typically EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: closing connections");
        app.begin_shutdown();
        connections.close();
        let drained = tokio::time::timeout(shutdown_timeout, async {
            connections.wait().await;
            app.sessions_closed().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?shutdown_timeout,
                "shutdown timeout: dropping remaining connections"
            );
        }
    }
}

async fn serve_connection(app: App, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let shutdown = app.inner.shutdown.clone();
    let header_timeout = app.inner.config.handshake_timeout();
    let abort = ConnectionAbort::default();
    let handlers_abort = abort.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(RemoteAddr(peer));
        req.extensions_mut().insert(handlers_abort.clone());
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // A handler gave up on this client (an event stream it stopped reading): drop the
        // socket and whatever hyper still buffers for it.
        () = abort.0.cancelled() => return,
        () = shutdown.cancelled() => {
            // Finish the request in flight, accept no new one.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn => result,
                () = abort.0.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}
