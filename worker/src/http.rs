//! `/metrics` (Prometheus text) and `/healthz`, on a plain TCP listener.
//!
//! `/healthz` answers 200 while the worker streams from its slot, or while
//! it stands by (another worker holds the slot's lock: "standby: ..."),
//! 503 otherwise (starting, reconnecting, or stopped on an error). Its body
//! names the destinations that are not fully working (a detached peer, a
//! failing pull): one peer's trouble degrades the worker, it does not make
//! it unhealthy.

use crate::metrics::Metrics;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = listener.accept() => a?,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // The request line and headers; the body (if any) is ignored.
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match (req.split_whitespace().next(), path) {
                (Some("GET"), "/metrics") => ("200 OK", metrics.render()),
                (Some("GET"), "/healthz") if metrics.connected.load(Relaxed) => {
                    let degraded = metrics.degraded();
                    if degraded.is_empty() {
                        ("200 OK", "streaming\n".to_string())
                    } else {
                        (
                            "200 OK",
                            format!("streaming; degraded: {}\n", degraded.join(", ")),
                        )
                    }
                }
                (Some("GET"), "/healthz")
                    if metrics.standby.load(Relaxed) && !metrics.active.load(Relaxed) =>
                {
                    (
                        "200 OK",
                        "standby: another worker holds the slot's lock; this one takes over when it goes\n"
                            .to_string(),
                    )
                }
                (Some("GET"), "/healthz") => {
                    ("503 Service Unavailable", "not streaming\n".to_string())
                }
                _ => ("404 Not Found", "try /metrics or /healthz\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
