//! Signatures, chains, links, groups, chords: turning an outcome into the
//! follow-up messages Celery's worker would publish (`_dispatch_callbacks_and_chain`,
//! `handle_failure` errbacks, the chord callback). Builds messages; never talks
//! to Redis itself.

pub mod host;
pub mod routes;

use crate::protocol::{Embed, Envelope, TaskMessage, pyrepr};
use crate::task::Request;
use serde_json::{Map, Value, json};

/// A Celery signature dict (`{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub options: Map<String, Value>,
    pub subtask_type: Option<String>,
    pub immutable: bool,
}

impl Signature {
    pub fn from_value(v: &Value) -> Option<Signature> {
        let obj = v.as_object()?;
        Some(Signature {
            task: obj.get("task")?.as_str().unwrap_or_default().to_string(),
            args: obj
                .get("args")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            kwargs: obj
                .get("kwargs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            options: obj
                .get("options")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            subtask_type: obj
                .get("subtask_type")
                .and_then(Value::as_str)
                .map(str::to_string),
            immutable: obj
                .get("immutable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// A canvas primitive (`group`, `chord`, `xstarmap`, …) sent as its
    /// built-in task, with its parts in `kwargs`.
    pub fn primitive(task: &str, subtask_type: &str, kwargs: Value) -> Signature {
        Signature {
            task: task.to_string(),
            args: Vec::new(),
            kwargs: match kwargs {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            options: Map::new(),
            subtask_type: Some(subtask_type.to_string()),
            immutable: false,
        }
    }

    /// The frozen id (`options.task_id`), else a fresh one.
    pub fn id_or_new(&self) -> String {
        self.id()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
    }

    /// The pre-assigned id (`options.task_id`), if the client froze one.
    pub fn id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// `options.link` / `options.link_error`: a list of signatures, or one.
    pub fn option_list(&self, k: &str) -> Option<Vec<Value>> {
        match self.options.get(k) {
            Some(Value::Array(a)) => Some(a.clone()),
            Some(v @ Value::Object(_)) => Some(vec![v.clone()]),
            _ => None,
        }
    }

    fn opt_str(&self, k: &str) -> Option<&str> {
        self.options.get(k).and_then(Value::as_str)
    }
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub queue: String,
    pub envelope: Envelope,
    /// On a chord's first header part: `(group_id, size)` to store before
    /// publishing (Celery's `backend.set_chord_size`), so any worker that
    /// finishes the last part knows the chord is complete.
    pub chord_size: Option<(String, usize)>,
}

impl Outgoing {
    /// The task's name (`task` header).
    pub fn task(&self) -> &str {
        self.envelope
            .headers
            .get("task")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    /// What publishing it counts as (`/metrics`' `task_sent`).
    pub fn sent_event(&self) -> crate::events::Event {
        crate::events::Event::TaskSent {
            uuid: self.id.clone(),
            name: self.task().to_string(),
            queue: self.queue.clone(),
        }
    }
}

/// Who is sending follow-ups: the request that just finished.
pub struct Sender<'a> {
    pub request: &'a Request,
    /// `gen<pid>@<host>`, Celery's producer origin.
    pub origin: &'a str,
    /// Where to send when a signature names no queue.
    pub router: &'a routes::Router,
}

impl Sender<'_> {
    fn root_id(&self) -> &str {
        self.request.root_id.as_deref().unwrap_or(&self.request.id)
    }
}

/// Where a follow-up goes: `options.queue` (name or `{"name": …}`), else its
/// routing key, else what the router says for its task (its own `queue`,
/// `task_routes`, the default queue).
fn queue_of(sig: &Signature, router: &routes::Router) -> String {
    let named = match sig.options.get("queue") {
        Some(Value::String(q)) => Some(q.as_str()),
        Some(Value::Object(q)) => q.get("name").and_then(Value::as_str),
        _ => None,
    };
    named
        .or_else(|| sig.opt_str("routing_key"))
        .unwrap_or_else(|| router.route(&sig.task))
        .to_string()
}

fn iso_in(seconds: f64) -> String {
    let at = chrono::Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64);
    at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// Builds the message for `sig` as `apply_async` would: `prepend` goes before
/// its args unless the signature is immutable; `group` sets group id/index.
pub fn message(
    sig: &Signature,
    prepend: &[Value],
    sender: &Sender<'_>,
    group: Option<(&str, Option<i64>)>,
    chain: Option<Vec<Value>>,
) -> Outgoing {
    let id = sig.id_or_new();
    let mut args = Vec::with_capacity(prepend.len() + sig.args.len());
    if !sig.immutable {
        args.extend_from_slice(prepend);
    }
    args.extend(sig.args.iter().cloned());
    let mut msg = TaskMessage::new(&sig.task, &id, args, sig.kwargs.clone());
    let h = &mut msg.headers;
    h.insert("root_id".into(), json!(sender.root_id()));
    h.insert("parent_id".into(), json!(sender.request.id));
    h.insert("origin".into(), json!(sender.origin));
    if let Some(shadow) = sig.opt_str("shadow") {
        h.insert("shadow".into(), json!(shadow));
    }
    let eta = match (
        sig.options.get("eta"),
        sig.options.get("countdown").and_then(Value::as_f64),
    ) {
        (Some(Value::String(e)), _) => Some(e.clone()),
        (_, Some(cd)) => Some(iso_in(cd)),
        _ => None,
    };
    if let Some(eta) = eta {
        h.insert("eta".into(), json!(eta));
    }
    match sig.options.get("expires") {
        Some(Value::String(e)) => {
            h.insert("expires".into(), json!(e));
        }
        Some(Value::Number(n)) => {
            h.insert("expires".into(), json!(iso_in(n.as_f64().unwrap_or(0.0))));
        }
        _ => {}
    }
    let (gid, gidx) = match group {
        Some((g, i)) => (Some(g.to_string()), i),
        None => (
            sig.opt_str("group_id").map(str::to_string),
            sig.options.get("group_index").and_then(Value::as_i64),
        ),
    };
    h.insert("group".into(), gid.map_or(Value::Null, Value::String));
    h.insert("group_index".into(), gidx.map_or(Value::Null, Value::from));
    let limit = |k: &str| sig.options.get(k).cloned().unwrap_or(Value::Null);
    h.insert(
        "timelimit".into(),
        json!([limit("time_limit"), limit("soft_time_limit")]),
    );
    if let Some(ir) = sig.options.get("ignore_result").filter(|v| !v.is_null()) {
        h.insert("ignore_result".into(), ir.clone());
    }
    if let Some(n) = sig
        .options
        .get("replaced_task_nesting")
        .filter(|v| v.is_number())
    {
        h.insert("replaced_task_nesting".into(), n.clone());
    }
    // Stamps travel as `stamped_headers` + `stamps` (Celery's send_task).
    if let Some(Value::Array(names)) = sig.options.get("stamped_headers") {
        let stamps: Map<String, Value> = names
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|k| sig.options.get(k).map(|v| (k.to_string(), v.clone())))
            .collect();
        h.insert("stamped_headers".into(), Value::Array(names.clone()));
        h.insert("stamps".into(), Value::Object(stamps));
    }
    if let Some(Value::Object(custom)) = sig.options.get("headers") {
        for (k, v) in custom {
            h.insert(k.clone(), v.clone());
        }
    }
    msg.embed = Embed {
        callbacks: sig.option_list("link"),
        errbacks: sig.option_list("link_error"),
        // A chord body carries the rest of its chain in its options.
        chain: chain.or_else(|| sig.option_list("chain")),
        chord: sig.options.get("chord").filter(|c| !c.is_null()).cloned(),
    };
    let queue = queue_of(sig, sender.router);
    // Celery: the signature's priority, else the task's own, else the
    // sender's only under `task_inherit_parent_priority`.
    let priority = sig
        .options
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p.min(255) as u8)
        .or_else(|| {
            sender
                .router
                .priority(&sig.task, sender.request.delivery_info.priority)
        })
        .unwrap_or(0);
    let mut envelope = msg.to_envelope(&queue, priority);
    let reply_to = sig
        .opt_str("reply_to")
        .map(str::to_string)
        .or_else(|| sender.request.reply_to.clone());
    envelope.properties.insert(
        "reply_to".into(),
        reply_to.map_or(Value::Null, Value::String),
    );
    Outgoing {
        id,
        queue,
        envelope,
        chord_size: None,
    }
}

/// A result tuple for `children`: `[[id, null], null]`.
pub fn child_ref(id: &str) -> Value {
    json!([[id, null], null])
}

/// A group's result tuple: `[[gid, null], [member tuples…]]`.
pub fn group_ref(gid: &str, members: Vec<Value>) -> Value {
    json!([[gid, null], members])
}

/// Follow-ups of a success, as `_dispatch_callbacks_and_chain`: one callback
/// is applied alone; of several, each group is applied by itself and the
/// rest go out as one group; then the next chain step with the remaining
/// chain. Returns the messages and the `children` entries for the result meta.
pub fn on_success(retval: &Value, sender: &Sender<'_>) -> (Vec<Outgoing>, Vec<Value>) {
    let embed = &sender.request.embed;
    let mut out = Vec::new();
    let mut children = Vec::new();
    let callbacks: Vec<Signature> = embed
        .callbacks
        .iter()
        .flatten()
        .filter_map(Signature::from_value)
        .collect();
    let prepend = std::slice::from_ref(retval);
    let mut send = |sig: &Signature, rest: Option<Vec<Value>>| {
        let (msgs, child) = apply(sig, prepend, sender, None, rest);
        out.extend(msgs);
        children.extend(child);
    };
    if callbacks.len() == 1 {
        send(&callbacks[0], None);
    } else if !callbacks.is_empty() {
        let (groups, sigs): (Vec<&Signature>, Vec<&Signature>) = callbacks
            .iter()
            .partition(|c| c.subtask_type.as_deref() == Some("group"));
        for g in groups {
            send(g, None);
        }
        if !sigs.is_empty() {
            send(&group_of(sigs.into_iter().cloned()), None);
        }
    }
    if let Some(chain) = &embed.chain
        && let Some((next, rest)) = chain.split_last()
        && let Some(sig) = Signature::from_value(next)
    {
        // `_chsig.apply_async((retval,), chain=rest)`.
        send(&sig, Some(rest.to_vec()));
    }
    (out, children)
}

/// `chord(header, body)` as a signature.
pub fn chord_of(header: Value, body: Value) -> Signature {
    Signature::primitive(
        "celery.chord",
        "chord",
        json!({"header": header, "body": body, "kwargs": {}}),
    )
}

/// `group(sigs)` as a signature.
pub fn group_of(sigs: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Value> = sigs.into_iter().map(|s| signature_value(&s)).collect();
    Signature::primitive("celery.group", "group", json!({ "tasks": tasks }))
}

/// `sig.apply_async(partial_args, chain=rest)` as Celery's worker runs it
/// for a chain step, a callback or a chord body: a task is one message; a
/// chain starts with its first task carrying the rest (a group followed by
/// a task becomes a chord, as `prepare_steps` upgrades it); group members
/// get the partial args and the group id (nested groups flattened, as
/// `group._prepared` does); a chord publishes its header as `chord.run`
/// does, each part carrying the body (with the rest of the chain; the size
/// goes on the first part's `chord_size`), or sends the body with `[]` when
/// the header is empty. A member
/// that is itself a chain or chord takes part through its last task or its
/// body. Returns the messages and the `children` entry.
pub fn apply(
    sig: &Signature,
    prepend: &[Value],
    sender: &Sender<'_>,
    group: Option<(&str, Option<i64>)>,
    rest: Option<Vec<Value>>,
) -> (Vec<Outgoing>, Option<Value>) {
    match group {
        Some((gid, idx)) => {
            let mut member = sig.clone();
            join_group(&mut member, gid, idx, None);
            apply_sig(&member, prepend, sender, rest)
        }
        None => apply_sig(sig, prepend, sender, rest),
    }
}

fn tasks_of(sig: &Signature, key: &str) -> Vec<Signature> {
    match sig.kwargs.get(key) {
        Some(Value::Array(items)) => items.iter().filter_map(Signature::from_value).collect(),
        // A chord header given as a group signature.
        Some(g @ Value::Object(_)) => Signature::from_value(g)
            .map(|g| tasks_of(&g, "tasks"))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Makes `sig` count as member `idx` of group `gid` (and, in a chord
/// header, toward `chord`): a task directly, a chain through its last task,
/// a chord through its body (`freeze(group_id=…, chord=…)`).
fn join_group(sig: &mut Signature, gid: &str, idx: Option<i64>, chord: Option<&Value>) {
    match sig.subtask_type.as_deref() {
        Some("chain") => {
            let mut steps = tasks_of(sig, "tasks");
            if let Some(last) = steps.last_mut() {
                join_group(last, gid, idx, chord);
            }
            sig.kwargs.insert(
                "tasks".into(),
                Value::Array(steps.iter().map(signature_value).collect()),
            );
        }
        Some("chord") => {
            if let Some(mut body) = sig.kwargs.get("body").and_then(Signature::from_value) {
                join_group(&mut body, gid, idx, chord);
                sig.kwargs.insert("body".into(), signature_value(&body));
            }
        }
        _ => {
            sig.options.insert("group_id".into(), json!(gid));
            sig.options
                .insert("group_index".into(), idx.map_or(Value::Null, Value::from));
            if let Some(c) = chord {
                sig.options.insert("chord".into(), c.clone());
            }
        }
    }
}

/// Celery's `_chord._descend`: how many completions `sig` adds to a chord.
fn chord_weight(sig: &Signature) -> usize {
    match sig.subtask_type.as_deref() {
        Some("group") => tasks_of(sig, "tasks").iter().map(chord_weight).sum(),
        Some("chain") => tasks_of(sig, "tasks")
            .iter()
            .rev()
            .map(chord_weight)
            .find(|n| *n > 0)
            .unwrap_or(0),
        Some("chord") => sig
            .kwargs
            .get("body")
            .and_then(Signature::from_value)
            .map_or(0, |b| chord_weight(&b)),
        _ => 1,
    }
}

/// Group members as `group._prepared` unrolls them: nested groups
/// flattened (their members keep their own index), empty chains dropped.
fn unroll(tasks: Vec<Signature>) -> Vec<(Signature, i64)> {
    let mut out = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.subtask_type.as_deref() {
            Some("group") => out.extend(unroll(tasks_of(&t, "tasks"))),
            Some("chain") if tasks_of(&t, "tasks").is_empty() => {}
            _ => out.push((t, i as i64)),
        }
    }
    out
}

fn apply_sig(
    sig: &Signature,
    prepend: &[Value],
    sender: &Sender<'_>,
    rest: Option<Vec<Value>>,
) -> (Vec<Outgoing>, Option<Value>) {
    let prepend: &[Value] = if sig.immutable { &[] } else { prepend };
    match sig.subtask_type.as_deref() {
        Some("chain") => {
            let mut steps = flatten_chain(tasks_of(sig, "tasks"));
            // `prepare_steps`: a group followed by a task becomes a chord.
            let mut i = 1;
            while i < steps.len() {
                if steps[i - 1].subtask_type.as_deref() == Some("group")
                    && steps[i].subtask_type.as_deref() != Some("group")
                {
                    let body = steps.remove(i);
                    let header = steps.remove(i - 1);
                    let header: Vec<Value> = tasks_of(&header, "tasks")
                        .iter()
                        .map(signature_value)
                        .collect();
                    steps.insert(i - 1, chord_of(json!(header), signature_value(&body)));
                } else {
                    i += 1;
                }
            }
            let Some((first, inner)) = steps.split_first() else {
                return (Vec::new(), None);
            };
            // The outer rest, else what the signature itself carries (a
            // chord body holds the rest of its chain in its options).
            let mut chain = rest
                .or_else(|| sig.option_list("chain"))
                .unwrap_or_default();
            // `prepare_steps` freezes every step with the root id.
            chain.extend(inner.iter().rev().map(|step| {
                let mut step = step.clone();
                step.options
                    .entry("root_id")
                    .or_insert_with(|| json!(sender.root_id()));
                signature_value(&step)
            }));
            apply_sig(first, prepend, sender, Some(chain))
        }
        Some("group") => {
            let gid = sig.id_or_new();
            let mut out = Vec::new();
            let mut members = Vec::new();
            for (mut t, idx) in unroll(tasks_of(sig, "tasks")) {
                join_group(&mut t, &gid, Some(idx), None);
                // `group.apply_async(chain=rest)` hands `chain` to each member.
                let (msgs, child) = apply_sig(&t, prepend, sender, rest.clone());
                out.extend(msgs);
                members.extend(child);
            }
            (out, Some(group_ref(&gid, members)))
        }
        Some("chord") => {
            let header = tasks_of(sig, "header");
            let header_id = sig
                .kwargs
                .get("header")
                .and_then(Signature::from_value)
                .and_then(|g| g.id().map(str::to_string));
            let Some(mut body) = sig.kwargs.get("body").and_then(Signature::from_value) else {
                tracing::error!("chord step without a body: {}", signature_value(sig));
                return (Vec::new(), None);
            };
            let body_id = body.id_or_new();
            body.options.insert("task_id".into(), json!(body_id));
            // The chord's own membership (an outer group or chord) goes to its body.
            for k in ["group_id", "group_index", "chord"] {
                if let Some(v) = sig.options.get(k).filter(|v| !v.is_null()) {
                    body.options.insert(k.into(), v.clone());
                }
            }
            if let Some(rest) = rest.or_else(|| sig.option_list("chain")) {
                body.options.insert("chain".into(), Value::Array(rest));
            }
            // `chord.run` copies the call's options into the body:
            // `root_id`, `priority` (None unless inherited) and the header's
            // group id, which its completion is counted under.
            body.options
                .insert("root_id".into(), json!(sender.root_id()));
            body.options.entry("priority").or_insert(Value::Null);
            if header.is_empty() {
                let (msgs, child) = apply_sig(&body, &[json!([])], sender, None);
                return (msgs, child);
            }
            let size: usize = header.iter().map(chord_weight).sum();
            let gid = header_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            body.options.entry("group_id").or_insert(json!(gid));
            // Every part carries the body (and with it the rest of the chain).
            let body_value = signature_value(&body);
            let mut out = Vec::new();
            let mut members = Vec::new();
            for (mut part, idx) in unroll(header) {
                join_group(&mut part, &gid, Some(idx), Some(&body_value));
                let (msgs, child) = apply_sig(&part, prepend, sender, None);
                out.extend(msgs);
                members.extend(child);
            }
            if let Some(first) = out.first_mut() {
                first.chord_size = Some((gid.clone(), size));
            }
            // The chord's result is its body's, whose parent is the header.
            (
                out,
                Some(json!([[body_id, group_ref(&gid, members)], null])),
            )
        }
        // A task, or a primitive sent as its built-in task (`celery.map`,
        // `celery.starmap`, `celery.chunks`).
        _ => {
            let o = message(sig, prepend, sender, None, rest);
            let child = child_ref(&o.id);
            (vec![o], Some(child))
        }
    }
}

/// Chains inside a chain are spliced in (`prepare_steps`).
fn flatten_chain(steps: Vec<Signature>) -> Vec<Signature> {
    let mut out = Vec::new();
    for s in steps {
        if s.subtask_type.as_deref() == Some("chain") {
            out.extend(flatten_chain(tasks_of(&s, "tasks")));
        } else {
            out.push(s);
        }
    }
    out
}

/// A signature back to its dict form.
pub fn signature_value(sig: &Signature) -> Value {
    json!({
        "task": sig.task, "args": sig.args, "kwargs": sig.kwargs, "options": sig.options,
        "subtask_type": sig.subtask_type, "immutable": sig.immutable,
    })
}

/// Errbacks of a failure, published as Celery publishes the ones it can't
/// call in-process: one group, each with `[failed_task_id]` prepended.
pub fn on_failure(failed_id: &str, errbacks: &[Value], sender: &Sender<'_>) -> Vec<Outgoing> {
    let sigs: Vec<Signature> = errbacks.iter().filter_map(Signature::from_value).collect();
    if sigs.is_empty() {
        return Vec::new();
    }
    let prepend = [Value::String(failed_id.to_string())];
    apply(&group_of(sigs), &prepend, sender, None, None).0
}

/// Ids of the chain steps still to run: they get the failure stored too.
pub fn pending_chain_ids(embed: &Embed) -> Vec<String> {
    embed
        .chain
        .iter()
        .flatten()
        .filter_map(Signature::from_value)
        .filter_map(|s| s.id().map(str::to_string))
        .collect()
}

/// Python's `repr()` of a header result in a `ChordError` message.
pub fn chord_error_message(failed_id: &str, exc: &Value) -> String {
    let exc_type = exc
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let args = exc
        .get("exc_message")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    format!(
        "Dependency {failed_id} raised {}",
        pyrepr::repr_exception(exc_type, &args)
    )
}

/// Celery's `Task.retry` message: the request again, same id, with
/// `retries + 1`, an eta `countdown` seconds away, new args when given and
/// Celery's `parent_id`; every other header (custom ones included), the
/// embed, `reply_to` and the priority kept; `origin` repeated in the
/// properties as Celery does; sent back to the queue it came from.
pub fn retry_message(
    request: &Request,
    countdown: f64,
    args: Option<Vec<Value>>,
    kwargs: Option<Map<String, Value>>,
    default_queue: &str,
) -> Outgoing {
    let r = request;
    let mut msg = TaskMessage::new(
        &r.task,
        &r.id,
        args.unwrap_or_else(|| r.args.clone()),
        kwargs.unwrap_or_else(|| r.kwargs.clone()),
    );
    let (argsrepr, kwargsrepr) = (
        pyrepr::repr_args(&msg.args),
        pyrepr::repr(&Value::Object(msg.kwargs.clone())),
    );
    msg.headers = r.headers.clone();
    msg.headers.insert("argsrepr".into(), json!(argsrepr));
    msg.headers.insert("kwargsrepr".into(), json!(kwargsrepr));
    msg.headers.insert("retries".into(), json!(r.retries + 1));
    msg.headers.insert("eta".into(), json!(iso_in(countdown)));
    // `as_execution_options` keeps the parent; a top-level task becomes
    // the parent of its retry (`current_worker_task`).
    let parent = r.parent_id.as_deref().unwrap_or(&r.id);
    msg.headers.insert("parent_id".into(), json!(parent));
    msg.embed = r.embed.clone();
    // Celery republishes to the exchange and routing key it was delivered
    // with, which bind to the queue it came from.
    let queue = [&r.queue, &r.delivery_info.routing_key]
        .into_iter()
        .find(|q| !q.is_empty())
        .map_or_else(|| default_queue.to_string(), |q| q.clone());
    let mut envelope = msg.to_envelope(&queue, r.delivery_info.priority);
    envelope.properties.insert(
        "reply_to".into(),
        r.reply_to.clone().map_or(Value::Null, Value::String),
    );
    if let Some(origin) = &r.origin {
        envelope.properties.insert("origin".into(), json!(origin));
    }
    Outgoing {
        id: r.id.clone(),
        queue,
        envelope,
        chord_size: None,
    }
}
