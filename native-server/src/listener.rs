//! Serving HTTP/1.1 (plain or TLS) on the API and federation listeners with every
//! connection bounded (issue 15.3): a cap in all and per client prefix, a deadline for the
//! TLS handshake and each request header (which also ends idle kept-alive connections),
//! for each piece of a body, and for a whole request. What a stranger can hold is a
//! connection slot for at most `header_timeout` without sending a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use letterme_protocol::api::{ErrorBody, ErrorCode, ErrorDetail};
use letterme_protocol::net::{Admission, Refused};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

/// Largest request header section (request line and fields) read.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The bounds of one listener's connections.
#[derive(Debug, Clone)]
pub struct ConnBounds {
    pub connections: usize,
    pub per_prefix: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
}

impl ConnBounds {
    pub fn from_limits(l: &LimitsConfig) -> Self {
        Self {
            connections: l.connections,
            per_prefix: l.connections_per_prefix,
            header_timeout: Duration::from_secs(l.header_timeout.0),
            body_timeout: Duration::from_secs(l.body_timeout.0),
            request_timeout: Duration::from_secs(l.request_timeout.0),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open requests finish
/// (the caller bounds how long). `name` labels the listener in logs and metrics.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    bounds: ConnBounds,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let admission = Admission::new(bounds.connections as u64, bounds.per_prefix as u64);
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        bounds.body_timeout,
    ));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        };
        while conns.try_join_next().is_some() {}
        let admitted = match admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(why) => {
                let reason = match why {
                    Refused::Full => "full",
                    Refused::Share => "prefix",
                };
                metrics.connection_refused(name, reason);
                tracing::debug!(listener = name, %peer, reason, "connection refused");
                continue;
            }
        };
        let app = app.clone();
        let bounds = bounds.clone();
        let tls = tls.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(bounds.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => connection(tls, peer, app, &bounds, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => connection(stream, peer, app, &bounds, stop).await,
            }
            drop(admitted);
        });
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// One connection's requests, each within the request deadline.
async fn connection<S>(
    io: S,
    peer: SocketAddr,
    app: Router,
    bounds: &ConnBounds,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = bounds.request_timeout;
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let answer = tokio::time::timeout(deadline, app.oneshot(req.map(Body::new))).await;
            Ok::<_, std::convert::Infallible>(match answer {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => timed_out(deadline),
            })
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// The answer to a request that ran past `limits.request_timeout`; the connection closes.
fn timed_out(deadline: Duration) -> Response {
    let mut resp = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(ErrorBody {
            error: ErrorDetail::new(
                ErrorCode::Timeout,
                format!(
                    "the request took longer than {} seconds",
                    deadline.as_secs()
                ),
            ),
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_request_past_its_deadline_gets_408_and_its_connection_closes() {
        let app = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let bounds = ConnBounds {
            connections: 4,
            per_prefix: 4,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_millis(300),
        };
        let server = tokio::spawn(serve(
            "test",
            listener,
            None,
            app,
            bounds,
            Arc::new(Metrics::default()),
            rx,
        ));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut answer))
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}
