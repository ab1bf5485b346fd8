//! The smallest HTTP/1.1 server that serves a scrape and a probe: one
//! request per connection, `GET` only, answered and closed. Kubernetes
//! probes and Prometheus need nothing more, and it keeps a web stack out of
//! the worker.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoints read.
#[async_trait::async_trait]
pub trait Scrape: Send + Sync {
    /// `/metrics`: the exposition text.
    async fn metrics(&self) -> String;
    /// `/healthz`: alive or not, and a JSON body saying why.
    async fn health(&self) -> (bool, String);
}

/// Binds `0.0.0.0:port` (the error names the port when it is taken).
pub async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-port {port}: {e}"))
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, source: Arc<dyn Scrape>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, source)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, source: Arc<dyn Scrape>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head only; no request here has a body.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            source.metrics().await,
        ),
        ("GET" | "HEAD", "/healthz" | "/livez" | "/readyz") => {
            let (ok, body) = source.health().await;
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", body)
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);

    #[async_trait::async_trait]
    impl Scrape for Fixed {
        async fn metrics(&self) -> String {
            "m 1.0\n".into()
        }
        async fn health(&self) -> (bool, String) {
            (self.0, "{}".into())
        }
    }

    async fn get(port: u16, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_metrics_health_and_unknown_paths() {
        let l = bind(0).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(serve(l, Arc::new(Fixed(false))));
        let m = get(port, "/metrics").await;
        assert!(
            m.starts_with("HTTP/1.1 200 OK") && m.ends_with("m 1.0\n"),
            "{m}"
        );
        assert!(get(port, "/healthz").await.starts_with("HTTP/1.1 503"));
        assert!(get(port, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
