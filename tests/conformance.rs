//! Replays traffic captured from real GenosDB 0.25.0 browsers and genossrv
//! (tests/vectors, see its README.md) through our store and compares the outcomes.
//!
//! Where our daemon deliberately differs from a browser, the test says so and checks
//! our behaviour instead (see docs/PROTOCOL.md, "Where it differs from genossrv and browsers").

use genosdb_fallback::store::{FullStateOutcome, Hlc, Op, Store, SyncReply, UpsertOp};
use genosdb_fallback::sync::{self, Message};
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn load(name: &str) -> Value {
    let path = vectors().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (the captured vectors live in tests/vectors)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Just enough of the GenosRTC frame (§3) to read the captures: strip the 15-byte
/// headers, join the chunks, inflate if flagged, and decode JSON or MessagePack.
fn decode_frames(frames: &[Value]) -> sync::Batch {
    let mut payload = Vec::new();
    let mut flags = 0u8;
    for f in frames {
        let bytes = hex(f.as_str().unwrap());
        flags = bytes[13];
        payload.extend_from_slice(&bytes[15..]);
    }
    if flags & 0x10 != 0 {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(payload.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        payload = out;
    }
    if flags & 0x04 != 0 {
        sync::message::parse_msgpack(&payload).unwrap()
    } else {
        sync::message::parse_json(std::str::from_utf8(&payload).unwrap()).unwrap()
    }
}

/// What the daemon does with one received batch; returns the sync replies it owes.
fn receive(store: &mut Store, batch: sync::Batch, now: u64) -> (Vec<SyncReply>, FullStateOutcome) {
    let mut replies = Vec::new();
    let mut full = FullStateOutcome::default();
    for msg in batch.messages {
        match msg {
            Message::Op(op) => {
                store.apply(op, now);
            }
            Message::Delta { ops, .. } => {
                store.delta(ops, now);
            }
            Message::Full(fs) => full = store.full_state(fs),
            Message::Sync(ts) => replies.push(store.sync_reply(ts)),
            Message::Unknown(_) => {}
        }
    }
    (replies, full)
}

fn batch_ok(msg: &Value) -> bool {
    msg.is_array() || msg.is_object()
}

fn node(store: &Store, id: &str) -> Value {
    match store.get(id) {
        Some(n) => serde_json::from_str(&n.to_json(id)).unwrap(),
        None => Value::Null,
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn out_messages(probe: &Value) -> Vec<Value> {
    probe["aTraffic"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["dir"] == "out")
        .map(|t| t["decoded"][0].clone())
        .collect()
}

/// The 22 data-layer probes of rules.json, replayed in order on one store, exactly as
/// browser A received them. The SM and ACL probes belong to the Security Manager.
#[test]
fn rules_probes_replay_like_a_browser() {
    let probes = load("rules.json");
    // The drift probe capped physical at now + 2 h, which tells when A ran.
    let now = 1_795_599_553_095 - 7_200_000;
    let mut store = Store::new(1000);
    // Browser A's own write, made before the probes.
    store.apply(
        Op::Upsert(UpsertOp {
            id: "x1".into(),
            value: Some(
                genosdb_fallback::store::RawJson::parse(r#"{"v":"local"}"#.into()).unwrap(),
            ),
            ts: Hlc::new(1_795_592_350_046, 1),
        }),
        now,
    );

    let mut checked = 0;
    for probe in probes.as_array().unwrap() {
        let name = probe["name"].as_str().unwrap();
        if name.starts_with("sm-") || name.starts_with("acl-") {
            continue;
        }
        let incoming = probe["aTraffic"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["dir"] == "in")
            .unwrap();
        let batch = match incoming.get("wireHex") {
            Some(frames) => decode_frames(frames.as_array().unwrap()),
            None => sync::message::parse_msgpack(&hex(incoming["decoded"]["binaryHex"]
                .as_str()
                .unwrap()))
            .unwrap(),
        };
        let (replies, full) = receive(&mut store, batch, now);
        let state = &probe["state"];
        match name {
            "equal-timestamp-loses"
            | "older-timestamp-loses"
            | "newer-physical-wins-even-with-lower-logical"
            | "newer-upsert-resurrects" => assert_eq!(node(&store, "x1"), *state, "{name}"),
            "future-drift-capped-2h" => {
                assert_eq!(node(&store, "fut")["timestamp"], state["ts"], "{name}")
            }
            "priority-user-node-bypasses-lww" => {
                assert_eq!(node(&store, "user:0xabc"), *state, "{name}")
            }
            "priority-on-plain-node-stripped-and-lww" => {
                assert_eq!(node(&store, "x1"), state[0], "{name}");
                assert_eq!(node(&store, "pp"), state[1], "{name}");
            }
            "upsert-keeps-existing-edges" => {
                assert_eq!(node(&store, "e1"), state[0], "{name}");
                assert_eq!(node(&store, "e2"), state[1], "{name}");
            }
            "link-rules" => assert_eq!(node(&store, "e2"), state[0], "{name}"),
            "remove-rules" => {
                assert_eq!(node(&store, "e1"), state["e1"], "{name}");
                assert_eq!(node(&store, "x1"), Value::Null, "{name}");
                // Browser: e2 keeps its dangling edge to x1. We strip it, as genossrv does.
                assert_eq!(state["e2edges"], json!(["x1"]));
                assert_eq!(node(&store, "e2")["edges"], json!([]), "{name}");
                // Browser tail: link, the second no-op link, remove x1. We log the no-op
                // link not at all, and keep the remove of the unknown "ghost" as a tombstone.
                let ops = parse(&store.delta_json())["operations"].clone();
                let tail: Vec<Value> = ops
                    .as_array()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(3)
                    .rev()
                    .cloned()
                    .collect();
                let expected = state["oplogTail"].as_array().unwrap();
                assert_eq!(tail[0], expected[0], "{name}");
                assert_eq!(
                    tail[1],
                    json!({"type":"remove","id":"ghost","timestamp":{"physical":1795592350345u64,"logical":1}})
                );
                assert_eq!(tail[2], expected[2], "{name}");
            }
            "tombstone-blocks-older-upsert" => {
                assert_eq!(node(&store, "x1"), state[0], "{name}");
                assert_eq!(node(&store, "x1b"), state[1], "{name}");
            }
            "single-object-not-array" => assert_eq!(node(&store, "solo"), *state, "{name}"),
            "scalar-and-nested-values" => {
                for (i, id) in ["vals", "str", "nul"].iter().enumerate() {
                    assert_eq!(node(&store, id), state[i], "{name}");
                }
                // Kept as received, byte for byte: float spelling, 2^53-1, key order.
                assert!(store.get("vals").unwrap().value.as_ref().unwrap().get().starts_with(
                    r#"{"f":1.5,"big":9007199254740991,"neg":-3,"arr":[1,"a",null,{"z":true}]"#
                ));
            }
            "unknown-type-ignored" => assert_eq!(node(&store, "afterUnknown"), *state, "{name}"),
            "deltaSync-array" => {
                assert_eq!(node(&store, "d1"), state["d1"], "{name}");
                assert_eq!(node(&store, "d2"), Value::Null, "{name}");
                assert_eq!(
                    parse(&store.global_ts().unwrap().to_json()),
                    state["gts"],
                    "{name}"
                );
            }
            "deltaSync-legacy-compressed-object" => {
                assert_eq!(node(&store, "legacy"), *state, "{name}")
            }
            "binary-msgpack-message" => assert_eq!(node(&store, "bin"), *state, "{name}"),
            "fullStateSync-merge" => {
                for id in ["d1", "fs1", "vals", "bin"] {
                    assert_eq!(node(&store, id), state[id], "{name}: {id}");
                }
                // A holds ids the sender lacks, so it answered with its own full state.
                assert!(full.counter_reply, "{name}");
                assert_eq!(full.adopted, 2);
                assert_eq!(full.removed, 1);
                assert_full_state_matches(&store, &out_messages(probe)[0]);
            }
            "sync-null-gets-full" | "sync-older-than-oldest-gets-full" => {
                assert_eq!(replies, vec![SyncReply::Full], "{name}");
                assert_full_state_matches(&store, &out_messages(probe)[0]);
            }
            "sync-equal-oldest-gets-delta-whole-window" | "sync-future-still-gets-whole-window" => {
                assert_eq!(replies, vec![SyncReply::Delta], "{name}");
                assert_delta_matches(&store, &out_messages(probe)[0]);
            }
            other => panic!("unexpected probe {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 22);
}

/// Our full state equals the browser's, but for e2's stripped edge (genossrv parity).
fn assert_full_state_matches(store: &Store, browser: &Value) {
    let ours = parse(&store.full_state_json());
    assert_eq!(ours["type"], "fullStateSync");
    assert_eq!(ours["timestamp"], browser["timestamp"]);
    // Our removals also carry the tombstone of the unknown "ghost" (see remove-rules).
    let mut removals = ours["removals"].as_array().unwrap().clone();
    assert_eq!(removals.remove(0)["id"], "ghost");
    assert_eq!(Value::Array(removals), browser["removals"]);
    let mut expected = browser["graphData"].clone();
    expected["e2"]["edges"] = json!([]);
    assert_eq!(ours["graphData"], expected);
}

/// Our window equals the browser's 29 ops but for two entries browsers log and we do
/// not (the no-op duplicate link, the valueless `d2` upsert from a delta) and one we log
/// and they do not (the tombstone of the unknown "ghost").
fn assert_delta_matches(store: &Store, browser: &Value) {
    let mut ours = parse(&store.delta_json());
    let ops = ours["operations"].as_array_mut().unwrap();
    let ghost = ops
        .iter()
        .position(|op| op["id"] == "ghost")
        .expect("ghost tombstone");
    assert_eq!(ops.remove(ghost)["type"], "remove");
    assert_eq!(ours["timestamp"], browser["timestamp"]);
    let expected: Vec<Value> = browser["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| {
            let noop_link =
                op["type"] == "link" && op["timestamp"]["logical"] == 3 && op["targetId"] == "x1";
            let valueless_d2 = op["type"] == "upsert" && op["id"] == "d2";
            !noop_link && !valueless_d2
        })
        .cloned()
        .collect();
    assert_eq!(browser["operations"].as_array().unwrap().len(), 29);
    assert_eq!(ours["operations"].as_array().unwrap(), &expected);
}

/// basic.json: the daemon receives everything genossrv received (both browsers' writes
/// and sync traffic, in time order) and must answer as genossrv answered.
#[test]
fn basic_session_replays_like_genossrv() {
    let basic = load("basic.json");
    let mut events: Vec<(u64, String, &Value, usize, &Value)> = Vec::new();
    for (peer, phases) in basic["peers"].as_object().unwrap() {
        for phase in phases.as_array().unwrap() {
            let log = phase["appLog"].as_array().unwrap();
            for (i, e) in log.iter().enumerate() {
                if e["dir"] == "out-app" {
                    events.push((e["t"].as_u64().unwrap(), peer.clone(), phase, i, &e["msg"]));
                }
            }
        }
    }
    events.sort_by_key(|e| e.0);
    let mut store = Store::new(1000);
    let mut compared = 0;
    for (t, _peer, phase, index, msg) in events {
        let batch = sync::message::parse_json(&msg.to_string()).unwrap();
        let (replies, _) = receive(&mut store, batch, t);
        assert!(batch_ok(msg));
        for reply in replies {
            // genossrv's answer is the next sync reply that peer received from it.
            let answer = phase["appLog"].as_array().unwrap()[index..]
                .iter()
                .find(|e| {
                    e["dir"] == "in"
                        && matches!(
                            e["msg"][0]["type"].as_str(),
                            Some("fullStateSync" | "deltaSync")
                        )
                })
                .map(|e| &e["msg"][0]);
            let Some(answer) = answer else { continue };
            match reply {
                SyncReply::Full => {
                    assert_eq!(answer["type"], "fullStateSync");
                    assert_eq!(parse(&store.full_state_json()), *answer);
                }
                SyncReply::Delta => {
                    assert_eq!(answer["type"], "deltaSync");
                    assert_eq!(parse(&store.delta_json()), *answer);
                }
            }
            compared += 1;
        }
    }
    assert!(compared >= 3, "compared only {compared} replies");
    let final_nodes = basic["nodesA2"].as_array().unwrap();
    assert_eq!(store.len(), final_nodes.len());
    for n in final_nodes {
        assert_eq!(node(&store, n["id"].as_str().unwrap()), *n);
    }
    assert_eq!(
        parse(&store.sync_json()),
        json!({"type":"sync","timestamp":{"physical":1795591876581u64,"logical":11}})
    );
}

/// restart.json: a browser takes a restarted genossrv's full state, then answers its
/// sync with a delta. A store fed the same full state must answer with the same delta.
#[test]
fn restart_full_state_then_delta() {
    let restart = load("restart.json");
    let entries = restart.as_array().unwrap();
    let mut store = Store::new(1000);
    let mut delta_checked = false;
    for e in entries {
        let msg = &e["decoded"];
        match (e["dir"].as_str().unwrap(), msg[0]["type"].as_str().unwrap()) {
            ("in", "fullStateSync") => {
                let batch = sync::message::parse_json(&msg.to_string()).unwrap();
                receive(&mut store, batch, 1_795_591_900_000);
            }
            ("in", "sync") => {
                let ts = serde_json::from_value(msg[0]["timestamp"].clone()).unwrap();
                assert_eq!(store.sync_reply(Some(ts)), SyncReply::Delta);
            }
            ("out", "deltaSync") if !delta_checked => {
                // The browser had no n3 and so did not log its removal; we keep it as a
                // tombstone, so a late copy of n3's upsert cannot bring it back.
                let mut ours = parse(&store.delta_json());
                let last = ours["operations"].as_array_mut().unwrap().pop().unwrap();
                assert_eq!(last["type"], "remove");
                assert_eq!(last["id"], "n3");
                assert_eq!(ours, msg[0]);
                delta_checked = true;
            }
            _ => {}
        }
    }
    assert!(delta_checked);
}
