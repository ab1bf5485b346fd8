//! Celery/kombu AMQP URLs as lapin's `AMQPUri` (SPEC §5.1).
//!
//! kombu's rules differ from lapin's own parser: the vhost is the path after
//! the *first* `/` (`amqp://h//` is vhost `/`, no path at all is `/` too),
//! `pyamqp://` and `librabbitmq://` mean `amqp://`, and missing parts default
//! to `guest:guest@localhost:5672`.

use anyhow::{Result, bail};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

/// True for the URL schemes this transport serves.
pub fn is_amqp(url: &str) -> bool {
    scheme(url).is_some()
}

fn scheme(url: &str) -> Option<AMQPScheme> {
    let (s, _) = url.split_once("://")?;
    match s {
        "amqp" | "pyamqp" | "librabbitmq" => Some(AMQPScheme::AMQP),
        "amqps" | "pyamqps" => Some(AMQPScheme::AMQPS),
        _ => None,
    }
}

/// Parses `url`; `heartbeat` is Celery's `broker_heartbeat` (seconds, 0 = off).
/// Of a failover list (`amqp://a;amqp://b`) the first URL is used.
pub fn parse(url: &str, heartbeat: u16) -> Result<AMQPUri> {
    let url = url.split(';').next().unwrap_or(url).trim();
    let Some(scheme) = scheme(url) else {
        bail!("not an AMQP URL");
    };
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, vhost) = match rest.split_once('/') {
        Some((a, v)) => (a, if v.is_empty() { "/" } else { v }),
        None => (rest, "/"),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((n, p)) => (decode(n), decode(p)),
            None => (decode(u), String::new()),
        },
        None => ("guest".to_string(), "guest".to_string()),
    };
    let default_port = match scheme {
        AMQPScheme::AMQP => 5672,
        AMQPScheme::AMQPS => 5671,
    };
    let (host, port) = match hostport.strip_prefix('[') {
        // IPv6 literal: `[::1]:5672`.
        Some(v6) => {
            let (h, tail) = v6.split_once(']').unwrap_or((v6, ""));
            (h, tail.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => p
            .parse()
            .map_err(|_| anyhow::anyhow!("bad port {p:?} in AMQP URL"))?,
        None => default_port,
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let mut q = AMQPQueryString {
        heartbeat: Some(heartbeat),
        ..AMQPQueryString::default()
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "heartbeat" => q.heartbeat = v.parse().ok().or(q.heartbeat),
            "connection_timeout" | "connect_timeout" => {
                // kombu gives seconds; lapin wants ms.
                q.connection_timeout = v.parse::<f64>().ok().map(|s| (s * 1000.0) as u64)
            }
            "frame_max" => q.frame_max = v.parse().ok(),
            "channel_max" => q.channel_max = v.parse().ok(),
            _ => {}
        }
    }
    Ok(AMQPUri {
        scheme,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo { username, password },
            host: host.to_string(),
            port,
        },
        vhost: decode(vhost),
        query: q,
    })
}

/// Percent-decoding of URL parts (`%2f` → `/`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Some(b) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(url: &str) -> AMQPUri {
        parse(url, 120).unwrap()
    }

    #[test]
    fn vhost_is_the_path_after_the_first_slash() {
        assert_eq!(p("amqp://guest:guest@localhost:5672//").vhost, "/");
        assert_eq!(p("amqp://guest:guest@localhost:5672/").vhost, "/");
        assert_eq!(p("amqp://localhost").vhost, "/");
        assert_eq!(p("amqp://h/myvhost").vhost, "myvhost");
        assert_eq!(p("amqp://h/%2fprod").vhost, "/prod");
    }

    #[test]
    fn defaults_and_schemes() {
        let u = p("pyamqp://");
        assert_eq!(u.authority.host, "localhost");
        assert_eq!(u.authority.port, 5672);
        assert_eq!(u.authority.userinfo.username, "guest");
        assert_eq!(u.authority.userinfo.password, "guest");
        let s = p("amqps://u:p%40ss@rabbit.example:5999/v");
        assert_eq!(s.scheme, AMQPScheme::AMQPS);
        assert_eq!(s.authority.port, 5999);
        assert_eq!(s.authority.userinfo.password, "p@ss");
        assert_eq!(p("amqps://rabbit").authority.port, 5671);
        assert_eq!(p("amqp://h?heartbeat=10").query.heartbeat, Some(10));
        assert_eq!(p("amqp://a:1/x;amqp://b:2/y").authority.host, "a");
        assert!(is_amqp("librabbitmq://h"));
        assert!(!is_amqp("redis://h"));
    }
}
