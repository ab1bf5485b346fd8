//! Celery's Redis result backend: `celery-task-meta-<id>` keys written with
//! SETEX and announced with PUBLISH on the channel of the same name, which
//! `AsyncResult.get()` subscribes to.

use super::{BackendError, ResultBackend};
use crate::broker::redis_url::{self, is_connection_error};
use crate::config::mask_url;
use crate::protocol::result_meta::ResultMeta;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Celery reads the key, skips the write if it holds SUCCESS, then
/// `MULTI SETEX PUBLISH EXEC`. One script does the same atomically and in one
/// round trip. ARGV: value, expiry seconds (0 = none).
const STORE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.find(cur, '"status":%s*"SUCCESS"') then return 0 end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

pub struct RedisBackend {
    url: String,
    conn: ConnectionManager,
    expires: Option<Duration>,
    /// `result_backend_transport_options.global_keyprefix`, normalised.
    prefix: String,
    store: redis::Script,
}

impl RedisBackend {
    pub async fn connect(
        url: &str,
        expires: Option<Duration>,
        keyprefix: &str,
    ) -> anyhow::Result<RedisBackend> {
        let client = redis_url::client(url)?;
        let conn = redis_url::manager(&client, Duration::from_secs(10)).await?;
        Ok(RedisBackend {
            url: url.to_string(),
            conn,
            expires,
            prefix: normalize_prefix(keyprefix),
            store: redis::Script::new(STORE_LUA),
        })
    }

    /// `celery-task-meta-<id>`, with the backend's key prefix.
    pub fn task_key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    /// A connection for other writers that share this Redis (e.g. tasks that
    /// store their output next to the results).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Celery appends `_` to a prefix unless it already ends in `: _ - .`.
fn normalize_prefix(p: &str) -> String {
    if p.is_empty() || p.ends_with([':', '_', '-', '.']) {
        p.to_string()
    } else {
        format!("{p}_")
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, meta: &ResultMeta) -> Result<bool, BackendError> {
        let value = meta.to_json(chrono::Utc::now());
        let ttl = self.expires.map_or(0, |d| d.as_secs().max(1));
        let mut conn = self.conn.clone();
        let mut inv = self.store.prepare_invoke();
        inv.key(self.task_key(&meta.task_id)).arg(value).arg(ttl);
        let stored: i64 = inv.invoke_async(&mut conn).await.map_err(|e| {
            if is_connection_error(&e) {
                BackendError::Connection(e.to_string())
            } else {
                BackendError::Command(e.to_string())
            }
        })?;
        Ok(stored == 1)
    }

    fn url(&self) -> String {
        mask_url(&self.url)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_like_celery() {
        assert_eq!(super::normalize_prefix("x"), "x_");
        assert_eq!(super::normalize_prefix("x:"), "x:");
        assert_eq!(super::normalize_prefix(""), "");
    }
}
