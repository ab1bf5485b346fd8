//! Celery's Redis result backend: `celery-task-meta-<id>` keys written with
//! SETEX and announced with PUBLISH on the channel of the same name, which
//! `AsyncResult.get()` subscribes to.

use super::chord_lua;
use super::{BackendError, ChordJoin, ChordPart, ResultBackend};
use crate::broker::redis_endpoint::{Conn, Endpoint, SentinelOptions};
use crate::broker::redis_url::is_connection_error;
use crate::config::mask_url;
use crate::protocol::result_meta::ResultMeta;
use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Celery reads the key, skips the write if it holds SUCCESS, then
/// `MULTI SETEX PUBLISH EXEC`. One script does the same, atomically, for
/// every state waiting to be written: KEYS are the meta keys, ARGV[1] the
/// expiry in seconds (0 = none), ARGV[i + 1] the value of KEYS[i]. Returns
/// 1 (written) or 0 (a SUCCESS was there) per key, in order, so a STARTED
/// followed by its SUCCESS in one batch lands as two writes would.
const STORE_LUA: &str = r#"
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur and string.find(cur, '"status":%s*"SUCCESS"') then
    out[i] = 0
  else
    if ttl > 0 then
      redis.call('SETEX', KEYS[i], ttl, ARGV[i + 1])
    else
      redis.call('SET', KEYS[i], ARGV[i + 1])
    end
    redis.call('PUBLISH', KEYS[i], ARGV[i + 1])
    out[i] = 1
  end
end
return out
"#;

/// Most states written by one script call.
const MAX_STORE_BATCH: usize = 256;

/// A state waiting for the writer: key, value, and who waits for it.
type PendingStore = (String, String, oneshot::Sender<Result<bool, BackendError>>);

pub struct RedisBackend {
    url: String,
    conn: Conn,
    expires: Option<Duration>,
    /// `result_backend_transport_options.global_keyprefix`, normalised.
    prefix: String,
    /// States go through one writer that stores every state waiting at that
    /// moment with one script call: a script call per result cost Redis a
    /// wakeup and a reply per task, the most of its CPU at 10k tasks/s.
    stores: mpsc::UnboundedSender<PendingStore>,
    chord_part: redis::Script,
    chord_extend: redis::Script,
    chord_cleanup: redis::Script,
}

/// Seconds a chord claim is held (`max(5, 2 * result_chord_join_timeout)`),
/// how far it is extended while the callback is sent, and how long `done` stays.
const CLAIM_EXPIRES: u64 = 6;
const CLAIM_EXTEND: u64 = 21;
const DONE_EXPIRES: u64 = 300;

fn backend_err(e: redis::RedisError) -> BackendError {
    if is_connection_error(&e) {
        BackendError::Connection(e.to_string())
    } else {
        BackendError::Command(e.to_string())
    }
}

impl RedisBackend {
    pub async fn connect(
        url: &str,
        expires: Option<Duration>,
        keyprefix: &str,
        sentinel: &SentinelOptions,
    ) -> anyhow::Result<RedisBackend> {
        let conn = Endpoint::new(url, sentinel)?
            .manager(Duration::from_secs(10))
            .await?;
        let ttl = expires.map_or(0, |d| d.as_secs().max(1));
        let (stores, pending) = mpsc::unbounded_channel();
        tokio::spawn(write_states(conn.clone(), pending, ttl));
        Ok(RedisBackend {
            url: url.to_string(),
            conn,
            expires,
            prefix: normalize_prefix(keyprefix),
            stores,
            chord_part: redis::Script::new(chord_lua::CHORD_PART_RETURN_LUA),
            chord_extend: redis::Script::new(chord_lua::CHORD_EXTEND_CLAIM_LUA),
            chord_cleanup: redis::Script::new(chord_lua::CHORD_CLEANUP_LUA),
        })
    }

    /// `celery-task-meta-<id>`, with the backend's key prefix.
    pub fn task_key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    fn group_key(&self, group_id: &str) -> String {
        format!("{}celery-taskset-meta-{group_id}", self.prefix)
    }

    /// A connection for other writers that share this Redis (e.g. tasks that
    /// store their output next to the results).
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }
}

/// Writes waiting states in batches (see [`STORE_LUA`]) until the backend
/// is dropped.
async fn write_states(
    mut conn: Conn,
    mut pending: mpsc::UnboundedReceiver<PendingStore>,
    ttl: u64,
) {
    let script = redis::Script::new(STORE_LUA);
    let mut batch: Vec<PendingStore> = Vec::new();
    while pending.recv_many(&mut batch, MAX_STORE_BATCH).await > 0 {
        crate::batch::gather_more(&mut pending, &mut batch, MAX_STORE_BATCH).await;
        let mut inv = script.prepare_invoke();
        inv.arg(ttl);
        for (key, value, _) in &batch {
            inv.key(key).arg(value);
        }
        let written: Result<Vec<i64>, _> = inv.invoke_async(&mut conn).await;
        match written {
            // A waiter whose flag is missing (never expected) sees the writer stop.
            Ok(flags) => {
                for ((_, _, reply), flag) in batch.drain(..).zip(flags) {
                    let _ = reply.send(Ok(flag == 1));
                }
            }
            Err(e) => {
                let err = backend_err(e);
                for (_, _, reply) in batch.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
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
        let (reply, done) = oneshot::channel();
        let stopped = || BackendError::Command("result writer stopped".into());
        self.stores
            .send((self.task_key(&meta.task_id), value, reply))
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    async fn get_state(&self, task_id: &str) -> Result<String, BackendError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.task_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(backend_err)?;
        Ok(raw
            .and_then(|r| crate::protocol::result_meta::stored_status(&r))
            .unwrap_or_else(|| "PENDING".into()))
    }

    async fn has_group_result(&self, group_id: &str) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(self.group_key(group_id))
            .query_async::<bool>(&mut conn)
            .await
            .map_err(backend_err)
    }

    async fn set_chord_size(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let g = self.group_key(group_id);
        let expires = self.expires.map_or(86400, |d| d.as_secs().max(1));
        let mut conn = self.conn.clone();
        redis::pipe()
            .del(format!("{g}.c"))
            .ignore()
            .cmd("SET")
            .arg(format!("{g}.s"))
            .arg(size)
            .arg("EX")
            .arg(expires)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend_err)
    }

    async fn chord_part_return(&self, part: &ChordPart) -> Result<Option<ChordJoin>, BackendError> {
        let g = self.group_key(&part.group_id);
        let (jkey, tkey, skey, dkey, ckey) = (
            format!("{g}.j"),
            format!("{g}.t"),
            format!("{g}.s"),
            format!("{g}.d"),
            format!("{g}.c"),
        );
        let expires = self.expires.map_or(86400, |d| d.as_secs().max(1));
        let mut conn = self.conn.clone();
        if let Some(size) = part.chord_size {
            let _: () = redis::cmd("SET")
                .arg(&skey)
                .arg(size)
                .arg("EX")
                .arg(expires)
                .query_async(&mut conn)
                .await
                .map_err(backend_err)?;
        }
        let encoded = serde_json::json!([1, part.task_id, part.state, part.result]).to_string();
        let score = part
            .group_index
            .map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut inv = self.chord_part.prepare_invoke();
        inv.key(&jkey)
            .key(&tkey)
            .key(&skey)
            .key(&dkey)
            .key(&g)
            .key(&ckey);
        inv.arg(&part.task_id)
            .arg(&encoded)
            .arg("1")
            .arg(&score)
            .arg(expires)
            .arg(expires)
            .arg(CLAIM_EXPIRES)
            .arg(&token);
        let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(backend_err)?;
        let claimed = matches!(reply.get(3), Some(redis::Value::Int(1)));
        if !claimed {
            return Ok(None);
        }
        let raw: Vec<String> = redis::cmd("ZRANGE")
            .arg(&jkey)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(backend_err)?;
        let results = raw
            .iter()
            .filter_map(|r| {
                let v: serde_json::Value = serde_json::from_str(r).ok()?;
                Some((
                    v.get(1)?.as_str()?.to_string(),
                    v.get(2)?.as_str()?.to_string(),
                    v.get(3).cloned().unwrap_or_default(),
                ))
            })
            .collect();
        let mut extend = self.chord_extend.prepare_invoke();
        extend.key(&ckey).key(&skey).arg(&token).arg(CLAIM_EXTEND);
        let _: i64 = extend.invoke_async(&mut conn).await.map_err(backend_err)?;
        Ok(Some(ChordJoin { token, results }))
    }

    async fn chord_done(&self, group_id: &str, token: &str) -> Result<(), BackendError> {
        let g = self.group_key(group_id);
        let mut inv = self.chord_cleanup.prepare_invoke();
        for suffix in ["c", "j", "t", "s", "d"] {
            inv.key(format!("{g}.{suffix}"));
        }
        inv.arg(token).arg(DONE_EXPIRES);
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(backend_err)?;
        Ok(())
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
