//! Decoding of `syncGraph` payloads into typed messages.
//!
//! Payloads come from peers and are hostile: nothing here panics, every size is
//! bounded by the caller's frame limits, and one malformed element is refused on its
//! own while the rest of the batch goes on, as browsers do.

use crate::store::json::{self, RawJson, RawObject};
use crate::store::{FullState, Hlc, LinkOp, Node, Op, RemoveOp, UpsertOp};
use serde_json::value::RawValue;
use std::io::Read;

/// The largest legacy `deltaSync.operations` blob we inflate (zip-bomb guard).
pub(crate) const MAX_INFLATED_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Sync(Option<Hlc>),
    Delta {
        ops: Vec<Op>,
        ts: Option<Hlc>,
    },
    Full(FullState),
    Op(Op),
    /// A `type` we do not know; browsers ignore it too.
    Unknown(String),
}

/// One element (or member) that was refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub rejected: Vec<Rejection>,
    /// For each of `messages`, the index of the element it was decoded from.
    pub origins: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("payload is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("payload is not MessagePack: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
    #[error("payload is neither an array nor an object")]
    Shape,
    #[error("payload is not UTF-8")]
    Utf8,
}

/// Decodes a JSON payload: an array of messages, or one message object.
pub fn parse_json(text: &str) -> Result<Batch, ParseError> {
    Ok(parse_elements(elements(text)?))
}

/// Splits a JSON payload into its elements, each left raw: an array's members, or
/// the one message object.
pub fn elements(text: &str) -> Result<Vec<&RawValue>, ParseError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        Ok(serde_json::from_str(text)?)
    } else if trimmed.starts_with('{') {
        Ok(vec![serde_json::from_str(text)?])
    } else {
        Err(ParseError::Shape)
    }
}

/// Decodes elements one by one: a malformed one is refused on its own.
pub fn parse_elements<'a>(elements: impl IntoIterator<Item = &'a RawValue>) -> Batch {
    let mut batch = Batch::default();
    for (i, element) in elements.into_iter().enumerate() {
        match parse_message(element) {
            Ok(msg) => {
                batch.messages.push(msg);
                batch.origins.push(i);
            }
            Err(reason) => batch.rejected.push(Rejection { reason }),
        }
    }
    batch
}

/// Decodes a binary payload: MessagePack of the same array (§6.5).
pub fn parse_msgpack(bytes: &[u8]) -> Result<Batch, ParseError> {
    parse_json(&msgpack_to_json(bytes)?)
}

/// A MessagePack payload as the JSON text of the same value.
pub(crate) fn msgpack_to_json(bytes: &[u8]) -> Result<String, ParseError> {
    let value: serde_json::Value = rmp_serde::from_slice(bytes)?;
    Ok(value.to_string())
}

fn parse_message(raw: &RawValue) -> Result<Message, String> {
    let obj = RawObject::parse(raw).ok_or("message is not an object")?;
    let kind = obj
        .get("type")
        .and_then(json::parse_string)
        .ok_or("message has no string type")?;
    match kind.as_str() {
        "upsert" | "remove" | "link" => parse_op(raw, &obj, &kind).map(Message::Op),
        "sync" => parse_sync(&obj),
        "deltaSync" => parse_delta(&obj),
        "fullStateSync" => parse_full(&obj),
        _ => Ok(Message::Unknown(kind)),
    }
}

fn parse_sync(obj: &RawObject) -> Result<Message, String> {
    match obj.get("timestamp") {
        None => Ok(Message::Sync(None)),
        Some(raw) => json::parse_hlc(raw)
            .map(Message::Sync)
            .map_err(|e| format!("sync {e}")),
    }
}

fn parse_op(raw: &RawValue, obj: &RawObject, kind: &str) -> Result<Op, String> {
    let ts = required_ts(obj, kind)?;
    match kind {
        "upsert" => Ok(Op::Upsert(UpsertOp {
            id: string_field(obj, "id", kind)?,
            value: obj.get("value").map(RawJson::from_raw),
            ts,
        })),
        "remove" => Ok(Op::Remove(RemoveOp {
            id: string_field(obj, "id", kind)?,
            ts,
        })),
        "link" => Ok(Op::Link(LinkOp {
            source: string_field(obj, "sourceId", kind)?,
            target: string_field(obj, "targetId", kind)?,
            ts,
            raw: link_entry(raw, obj)?,
        })),
        other => Err(format!("{other} is not an op")),
    }
}

/// Browsers log a received link as `{type:"link", ...op}`: the op itself, `type` first.
fn link_entry(raw: &RawValue, obj: &RawObject) -> Result<RawJson, String> {
    if obj.members.first().is_some_and(|(k, _)| k == "type") {
        return Ok(RawJson::from_raw(raw));
    }
    RawJson::parse(obj.to_json_led_by("type", Some("\"link\"")))
        .map_err(|e| format!("link op: {e}"))
}

fn required_ts(obj: &RawObject, kind: &str) -> Result<Hlc, String> {
    let raw = obj
        .get("timestamp")
        .ok_or_else(|| format!("{kind} has no timestamp"))?;
    json::parse_hlc(raw)
        .map_err(|e| format!("{kind} {e}"))?
        .ok_or_else(|| format!("{kind} has a null timestamp"))
}

fn string_field(obj: &RawObject, key: &str, kind: &str) -> Result<String, String> {
    obj.get(key)
        .and_then(json::parse_string)
        .ok_or_else(|| format!("{kind} has no string {key}"))
}

fn optional_ts(obj: &RawObject) -> Option<Hlc> {
    obj.get("timestamp")
        .and_then(|raw| json::parse_hlc(raw).ok().flatten())
}

fn parse_delta(obj: &RawObject) -> Result<Message, String> {
    let ops_raw = obj.get("operations").ok_or("deltaSync has no operations")?;
    let text = ops_raw.get().trim_start();
    let ops = if text.starts_with('[') {
        parse_op_array(ops_raw.get())?
    } else if text.starts_with('{') {
        let decoded = inflate_legacy(ops_raw)?;
        parse_op_array(&decoded)?
    } else {
        return Err("deltaSync operations are neither an array nor a legacy byte object".into());
    };
    Ok(Message::Delta {
        ops,
        ts: optional_ts(obj),
    })
}

fn parse_op_array(text: &str) -> Result<Vec<Op>, String> {
    let elements: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| format!("deltaSync operations: {e}"))?;
    let mut ops = Vec::with_capacity(elements.len());
    for raw in elements {
        let Some(obj) = RawObject::parse(raw) else {
            continue;
        };
        let Some(kind) = obj.get("type").and_then(json::parse_string) else {
            continue;
        };
        // A malformed op inside a delta is skipped; the others still apply.
        if let Ok(op) = parse_op(raw, &obj, &kind) {
            ops.push(op);
        }
    }
    Ok(ops)
}

/// §6.5: `{"0":120,"1":156,…}` is a zlib-deflated MessagePack array of ops.
fn inflate_legacy(raw: &RawValue) -> Result<String, String> {
    let obj = RawObject::parse(raw).ok_or("legacy operations are not an object")?;
    let mut bytes = Vec::with_capacity(obj.members.len());
    for (_, v) in &obj.members {
        let b: u8 =
            serde_json::from_str(v.get()).map_err(|_| "legacy operations hold a non-byte")?;
        bytes.push(b);
    }
    let mut inflated = Vec::new();
    flate2::read::ZlibDecoder::new(bytes.as_slice())
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| format!("legacy operations do not inflate: {e}"))?;
    if inflated.len() as u64 > MAX_INFLATED_BYTES {
        return Err("legacy operations inflate past the size limit".into());
    }
    let value: serde_json::Value = rmp_serde::from_slice(&inflated)
        .map_err(|e| format!("legacy operations are not MessagePack: {e}"))?;
    Ok(value.to_string())
}

fn parse_full(obj: &RawObject) -> Result<Message, String> {
    let graph = obj
        .get("graphData")
        .ok_or("fullStateSync has no graphData")?;
    let members = RawObject::parse(graph).ok_or("fullStateSync graphData is not an object")?;
    let mut full = FullState {
        nodes: Vec::with_capacity(members.members.len()),
        removals: Vec::new(),
        ts: optional_ts(obj),
    };
    // JSON.parse keeps the last of duplicate keys.
    let mut seen = std::collections::HashSet::with_capacity(members.members.len());
    for (id, raw) in members.members.iter().rev() {
        if !seen.insert(id.as_ref()) {
            continue;
        }
        if let Ok(node) = Node::from_json(raw) {
            full.nodes.push((id.to_string(), node));
        }
    }
    full.nodes.reverse();
    if let Some(removals) = obj.get("removals").filter(|r| !json::is_null(r)) {
        let list: Vec<&RawValue> = serde_json::from_str(removals.get())
            .map_err(|_| "fullStateSync removals are not an array")?;
        for raw in list {
            let Some(entry) = RawObject::parse(raw) else {
                continue;
            };
            if let (Ok(id), Ok(ts)) = (
                string_field(&entry, "id", "removal"),
                required_ts(&entry, "removal"),
            ) {
                full.removals.push(RemoveOp { id, ts });
            }
        }
    }
    Ok(Message::Full(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_object_is_a_batch_of_one() {
        let b = parse_json(r#"{"type":"sync","timestamp":null}"#).unwrap();
        assert_eq!(b.messages, vec![Message::Sync(None)]);
    }

    #[test]
    fn malformed_elements_are_refused_alone() {
        let b = parse_json(
            r#"[{"type":"upsert","id":1,"value":1,"timestamp":{"physical":1,"logical":1}},
                {"type":"upsert","id":"a","value":1},
                7,
                {"type":"frobnicate"},
                {"type":"upsert","id":"ok","value":1,"timestamp":{"physical":1,"logical":1}}]"#,
        )
        .unwrap();
        assert_eq!(b.rejected.len(), 3);
        assert_eq!(b.messages.len(), 2);
        assert_eq!(b.messages[0], Message::Unknown("frobnicate".into()));
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(parse_json("nope").is_err());
        assert!(parse_json("42").is_err());
        assert!(parse_json("[").is_err());
        assert!(parse_msgpack(&[0xc1]).is_err());
    }

    #[test]
    fn link_entry_puts_type_first() {
        let b = parse_json(
            r#"[{"sourceId":"a","type":"link","targetId":"b","timestamp":{"physical":1,"logical":1}}]"#,
        )
        .unwrap();
        let Message::Op(Op::Link(link)) = &b.messages[0] else {
            panic!("not a link: {b:?}")
        };
        assert_eq!(
            link.raw.get(),
            r#"{"type":"link","sourceId":"a","targetId":"b","timestamp":{"physical":1,"logical":1}}"#
        );
    }

    #[test]
    fn legacy_inflate_is_bounded() {
        // 32 MiB of zeros deflates to a few KiB; it must be refused, not inflated whole.
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; 32 << 20]).unwrap();
        let blob = enc.finish().unwrap();
        let obj: String = blob
            .iter()
            .enumerate()
            .map(|(i, b)| format!("\"{i}\":{b}"))
            .collect::<Vec<_>>()
            .join(",");
        let text = format!(r#"[{{"type":"deltaSync","operations":{{{obj}}},"timestamp":null}}]"#);
        let b = parse_json(&text).unwrap();
        assert!(b.messages.is_empty());
        assert!(
            b.rejected[0].reason.contains("size limit"),
            "{:?}",
            b.rejected
        );
    }
}
