//! kombu's Redis transport, key for key.
//!
//! * Queues are lists; producers `LPUSH`, consumers pop from the right.
//! * Priorities live in sibling lists `<queue>\x06\x16<step>`; lower steps are
//!   popped first, bucket-major across all queues (SPEC §4.3–4.4).
//! * Every delivered message is recorded in `unacked` (hash tag → `[envelope,
//!   exchange, routing_key]`) and `unacked_index` (zset tag → time) until
//!   acked; entries older than the visibility timeout are pushed back by any
//!   consumer (`restore_visible`), guarded by `unacked_mutex`.
//!
//! Messages are popped by a Lua script that pops in kombu's order *and*
//! records `unacked` in the same atomic step, so no message can be lost
//! between the pop and the bookkeeping, a window kombu's BRPOP-then-MULTI
//! has. When nothing is ready, [`wakeup`] sleeps until something is, without
//! taking it. (Redis < 6.2 has no `BLMOVE`: there we block in kombu's
//! `BRPOP`, window included, and say so at start.)

mod wakeup;

use super::redis_endpoint::{Conn, Endpoint};
use super::redis_url::is_connection_error;
use super::{Broker, BrokerError, Delivery, Fanout, Maintain, Settle, Settlement};
use crate::config::{TransportOptions, mask_url};
use crate::protocol::Envelope;
use async_trait::async_trait;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::{mpsc, oneshot};
use wakeup::Wakeup;

/// Most acks settled in one `MULTI ZREM … HDEL … EXEC`.
const MAX_ACK_BATCH: usize = 512;

type AckReply = oneshot::Sender<Result<(), BrokerError>>;

/// kombu's separator between queue name and priority step, and in binding members.
pub const SEP: &str = "\x06\x16";

/// Pops up to ARGV[1] messages from KEYS[3..] in order and records each in
/// `unacked` (KEYS[1]) / `unacked_index` (KEYS[2]) with score ARGV[2].
/// Returns a flat list `key, raw, tag, key, raw, tag, ...`, `tag` being the
/// delivery tag recorded ('' when none was): the delivery settles by it, and
/// its handler checks it against the envelope it parses (`Settle::retag`).
///
/// The tag and route are read with plain string searches when the envelope
/// reads as kombu writes it (`json.dumps`: `"delivery_tag": "…"` and
/// `"delivery_info": {"exchange": "…", "routing_key": "…"}`, each key once);
/// anything else is decoded with cjson. Decoding every message cost Redis
/// 8 µs of the fetch's 21 µs per message on the bench machine. The searches
/// look for `_tag"` / `_info"` and check the `"delivery` before them: Lua's
/// plain find runs `memchr` on the needle's first byte, and a `"` matched
/// ~100 times per envelope (a `memcmp` each: 7 % of Redis's CPU at 26k
/// tasks/s), a `_` ~15 times (base64 has none).
const FETCH_LUA: &str = r#"
-- Where '"delivery' .. suffix starts, when it is in raw exactly once.
local function once(raw, suffix)
  local at, init = nil, 1
  while true do
    local s, e = string.find(raw, suffix, init, true)
    if not s then return at end
    if s > 9 and string.sub(raw, s - 9, s - 1) == '"delivery' then
      if at then return nil end
      at = s - 9
    end
    init = e + 1
  end
end

local function route(raw)
  local t = once(raw, '_tag"')
  if t and string.sub(raw, t + 14, t + 16) == ': "' then
    local tag = string.match(raw, '^([^"\\]+)"', t + 17)
    local i = once(raw, '_info"')
    if tag and i and string.sub(raw, i + 15, i + 30) == ': {"exchange": "' then
      local ex, rk = string.match(raw, '^([^"\\]*)", "routing_key": "([^"\\]*)"}', i + 31)
      if ex then return tag, '"' .. ex .. '"', '"' .. rk .. '"' end
    end
  end
  local ok, msg = pcall(cjson.decode, raw)
  if not (ok and type(msg) == 'table' and type(msg['properties']) == 'table') then return nil end
  local props = msg['properties']
  local tag = props['delivery_tag']
  if type(tag) ~= 'string' then return nil end
  local ex, rk = '', ''
  local di = props['delivery_info']
  if type(di) == 'table' then
    if type(di['exchange']) == 'string' then ex = di['exchange'] end
    if type(di['routing_key']) == 'string' then rk = di['routing_key'] end
  end
  return tag, cjson.encode(ex), cjson.encode(rk)
end

local out = {}
local max = tonumber(ARGV[1])
local n = 0
for i = 3, #KEYS do
  local key = KEYS[i]
  while n < max do
    local raw = redis.call('RPOP', key)
    if not raw then break end
    local tag, ex, rk = route(raw)
    if tag then
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. raw .. ', ' .. ex .. ', ' .. rk .. ']')
    end
    out[#out + 1] = key
    out[#out + 1] = raw
    out[#out + 1] = tag or ''
    n = n + 1
  end
  if n >= max then break end
end
return out
"#;

/// Compare-and-restore: if `unacked[tag]` still holds ARGV[2], remove it from
/// both tables and push ARGV[3] onto KEYS[3..] (ARGV[4] = 'l' LPUSH, 'r' RPUSH).
/// Atomic, so two workers restoring the same tag restore it once.
const RESTORE_LUA: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 3, #KEYS do
  if ARGV[4] == 'l' then redis.call('LPUSH', KEYS[i], ARGV[3]) else redis.call('RPUSH', KEYS[i], ARGV[3]) end
end
return 1
"#;

/// Releases `unacked_mutex` only if we still own it (kombu's Lua, same logic).
const UNLOCK_LUA: &str = r#"
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"#;

fn conn_err(e: redis::RedisError) -> BrokerError {
    if is_connection_error(&e) {
        BrokerError::Connection(e.to_string())
    } else {
        BrokerError::Command(e.to_string())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A delivery's `unacked_index` score: the time, rounded up to a whole
/// second. kombu stores the float time; anything that reads the score
/// (restore after `visibility_timeout`) compares it with `time() - timeout`,
/// so rounding up never restores a message sooner than kombu would. A
/// whole number lets Redis skip formatting and parsing a double on every
/// ZADD (`%.17g` and `strtod`: 4 % of its CPU at 26k tasks/s).
fn unacked_score() -> u64 {
    unix_now().ceil() as u64
}

/// How the consumer waits when nothing is ready.
enum Idle {
    /// Sleep without taking the message, then pop it with the fetch script.
    Wakeup(Box<Wakeup>),
    /// Redis < 6.2: kombu's `BRPOP`, on a connection of its own whose
    /// response timeout exceeds the BRPOP timeout.
    Brpop(AsyncMutex<Conn>),
}

/// The Redis transport of one worker: its channel, shared with the
/// settlement handles of its deliveries.
pub struct RedisBroker(Arc<RedisChannel>);

impl std::ops::Deref for RedisBroker {
    type Target = RedisChannel;
    fn deref(&self) -> &RedisChannel {
        &self.0
    }
}

/// A message as popped, before it gets its settlement handle.
struct Popped {
    tag: String,
    queue: String,
    payload: super::Payload,
}

/// Settles one delivery through its `unacked` entry.
struct RedisSettle {
    channel: Arc<RedisChannel>,
    tag: String,
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.channel.ack_tag(&self.tag).await
    }
    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        self.channel.reject_tag(&self.tag, requeue).await
    }
    async fn restore(&self) -> Result<(), BrokerError> {
        self.channel.restore_tag(&self.tag).await
    }
    async fn retag(&mut self, recorded: &str, tag: &str, raw: &[u8], env: &Envelope) {
        self.channel.rerecord(recorded, tag, raw, env).await;
        self.tag = tag.to_string();
    }
}

impl RedisBroker {
    /// Connects (two connections) to the broker at `url`.
    pub async fn connect(
        url: &str,
        queues: &[String],
        opts: TransportOptions,
    ) -> anyhow::Result<RedisBroker> {
        Ok(RedisBroker(Arc::new(
            RedisChannel::connect(url, queues, opts).await?,
        )))
    }

    /// Binds queues as their `task_queues` declarations say (kombu's
    /// default binds a queue to the exchange and routing key of its name).
    pub fn with_bindings(mut self, decls: &[crate::config::QueueDecl]) -> Self {
        if let Some(ch) = Arc::get_mut(&mut self.0) {
            ch.bindings = decls
                .iter()
                .map(|d| (d.name.clone(), (d.exchange.clone(), d.routing_key.clone())))
                .collect();
        }
        self
    }

    fn delivery(&self, p: Popped) -> Delivery {
        let settle = RedisSettle {
            channel: Arc::clone(&self.0),
            tag: p.tag.clone(),
        };
        Delivery {
            queue: p.queue,
            payload: p.payload,
            settle: Settlement::new(p.tag, Box::new(settle)),
        }
    }
}

/// One kombu channel on Redis.
pub struct RedisChannel {
    url: String,
    /// For the pub/sub and reply connections made on demand.
    endpoint: Endpoint,
    /// kombu's fanout prefix `/{db}.`.
    fanout_prefix: String,
    opts: TransportOptions,
    /// Commands that never block: acks, restores, fetch script, publish.
    conn: Conn,
    idle: Idle,
    /// Queue order for the next pop; rotated round-robin as kombu does.
    cycle: Mutex<Vec<String>>,
    /// The consumed queues in the order they were given (`active_queues`).
    consumed: Mutex<Vec<String>>,
    fetch: redis::Script,
    restore: redis::Script,
    unlock: redis::Script,
    last_visibility_scan: Mutex<Option<std::time::Instant>>,
    /// Acks go through one flusher that settles every ack waiting at that
    /// moment in a single transaction (same commands as kombu, fewer trips).
    acks: mpsc::UnboundedSender<(String, AckReply)>,
    /// `task_queues` declarations: queue → (exchange, routing key).
    bindings: std::collections::HashMap<String, (String, String)>,
}

impl RedisChannel {
    async fn connect(
        url: &str,
        queues: &[String],
        opts: TransportOptions,
    ) -> anyhow::Result<RedisChannel> {
        let endpoint = Endpoint::new(url, &opts.sentinel)?;
        let mut conn = endpoint.manager(Duration::from_secs(10)).await?;
        let idle = if wakeup::supported(&mut conn).await {
            Idle::Wakeup(Box::new(Wakeup::new(endpoint.clone(), opts.brpop_timeout)))
        } else {
            tracing::warn!(
                "this Redis has no BLMOVE (< 6.2): consuming with BRPOP as kombu does, \
                 so a worker killed between the pop and its unacked bookkeeping loses \
                 that message; upgrade Redis to close the window"
            );
            let block_timeout =
                Duration::from_secs_f64(opts.brpop_timeout) + Duration::from_secs(5);
            Idle::Brpop(AsyncMutex::new(endpoint.manager(block_timeout).await?))
        };
        let (acks, pending) = mpsc::unbounded_channel();
        tokio::spawn(flush_acks(
            conn.clone(),
            pending,
            format!("{}{}", opts.global_keyprefix, opts.unacked_key),
            format!("{}{}", opts.global_keyprefix, opts.unacked_index_key),
        ));
        let db = endpoint.db();
        Ok(RedisChannel {
            acks,
            endpoint,
            fanout_prefix: format!("/{db}."),
            url: url.to_string(),
            opts,
            conn,
            idle,
            cycle: Mutex::new(queues.to_vec()),
            consumed: Mutex::new(queues.to_vec()),
            fetch: redis::Script::new(FETCH_LUA),
            restore: redis::Script::new(RESTORE_LUA),
            unlock: redis::Script::new(UNLOCK_LUA),
            last_visibility_scan: Mutex::new(None),
            bindings: Default::default(),
        })
    }

    /// kombu's fanout topic: `/{db}.<exchange>`, `/<routing_key>` appended
    /// when set; `global_keyprefix` in front (kombu prefixes PUBLISH and
    /// PSUBSCRIBE alike).
    fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        let g = &self.opts.global_keyprefix;
        if routing_key.is_empty() {
            format!("{g}{}{exchange}", self.fanout_prefix)
        } else {
            format!("{g}{}{exchange}/{routing_key}", self.fanout_prefix)
        }
    }

    async fn pubsub(&self, topic: &str) -> Result<redis::aio::PubSub, BrokerError> {
        subscribe(&self.endpoint, topic).await.map_err(conn_err)
    }

    /// Queues bound to a direct `exchange` with `routing_key` (no fallback).
    async fn bound_queues(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(&format!("_kombu.binding.{exchange}")))
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let mut parts = m.splitn(3, SEP);
                let (rk, _pattern, queue) = (parts.next()?, parts.next()?, parts.next()?);
                (rk == routing_key).then(|| queue.to_string())
            })
            .collect())
    }

    /// Declares a queue's binding as a Celery worker does
    /// (`SADD _kombu.binding.<exchange>` + `_kombu.binding_permanent.<exchange>`).
    async fn declare(&self, q: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let (exchange, rk) = self
            .bindings
            .get(q)
            .map_or((q, q), |(e, k)| (e.as_str(), k.as_str()));
        let member = format!("{rk}{SEP}{SEP}{q}");
        redis::pipe()
            .atomic()
            .sadd(self.key(&format!("_kombu.binding.{exchange}")), &member)
            .sadd(
                self.key(&format!("_kombu.binding_permanent.{exchange}")),
                &member,
            )
            .query_async::<()>(&mut conn)
            .await
            .map_err(conn_err)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.opts.global_keyprefix, name)
    }

    /// The list key of `queue` for a message of `priority` (SPEC §4.4).
    pub fn queue_key(&self, queue: &str, priority: i64) -> String {
        let p = priority.clamp(0, 9) as u8;
        let step = self
            .opts
            .priority_steps
            .iter()
            .copied()
            .filter(|s| *s <= p)
            .max()
            .unwrap_or(0);
        if step == 0 {
            self.key(queue)
        } else {
            format!("{}{queue}{SEP}{step}", self.opts.global_keyprefix)
        }
    }

    /// The list keys of one queue, one per priority step (kombu's `_q_for_pri`).
    fn queue_keys(&self, queue: &str) -> Vec<String> {
        self.opts
            .priority_steps
            .iter()
            .map(|step| {
                if *step == 0 {
                    self.key(queue)
                } else {
                    format!("{}{queue}{SEP}{step}", self.opts.global_keyprefix)
                }
            })
            .collect()
    }

    /// All list keys in kombu's BRPOP order: bucket-major, then queue order.
    fn pop_order(&self) -> Vec<String> {
        let queues = self.cycle.lock().expect("cycle lock").clone();
        let mut keys = Vec::with_capacity(queues.len() * self.opts.priority_steps.len());
        for step in &self.opts.priority_steps {
            for q in &queues {
                keys.push(if *step == 0 {
                    self.key(q)
                } else {
                    format!("{}{q}{SEP}{step}", self.opts.global_keyprefix)
                });
            }
        }
        keys
    }

    /// Maps a popped list key back to its queue name and rotates that queue
    /// to the end of the cycle (kombu's round-robin `queue_order_strategy`).
    fn queue_of(&self, key: &str) -> String {
        let key = key.strip_prefix(&self.opts.global_keyprefix).unwrap_or(key);
        let queue = match key.rfind(SEP) {
            Some(i) => &key[..i],
            None => key,
        }
        .to_string();
        let mut cycle = self.cycle.lock().expect("cycle lock");
        if let Some(pos) = cycle.iter().position(|q| *q == queue) {
            let q = cycle.remove(pos);
            cycle.push(q);
        }
        queue
    }

    /// A message popped with nothing recorded for it: parsed now, and
    /// recorded in `unacked` under its tag if it has one. The message is
    /// ours either way: a failed record is logged and the message runs
    /// rather than being lost.
    async fn parse_and_record(&self, queue: String, raw: &[u8]) -> Popped {
        let payload = Envelope::parse(raw);
        let tag = payload
            .as_ref()
            .ok()
            .and_then(|e| e.delivery_tag())
            .unwrap_or_default()
            .to_string();
        if let Ok(env) = &payload
            && !tag.is_empty()
        {
            self.rerecord("", &tag, raw, env).await;
        }
        Popped {
            tag,
            queue,
            payload: super::Payload::Parsed(payload),
        }
    }

    /// kombu's `BRPOP` followed by its `MULTI ZADD HSET EXEC` bookkeeping.
    async fn brpop_one(&self, blocking: &AsyncMutex<Conn>) -> Result<Option<Popped>, BrokerError> {
        let keys = self.pop_order();
        let popped: Option<(String, Vec<u8>)> = {
            let mut conn = blocking.lock().await;
            redis::cmd("BRPOP")
                .arg(&keys)
                .arg(self.opts.brpop_timeout)
                .query_async(&mut *conn)
                .await
                .map_err(conn_err)?
        };
        let Some((key, raw)) = popped else {
            return Ok(None);
        };
        Ok(Some(self.parse_and_record(self.queue_of(&key), &raw).await))
    }

    /// Pops up to `max` ready messages without blocking.
    async fn fetch_batch(&self, max: usize) -> Result<Vec<Popped>, BrokerError> {
        let mut inv = self.fetch.prepare_invoke();
        inv.key(self.key(&self.opts.unacked_key))
            .key(self.key(&self.opts.unacked_index_key));
        for k in self.pop_order() {
            inv.key(k);
        }
        inv.arg(max).arg(unacked_score());
        let mut conn = self.conn.clone();
        let flat: Vec<Vec<u8>> = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        let mut flat = flat.into_iter();
        while let (Some(key), Some(raw), Some(recorded)) = (flat.next(), flat.next(), flat.next()) {
            let queue = self.queue_of(&String::from_utf8_lossy(&key));
            if !recorded.is_empty() {
                // Parsed by the handler, which checks the tag then (`retag`).
                out.push(Popped {
                    tag: String::from_utf8_lossy(&recorded).into_owned(),
                    queue,
                    payload: super::Payload::Json(raw),
                });
                continue;
            }
            // The script found no tag: nothing is recorded, so parse now, and
            // record it if serde finds the tag cjson did not.
            out.push(self.parse_and_record(queue, &raw).await);
        }
        Ok(out)
    }

    /// Records a message in `unacked` / `unacked_index` under `tag` (empty:
    /// none), in one `MULTI`, first removing what was recorded under
    /// `recorded` (empty: nothing). Used for kombu's bookkeeping after a
    /// `BRPOP`, and when the fetch script recorded a tag other than the
    /// envelope's own (a message whose only `"delivery_tag"` key is not in
    /// its properties): the entry moves, so the ack finds it and nothing
    /// stays recorded under another's tag.
    async fn rerecord(&self, recorded: &str, tag: &str, raw: &[u8], env: &Envelope) {
        if !recorded.is_empty() {
            tracing::warn!("delivery {tag:?} was recorded in unacked as {recorded:?}; moving it");
        }
        let (unacked, index) = (
            self.key(&self.opts.unacked_key),
            self.key(&self.opts.unacked_index_key),
        );
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !recorded.is_empty() {
            pipe.zrem(&index, recorded).hdel(&unacked, recorded);
        }
        if !tag.is_empty() {
            pipe.zadd(&index, tag, unacked_score())
                .hset(&unacked, tag, unacked_entry(raw, env));
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!("could not record delivery {tag} in unacked: {e}");
        }
    }

    /// Moves an unacked message back onto its queue (kombu's `restore_by_tag`):
    /// marks it redelivered, RPUSH (next to consume) or LPUSH (`leftmost`, the back).
    async fn restore_by_tag(&self, tag: &str, leftmost: bool) -> Result<bool, BrokerError> {
        let mut conn = self.conn.clone();
        let unacked = self.key(&self.opts.unacked_key);
        let stored: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&unacked)
            .arg(tag)
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        let parsed: Option<(Value, String, String)> = serde_json::from_slice(&stored).ok();
        let Some((mut payload, exchange, routing_key)) = parsed else {
            tracing::error!(
                "unacked entry {tag} is not [envelope, exchange, routing_key]; dropping it"
            );
            let _: Result<(), _> = redis::pipe()
                .atomic()
                .zrem(self.key(&self.opts.unacked_index_key), tag)
                .hdel(&unacked, tag)
                .query_async(&mut conn)
                .await;
            return Ok(false);
        };
        if let Some(h) = payload.get_mut("headers").and_then(Value::as_object_mut) {
            h.insert("redelivered".into(), Value::Bool(true));
        }
        if let Some(di) = payload
            .get_mut("properties")
            .and_then(|p| p.get_mut("delivery_info"))
            .and_then(Value::as_object_mut)
        {
            di.insert("redelivered".into(), Value::Bool(true));
        }
        let priority = payload
            .get("properties")
            .and_then(|p| p.get("priority"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let queues = self.lookup(&exchange, &routing_key).await?;
        let mut inv = self.restore.prepare_invoke();
        inv.key(&unacked)
            .key(self.key(&self.opts.unacked_index_key));
        for q in &queues {
            inv.key(self.queue_key(q, priority));
        }
        inv.arg(tag)
            .arg(stored)
            .arg(payload.to_string())
            .arg(if leftmost { "l" } else { "r" });
        let restored: i64 = inv.invoke_async(&mut conn).await.map_err(conn_err)?;
        Ok(restored == 1)
    }

    /// kombu's `_lookup`: the anonymous exchange routes by queue name; named
    /// exchanges through their `_kombu.binding.<exchange>` table.
    async fn lookup(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        // The default exchange routes to the queue named by the key
        // (kombu's virtual transports do the same): RPC replies.
        let queues = if exchange.is_empty() {
            vec![routing_key.to_string()]
        } else {
            self.bound_queues(exchange, routing_key).await?
        };
        // Unbound: fall back to the routing key, as Celery's queues are named after it.
        Ok(if queues.is_empty() {
            vec![routing_key.to_string()]
        } else {
            queues
        })
    }

    /// kombu's `restore_visible`: push back messages unacked for longer than
    /// the visibility timeout, under `unacked_mutex`. Returns how many.
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        let mut conn = self.conn.clone();
        let mutex = self.key(&self.opts.unacked_mutex_key);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.opts.unacked_mutex_expire * 1000)
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        if locked.is_none() {
            return Ok(0);
        }
        let ceiling = unix_now() - self.opts.visibility_timeout;
        let result = async {
            let expired: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(self.key(&self.opts.unacked_index_key))
                .arg(ceiling)
                .arg(0)
                .arg("BYSCORE")
                .arg("REV")
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(conn_err)?;
            let mut n = 0;
            for (tag, _) in expired {
                if self.restore_by_tag(&tag, false).await? {
                    n += 1;
                }
            }
            Ok(n)
        }
        .await;
        let mut unlock = self.unlock.prepare_invoke();
        unlock.key(&mutex).arg(&token);
        let _: Result<i64, _> = unlock.invoke_async(&mut conn).await;
        if let Ok(n) = result
            && n > 0
        {
            tracing::warn!("Restored {n} unacknowledged message(s) past the visibility timeout");
        }
        result
    }
}

#[async_trait]
impl Broker for RedisBroker {
    /// Declares each queue's binding as a Celery worker does
    /// (`SADD _kombu.binding.<q>` + `_kombu.binding_permanent.<q>`), then runs
    /// the start-up visibility scan.
    async fn start(&self) -> Result<(), BrokerError> {
        for q in self.queues() {
            self.declare(&q).await?;
        }
        self.restore_visible().await?;
        *self.last_visibility_scan.lock().expect("scan lock") = Some(std::time::Instant::now());
        Ok(())
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let max = max.max(1);
        let mut got = self.fetch_batch(max).await?;
        if got.is_empty() {
            match &self.idle {
                Idle::Wakeup(w) => {
                    if w.wait(&self.pop_order()).await {
                        got = self.fetch_batch(max).await?;
                    }
                }
                Idle::Brpop(conn) => got = self.brpop_one(conn).await?.into_iter().collect(),
            }
        }
        // A pop already under way when `cancel_consumer` arrived may bring a
        // message of a queue no longer consumed: it goes back, untouched.
        let consumed = self.consumed.lock().expect("queues lock").clone();
        let mut kept = Vec::with_capacity(got.len());
        for d in got {
            if d.tag.is_empty() || consumed.contains(&d.queue) {
                kept.push(self.delivery(d));
            } else {
                self.restore_by_tag(&d.tag, false).await?;
            }
        }
        Ok(kept)
    }

    async fn publish(&self, queue: &str, envelope: &Envelope) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        redis::cmd("LPUSH")
            .arg(self.queue_key(queue, envelope.priority()))
            .arg(augmented(envelope, "", queue))
            .query_async::<()>(&mut conn)
            .await
            .map_err(conn_err)
    }

    fn url(&self) -> String {
        mask_url(&self.url)
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for key in self.queue_keys(queue) {
            pipe.cmd("LLEN").arg(key);
        }
        let lens: Vec<u64> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(conn_err)?;
        Ok(lens.iter().sum())
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        // kombu's `_purge`: the size, then the lists are deleted, atomically.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let keys = self.queue_keys(queue);
        for key in &keys {
            pipe.cmd("LLEN").arg(key);
        }
        pipe.cmd("DEL").arg(&keys).ignore();
        let lens: Vec<u64> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(conn_err)?;
        Ok(lens.iter().sum())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(conn_err)
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError> {
        // The default exchange routes to the queue named by the key
        // (kombu's virtual transports do the same): RPC replies.
        let queues = if exchange.is_empty() {
            vec![routing_key.to_string()]
        } else {
            self.bound_queues(exchange, routing_key).await?
        };
        if queues.is_empty() {
            tracing::debug!("no queue bound to {exchange:?} with key {routing_key:?}: dropped");
            return Ok(());
        }
        let raw = augmented(envelope, exchange, routing_key);
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.lpush(self.queue_key(q, envelope.priority()), &raw);
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(conn_err)
    }

    fn queues(&self) -> Vec<String> {
        self.consumed.lock().expect("queues lock").clone()
    }

    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        if self.queues().iter().any(|q| q == queue) {
            return Ok(false);
        }
        self.declare(queue).await?;
        self.consumed
            .lock()
            .expect("queues lock")
            .push(queue.to_string());
        self.cycle
            .lock()
            .expect("cycle lock")
            .push(queue.to_string());
        Ok(true)
    }

    fn cancel_queue(&self, queue: &str) -> bool {
        let mut consumed = self.consumed.lock().expect("queues lock");
        let before = consumed.len();
        consumed.retain(|q| q != queue);
        self.cycle
            .lock()
            .expect("cycle lock")
            .retain(|q| q != queue);
        consumed.len() != before
    }

    fn fanout(&self) -> Option<&dyn Fanout> {
        Some(self)
    }

    fn maintenance(&self) -> Option<&dyn Maintain> {
        Some(self)
    }

    fn info(&self) -> Value {
        if super::redis_endpoint::is_sentinel(&self.url) {
            return self.sentinel_info();
        }
        let Some(info) = self.endpoint.connection_info() else {
            return Value::Null;
        };
        let (hostname, port, ssl) = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => (Value::from(h.clone()), Value::from(*p), false),
            redis::ConnectionAddr::TcpTls { host, port, .. } => {
                (Value::from(host.clone()), Value::from(*port), true)
            }
            redis::ConnectionAddr::Unix(path) => {
                (Value::from(path.display().to_string()), Value::Null, false)
            }
            _ => (Value::Null, Value::Null, false),
        };
        let settings = info.redis_settings();
        serde_json::json!({
            "hostname": hostname,
            "userid": settings.username(),
            "virtual_host": settings.db().to_string(),
            "port": port,
            "insist": false,
            "ssl": ssl,
            "transport": "redis",
            "connect_timeout": 4,
            "transport_options": self.opts.as_json(),
            "login_method": null,
            "uri_prefix": null,
            "heartbeat": 120.0,
            "failover_strategy": "round-robin",
            "alternates": [],
        })
    }
}

impl RedisChannel {
    async fn ack_tag(&self, tag: &str) -> Result<(), BrokerError> {
        if tag.is_empty() {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        self.acks
            .send((tag.to_string(), reply))
            .map_err(|_| BrokerError::Command("ack flusher stopped".into()))?;
        done.await
            .map_err(|_| BrokerError::Command("ack flusher stopped".into()))?
    }

    async fn reject_tag(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        if requeue {
            self.restore_by_tag(tag, true).await.map(|_| ())
        } else {
            self.ack_tag(tag).await
        }
    }

    async fn restore_tag(&self, tag: &str) -> Result<(), BrokerError> {
        if tag.is_empty() {
            return Ok(());
        }
        self.restore_by_tag(tag, false).await.map(|_| ())
    }

    /// kombu's `Connection.info()` for a Sentinel URL: the first sentinel's
    /// address, the whole list as `alternates` (passwords masked).
    fn sentinel_info(&self) -> Value {
        let urls: Vec<&str> = self.url.split(';').filter(|u| !u.is_empty()).collect();
        let first = urls.first().copied().unwrap_or_default();
        let authority = first
            .trim_start_matches("sentinel://")
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (hostname, port) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().unwrap_or(26379)),
            None => (host_port, 26379u16),
        };
        serde_json::json!({
            "hostname": hostname,
            "userid": null,
            "virtual_host": self.endpoint.db().to_string(),
            "port": port,
            "insist": false,
            "ssl": false,
            "transport": "sentinel",
            "connect_timeout": 4,
            "transport_options": self.opts.as_json(),
            "login_method": null,
            "uri_prefix": null,
            "heartbeat": 120.0,
            "failover_strategy": "round-robin",
            "alternates": urls.iter().map(|u| mask_url(u)).collect::<Vec<_>>(),
        })
    }
}

#[async_trait]
impl Maintain for RedisBroker {
    async fn maintain(&self) -> Result<(), BrokerError> {
        let due = {
            let last = self.last_visibility_scan.lock().expect("scan lock");
            last.is_none_or(|t| {
                t.elapsed().as_secs_f64()
                    >= self
                        .opts
                        .unacked_restore_interval
                        .min(self.opts.visibility_timeout)
            })
        };
        if due {
            *self.last_visibility_scan.lock().expect("scan lock") = Some(std::time::Instant::now());
            self.restore_visible().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Fanout for RedisBroker {
    async fn publish_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(self.fanout_topic(exchange, routing_key))
            .arg(envelope.to_json())
            .query_async::<()>(&mut conn)
            .await
            .map_err(conn_err)
    }

    async fn subscribe_fanout(
        &self,
        exchange: &str,
        queue: &str,
    ) -> Result<mpsc::Receiver<Vec<u8>>, BrokerError> {
        // The binding a Python worker declares for its pidbox queue (kombu
        // reads it for `celery status`-style listings; fanout ignores it).
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SADD")
            .arg(self.key(&format!("_kombu.binding.{exchange}")))
            .arg(format!("{SEP}{SEP}{queue}"))
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        let topic = self.fanout_topic(exchange, "");
        let first = self.pubsub(&topic).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(pump_pubsub(self.endpoint.clone(), topic, first, tx));
        Ok(rx)
    }

    async fn collect_replies(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Envelope,
        request_exchange: &str,
        timeout: Duration,
    ) -> Result<Vec<Envelope>, BrokerError> {
        let queue = format!("{routing_key}.{exchange}");
        let binding = self.key(&format!("_kombu.binding.{exchange}"));
        let member = format!("{routing_key}{SEP}{SEP}{queue}");
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SADD")
            .arg(&binding)
            .arg(&member)
            .query_async(&mut conn)
            .await
            .map_err(conn_err)?;
        let sent = self.publish_fanout(request_exchange, "", request).await;
        let mut replies = Vec::new();
        if sent.is_ok() {
            // A connection of its own: BRPOP blocks it for the whole wait.
            let mut waiting = (self.endpoint)
                .manager(timeout + Duration::from_secs(5))
                .await
                .map_err(conn_err)?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let popped: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
                    .arg(self.queue_key(&queue, 0))
                    .arg(left.as_secs_f64().max(0.01))
                    .query_async(&mut waiting)
                    .await
                    .map_err(conn_err)?;
                match popped {
                    Some((_, raw)) => match Envelope::parse(&raw) {
                        Ok(env) => replies.push(env),
                        Err(e) => tracing::warn!("ignoring a reply that is not an envelope: {e}"),
                    },
                    None => break,
                }
            }
        }
        let _: Result<(), _> = redis::pipe()
            .srem(&binding, &member)
            .del(self.queue_key(&queue, 0))
            .query_async(&mut conn)
            .await;
        sent?;
        Ok(replies)
    }
}

/// Forwards pub/sub messages to `tx`; on a lost connection, resubscribes with
/// backoff. Ends when the receiver is dropped.
async fn pump_pubsub(
    endpoint: Endpoint,
    topic: String,
    first: redis::aio::PubSub,
    tx: mpsc::Sender<Vec<u8>>,
) {
    use futures_util::StreamExt;
    let mut current = Some(first);
    let mut failures = 0u32;
    loop {
        let pubsub = match current.take() {
            Some(p) => p,
            None => match subscribe(&endpoint, &topic).await {
                Ok(p) => {
                    tracing::info!("Resubscribed to {topic}");
                    failures = 0;
                    p
                }
                Err(e) => {
                    let wait = crate::worker::backoff(failures);
                    failures += 1;
                    tracing::warn!(
                        "Cannot subscribe to {topic}: {e}. Trying again in {:.2} seconds...",
                        wait.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = tx.closed() => return,
                    }
                }
            },
        };
        let mut stream = pubsub.into_on_message();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => {
                        if tx.send(m.get_payload_bytes().to_vec()).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                _ = tx.closed() => return,
            }
        }
        tracing::warn!("Lost the subscription to {topic}; reconnecting");
    }
}

async fn subscribe(endpoint: &Endpoint, topic: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = endpoint.client().await?.get_async_pubsub().await?;
    pubsub.psubscribe(topic).await?;
    Ok(pubsub)
}

/// kombu's `unacked` value: `[message, exchange, routing_key]`.
fn unacked_entry(raw: &[u8], env: &Envelope) -> Vec<u8> {
    let (ex, rk) = env.delivery_info();
    let mut entry = Vec::with_capacity(raw.len() + 64);
    entry.push(b'[');
    entry.extend_from_slice(raw);
    entry.extend_from_slice(format!(", {}, {}]", Value::from(ex), Value::from(rk)).as_bytes());
    entry
}

/// Settles queued acks in batches: `MULTI; ZREM unacked_index t1 t2 …;
/// HDEL unacked t1 t2 …; EXEC` — kombu's ack, for many tags at once.
async fn flush_acks(
    mut conn: Conn,
    mut pending: mpsc::UnboundedReceiver<(String, AckReply)>,
    unacked: String,
    unacked_index: String,
) {
    let mut batch: Vec<(String, AckReply)> = Vec::new();
    while pending.recv_many(&mut batch, MAX_ACK_BATCH).await > 0 {
        crate::batch::gather_more(&mut pending, &mut batch, MAX_ACK_BATCH).await;
        let tags: Vec<&str> = batch.iter().map(|(t, _)| t.as_str()).collect();
        let result = redis::pipe()
            .atomic()
            .zrem(&unacked_index, &tags)
            .hdel(&unacked, &tags)
            .query_async::<()>(&mut conn)
            .await
            .map_err(conn_err);
        for (_, reply) in batch.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

/// The stored JSON of a published message, with what kombu's virtual
/// transport adds on `basic_publish` where the envelope lacks it: its
/// `delivery_info` and a `delivery_tag`. kombu's consumer needs both (an RPC
/// reply without them was popped by `AsyncResult.get()` and dropped).
fn augmented(envelope: &Envelope, exchange: &str, routing_key: &str) -> String {
    let p = &envelope.properties;
    if p.contains_key("delivery_tag") && p.contains_key("delivery_info") {
        return envelope.to_json();
    }
    let mut env = envelope.clone();
    env.properties
        .entry("delivery_info")
        .or_insert_with(|| serde_json::json!({"exchange": exchange, "routing_key": routing_key}));
    env.properties
        .entry("delivery_tag")
        .or_insert_with(|| serde_json::json!(uuid::Uuid::new_v4().to_string()));
    env.to_json()
}
