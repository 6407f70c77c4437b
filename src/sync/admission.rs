//! Admission filters: what of a decoded batch from a peer is let into the store.
//! Pure functions over a [`Batch`], with no I/O, so each is unit-tested alone.

use super::message::{self, Batch, Message, ParseError};
use crate::rtc::frame;
use crate::sm::{self, policy::Policy};
use crate::store::Op;
use std::borrow::Cow;

/// Drops ops and full-state nodes whose value's JSON text is longer than `max` bytes;
/// returns how many.
pub(super) fn oversized_filter(max: usize, batch: &mut Batch) -> usize {
    let too_big =
        |v: &Option<crate::store::RawJson>| v.as_ref().is_some_and(|v| v.get().len() > max);
    let mut refused = 0;
    let mut keep = |bad: bool| {
        refused += usize::from(bad);
        !bad
    };
    // `origins` stays parallel to `messages`: forwarding finds each op's element by it.
    let mut kept = Vec::with_capacity(batch.messages.len());
    for msg in &mut batch.messages {
        kept.push(match msg {
            Message::Op(Op::Upsert(u)) => keep(too_big(&u.value)),
            Message::Full(full) => {
                full.nodes.retain(|(_, node)| keep(too_big(&node.value)));
                true
            }
            Message::Delta { ops, .. } => {
                ops.retain(|op| match op {
                    Op::Upsert(u) => keep(too_big(&u.value)),
                    _ => true,
                });
                true
            }
            _ => true,
        });
    }
    let mut flags = kept.iter();
    batch.messages.retain(|_| *flags.next().unwrap_or(&true));
    if batch.origins.len() == kept.len() {
        let mut flags = kept.iter();
        batch.origins.retain(|_| *flags.next().unwrap_or(&true));
    }
    refused
}

/// The payload as JSON text; MessagePack is converted (§6.5).
pub(super) fn payload_text(message: &frame::Message) -> Result<Cow<'_, str>, ParseError> {
    if message.is_binary() {
        Ok(Cow::Owned(message::msgpack_to_json(&message.data)?))
    } else if message.is_json() {
        std::str::from_utf8(&message.data)
            .map(Cow::Borrowed)
            .map_err(|_| ParseError::Utf8)
    } else {
        // A JS string: a browser's handler finds no `type` in it and ignores it.
        Err(ParseError::Shape)
    }
}

/// Drops, from deltas and full states, exact replays of live ops the policy refused.
pub(super) fn drop_replays(refused: &sm::Refused, batch: &mut Batch) -> usize {
    if refused.is_empty() {
        return 0;
    }
    let mut dropped = 0;
    for msg in &mut batch.messages {
        match msg {
            Message::Full(full) => full.nodes.retain(|(id, node)| {
                let bad = node.timestamp.is_some_and(|ts| refused.contains(id, ts));
                dropped += usize::from(bad);
                !bad
            }),
            Message::Delta { ops, .. } => ops.retain(|op| {
                let bad = match op {
                    Op::Upsert(u) => refused.contains(&u.id, u.ts),
                    Op::Remove(r) => refused.contains(&r.id, r.ts),
                    Op::Link(l) => refused.contains(&sm::link_key(&l.source, &l.target), l.ts),
                };
                dropped += usize::from(bad);
                !bad
            }),
            _ => {}
        }
    }
    dropped
}

/// SM_STRICT: drops laundered superadmin `user:` nodes from deltas and full states.
pub(super) fn strict_filter(policy: &Policy, batch: &mut Batch) -> usize {
    if !policy.strict {
        return 0;
    }
    let mut refused = 0;
    for msg in &mut batch.messages {
        match msg {
            Message::Full(full) => full.nodes.retain(|(id, node)| {
                let bad = policy.strict_refuses(id, node.value.as_ref().map(|v| v.get()));
                refused += usize::from(bad);
                !bad
            }),
            Message::Delta { ops, .. } => ops.retain(|op| {
                let bad = matches!(op, Op::Upsert(u)
                    if policy.strict_refuses(&u.id, u.value.as_ref().map(|v| v.get())));
                refused += usize::from(bad);
                !bad
            }),
            _ => {}
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::sync::engine;

    #[test]
    fn values_over_the_limit_are_refused_one_by_one() {
        let big = format!("\"{}\"", "x".repeat(98));
        let ts = r#"{"physical":1700000000000,"logical":0}"#;
        let text = format!(
            r#"[{{"type":"upsert","id":"big","value":{big},"timestamp":{ts}}},
               {{"type":"upsert","id":"small","value":"ok","timestamp":{ts}}},
               {{"type":"deltaSync","operations":[
                  {{"type":"upsert","id":"d-big","value":{big},"timestamp":{ts}}},
                  {{"type":"upsert","id":"d-small","value":1,"timestamp":{ts}}},
                  {{"type":"remove","id":"gone","timestamp":{ts}}}],"timestamp":null}},
               {{"type":"fullStateSync","graphData":{{
                  "f-big":{{"value":{big},"edges":[],"timestamp":{ts}}},
                  "f-small":{{"value":2,"edges":[],"timestamp":{ts}}}}},"timestamp":null}}]"#
        );
        let mut batch = message::parse_json(&text).unwrap();
        assert_eq!(
            oversized_filter(100, &mut batch),
            0,
            "100 bytes of JSON fit 100"
        );
        assert_eq!(oversized_filter(101, &mut batch), 0);
        assert_eq!(oversized_filter(99, &mut batch), 3);
        let mut store = Store::new(1000);
        engine::apply_batch(&mut store, batch, 1_700_000_000_000);
        let mut ids: Vec<&str> = store.nodes().keys().map(|k| k.as_ref()).collect();
        ids.sort();
        assert_eq!(ids, ["d-small", "f-small", "small"]);
    }

    /// The ids left in a batch's deltas and full states, in order.
    fn ids(batch: &Batch) -> Vec<String> {
        let mut out = Vec::new();
        for m in &batch.messages {
            match m {
                Message::Full(full) => out.extend(full.nodes.iter().map(|(id, _)| id.to_string())),
                Message::Delta { ops, .. } => out.extend(ops.iter().map(|op| match op {
                    Op::Upsert(u) => u.id.clone(),
                    Op::Remove(r) => r.id.clone(),
                    Op::Link(l) => format!("{}->{}", l.source, l.target),
                })),
                Message::Op(_) => out.push("live".into()),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn replays_of_refused_live_ops_are_dropped_from_deltas_and_full_states_only() {
        let ts = |p: u64| format!(r#"{{"physical":{p},"logical":0}}"#);
        let (t1, t2) = (ts(1), ts(2));
        let text = format!(
            r#"[{{"type":"upsert","id":"a","value":1,"timestamp":{t1}}},
               {{"type":"deltaSync","operations":[
                  {{"type":"upsert","id":"a","value":1,"timestamp":{t1}}},
                  {{"type":"upsert","id":"a","value":2,"timestamp":{t2}}},
                  {{"type":"remove","id":"b","timestamp":{t1}}},
                  {{"type":"link","sourceId":"x","targetId":"y","timestamp":{t2}}}],"timestamp":null}},
               {{"type":"fullStateSync","graphData":{{
                  "a":{{"value":1,"edges":[],"timestamp":{t1}}},
                  "c":{{"value":3,"edges":[],"timestamp":{t1}}}}},"timestamp":null}}]"#
        );
        let mut batch = message::parse_json(&text).unwrap();
        let mut refused = sm::Refused::new(16);
        assert_eq!(drop_replays(&refused, &mut batch), 0, "nothing refused yet");
        let hlc = |physical| crate::store::Hlc {
            physical,
            logical: 0,
        };
        refused.insert(("a".into(), hlc(1)));
        refused.insert(("b".into(), hlc(1)));
        refused.insert((sm::link_key("x", "y"), hlc(2)));
        assert_eq!(drop_replays(&refused, &mut batch), 4);
        // The live op stays (the policy judges it), and so do other versions of "a".
        assert_eq!(ids(&batch), ["live", "a", "c"]);
    }

    #[test]
    fn strict_drops_only_unlisted_superadmin_user_nodes() {
        let listed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        let unlisted = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";
        let ts = r#"{"physical":1,"logical":0}"#;
        let text = format!(
            r#"[{{"type":"deltaSync","operations":[
                  {{"type":"upsert","id":"user:{unlisted}","value":{{"role":"superadmin"}},"timestamp":{ts}}},
                  {{"type":"upsert","id":"user:{listed}","value":{{"role":"superadmin"}},"timestamp":{ts}}},
                  {{"type":"upsert","id":"user:{unlisted}","value":{{"role":"user"}},"timestamp":{ts}}}],"timestamp":null}},
               {{"type":"fullStateSync","graphData":{{
                  "user:{unlisted}":{{"value":{{"role":"superadmin"}},"edges":[],"timestamp":{ts}}},
                  "plain":{{"value":{{"role":"superadmin"}},"edges":[],"timestamp":{ts}}}}},"timestamp":null}}]"#
        );
        let lax = Policy::new(vec![listed.into()], false);
        let mut batch = message::parse_json(&text).unwrap();
        assert_eq!(strict_filter(&lax, &mut batch), 0, "off without SM_STRICT");
        let strict = Policy::new(vec![listed.into()], true);
        assert_eq!(strict_filter(&strict, &mut batch), 2);
        assert_eq!(
            ids(&batch),
            [
                format!("user:{listed}"),
                format!("user:{unlisted}"),
                "plain".to_owned()
            ]
        );
    }
}
