//! Node components' health: a healthz URL (plain HTTP on the node) or a unix socket.

use std::{path::Path, time::Duration};

/// Whether a node component answers: an `http://` healthz URL answers 200 `ok`, or a unix
/// socket accepts a connection.
pub async fn component_healthy(root: &Path, target: &str, timeout: Duration) -> Result<(), String> {
    let probe = async {
        if let Some(rest) = target.strip_prefix("http://") {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
            let mut s = tokio::net::TcpStream::connect(host).await.map_err(|e| format!("{target}: {e}"))?;
            let req = format!("GET /{} HTTP/1.0\r\nHost: {host}\r\n\r\n", path.trim_start_matches('/'));
            s.write_all(req.as_bytes()).await.map_err(|e| format!("{target}: {e}"))?;
            let mut buf = Vec::new();
            s.take(4096).read_to_end(&mut buf).await.map_err(|e| format!("{target}: {e}"))?;
            let text = String::from_utf8_lossy(&buf);
            let status = text.lines().next().unwrap_or_default().to_owned();
            if status.split_whitespace().nth(1) == Some("200") {
                Ok(())
            } else {
                Err(format!("{target} answered `{status}`"))
            }
        } else {
            let path = root.join(target.trim_start_matches('/'));
            tokio::net::UnixStream::connect(&path).await.map(drop).map_err(|e| format!("{}: {e}", path.display()))
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| format!("{target}: no answer within {}s", timeout.as_secs()))?
}
