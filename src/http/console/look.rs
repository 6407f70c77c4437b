//! Read-only look-ups in a store, for `/admin/*` and the `query` subcommand: a node by
//! id, a GenosDB query (the operators of [`crate::sm::query`]) with a result limit,
//! and the oplog window. Pure: the caller holds the store.

use crate::sm::js::Js;
use crate::sm::query::{Query, QueryError};
use crate::store::Store;
use crate::store::oplog::EntryKind;

/// Results one query may return.
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 100;
/// Nodes one query may look at: the store is locked while it runs.
pub const MAX_SCAN: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum LookError {
    #[error("the query is not JSON: {0}")]
    Json(String),
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Matching nodes as JSON texts, how many nodes were looked at, and whether some were
/// not (the scan stopped at the limit or at [`MAX_SCAN`]).
#[derive(Debug, Default)]
pub struct Found {
    pub nodes: Vec<String>,
    pub scanned: usize,
    pub truncated: bool,
}

/// A query's text, checked.
pub fn compile(text: &str) -> Result<Query, LookError> {
    let js = Js::parse(text).map_err(|e| LookError::Json(e.to_string()))?;
    Ok(Query::compile(&js)?)
}

/// `{"id":…,"value":…,"edges":[…],"timestamp":…}` of one node.
pub fn node(store: &Store, id: &str) -> Option<String> {
    store.get(id).map(|n| n.to_json(id))
}

/// Nodes the query matches, at most `limit` (capped at [`MAX_LIMIT`]), in id order
/// among those scanned.
pub fn query(store: &Store, q: &Query, limit: usize) -> Result<Found, LookError> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let mut out = Found::default();
    let mut hits: Vec<(&str, String)> = Vec::new();
    for (id, node) in store.nodes() {
        if out.scanned == MAX_SCAN || hits.len() == limit {
            out.truncated = true;
            break;
        }
        out.scanned += 1;
        let text = node.to_json(id);
        let Ok(js) = Js::parse(&text) else { continue };
        if q.matches(&js)? {
            hits.push((id, text));
        }
    }
    hits.sort_by(|a, b| a.0.cmp(b.0));
    out.nodes = hits.into_iter().map(|(_, t)| t).collect();
    Ok(out)
}

/// The newest `limit` oplog entries (capped at [`MAX_LIMIT`]), oldest first, as
/// `{type, id, timestamp}` (a link as the op it was).
pub fn oplog(store: &Store, limit: usize) -> Vec<String> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let entries: Vec<_> = store.oplog().iter().collect();
    let from = entries.len().saturating_sub(limit);
    entries[from..]
        .iter()
        .map(|e| {
            let mut s = String::new();
            match &e.kind {
                EntryKind::Upsert { id } => {
                    crate::store::oplog::Entry::write_plain(&mut s, "upsert", id, &e.ts)
                }
                EntryKind::Remove { id } => {
                    crate::store::oplog::Entry::write_plain(&mut s, "remove", id, &e.ts)
                }
                EntryKind::Link { op } => s.push_str(op.get()),
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{Message, message};

    fn store() -> Store {
        let mut store = Store::new(1000);
        for i in 0..20 {
            let batch = message::parse_json(&format!(
                r#"[{{"type":"upsert","id":"n{i:02}","value":{{"n":{i},"kind":"{}"}},"timestamp":{{"physical":1795591854021,"logical":{i}}}}}]"#,
                if i % 2 == 0 { "even" } else { "odd" }
            ))
            .unwrap();
            for m in batch.messages {
                if let Message::Op(op) = m {
                    store.apply(op, 1_795_591_854_100);
                }
            }
        }
        store
    }

    #[test]
    fn finds_a_node_by_id() {
        let s = store();
        assert!(node(&s, "n03").unwrap().contains(r#""n":3"#));
        assert!(node(&s, "nope").is_none());
    }

    #[test]
    fn queries_with_operators_and_a_limit() {
        let s = store();
        let q = compile(r#"{"kind":"even","n":{"$gte":10}}"#).unwrap();
        let f = query(&s, &q, 100).unwrap();
        assert_eq!(f.nodes.len(), 5);
        assert!(f.nodes[0].starts_with(r#"{"id":"n10""#));
        let f = query(&s, &q, 2).unwrap();
        assert_eq!(f.nodes.len(), 2);
        assert!(f.truncated);
        assert!(
            compile(r#"{"$nope":1}"#)
                .and_then(|q| query(&s, &q, 1))
                .is_err()
        );
        assert!(compile("not json").is_err());
    }

    #[test]
    fn the_oplog_window_is_the_newest_entries() {
        let s = store();
        let w = oplog(&s, 3);
        assert_eq!(w.len(), 3);
        assert!(w[2].contains(r#""id":"n19""#), "{w:?}");
    }
}
