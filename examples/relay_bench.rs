//! `cargo run --release --example relay_bench`: what the embedded relay pays per event
//! on the `nostr` crate's types, next to the hand-written code they replaced (issue 19),
//! in the same run. Not shipped; a measurement only.
//!
//! 1. Parsing and verifying one GenosRTC announce: `nostr::Event` (serde + libsecp256k1)
//!    against the replaced path (serde into strings, SHA-256 of the serialization,
//!    BIP-340 on k256), reproduced here as the baseline.
//! 2. Fan-out through the router to 1,000 connections subscribed to the room's topic,
//!    each delivery then matched against its connection's `nostr::Filter`: deliveries
//!    per second, and the latency from routing an event to the last mailbox taking it.
//!
//! `BENCH_EVENTS` (default 2000) sets the number of events.

use genosdb_fallback::relay::event::Relayed;
use genosdb_fallback::relay::filter::Filter;
use genosdb_fallback::relay::router::{Budget, Interest, Router};
use nostr_sdk::prelude::{EventBuilder, JsonUtil, Keys, Kind, Tag};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// The replaced hand-written path: parse into strings, hash, verify with k256.
mod baseline {
    use super::*;
    #[derive(serde::Deserialize)]
    pub struct Wire {
        id: String,
        pubkey: String,
        created_at: u64,
        kind: u64,
        tags: Vec<Vec<String>>,
        content: String,
        sig: String,
    }
    pub fn parse_and_verify(raw: &RawValue) -> bool {
        let w: Wire = serde_json::from_str(raw.get()).unwrap();
        let s = serde_json::to_string(&(0, &w.pubkey, w.created_at, w.kind, &w.tags, &w.content))
            .unwrap();
        let id: [u8; 32] = Sha256::digest(s.as_bytes()).into();
        if hex::encode(id) != w.id {
            return false;
        }
        let key =
            k256::schnorr::VerifyingKey::from_slice(&hex::decode(&w.pubkey).unwrap()).unwrap();
        let sig =
            k256::schnorr::Signature::try_from(hex::decode(&w.sig).unwrap().as_slice()).unwrap();
        key.verify_raw(&id, &sig).is_ok()
    }
}

fn announce(keys: &Keys, i: usize) -> Box<RawValue> {
    let content = format!("{{\"peerId\":\"peer{i:0>16}\",\"type\":\"announce\"}}");
    let ev = EventBuilder::new(Kind::Custom(23_061), content)
        .tag(Tag::parse(["x", "a1b2c3d4e5f60718293a4b5c6d7e8f90"]).unwrap())
        .sign_with_keys(keys)
        .unwrap();
    RawValue::from_string(ev.as_json()).unwrap()
}

fn per_event(n: usize, f: impl Fn(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let keys = Keys::generate();
    let events: Vec<Box<RawValue>> = (0..n).map(|i| announce(&keys, i)).collect();

    // 1. Verification, three rounds each, alternating.
    for round in 1..=3 {
        let ours = per_event(n, |i| {
            let ev = Relayed::parse(&events[i]).unwrap();
            assert!(ev.verify().is_ok());
            black_box(ev);
        });
        let old = per_event(n, |i| {
            assert!(baseline::parse_and_verify(black_box(&events[i])))
        });
        println!(
            "verify round {round}: nostr {ours:.1} µs/event, hand-written k256 {old:.1} µs/event, ratio {:.2}",
            ours / old
        );
    }

    // 2. Fan-out to 1,000 subscribers.
    let peers = 1000;
    let router = Router::new(Arc::new(Budget::new(1 << 30, 1 << 34)));
    let filter =
        Filter::parse(r##"{"kinds":[23061],"#x":["a1b2c3d4e5f60718293a4b5c6d7e8f90"],"since":1}"##)
            .unwrap();
    let mut boxes: Vec<_> = (0..peers)
        .map(|_| {
            let (id, rx) = router.register(false);
            router.listen(id, Interest::of([&filter]));
            rx
        })
        .collect();
    let parsed: Vec<Arc<Relayed>> = events
        .iter()
        .map(|r| Arc::new(Relayed::parse(r).unwrap()))
        .collect();
    for round in 1..=3 {
        let mut lat = Vec::with_capacity(n);
        let t = Instant::now();
        let mut delivered = 0u64;
        for ev in &parsed {
            let start = Instant::now();
            delivered += router.route(ev, 0).delivered;
            // Each connection takes its delivery and matches it, as serve() does.
            for rx in boxes.iter_mut() {
                let d = rx.try_recv().unwrap();
                assert!(filter.matches(&d.event));
            }
            lat.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let secs = t.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        println!(
            "fan-out round {round}: {peers} subscribers, {n} events, {:.0} deliveries/s, one event to all: p50 {:.3} ms, p99 {:.3} ms",
            delivered as f64 / secs,
            p(0.5),
            p(0.99)
        );
    }
    // Match cost alone.
    let m = per_event(n * 100, |i| {
        black_box(filter.matches(&parsed[i % n]));
    });
    println!("nostr Filter::matches: {:.3} µs per match", m);
}
