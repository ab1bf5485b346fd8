//! Turns Celery/kombu Redis URLs into redis-rs clients.
//!
//! kombu accepts `socket:///path` and `rediss://...?ssl_cert_reqs=...`;
//! redis-rs spells these `unix:///path` and `rediss://...#insecure`.

use anyhow::{Context, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// True for the URL schemes of kombu's Redis transports.
pub fn is_redis(url: &str) -> bool {
    ["redis://", "rediss://", "socket://", "sentinel://"]
        .iter()
        .any(|s| url.starts_with(s))
}

/// A redis-rs client for a kombu-style URL.
pub fn client(url: &str) -> Result<redis::Client> {
    install_tls_provider();
    redis::Client::open(translate(url).as_str())
        .with_context(|| format!("invalid Redis URL {}", crate::config::mask_url(url)))
}

/// The database number of a Redis URL (`/1` → 1), as kombu's fanout prefixes use.
pub fn db_number(url: &str) -> i64 {
    client(url)
        .map(|c| c.get_connection_info().redis_settings().db())
        .unwrap_or(0)
}

/// rustls needs a process-wide crypto provider before the first `rediss://`
/// connection; without one it panics at connect time.
fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn translate(url: &str) -> String {
    if let Some(path) = url.strip_prefix("socket://") {
        return format!("unix://{path}");
    }
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let mut insecure = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k == "ssl_cert_reqs" {
                insecure = matches!(v.to_ascii_lowercase().as_str(), "none" | "cert_none");
                false
            } else {
                true
            }
        })
        .collect();
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if insecure {
        out.push_str("#insecure");
    }
    out
}

/// A self-reconnecting multiplexed connection. `response_timeout` must exceed
/// any blocking command sent on it.
pub async fn manager(
    client: &redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client.clone(), cfg).await
}

/// Does this error mean the connection is gone (reconnect and retry) rather
/// than a bad command (don't retry)?
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                // No sentinel names a master (yet): kombu's MasterNotFoundError
                // is a ConnectionError, retried the same way.
                | redis::ErrorKind::MasterNameNotFoundBySentinel
                | redis::ErrorKind::NoValidReplicasFoundBySentinel
        )
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn translates_kombu_urls() {
        assert_eq!(translate("socket:///tmp/r.sock"), "unix:///tmp/r.sock");
        assert_eq!(
            translate("rediss://:pw@h:6380/0?ssl_cert_reqs=none"),
            "rediss://:pw@h:6380/0#insecure"
        );
        assert_eq!(
            translate("rediss://h/0?ssl_cert_reqs=required&x=1"),
            "rediss://h/0?x=1"
        );
        assert_eq!(translate("redis://h:1/2"), "redis://h:1/2");
    }
}
