//! Writes made by this process (test peers, the load generator, later SM governance):
//! each takes a timestamp from the store's clock, goes through the same merge rules
//! as a peer's op, and comes back as the op text to broadcast, as a browser's
//! `put`, `link` and `remove` do.

use crate::store::json::{self, RawJson};
use crate::store::{Hlc, LinkOp, RemoveOp, Store, UpsertOp};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the value is not JSON: {0}")]
    Value(#[from] serde_json::Error),
    #[error("the store refused the write (a newer state wins)")]
    Refused,
}

/// An applied local write: its timestamp and the op object to broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOp {
    pub ts: Hlc,
    pub json: String,
}

pub fn put(store: &mut Store, id: &str, value: &str, wall_ms: u64) -> Result<LocalOp, LocalError> {
    let value = RawJson::parse(value.to_owned())?;
    let ts = store.next_ts(wall_ms);
    let mut text = String::from("{\"type\":\"upsert\",\"id\":");
    json::write_str(&mut text, id);
    text.push_str(",\"value\":");
    text.push_str(value.get());
    text.push_str(",\"timestamp\":");
    ts.write_json(&mut text);
    text.push('}');
    let op = UpsertOp {
        id: id.to_owned(),
        value: Some(value),
        ts,
    };
    applied(store.upsert(op, wall_ms), ts, text)
}

pub(crate) fn remove(store: &mut Store, id: &str, wall_ms: u64) -> Result<LocalOp, LocalError> {
    let ts = store.next_ts(wall_ms);
    let mut text = String::new();
    crate::store::Entry::write_plain(&mut text, "remove", id, &ts);
    let op = RemoveOp {
        id: id.to_owned(),
        ts,
    };
    applied(store.remove(op), ts, text)
}

pub(crate) fn link(
    store: &mut Store,
    source: &str,
    target: &str,
    wall_ms: u64,
) -> Result<LocalOp, LocalError> {
    let ts = store.next_ts(wall_ms);
    let mut text = String::from("{\"type\":\"link\",\"sourceId\":");
    json::write_str(&mut text, source);
    text.push_str(",\"targetId\":");
    json::write_str(&mut text, target);
    text.push_str(",\"timestamp\":");
    ts.write_json(&mut text);
    text.push('}');
    let op = LinkOp {
        source: source.to_owned(),
        target: target.to_owned(),
        ts,
        raw: RawJson::parse(text.clone())?,
    };
    applied(store.link(op), ts, text)
}

fn applied(ok: bool, ts: Hlc, json: String) -> Result<LocalOp, LocalError> {
    if ok {
        Ok(LocalOp { ts, json })
    } else {
        Err(LocalError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::message::{Message, parse_json};

    #[test]
    fn local_writes_merge_and_their_text_parses_as_the_same_op() {
        let mut s = Store::new(100);
        let a = put(&mut s, "a", r#"{"t":"x"}"#, 1000).unwrap();
        let b = put(&mut s, "b", "2", 1000).unwrap();
        assert!(b.ts > a.ts);
        let l = link(&mut s, "a", "b", 1000).unwrap();
        assert!(s.get("a").unwrap().has_edge("b"));
        let r = remove(&mut s, "b", 1000).unwrap();
        assert!(s.get("b").is_none());
        assert!(!s.get("a").unwrap().has_edge("b"));
        // Another store applying the texts ends in the same state.
        let mut other = Store::new(100);
        let text = format!("[{},{},{},{}]", a.json, b.json, l.json, r.json);
        for m in parse_json(&text).unwrap().messages {
            let Message::Op(op) = m else { panic!() };
            assert!(other.apply(op, 1000));
        }
        assert_eq!(other.full_state_json(), s.full_state_json());
        assert!(matches!(
            link(&mut s, "a", "zz", 1000),
            Err(LocalError::Refused)
        ));
        assert!(matches!(
            put(&mut s, "c", "{", 1000),
            Err(LocalError::Value(_))
        ));
    }
}
