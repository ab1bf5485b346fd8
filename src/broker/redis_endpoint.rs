//! Where a Redis is, and connections to it that follow a Sentinel failover.
//!
//! A plain URL names one server. kombu's `sentinel://h1:26379;sentinel://h2`
//! with the `master_name` transport option names none: the server is
//! whichever one the sentinels call master now. A connection made here asks
//! them when it is made, and asks again when its server goes away or turns
//! replica (`READONLY`), moving to the new master as redis-py's
//! `SentinelConnectionPool` does under kombu and Celery.

use super::redis_url::{self, is_connection_error};
use anyhow::{Context, Result, bail};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Cmd, ConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;

/// kombu's default Sentinel port.
const SENTINEL_PORT: u16 = 26379;
/// A lost master is looked up again at most this often per connection.
const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// Sentinel settings of a transport-options mapping (`master_name`,
/// `sentinel_kwargs`), as kombu's `SentinelChannel` and Celery's
/// `SentinelBackend` read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentinelOptions {
    pub master_name: Option<String>,
    /// `sentinel_kwargs.username` / `.password`: for the sentinels only; the
    /// URL's own credentials are the master's.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl SentinelOptions {
    /// Reads the Sentinel keys of a transport-options mapping; others are left
    /// to their readers.
    pub fn apply(&mut self, opts: &serde_json::Value) {
        if let Some(name) = opts.get("master_name").and_then(|v| v.as_str()) {
            self.master_name = Some(name.to_string());
        }
        if let Some(kw) = opts.get("sentinel_kwargs") {
            let text = |k: &str| kw.get(k).and_then(|v| v.as_str()).map(str::to_string);
            self.username = text("username");
            self.password = text("password");
        }
    }
}

/// True for kombu's Sentinel URLs.
pub fn is_sentinel(url: &str) -> bool {
    url.starts_with("sentinel://")
}

/// One Redis to connect to: a URL's server, or a Sentinel set's master.
#[derive(Clone)]
pub struct Endpoint(Arc<Kind>);

// One per endpoint, behind its Arc: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Direct(redis::Client),
    Sentinel(SentinelSet),
}

struct SentinelSet {
    sentinel: AsyncMutex<Sentinel>,
    master_name: String,
    /// The URL's database and credentials, used on the master.
    node: SentinelNodeConnectionInfo,
    db: i64,
    /// The master last found, for `inspect stats` and the failover log line.
    current: Mutex<Option<ConnectionInfo>>,
}

impl Endpoint {
    /// The endpoint of a kombu Redis URL (`redis://`, `rediss://`,
    /// `socket://`, or `sentinel://…;sentinel://…`).
    pub fn new(url: &str, sentinel: &SentinelOptions) -> Result<Endpoint> {
        if !is_sentinel(url) {
            return Ok(Endpoint(Arc::new(Kind::Direct(redis_url::client(url)?))));
        }
        let masked = crate::config::mask_url(url);
        let Some(master_name) = sentinel.master_name.clone() else {
            bail!("{masked}: the 'master_name' transport option must be specified");
        };
        let mut sentinels = Vec::new();
        let mut first: Option<ConnectionInfo> = None;
        for part in url.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some(rest) = part.strip_prefix("sentinel://") else {
                bail!("{masked}: every address of a Sentinel URL must be sentinel://");
            };
            let info = redis::Client::open(format!("redis://{rest}").as_str())
                .with_context(|| format!("invalid Sentinel URL {masked}"))?
                .get_connection_info()
                .clone();
            let port = if rest_has_port(rest) {
                port_of(&info)
            } else {
                SENTINEL_PORT
            };
            let host = match info.addr() {
                redis::ConnectionAddr::Tcp(h, _) => h.clone(),
                _ => bail!("{masked}: a sentinel address must be host[:port]"),
            };
            let mut redis = redis::RedisConnectionInfo::default();
            if let Some(u) = &sentinel.username {
                redis = redis.set_username(u);
            }
            if let Some(p) = &sentinel.password {
                redis = redis.set_password(p);
            }
            sentinels.push(
                info.clone()
                    .set_addr(redis::ConnectionAddr::Tcp(host, port))
                    .set_redis_settings(redis),
            );
            first.get_or_insert(info);
        }
        let first = first.with_context(|| format!("{masked}: no sentinel address"))?;
        let db = first.redis_settings().db();
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(first.redis_settings().clone());
        let sentinel =
            Sentinel::build(sentinels).with_context(|| format!("invalid Sentinel URL {masked}"))?;
        Ok(Endpoint(Arc::new(Kind::Sentinel(SentinelSet {
            sentinel: AsyncMutex::new(sentinel),
            master_name,
            node,
            db,
            current: Mutex::new(None),
        }))))
    }

    /// The database the URL names.
    pub fn db(&self) -> i64 {
        match &*self.0 {
            Kind::Direct(c) => c.get_connection_info().redis_settings().db(),
            Kind::Sentinel(s) => s.db,
        }
    }

    /// Where connections go now (a Sentinel set: the master last found).
    pub fn connection_info(&self) -> Option<ConnectionInfo> {
        match &*self.0 {
            Kind::Direct(c) => Some(c.get_connection_info().clone()),
            Kind::Sentinel(s) => s.current.lock().expect("master lock").clone(),
        }
    }

    /// A client for the server to talk to now: the URL's, or the master the
    /// sentinels name (checked to call itself master).
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &*self.0 {
            Kind::Direct(c) => Ok(c.clone()),
            Kind::Sentinel(s) => {
                let client = s
                    .sentinel
                    .lock()
                    .await
                    .async_master_for(&s.master_name, Some(&s.node))
                    .await?;
                let found = client.get_connection_info().clone();
                let before = s
                    .current
                    .lock()
                    .expect("master lock")
                    .replace(found.clone());
                match before {
                    Some(b) if b.addr() == found.addr() => {}
                    Some(b) => tracing::warn!(
                        "Redis Sentinel: master {} is now {} (was {})",
                        s.master_name,
                        found.addr(),
                        b.addr()
                    ),
                    None => tracing::info!(
                        "Redis Sentinel: master {} is {}",
                        s.master_name,
                        found.addr()
                    ),
                }
                Ok(client)
            }
        }
    }

    /// A self-reconnecting connection; on a Sentinel set it also moves to a
    /// new master. `response_timeout` must exceed any blocking command sent.
    pub async fn manager(&self, response_timeout: Duration) -> RedisResult<Conn> {
        let client = self.client().await?;
        let manager = redis_url::manager(&client, response_timeout).await?;
        Ok(match &*self.0 {
            Kind::Direct(_) => Conn(ConnKind::Fixed(manager)),
            Kind::Sentinel(_) => Conn(ConnKind::Following(Arc::new(Following {
                endpoint: self.clone(),
                response_timeout,
                current: RwLock::new(manager),
                addr: Mutex::new(client.get_connection_info().addr().to_string()),
                refresh: AsyncMutex::new(None),
            }))),
        })
    }
}

fn rest_has_port(rest: &str) -> bool {
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty())
}

fn port_of(info: &ConnectionInfo) -> u16 {
    match info.addr() {
        redis::ConnectionAddr::Tcp(_, p) => *p,
        _ => SENTINEL_PORT,
    }
}

/// A connection to one Redis: fixed, or following a Sentinel set's master.
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Conn(ConnKind);

#[derive(Clone)]
enum ConnKind {
    Fixed(ConnectionManager),
    Following(Arc<Following>),
}

struct Following {
    endpoint: Endpoint,
    response_timeout: Duration,
    current: RwLock<ConnectionManager>,
    addr: Mutex<String>,
    /// When the master was last looked up; held while looking.
    refresh: AsyncMutex<Option<Instant>>,
}

impl Following {
    fn manager(&self) -> ConnectionManager {
        self.current.read().expect("connection lock").clone()
    }

    /// After a failed command: a lost server or a demoted one (`READONLY`)
    /// means the master may have moved; look it up and switch if it has.
    async fn after_error(&self, e: &redis::RedisError) {
        let demoted = matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        );
        if !(demoted || is_connection_error(e)) {
            return;
        }
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let client = match self.endpoint.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("Redis Sentinel: no master yet: {e}");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        if *self.addr.lock().expect("addr lock") == addr && !demoted {
            return;
        }
        match redis_url::manager(&client, self.response_timeout).await {
            Ok(m) => {
                *self.current.write().expect("connection lock") = m;
                *self.addr.lock().expect("addr lock") = addr;
            }
            Err(e) => tracing::warn!("Redis Sentinel: cannot connect to the master {addr}: {e}"),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            ConnKind::Fixed(m) => m.req_packed_command(cmd),
            ConnKind::Following(f) => {
                let f = Arc::clone(f);
                Box::pin(async move {
                    let result = f.manager().req_packed_command(cmd).await;
                    if let Err(e) = &result {
                        f.after_error(e).await;
                    }
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            ConnKind::Fixed(m) => m.req_packed_commands(pipeline, offset, count),
            ConnKind::Following(f) => {
                let f = Arc::clone(f);
                Box::pin(async move {
                    let result = f
                        .manager()
                        .req_packed_commands(pipeline, offset, count)
                        .await;
                    if let Err(e) = &result {
                        f.after_error(e).await;
                    }
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            ConnKind::Fixed(m) => m.get_db(),
            ConnKind::Following(f) => f.endpoint.db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(name: &str) -> SentinelOptions {
        SentinelOptions {
            master_name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_sentinel_url_needs_a_master_name() {
        let e = Endpoint::new("sentinel://:pw@h:26379/2", &SentinelOptions::default())
            .err()
            .expect("refused");
        let text = format!("{e:#}");
        assert!(text.contains("master_name"), "{text}");
        assert!(!text.contains("pw"), "password leaked: {text}");
    }

    #[test]
    fn a_sentinel_url_lists_its_sentinels_and_the_masters_db() {
        let ep = Endpoint::new(
            "sentinel://:pw@h1:26380/3;sentinel://h2;sentinel://h3:1/3",
            &opts("m"),
        )
        .unwrap();
        assert_eq!(ep.db(), 3);
        assert!(ep.connection_info().is_none(), "no master looked up yet");
        let Kind::Sentinel(s) = &*ep.0 else {
            panic!("not a sentinel endpoint")
        };
        assert_eq!(s.master_name, "m");
        assert!(rest_has_port("h1:26380/3") && !rest_has_port("h2") && !rest_has_port(":p@h/1"));
    }

    #[test]
    fn a_mixed_url_is_refused() {
        assert!(Endpoint::new("sentinel://h1;redis://h2", &opts("m")).is_err());
    }

    #[test]
    fn sentinel_options_read_kombus_keys() {
        let mut o = SentinelOptions::default();
        o.apply(&serde_json::json!({
            "master_name": "mymaster",
            "sentinel_kwargs": {"password": "s3cret"},
            "visibility_timeout": 10
        }));
        assert_eq!(o.master_name.as_deref(), Some("mymaster"));
        assert_eq!(o.password.as_deref(), Some("s3cret"));
        assert_eq!(o.username, None);
    }
}
