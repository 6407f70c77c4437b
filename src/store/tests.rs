use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const NOW: u64 = 1_800_000_000_000;

fn raw(s: &str) -> RawJson {
    RawJson::parse(s.to_owned()).unwrap()
}

fn up(id: &str, value: &str, p: u64, l: u64) -> Op {
    Op::Upsert(UpsertOp {
        id: id.into(),
        value: Some(raw(value)),
        ts: Hlc::new(p, l),
    })
}

fn rm(id: &str, p: u64, l: u64) -> Op {
    Op::Remove(RemoveOp {
        id: id.into(),
        ts: Hlc::new(p, l),
    })
}

fn link(s: &str, t: &str, p: u64, l: u64) -> Op {
    let text = format!(
        r#"{{"type":"link","sourceId":"{s}","targetId":"{t}","timestamp":{{"physical":{p},"logical":{l}}}}}"#
    );
    Op::Link(LinkOp {
        source: s.into(),
        target: t.into(),
        ts: Hlc::new(p, l),
        raw: raw(&text),
    })
}

/// Everything observable about a store, in a comparable form.
fn fingerprint(store: &Store) -> (BTreeMap<String, String>, String, Option<Hlc>) {
    let nodes = store
        .nodes()
        .iter()
        .map(|(id, n)| (id.to_string(), n.to_json(id)))
        .collect();
    (nodes, store.delta_json(), store.global_ts())
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Effect>>>);

impl EffectSink for Recorder {
    fn record(&mut self, effect: &Effect) {
        self.0.lock().unwrap().push(effect.clone());
    }
}

#[test]
fn upsert_without_value_never_creates_or_changes() {
    let mut s = Store::new(200);
    let ghost = Op::Upsert(UpsertOp {
        id: "g".into(),
        value: None,
        ts: Hlc::new(5, 1),
    });
    assert!(!s.apply(ghost.clone(), NOW));
    assert!(s.get("g").is_none());
    assert!(s.apply(up("g", "1", 1, 1), NOW));
    assert!(!s.apply(ghost, NOW));
    assert_eq!(s.get("g").unwrap().value.as_ref().unwrap().get(), "1");
    assert_eq!(s.oplog().len(), 1);
}

#[test]
fn remove_strips_incoming_edges_and_tombstones() {
    let mut s = Store::new(200);
    s.apply(up("a", "1", 1, 1), NOW);
    s.apply(up("b", "2", 1, 2), NOW);
    assert!(s.apply(link("a", "b", 1, 3), NOW));
    assert_eq!(&*s.get("a").unwrap().edges, &["b".into()] as &[Box<str>]);
    assert!(s.apply(rm("b", 1, 4), NOW));
    assert!(s.get("a").unwrap().edges.is_empty());
    // Its older history cannot bring it back...
    assert!(!s.apply(up("b", "\"old\"", 1, 3), NOW));
    // ...a newer write can.
    assert!(s.apply(up("b", "\"new\"", 1, 5), NOW));
}

#[test]
fn remove_of_unknown_id_guards_against_late_upsert() {
    let mut s = Store::new(200);
    assert!(s.apply(rm("x", 10, 0), NOW));
    assert!(
        !s.apply(rm("x", 9, 0), NOW),
        "an older tombstone adds nothing"
    );
    assert!(!s.apply(rm("x", 10, 0), NOW), "a duplicate is idempotent");
    assert!(!s.apply(up("x", "1", 9, 0), NOW));
    assert!(s.get("x").is_none());
    assert_eq!(s.oplog().len(), 1);
}

#[test]
fn duplicate_link_is_not_relogged() {
    let mut s = Store::new(200);
    s.apply(up("a", "1", 1, 1), NOW);
    s.apply(up("b", "1", 1, 2), NOW);
    assert!(s.apply(link("a", "b", 1, 3), NOW));
    assert!(!s.apply(link("a", "b", 1, 3), NOW));
    assert!(!s.apply(link("a", "b", 1, 9), NOW));
    assert_eq!(s.oplog().len(), 3);
    assert_eq!(s.get("a").unwrap().timestamp, Some(Hlc::new(1, 3)));
}

#[test]
fn priority_bypass_only_for_user_role_nodes() {
    let mut s = Store::new(200);
    s.apply(up("user:0x1", r#"{"role":"guest"}"#, 100, 1), NOW);
    assert!(s.apply(
        up("user:0x1", r#"{"role":"admin","priority":true}"#, 5, 1),
        NOW
    ));
    let n = s.get("user:0x1").unwrap();
    assert_eq!(n.value.as_ref().unwrap().get(), r#"{"role":"admin"}"#);
    assert_eq!(n.timestamp, Some(Hlc::new(5, 1)));
    // Not a user node: priority is stripped and plain LWW applies.
    s.apply(up("doc", r#"{"v":1}"#, 100, 1), NOW);
    assert!(!s.apply(up("doc", r#"{"v":2,"priority":true}"#, 5, 1), NOW));
    assert!(s.apply(up("doc", r#"{"v":3,"priority":true}"#, 200, 1), NOW));
    assert_eq!(
        s.get("doc").unwrap().value.as_ref().unwrap().get(),
        r#"{"v":3}"#
    );
    // priority:false is stripped too, and never bypasses.
    assert!(!s.apply(
        up("user:0x1", r#"{"role":"x","priority":false}"#, 1, 1),
        NOW
    ));
}

#[test]
fn escaped_priority_key_is_seen() {
    let mut s = Store::new(200);
    assert!(s.apply(up("d", r#"{"v":1,"priorit\u0079":true}"#, 1, 1), NOW));
    assert_eq!(
        s.get("d").unwrap().value.as_ref().unwrap().get(),
        r#"{"v":1}"#
    );
}

#[test]
fn drift_cap_applies_to_upserts_only() {
    let mut s = Store::new(200);
    let far = NOW + 10 * hlc::MAX_DRIFT_MS;
    s.apply(up("a", "1", far, 3), NOW);
    assert_eq!(
        s.get("a").unwrap().timestamp,
        Some(Hlc::new(NOW + hlc::MAX_DRIFT_MS, 3))
    );
    assert_eq!(s.global_ts(), Some(Hlc::new(NOW + hlc::MAX_DRIFT_MS, 3)));
    s.apply(up("b", "1", 1, 1), NOW);
    s.apply(link("b", "a", far, 4), NOW);
    assert_eq!(s.get("b").unwrap().timestamp, Some(Hlc::new(far, 4)));
}

#[test]
fn full_state_counter_reply_and_tombstones() {
    let mut a = Store::new(200);
    a.apply(up("only-a", "1", 1, 1), NOW);
    a.apply(up("gone", "1", 1, 2), NOW);
    a.apply(rm("gone", 1, 3), NOW);
    let mut b = Store::new(200);
    b.apply(up("gone", "\"old\"", 1, 1), NOW);
    b.apply(up("only-b", "1", 1, 4), NOW);
    let from_a = full_state_of(&a);
    let out = b.full_state(from_a);
    assert_eq!(out.adopted, 1);
    assert_eq!(out.removed, 1);
    assert!(out.counter_reply, "b holds only-b");
    assert!(b.get("gone").is_none());
    let back = a.full_state(full_state_of(&b));
    assert!(!back.counter_reply);
    assert_eq!(fingerprint(&a).0, fingerprint(&b).0);
}

#[test]
fn sync_reply_follows_section_8() {
    let mut s = Store::new(200);
    assert_eq!(
        s.sync_reply(Some(Hlc::new(1, 1))),
        SyncReply::Full,
        "empty oplog"
    );
    s.apply(up("a", "1", 10, 5), NOW);
    s.apply(up("b", "1", 3, 1), NOW);
    assert_eq!(s.sync_reply(None), SyncReply::Full);
    assert_eq!(s.sync_reply(Some(Hlc::new(10, 4))), SyncReply::Full);
    // "Oldest" is the first entry, not the smallest timestamp.
    assert_eq!(s.sync_reply(Some(Hlc::new(10, 5))), SyncReply::Delta);
    assert_eq!(s.sync_reply(Some(Hlc::new(99, 0))), SyncReply::Delta);
}

fn full_state_of(s: &Store) -> FullState {
    let text = format!("[{}]", s.full_state_json());
    match crate::sync::message::parse_json(&text)
        .unwrap()
        .messages
        .remove(0)
    {
        crate::sync::Message::Full(f) => f,
        other => panic!("not a full state: {other:?}"),
    }
}

// ---- properties ------------------------------------------------------------------

/// Upserts and removes over a few ids, every timestamp distinct (as HLCs are within
/// a room), no priority: the fragment of the rules on which LWW converges.
fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec((0..4usize, 0..3u8, 0..1000u64), 1..40).prop_map(|raw_ops| {
        raw_ops
            .into_iter()
            .enumerate()
            .map(|(i, (id, kind, v))| {
                let id = ["a", "b", "c", "d"][id];
                let (p, l) = (1_000 + v, i as u64);
                match kind {
                    0 | 1 => up(
                        id,
                        &format!(r#"{{"v":{v},"big":123456789012345678901}}"#),
                        p,
                        l,
                    ),
                    _ => rm(id, p, l),
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn replicas_converge_in_any_order_with_duplicates(
        ops in ops_strategy(),
        seed in any::<u64>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut shuffled = ops.clone();
        for d in &dups {
            shuffled.push(d.get(&ops).clone());
        }
        // Deterministic Fisher-Yates from the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut a = Store::new(10_000);
        let mut b = Store::new(10_000);
        for op in ops { a.apply(op, NOW); }
        for op in shuffled { b.apply(op, NOW); }
        prop_assert_eq!(fingerprint(&a).0, fingerprint(&b).0);
        prop_assert_eq!(a.global_ts(), b.global_ts());
    }

    #[test]
    fn full_state_exchange_converges(ops in ops_strategy(), split in any::<u64>()) {
        let mut a = Store::new(10_000);
        let mut b = Store::new(10_000);
        for (i, op) in ops.into_iter().enumerate() {
            if (split >> (i % 64)) & 1 == 0 { a.apply(op, NOW); } else { b.apply(op, NOW); }
        }
        // Both sides answer each other's sync(null) with a full state (§6.4); the
        // counter-reply only covers ids the sender lacks, not newer versions.
        b.full_state(full_state_of(&a));
        a.full_state(full_state_of(&b));
        prop_assert_eq!(fingerprint(&a).0, fingerprint(&b).0);
    }

    #[test]
    fn replaying_effects_rebuilds_identical_state(
        ops in ops_strategy(),
        links in prop::collection::vec((0..4usize, 0..4usize, 0..1000u64), 0..10),
        cap in 1..30usize,
    ) {
        let recorder = Recorder::default();
        let mut live = Store::new(cap);
        live.set_sink(Box::new(recorder.clone()));
        for op in ops { live.apply(op, NOW); }
        let ids = ["a", "b", "c", "d"];
        for (i, (s, t, p)) in links.into_iter().enumerate() {
            live.apply(link(ids[s], ids[t], 1_000 + p, 10_000 + i as u64), NOW);
        }
        let mut replayed = Store::new(cap);
        for e in recorder.0.lock().unwrap().drain(..) { replayed.apply_effect(e); }
        prop_assert_eq!(fingerprint(&live), fingerprint(&replayed));
    }
}

#[test]
fn a_delta_covers_the_graph_only_while_every_node_is_in_the_window() {
    let mut s = Store::new(3);
    assert!(s.delta_covers_graph(), "an empty graph");
    let v0 = s.version();
    s.apply(up("a", "1", NOW, 0), NOW);
    s.apply(up("b", "1", NOW + 1, 0), NOW);
    assert_ne!(s.version(), v0, "a change moves the version");
    assert!(s.delta_covers_graph());
    // Three entries for "b" push "a" out of the window: a delta no longer carries it.
    s.apply(up("b", "2", NOW + 2, 0), NOW);
    s.apply(up("b", "3", NOW + 3, 0), NOW);
    assert!(!s.delta_covers_graph());
    // A full state lists "a" again as an adopted node: back in the window.
    let v = s.version();
    s.apply(up("b", "3", NOW + 3, 0), NOW);
    assert_eq!(
        s.version(),
        v,
        "an op that changes nothing keeps the version"
    );
    s.apply(up("a", "2", NOW + 4, 0), NOW);
    assert!(s.delta_covers_graph());
    // More nodes than entries can never be covered.
    s.apply(up("c", "1", NOW + 5, 0), NOW);
    s.apply(up("d", "1", NOW + 6, 0), NOW);
    assert!(!s.delta_covers_graph());
}
