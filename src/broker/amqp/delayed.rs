//! Names and arguments of kombu's native delayed delivery
//! (`kombu/transport/native_delayed_delivery.py`): a countdown is written in
//! binary into the routing key, and each level n holds a message 2ⁿ seconds
//! or passes it on, until `celery_delayed_delivery` hands it to its queue.

use serde_json::{Map, Value, json};

/// Level of the first exchange a delayed message is published to (28 bits).
pub const MAX_LEVEL: u32 = 27;
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// The TTL queue of `level`: messages wait 2^level s, then dead-letter to
/// the level below (or to the delivery exchange after level 0).
pub fn queue_arguments(level: u32, queue_type: &str) -> Map<String, Value> {
    let next = if level > 0 {
        level_name(level - 1)
    } else {
        DELIVERY_EXCHANGE.to_string()
    };
    let mut args = json!({
        "x-queue-type": queue_type,
        "x-overflow": "reject-publish",
        "x-message-ttl": (1u64 << level) * 1000,
        "x-dead-letter-exchange": next,
    });
    if queue_type == "quorum" {
        args["x-dead-letter-strategy"] = "at-least-once".into();
    }
    args.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_kombus() {
        assert_eq!(level_name(MAX_LEVEL), "celery_delayed_27");
        let top = queue_arguments(27, "quorum");
        assert_eq!(top["x-message-ttl"], json!(134_217_728_000u64));
        assert_eq!(top["x-dead-letter-exchange"], json!("celery_delayed_26"));
        assert_eq!(top["x-dead-letter-strategy"], json!("at-least-once"));
        let bottom = queue_arguments(0, "classic");
        assert_eq!(bottom["x-message-ttl"], json!(1000));
        assert_eq!(bottom["x-dead-letter-exchange"], json!(DELIVERY_EXCHANGE));
        assert!(!bottom.contains_key("x-dead-letter-strategy"));
    }
}
