//! The merge rules applied to what storage holds: a store read back merged with the
//! graph in memory, and the records other writers journaled, applied one by one.

use crate::store::{Effect, EntryKind, FullState, RemoveOp, Store};

/// Merges `memory` into `base` with the full-state rules: a node is taken when it is
/// newer than what `base` holds, and the removals in memory's oplog apply when they
/// are newer than the node. `base` keeps its own oplog, plus entries for what it took.
pub fn merge_into(base: &mut Store, memory: &Store) {
    let nodes = memory
        .nodes()
        .iter()
        .map(|(id, n)| (id.to_string(), n.clone()))
        .collect();
    let removals = memory
        .oplog()
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Remove { id } => Some(RemoveOp {
                id: id.to_string(),
                ts: e.ts,
            }),
            _ => None,
        })
        .collect();
    base.full_state(FullState {
        nodes,
        removals,
        ts: memory.global_ts(),
    });
}

/// Applies an effect another writer journaled, by the merge rules rather than blindly:
/// several daemons append to one Postgres journal, so two rows can disagree, and the
/// newer write wins whatever order they are read in (a replay of one writer's rows
/// from the state they were decided on gives what replaying them blindly gives).
/// Nothing reaches the store's sink: the record is already stored.
pub fn merge_effect(store: &mut Store, effect: Effect) -> bool {
    let newer = |store: &Store, id: &str, ts| match store.get(id) {
        Some(n) => n.timestamp < Some(ts),
        None => store.oplog().tombstone(id).is_none_or(|t| t < ts),
    };
    let apply = match &effect {
        Effect::Upsert { id, value, ts } => value.is_some() && newer(store, id, *ts),
        Effect::Adopt { id, node } => match store.get(id) {
            Some(n) => n.timestamp < node.timestamp,
            None => store
                .oplog()
                .tombstone(id)
                .is_none_or(|t| node.timestamp.is_some_and(|n| t < n)),
        },
        Effect::Remove { id, ts } => match store.get(id) {
            Some(n) => n.timestamp < Some(*ts),
            None => store.oplog().tombstone(id).is_none_or(|t| t < *ts),
        },
        Effect::Link {
            source, target, ts, ..
        } => {
            store.get(target).is_some()
                && store
                    .get(source)
                    .is_some_and(|s| s.timestamp < Some(*ts) && !s.has_edge(target))
        }
        Effect::GlobalTs(ts) => store.global_ts() < Some(*ts),
    };
    if apply {
        store.apply_effect(effect);
    }
    apply
}

#[cfg(test)]
mod tests {
    use super::{Effect, Store, merge_effect};
    use crate::store::{Hlc, RawJson};

    fn up(id: &str, v: u64, t: u64) -> Effect {
        Effect::Upsert {
            id: id.into(),
            value: Some(RawJson::parse(format!("{v}")).unwrap()),
            ts: Hlc::new(t, 0),
        }
    }

    /// Two writers' records, read in either order, give the same graph: the newer
    /// write wins, and a remove holds against an older upsert.
    #[test]
    fn records_of_two_writers_merge_in_any_order() {
        let a = vec![
            up("x", 1, 10),
            up("y", 1, 30),
            Effect::Remove {
                id: "z".into(),
                ts: Hlc::new(50, 0),
            },
        ];
        let b = vec![
            up("x", 2, 20),
            up("y", 2, 25),
            up("z", 2, 40),
            up("w", 2, 5),
        ];
        let run = |first: &[Effect], second: &[Effect]| {
            let mut s = Store::new(100);
            for e in first.iter().chain(second) {
                merge_effect(&mut s, e.clone());
            }
            let mut out: Vec<String> = s.nodes().iter().map(|(k, n)| n.to_json(k)).collect();
            out.sort();
            out
        };
        let ab = run(&a, &b);
        assert_eq!(ab, run(&b, &a));
        assert_eq!(ab.len(), 3, "{ab:?}");
        assert!(
            ab.iter()
                .any(|n| n.contains("\"x\"") && n.contains("\"value\":2"))
        );
        assert!(
            ab.iter()
                .any(|n| n.contains("\"y\"") && n.contains("\"value\":1"))
        );
        assert!(!ab.iter().any(|n| n.contains("\"z\"")));
    }
}
