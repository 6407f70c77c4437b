//! The node model of genosdb-data.md §4.1.

use super::hlc::Hlc;
use super::json::{self, HlcError, RawJson, RawObject};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Members of a node beyond id/value/edges/timestamp, in the order received.
pub type ExtraMembers = Vec<(Box<str>, RawJson)>;

/// A graph node. The id is the key it is stored under.
///
/// `value` is `None` when the key is absent (a hydrated upsert of a removed node).
/// `extra` holds members other than id/value/edges/timestamp that arrived in a full
/// state: browsers adopt such nodes verbatim, and so do we.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub value: Option<RawJson>,
    pub edges: Vec<Box<str>>,
    pub timestamp: Option<Hlc>,
    pub extra: Option<Box<ExtraMembers>>,
}

/// Why a node from a full state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node is not a JSON object")]
    NotObject,
    #[error("node edges are not an array of strings")]
    Edges,
    #[error("node {0}")]
    Timestamp(#[from] HlcError),
}

impl Node {
    pub fn new(value: Option<RawJson>, timestamp: Hlc) -> Self {
        Self {
            value,
            edges: Vec::new(),
            timestamp: Some(timestamp),
            extra: None,
        }
    }

    /// Reads a node as it appears in `fullStateSync.graphData`.
    pub fn from_json(raw: &RawValue) -> Result<Self, NodeError> {
        let obj = RawObject::parse(raw).ok_or(NodeError::NotObject)?;
        let mut node = Node {
            value: None,
            edges: Vec::new(),
            timestamp: None,
            extra: None,
        };
        let mut extra = ExtraMembers::new();
        for (key, value) in &obj.members {
            match key.as_ref() {
                "id" => {}
                "value" => node.value = Some(RawJson::from_raw(value)),
                "edges" => node.edges = parse_edges(value)?,
                "timestamp" => node.timestamp = json::parse_hlc(value)?,
                other => {
                    extra.retain(|(k, _)| k.as_ref() != other);
                    extra.push((other.into(), RawJson::from_raw(value)));
                }
            }
        }
        if !extra.is_empty() {
            node.extra = Some(Box::new(extra));
        }
        Ok(node)
    }

    /// Writes `{"id":…,"value":…,"edges":[…],"timestamp":…,…extra}`.
    pub fn write_json(&self, id: &str, out: &mut String) {
        out.push_str("{\"id\":");
        json::write_str(out, id);
        if let Some(v) = &self.value {
            out.push_str(",\"value\":");
            out.push_str(v.get());
        }
        out.push_str(",\"edges\":[");
        for (i, e) in self.edges.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json::write_str(out, e);
        }
        out.push(']');
        if let Some(ts) = &self.timestamp {
            out.push_str(",\"timestamp\":");
            ts.write_json(out);
        }
        for (k, v) in self.extra.iter().flat_map(|x| x.iter()) {
            out.push(',');
            json::write_str(out, k);
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
    }

    pub fn to_json(&self, id: &str) -> String {
        let mut s = String::new();
        self.write_json(id, &mut s);
        s
    }

    pub fn has_edge(&self, target: &str) -> bool {
        self.edges.iter().any(|e| e.as_ref() == target)
    }
}

fn parse_edges(raw: &RawValue) -> Result<Vec<Box<str>>, NodeError> {
    if json::is_null(raw) {
        return Ok(Vec::new());
    }
    let edges: Vec<String> = serde_json::from_str(raw.get()).map_err(|_| NodeError::Edges)?;
    let mut out: Vec<Box<str>> = Vec::with_capacity(edges.len());
    for e in edges {
        // Browsers never add an edge twice; a peer that sends duplicates gets them folded.
        if !out.iter().any(|x| x.as_ref() == e) {
            out.push(e.into_boxed_str());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn round_trips_a_browser_node() {
        let text = r#"{"id":"n1","value":{"title":"hello","n":1},"edges":["72a0"],"timestamp":{"physical":1795591856347,"logical":3}}"#;
        let node = Node::from_json(&raw(text)).unwrap();
        assert_eq!(node.to_json("n1"), text);
    }

    #[test]
    fn keeps_extra_members_and_absent_value() {
        let text = r#"{"id":"fs1","edges":["d1","not-a-node"],"timestamp":{"physical":1,"logical":1},"extra":"kept?"}"#;
        let node = Node::from_json(&raw(text)).unwrap();
        assert!(node.value.is_none());
        assert_eq!(node.to_json("fs1"), text);
    }

    #[test]
    fn refuses_malformed_nodes() {
        assert_eq!(Node::from_json(&raw("42")), Err(NodeError::NotObject));
        assert_eq!(
            Node::from_json(&raw(r#"{"edges":[1]}"#)),
            Err(NodeError::Edges)
        );
        assert_eq!(
            Node::from_json(&raw(r#"{"edges":"x"}"#)),
            Err(NodeError::Edges)
        );
        assert!(matches!(
            Node::from_json(&raw(r#"{"timestamp":{"physical":"x","logical":1}}"#)),
            Err(NodeError::Timestamp(_))
        ));
    }

    #[test]
    fn missing_timestamp_is_allowed() {
        let node = Node::from_json(&raw(r#"{"value":1}"#)).unwrap();
        assert_eq!(node.timestamp, None);
        assert_eq!(node.to_json("a"), r#"{"id":"a","value":1,"edges":[]}"#);
    }
}
