//! The graph store: node model, HLC, merge rules and oplog (genosdb-data.md §4–§8).
//!
//! Pure logic: no I/O and no clock reads. Callers pass `now_ms` where a rule needs the
//! wall clock (the upsert drift cap), so every rule replays deterministically in tests.

pub mod effect;
pub mod hlc;
pub mod json;
pub mod node;
pub mod oplog;
mod serve;

pub use effect::Effect;
pub use hlc::{Clock, Hlc};
pub use json::RawJson;
pub use node::Node;
pub use oplog::{Entry, EntryKind, Oplog};
pub use serve::{CursorMark, FullStateCursor};

use ahash::RandomState;
use json::RawObject;
use std::collections::HashMap;

pub type NodeMap = HashMap<Box<str>, Node, RandomState>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpsertOp {
    pub id: String,
    pub value: Option<RawJson>,
    pub ts: Hlc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveOp {
    pub id: String,
    pub ts: Hlc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkOp {
    pub source: String,
    pub target: String,
    pub ts: Hlc,
    /// The op exactly as received; browsers log the whole op (SM fields included).
    pub raw: RawJson,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Upsert(UpsertOp),
    Remove(RemoveOp),
    Link(LinkOp),
}

/// A `fullStateSync` message, its nodes already validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FullState {
    pub nodes: Vec<(String, Node)>,
    pub removals: Vec<RemoveOp>,
    pub ts: Option<Hlc>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FullStateOutcome {
    pub adopted: usize,
    pub removed: usize,
    /// We hold ids the sender lacks: answer with our own full state (§7.5).
    pub counter_reply: bool,
}

/// What to answer to a `sync` (§8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReply {
    Full,
    Delta,
}

/// Live merges by kind, for /metrics. Replay does not count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub upsert: u64,
    pub remove: u64,
    pub link: u64,
    /// Nodes adopted from full states.
    pub adopt: u64,
}

/// Receives every effect the store applies, in order (the journal).
pub trait EffectSink: Send {
    fn record(&mut self, effect: &Effect);
}

/// The in-memory graph with its oplog and global timestamp.
pub struct Store {
    nodes: NodeMap,
    /// target → sources with an edge to it, so a remove strips edges in O(degree).
    incoming: HashMap<Box<str>, Vec<Box<str>>, RandomState>,
    oplog: Oplog,
    global_ts: Option<Hlc>,
    clock: Clock,
    sink: Option<Box<dyn EffectSink>>,
    merged: MergeCounts,
    /// Bumped by every change to what a full state holds (see [`Store::version`]).
    version: u64,
}

impl Store {
    pub fn new(oplog_size: usize) -> Self {
        Self {
            nodes: NodeMap::default(),
            incoming: HashMap::default(),
            oplog: Oplog::new(oplog_size),
            global_ts: None,
            clock: Clock::default(),
            sink: None,
            merged: MergeCounts::default(),
            version: 0,
        }
    }

    /// Changes whenever the graph, the oplog or the global timestamp may have changed:
    /// a full state written at one version is the full state at that version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Rebuilds a store from persisted parts.
    pub fn from_parts(
        oplog_size: usize,
        nodes: NodeMap,
        oplog: Vec<Entry>,
        global_ts: Option<Hlc>,
    ) -> Self {
        let mut store = Self::new(oplog_size);
        store.nodes = nodes;
        store.oplog = Oplog::from_entries(oplog_size, oplog);
        store.global_ts = global_ts;
        if let Some(ts) = global_ts {
            store.clock.update(ts);
        }
        let pairs: Vec<(Box<str>, Box<str>)> = store
            .nodes
            .iter()
            .flat_map(|(id, n)| n.edges.iter().map(move |t| (t.clone(), id.clone())))
            .collect();
        for (target, source) in pairs {
            store.incoming.entry(target).or_default().push(source);
        }
        store
    }

    /// From now on every applied effect is also handed to `sink`.
    pub fn set_sink(&mut self, sink: Box<dyn EffectSink>) {
        self.sink = Some(sink);
    }

    pub fn take_sink(&mut self) -> Option<Box<dyn EffectSink>> {
        self.sink.take()
    }

    pub fn sink_mut(&mut self) -> Option<&mut (dyn EffectSink + 'static)> {
        self.sink.as_deref_mut()
    }

    // ---- reads -------------------------------------------------------------------

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    pub fn nodes(&self) -> &NodeMap {
        &self.nodes
    }

    pub fn oplog(&self) -> &Oplog {
        &self.oplog
    }

    pub fn global_ts(&self) -> Option<Hlc> {
        self.global_ts
    }

    pub fn merged(&self) -> MergeCounts {
        self.merged
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A timestamp for a local write (§5).
    pub fn next_ts(&mut self, wall_ms: u64) -> Hlc {
        self.clock.now(wall_ms)
    }

    /// Advances the local clock to the wall clock, as a peer does at start.
    pub fn start_clock(&mut self, wall_ms: u64) {
        self.clock.update(Hlc::new(wall_ms, 0));
    }

    // ---- merge rules (§7) ----------------------------------------------------------

    pub fn apply(&mut self, op: Op, now_ms: u64) -> bool {
        match op {
            Op::Upsert(op) => self.upsert(op, now_ms),
            Op::Remove(op) => self.remove(op),
            Op::Link(op) => self.link(op),
        }
    }

    /// §7.1 with the resolver of §7.2.
    ///
    /// An upsert without a `value` key is the hydrated record of a node its sender has
    /// removed (§6.2). It never creates or changes a node here: applying it would
    /// resurrect a removed node as a valueless ghost and log it for serving onward.
    pub fn upsert(&mut self, op: UpsertOp, now_ms: u64) -> bool {
        let Some(value) = op.value else {
            return false;
        };
        let local = self.nodes.get(op.id.as_str());
        if local.is_none() && self.oplog.tombstone(&op.id).is_some_and(|t| t >= op.ts) {
            return false;
        }
        let Some((value, ts)) = resolve(local, &op.id, value, op.ts, now_ms) else {
            return false;
        };
        self.commit(Effect::Upsert {
            id: op.id.into(),
            value: Some(value),
            ts,
        });
        true
    }

    /// §7.3. A link whose edge already exists changes nothing and is not logged: browsers
    /// log it again on every delta exchange, which only churns their window.
    pub fn link(&mut self, op: LinkOp) -> bool {
        let Some(source) = self.nodes.get(op.source.as_str()) else {
            return false;
        };
        if !self.nodes.contains_key(op.target.as_str())
            || source.timestamp >= Some(op.ts)
            || source.has_edge(&op.target)
        {
            return false;
        }
        self.commit(Effect::Link {
            source: op.source.into(),
            target: op.target.into(),
            ts: op.ts,
            op: op.raw,
        });
        true
    }

    /// §7.4, with genossrv's edge stripping. A remove of an id we do not hold is kept
    /// as a tombstone (browsers drop it), so that the node's older upsert arriving later
    /// cannot create it: the room converges whatever order the two arrive in.
    pub fn remove(&mut self, op: RemoveOp) -> bool {
        let newer_known = match self.nodes.get(op.id.as_str()) {
            Some(local) => local.timestamp >= Some(op.ts),
            None => self.oplog.tombstone(&op.id).is_some_and(|t| t >= op.ts),
        };
        if newer_known {
            return false;
        }
        self.commit(Effect::Remove {
            id: op.id.into(),
            ts: op.ts,
        });
        true
    }

    /// §7.5: node-by-node merge, then removals, then the counter-reply decision.
    pub fn full_state(&mut self, msg: FullState) -> FullStateOutcome {
        let mut outcome = FullStateOutcome::default();
        let mut sent_ids: std::collections::HashSet<String, RandomState> =
            std::collections::HashSet::with_capacity_and_hasher(
                msg.nodes.len(),
                RandomState::new(),
            );
        for (id, node) in msg.nodes {
            let local_ts = self
                .nodes
                .get(id.as_str())
                .and_then(|n| n.timestamp)
                .or_else(|| self.oplog.tombstone(&id));
            let adopt = match local_ts {
                None => true,
                Some(local) => node.timestamp.is_some_and(|t| local < t),
            };
            if adopt {
                self.commit(Effect::Adopt {
                    id: id.as_str().into(),
                    node,
                });
                outcome.adopted += 1;
            }
            sent_ids.insert(id);
        }
        for removal in msg.removals {
            if self.remove(removal) {
                outcome.removed += 1;
            }
        }
        outcome.counter_reply = self.nodes.keys().any(|id| !sent_ids.contains(id.as_ref()));
        if let Some(ts) = msg.ts {
            self.clock.update(ts);
            if Some(ts) > self.global_ts {
                self.commit(Effect::GlobalTs(ts));
            }
        }
        outcome
    }

    /// §7.6: every op of a delta, in order, as if live.
    pub fn delta(&mut self, ops: Vec<Op>, now_ms: u64) -> usize {
        ops.into_iter()
            .map(|op| self.apply(op, now_ms) as usize)
            .sum()
    }

    // ---- replies (§6.2, §6.3, §8) ----------------------------------------------------

    /// §8, except that an empty oplog gets a full state where genossrv stays silent
    /// (§14.6): a returning browser then still learns what we hold.
    pub fn sync_reply(&self, their_ts: Option<Hlc>) -> SyncReply {
        match (their_ts, self.oplog.oldest()) {
            (Some(t), Some(oldest)) if t >= oldest.ts => SyncReply::Delta,
            _ => SyncReply::Full,
        }
    }

    /// `{"type":"sync","timestamp":…}` with our global timestamp.
    pub fn sync_json(&self) -> String {
        let mut out = String::from("{\"type\":\"sync\",\"timestamp\":");
        write_opt_ts(&mut out, self.global_ts);
        out.push('}');
        out
    }

    /// The whole graph as one `fullStateSync` message object.
    pub fn full_state_json(&self) -> String {
        let mut cursor = self.full_state_cursor();
        self.next_full_state(&mut cursor, usize::MAX)
            .unwrap_or_default()
    }

    /// The whole oplog window, hydrated with current values, as one `deltaSync` object.
    pub fn delta_json(&self) -> String {
        self.delta_messages(usize::MAX).pop().unwrap_or_default()
    }

    /// §6.2: `{type,id,timestamp,value}` with the node's current value, `value` absent
    /// for a removed node; removes and links go out as stored.
    fn write_hydrated(&self, out: &mut String, entry: &Entry) {
        match &entry.kind {
            EntryKind::Upsert { id } => {
                out.push_str("{\"type\":\"upsert\",\"id\":");
                json::write_str(out, id);
                out.push_str(",\"timestamp\":");
                entry.ts.write_json(out);
                if let Some(value) = self.nodes.get(id).and_then(|n| n.value.as_ref()) {
                    out.push_str(",\"value\":");
                    out.push_str(value.get());
                }
                out.push('}');
            }
            EntryKind::Remove { id } => Entry::write_plain(out, "remove", id, &entry.ts),
            EntryKind::Link { op } => out.push_str(op.get()),
        }
    }

    // ---- effects -------------------------------------------------------------------------

    fn commit(&mut self, effect: Effect) {
        match &effect {
            Effect::Upsert { .. } => self.merged.upsert += 1,
            Effect::Remove { .. } => self.merged.remove += 1,
            Effect::Link { .. } => self.merged.link += 1,
            Effect::Adopt { .. } => self.merged.adopt += 1,
            Effect::GlobalTs(_) => {}
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.record(&effect);
        }
        self.apply_effect(effect);
    }

    /// Applies an effect unconditionally: the live path after its decision, and replay.
    pub fn apply_effect(&mut self, effect: Effect) {
        self.version = self.version.wrapping_add(1);
        match effect {
            Effect::Upsert { id, value, ts } => {
                self.oplog.push(Entry::upsert(&id, ts));
                match self.nodes.get_mut(&id) {
                    Some(node) => {
                        node.value = value;
                        node.timestamp = Some(ts);
                    }
                    None => {
                        self.nodes.insert(id, Node::new(value, ts));
                    }
                }
                self.observe(ts);
            }
            Effect::Adopt { id, node } => {
                if let Some(ts) = node.timestamp {
                    self.oplog.push(Entry::upsert(&id, ts));
                }
                if let Some(old) = self.nodes.remove(&id) {
                    self.unindex(&id, &old.edges);
                }
                for target in &node.edges {
                    self.incoming
                        .entry(target.clone())
                        .or_default()
                        .push(id.clone());
                }
                self.nodes.insert(id, node);
            }
            Effect::Link {
                source,
                target,
                ts,
                op,
            } => {
                if let Some(node) = self.nodes.get_mut(&source)
                    && !node.has_edge(&target)
                {
                    node.edges.push(target.clone());
                    node.timestamp = Some(ts);
                    self.incoming.entry(target).or_default().push(source);
                }
                self.oplog.push(Entry {
                    kind: EntryKind::Link { op },
                    ts,
                });
                self.observe(ts);
            }
            Effect::Remove { id, ts } => {
                if let Some(old) = self.nodes.remove(&id) {
                    self.unindex(&id, &old.edges);
                    self.strip_edges_to(&id);
                }
                self.oplog.push(Entry::remove(&id, ts));
                self.observe(ts);
            }
            Effect::GlobalTs(ts) => self.observe(ts),
        }
    }

    fn observe(&mut self, ts: Hlc) {
        self.clock.update(ts);
        if Some(ts) > self.global_ts {
            self.global_ts = Some(ts);
            self.version = self.version.wrapping_add(1);
        }
    }

    fn unindex(&mut self, source: &str, edges: &[Box<str>]) {
        for target in edges {
            if let Some(sources) = self.incoming.get_mut(target) {
                sources.retain(|s| s.as_ref() != source);
                if sources.is_empty() {
                    self.incoming.remove(target);
                }
            }
        }
    }

    fn strip_edges_to(&mut self, target: &str) {
        let Some(sources) = self.incoming.remove(target) else {
            return;
        };
        for source in sources {
            if let Some(node) = self.nodes.get_mut(&source) {
                node.edges.retain(|e| e.as_ref() != target);
            }
        }
    }
}

/// §7.2, the LWW resolver: `Some((value to store, timestamp))` when the op wins.
fn resolve(
    local: Option<&Node>,
    id: &str,
    value: RawJson,
    ts: Hlc,
    now_ms: u64,
) -> Option<(RawJson, Hlc)> {
    let ts = ts.capped(now_ms);
    let mut value = value;
    if may_name_priority(value.get())
        && let Some(obj) = RawObject::parse(value.as_raw())
        && let Some(priority) = obj.get("priority")
    {
        let bypass = json::is_true(priority) && id.starts_with("user:") && obj.contains("role");
        let stripped = RawJson::parse(obj.to_json_without("priority")).ok()?;
        if bypass {
            return Some((stripped, ts));
        }
        value = stripped;
    }
    match local.and_then(|n| n.timestamp) {
        Some(local_ts) if ts <= local_ts => None,
        _ => Some((value, ts)),
    }
}

/// Cheap pre-check before splitting an object: its text names `priority`, possibly
/// behind an escape.
fn may_name_priority(text: &str) -> bool {
    text.starts_with('{') && (text.contains("priority") || text.contains('\\'))
}

fn write_opt_ts(out: &mut String, ts: Option<Hlc>) {
    match ts {
        Some(ts) => ts.write_json(out),
        None => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests;
