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
                let _ = f.matches(&ev);
            }
        }
    }
}
