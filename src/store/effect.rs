//! Effects: the state changes merge decisions produce.
//!
//! Every change to the graph goes through [`Effect`]. The live path decides (LWW,
//! tombstones, drift cap) and emits an effect; replaying the same effects from the
//! journal rebuilds exactly the same state without consulting the clock.

use super::hlc::Hlc;
use super::json::RawJson;
use super::node::Node;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Set a node's value and timestamp, keeping its edges; creates the node if absent.
    Upsert {
        id: Box<str>,
        value: Option<RawJson>,
        ts: Hlc,
    },
    /// Replace a node verbatim (full-state adoption).
    Adopt { id: Box<str>, node: Node },
    /// Add the edge `source → target`, move the source's timestamp, log the whole op.
    Link {
        source: Box<str>,
        target: Box<str>,
        ts: Hlc,
        op: RawJson,
    },
    /// Delete the node if present, strip edges pointing at it, log a tombstone.
    Remove { id: Box<str>, ts: Hlc },
    /// Raise the global timestamp (the envelope time of an applied full state).
    GlobalTs(Hlc),
}
