//! How every Firebreak HTTP API is served (feature `http`): plain HTTP, or HTTPS with rustls from
//! a PEM certificate chain and key; with graceful shutdown and the same limits everywhere — at
//! most [`MAX_CONNECTIONS`] connections at once (more wait in the listen backlog), a TLS
//! handshake within [`HANDSHAKE_TIMEOUT`], a request's headers within [`HEADER_READ_TIMEOUT`]
//! of the connection's start or of the previous response (so a slow or idle HTTP/1 client is
//! dropped), and HTTP/2 connections pinged and dropped when they stop answering.

use std::{path::Path, sync::Arc, time::Duration};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
    task::JoinSet,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{Error, Result};

/// A certificate chain and key, loaded and checked.
#[derive(Clone)]
pub struct Tls(Arc<ServerConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// Reads a PEM certificate chain and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let bad = |what: &Path, e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", what.display()));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, &e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(cert, &e))?;
        if chain.is_empty() {
            return Err(bad(cert, &"no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(format!("certificate and key do not fit together: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls(Arc::new(config)))
    }
}

/// Connections served at once by one server.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`: HTTPS when `tls` is given, else plain HTTP.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tls.map(|Tls(config)| TlsAcceptor::from(config));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        // A free slot first: at the limit, new clients wait in the backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
        };
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection(tcp, false, app, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                        connection(stream, h2, app, shutdown).await
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection until it ends, or gracefully at shutdown: HTTP/2 when TLS negotiated
/// it, else HTTP/1 (with upgrades). The protocol is known before the first byte is read, so the
/// header timeout covers a client that sends nothing at all.
async fn connection<I>(io: I, h2: bool, app: Router, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| app.clone().oneshot(req));
    let io = TokioIo::new(io);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads until the server closes the connection (or 30 s pass); what it sent, and when.
    async fn until_closed(tcp: &mut tokio::net::TcpStream) -> (String, Duration) {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_dropped_and_others_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, None, shutdown.clone()));
        let connect = || tokio::net::TcpStream::connect(addr);
        // Silent from the start, half a request line, and idle after one request: all dropped
        // within the header timeout; the one request was answered.
        let (mut silent, mut slow, mut idle) =
            (connect().await.unwrap(), connect().await.unwrap(), connect().await.unwrap());
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (a, b, c) = tokio::join!(until_closed(&mut silent), until_closed(&mut slow), until_closed(&mut idle));
        for (what, (_, took)) in [("silent", &a), ("slow", &b), ("idle", &c)] {
            assert!(*took < HEADER_READ_TIMEOUT + Duration::from_secs(5), "{what} held for {took:?}");
        }
        assert!(c.0.starts_with("HTTP/1.1 200 OK") && c.0.ends_with("ok"), "{}", c.0);
        assert!(!b.0.contains("200 OK"), "a request never finished is never answered: {}", b.0);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
