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

/// A journal of records built from `data`, then damaged as `data` says: what the reader
/// accepts must be a prefix of what was written, and it may never pass over a record
/// that survived the damage whole ([`check_damaged_journal`]).
///
/// Layout: byte 0 is the record count (1..=64); then one size byte per record; then
/// damage, 4 bytes each: `kind`, `at` (u16 LE, modulo the length) and `arg`.
/// Kinds: flip the bits `arg` (at least one), set the byte to `arg`, zero `arg` bytes,
/// cut the file there.
pub fn journal_damage(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 64) + 1;
    let (sizes, damage) = rest.split_at(count.min(rest.len()));
    let effects = sample_effects(count, |i| sizes.get(i).copied().unwrap_or(7));
    let clean = framed_journal(&effects);
    let mut damaged = clean.clone();
    for d in damage.chunks_exact(4) {
        if damaged.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([d[1], d[2]])) % damaged.len();
        match d[0] % 4 {
            0 => damaged[at] ^= d[3].max(1),
            1 => damaged[at] = d[3],
            2 => {
                let end = (at + usize::from(d[3])).min(damaged.len());
                damaged[at..end].fill(0);
            }
            _ => damaged.truncate(at),
        }
    }
    check_damaged_journal(&effects, &clean, &damaged);
}

/// Records of every kind, the i-th with a value of about `size(i)` bytes.
pub fn sample_effects(count: usize, size: impl Fn(usize) -> u8) -> Vec<crate::store::Effect> {
    use crate::store::{Effect, Hlc, RawJson};
    (0..count)
        .map(|i| {
            let ts = Hlc::new(1_700_000_000_000 + i as u64, i as u64);
            let len = usize::from(size(i));
            match i % 5 {
                3 => Effect::Remove {
                    id: format!("n{}", i / 2).into(),
                    ts,
                },
                4 => Effect::GlobalTs(ts),
                _ => Effect::Upsert {
                    id: format!("n{i}").into(),
                    value: Some(
                        RawJson::parse(format!("\"{}\"", "abcdefgh".repeat(len / 8 + 1)))
                            .expect("a JSON string"),
                    ),
                    ts,
                },
            }
        })
        .collect()
}

/// A journal segment holding `effects`, as the writer frames them.
pub fn framed_journal(effects: &[crate::store::Effect]) -> Vec<u8> {
    use crate::persist::codec;
    let mut bytes = codec::journal_header(1000).to_vec();
    for e in effects {
        codec::encode_record(e, &mut bytes).expect("small records");
    }
    bytes
}

/// The reader's promise on a damaged segment. `clean` is the segment as written (with
/// `written` in it); `damaged` is what the disk gave back. The read may fail; if it
/// succeeds it returns records `0..k` of `written` (read from unchanged bytes, or from
/// changed bytes whose checksum still holds, a collision no checksum can rule out), and
/// no record from `k` on is still whole in `damaged`. A mere cut of the segment (a
/// crash mid-append) is always read, up to its last whole record.
pub fn check_damaged_journal(written: &[crate::store::Effect], clean: &[u8], damaged: &[u8]) {
    use crate::persist::codec::{JOURNAL_HEADER_LEN, RECORD_HEADER_LEN, scan_journal};
    let mut bounds = Vec::with_capacity(written.len());
    let mut pos = JOURNAL_HEADER_LEN;
    for _ in written {
        let len = u32::from_le_bytes(clean[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        bounds.push((pos, pos + RECORD_HEADER_LEN + len));
        pos += RECORD_HEADER_LEN + len;
    }
    assert_eq!(pos, clean.len(), "the clean journal is whole");
    let whole = |(start, end): (usize, usize)| {
        end <= damaged.len() && damaged[start..end] == clean[start..end]
    };
    let result = scan_journal(damaged);
    let is_cut = damaged.len() <= clean.len() && damaged == &clean[..damaged.len()];
    if is_cut && damaged.len() >= JOURNAL_HEADER_LEN {
        let scan = result.expect("a cut journal is read up to its last whole record");
        let complete = bounds
            .iter()
            .filter(|&&(_, end)| end <= damaged.len())
            .count();
        assert_eq!(scan.records, written[..complete]);
        return;
    }
    let Ok(scan) = result else { return };
    let k = scan.records.len();
    assert!(k <= written.len(), "more records than were written");
    for (j, record) in scan.records.iter().enumerate() {
        if whole(bounds[j]) {
            assert_eq!(record, &written[j], "record {j} read back differently");
        } else {
            // Changed bytes that still pass the checksum: a CRC-32 collision, which
            // no reader can tell from what was written.
            return;
        }
    }
    for (j, &bound) in bounds.iter().enumerate().skip(k) {
        assert!(
            !whole(bound),
            "record {j} survived whole at byte {}, yet the read stopped after {k} records",
            bound.0
        );
    }
}

/// Nostr events and filters as relays and clients send them.
pub fn nostr(data: &[u8]) {
    use crate::relay::event::Relayed;
    use crate::relay::filter::Filter;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(items) = serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(text) else {
        return;
    };
    for item in &items {
        if let Ok(ev) = Relayed::parse(item) {
            let _ = ev.verify();
            if let Some(f) = Filter::parse(item.get()) {
                let _ = f.matches(&ev);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A damage to a journal: flip bits, set a byte, zero a run, or cut the file.
    #[derive(Debug, Clone)]
    enum Damage {
        Flip(usize, u8),
        Set(usize, u8),
        Zero(usize, usize),
        Cut(usize),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<usize>(), 1u8..).prop_map(|(at, bits)| Damage::Flip(at, bits)),
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Set(at, b)),
            (any::<usize>(), 1usize..600).prop_map(|(at, n)| Damage::Zero(at, n)),
            any::<usize>().prop_map(Damage::Cut),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Mid-file damage followed by whole records never passes for a torn tail: the
        /// read stops, or returns a prefix that no surviving record lies beyond.
        #[test]
        fn a_damaged_journal_reads_as_a_prefix_or_not_at_all(
            sizes in proptest::collection::vec(any::<u8>(), 1..60),
            damages in proptest::collection::vec(damage(), 1..4),
        ) {
            let effects = sample_effects(sizes.len(), |i| sizes[i]);
            let clean = framed_journal(&effects);
            let mut damaged = clean.clone();
            for d in &damages {
                if damaged.is_empty() {
                    break;
                }
                let n = damaged.len();
                match *d {
                    Damage::Flip(at, bits) => damaged[at % n] ^= bits,
                    Damage::Set(at, b) => damaged[at % n] = b,
                    Damage::Zero(at, len) => {
                        let at = at % n;
                        damaged[at..(at + len).min(n)].fill(0);
                    }
                    Damage::Cut(at) => damaged.truncate(at % n),
                }
            }
            check_damaged_journal(&effects, &clean, &damaged);
        }
    }
}
