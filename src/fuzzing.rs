//! Entry points shared by the cargo-fuzz targets (fuzz/) and the seed test that CI
//! runs: each takes hostile bytes and must never panic.

use crate::rtc::frame::{Limits, Reassembler, parse};
use crate::store::Store;
use crate::sync::{Message, message};
use std::time::{Duration, Instant};

/// Frames and reassembly: the input cut into frames by a length byte (×64).
pub fn frame(data: &[u8]) {
    let mut r = Reassembler::new(Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    });
    let t0 = Instant::now();
    let mut rest = data;
    let mut i = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize * 64).min(tail.len());
        let (frame, next) = tail.split_at(n);
        let _ = parse(frame);
        let _ = r.push(frame, t0 + Duration::from_millis(i * 100));
        rest = next;
        i += 1;
    }
}

/// GenosDB sync messages, JSON or MessagePack, applied to a store whose replies must
/// still be JSON. "JSON" as browsers read it: `JSON.parse` accepts escaped lone
/// surrogates (`"\ud83d\ud000"`), which values keep verbatim, so the check is
/// serde_json's structural validation (`RawValue`), not a full parse into `Value`,
/// which refuses them (found by this target; the input is kept in the seeds).
pub fn sync_message(data: &[u8]) {
    let batch = match std::str::from_utf8(data) {
        Ok(text) => message::parse_json(text),
        Err(_) => message::parse_msgpack(data),
    };
    let Ok(batch) = batch else { return };
    let mut store = Store::new(200);
    for msg in batch.messages {
        match msg {
            Message::Op(op) => {
                store.apply(op, 1_800_000_000_000);
            }
            Message::Delta { ops, .. } => {
                store.delta(ops, 1_800_000_000_000);
            }
            Message::Full(fs) => {
                store.full_state(fs);
            }
            Message::Sync(ts) => {
                store.sync_reply(ts);
            }
            Message::Unknown(_) => {}
        }
    }
    let valid = |s: &str| serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok();
    assert!(valid(&store.full_state_json()));
    assert!(valid(&store.delta_json()));
    assert!(valid(&store.sync_json()));
}

/// Sealed SDPs and the signalling JSON around them.
pub fn seal(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = crate::rtc::seal::SealKey::derive("", "1234", "graph-sync-room-fuzz");
    let _ = key.open(text);
    let _ = serde_json::from_str::<serde_json::Value>(text);
}

/// The snapshot and journal loaders.
pub fn store_files(data: &[u8]) {
    use crate::persist::codec;
    if let Ok(scan) = codec::scan_journal(data) {
        let mut store = Store::new(200);
        for effect in scan.records {
            store.apply_effect(effect);
        }
    }
    let _ = codec::decode_snapshot(data, 200);
}

/// Nostr events and filters as relays and clients send them.
pub fn nostr(data: &[u8]) {
    use crate::relay::event::Event;
    use crate::relay::filter::Filter;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(items) = serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(text) else {
        return;
    };
    for item in &items {
        if let Ok(ev) = Event::parse(item) {
            let _ = ev.verify();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(item.get())
                && let Some(f) = Filter::parse(&v)
            {
                let _ = f.matches(&crate::relay::filter::Relayed::new(ev.clone()));
            }
        }
    }
}

/// The Security Manager's decoders: canonical JSON, signature checks, the policy over
/// a batch, governance rules and queries. The canonical form must be stable: printing
/// what it parses back to gives the same text.
pub fn sm(data: &[u8]) {
    use crate::sm::{self, governance, js::Js, policy::Policy, query::Query, sig};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = Js::parse(text) {
        let canonical = v.canonical();
        let back = Js::parse(&canonical).expect("canonical JSON parses");
        assert_eq!(back.canonical(), canonical, "canonical JSON is stable");
        let _ = v.to_json();
        if let Ok(q) = Query::compile(&v) {
            let node = Js::parse(r#"{"id":"user:0x1","value":{"role":"guest","n":5,"s":"Ab"},"edges":[],"timestamp":{"physical":1,"logical":1}}"#)
                .expect("fixed node");
            let _ = q.matches(&node);
        }
        let _ = governance::parse_rules(text, &crate::sm::policy::Roles::default());
    }
    let _ = sig::recover(&[7; 32], text.trim());
    let Ok(elements) = message::elements(text) else {
        return;
    };
    let policy = Policy::new(
        vec!["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".into()],
        true,
    );
    let mut store = Store::new(200);
    let checked = sm::check_all(&elements);
    let filtered = sm::filter(&policy, &elements, checked, &store, 1_800_000_000_000);
    let batch = message::parse_elements(filtered.kept.iter().map(|c| c.as_ref()));
    crate::sync::engine::apply_batch(&mut store, batch, 1_800_000_000_000);
}

/// Cells envelopes (§8.3–8.5) as a peer sends them on a cell channel: the input is
/// `<channel>\n<envelope text>`, given to a bridge of a sealed 12-peer mesh with
/// cellSize 4, whose answers and forwards must stay on channels the mesh owns.
pub fn cells(data: &[u8]) {
    use crate::rtc::cells::{Mesh, QUIET, channel_cell};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (channel, envelope) = text.split_once('\n').unwrap_or(("c0", text));
    let roster: Vec<String> = (0..12)
        .map(|i| format!("p{i:02}xxxxxxxxxxxxxxxxx"))
        .collect();
    let now = Instant::now();
    let mut mesh = Mesh::new(&roster[0], 4);
    for x in &roster {
        mesh.heard(x, now);
    }
    mesh.tick(&[], now);
    mesh.tick(&[], now + QUIET);
    let handled = mesh.receive(channel, envelope, &roster[1..], 1_800_000_000_000);
    for out in handled.send {
        assert!(channel_cell(&out.channel).is_some(), "{}", out.channel);
        assert!(out.to.iter().all(|p| roster.contains(p)));
        serde_json::from_str::<serde_json::Value>(&out.envelope).expect("envelopes are JSON");
    }
}
