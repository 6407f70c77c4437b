//! The embedded Nostr relay (RELAY=1): the NIP-01 subset GenosDB signalling uses,
//! served on the HTTP port (a WebSocket upgrade on `/`), as genossrv's `--relay` does.
//!
//! It verifies every event's id and BIP-340 signature, stores nothing, relays only
//! ephemeral kinds (20000–29999, which is all GenosRTC uses), and bounds message size,
//! subscriptions and event rate per connection, and connections in total and per IP.
//! Fan-out goes by topic (`router`) into a bounded mailbox per connection: a client
//! that does not read loses events, it never holds memory or other clients back.

pub mod event;
pub mod filter;
pub mod router;

use crate::rate::{LogEvery, TokenBucket};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use event::Event;
use filter::Filter;
use futures_util::{SinkExt, StreamExt};
use router::{Interest, Router};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const EPHEMERAL_KINDS: std::ops::Range<u64> = 20_000..30_000;

/// A relay connection's socket read chunk; longer messages take several reads.
const READ_BUFFER: usize = 8 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    /// Sustained events per second one connection may publish, and its burst.
    pub events_per_sec: f64,
    pub event_burst: f64,
    pub max_sub_id_len: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_ip: 256,
            max_message_bytes: 64 * 1024,
            max_subscriptions: 32,
            events_per_sec: 20.0,
            event_burst: 60.0,
            max_sub_id_len: 64,
        }
    }
}

/// Counters for /health and /metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub connections: AtomicUsize,
    pub events: AtomicU64,
    pub dropped: AtomicU64,
    /// Connections refused at either limit, and at RELAY_MAX_PER_IP alone.
    pub refused_connections: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub rate_limited: AtomicU64,
    pub lagged: AtomicU64,
    /// Subscriptions refused at RELAY_MAX_SUBS.
    pub refused_subscriptions: AtomicU64,
    /// Connections closed for a message over RELAY_MAX_MESSAGE_BYTES.
    pub oversized_messages: AtomicU64,
}

impl RelayStats {
    /// `(limit, times exceeded)` for `genosdb_limit_exceeded_total{limit}`.
    pub fn limits_exceeded(&self) -> [(&'static str, u64); 5] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let per_ip = load(&self.refused_per_ip);
        [
            (
                "relay_max_connections",
                load(&self.refused_connections).saturating_sub(per_ip),
            ),
            ("relay_max_per_ip", per_ip),
            ("relay_events_per_sec", load(&self.rate_limited)),
            ("relay_max_subs", load(&self.refused_subscriptions)),
            ("relay_max_message_bytes", load(&self.oversized_messages)),
        ]
    }
}

#[derive(Debug)]
pub struct Relay {
    router: Router,
    limits: RelayLimits,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Limits hit are logged at most once per 10 s, all together.
    limit_log: Mutex<LogEvery>,
    /// The daemon's own signalling keys (see [`Relay::trust_publisher`]).
    trusted: Mutex<HashSet<String>>,
    pub stats: RelayStats,
}

/// Releases a connection slot when the connection ends, however it ends.
struct Slot {
    relay: Arc<Relay>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.relay.stats.connections.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.relay.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Relay {
    pub fn new(limits: RelayLimits) -> Arc<Self> {
        Arc::new(Self {
            router: Router::default(),
            limits,
            per_ip: Mutex::new(HashMap::new()),
            limit_log: Mutex::new(LogEvery::new(std::time::Duration::from_secs(10))),
            trusted: Mutex::default(),
            stats: RelayStats::default(),
        })
    }

    /// Exempts the connection that publishes a verified event signed by `pubkey` (hex)
    /// from the event rate limit. The daemon's own rooms signal through this relay, and
    /// with a thousand peers they must publish a thousand offers and answers at once.
    /// Only a connection that has published a valid signature of that key is exempt:
    /// claiming the key costs an attacker a failed verification under the limit.
    pub fn trust_publisher(&self, pubkey: &str) {
        self.trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pubkey.to_owned());
    }

    /// Upgrades the request into a relay connection, or refuses it when full.
    pub fn accept(self: &Arc<Self>, ws: WebSocketUpgrade, ip: IpAddr) -> Response {
        let slot = match self.reserve(ip) {
            Ok(slot) => slot,
            Err(limit) => return self.refuse(ip, limit),
        };
        let relay = self.clone();
        // tungstenite zero-fills its whole read buffer at every read attempt, and a
        // connection is polled at every event it is sent: 128 KiB (its default) made
        // memset most of the daemon's CPU with a few hundred clients.
        ws.read_buffer_size(READ_BUFFER)
            .max_message_size(self.limits.max_message_bytes)
            .max_frame_size(self.limits.max_message_bytes)
            .on_upgrade(move |socket| async move {
                relay.serve(socket).await;
                drop(slot);
            })
    }

    /// A connection over RELAY_MAX_CONNECTIONS or RELAY_MAX_PER_IP: 503.
    fn refuse(&self, ip: IpAddr, limit: &'static str) -> Response {
        self.stats
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        if limit == "RELAY_MAX_PER_IP" {
            self.stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(unlogged) = self.may_log() {
            tracing::warn!(%ip, limit, unlogged, "relay connection refused: connection limit reached");
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "relay connection limit reached",
        )
            .into_response()
    }

    /// `Some(lines held back)` when a limit may be logged now (once per 10 s).
    fn may_log(&self) -> Option<u64> {
        self.limit_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(std::time::Instant::now())
    }

    /// A client over a per-connection limit: counted, and logged once per 10 s.
    fn over_limit(&self, counter: &AtomicU64, limit: &'static str, value: f64) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(unlogged) = self.may_log() {
            tracing::warn!(limit, value, unlogged, "relay client over a limit");
        }
    }

    fn reserve(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        let total = self.stats.connections.load(Ordering::Relaxed);
        if total >= self.limits.max_connections {
            return Err("RELAY_MAX_CONNECTIONS");
        }
        if mine >= self.limits.max_per_ip {
            return Err("RELAY_MAX_PER_IP");
        }
        per_ip.insert(ip, mine + 1);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            relay: self.clone(),
            ip,
        })
    }

    async fn serve(&self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let (mailbox_id, mut mailbox) = self.router.register();
        let _unregister = Unregister(&self.router, mailbox_id);
        let mut conn = Connection::new(self.limits);
        loop {
            tokio::select! {
                incoming = rx.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Err(e)) => {
                            self.on_read_error(&e);
                            break;
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let replies = self.handle(&mut conn, text.as_str());
                    self.router.listen(mailbox_id, Interest::of(conn.subs.iter().map(|(_, f)| f)));
                    for reply in replies {
                        if tx.send(Message::Text(Utf8Bytes::from(reply))).await.is_err() {
                            return;
                        }
                    }
                }
                published = mailbox.recv() => {
                    let Some(ev) = published else { break };
                    if let Some(sub) = conn.first_match(&ev) {
                        let out = format!("[\"EVENT\",{},{}]", json_str(sub), ev.raw.get());
                        if tx.send(Message::Text(Utf8Bytes::from(out))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A read that failed ends the connection. axum's tungstenite (not this crate's
    /// version) reports a message over RELAY_MAX_MESSAGE_BYTES as a capacity error,
    /// which only its text tells apart.
    fn on_read_error(&self, e: &axum::Error) {
        let text = e.to_string();
        if text.contains("Space limit exceeded") || text.contains("too long") {
            self.over_limit(
                &self.stats.oversized_messages,
                "RELAY_MAX_MESSAGE_BYTES",
                self.limits.max_message_bytes as f64,
            );
        }
    }

    /// One client message; returns the replies. Anything not understood is ignored,
    /// as genossrv's relay does.
    fn handle(&self, conn: &mut Connection, text: &str) -> Vec<String> {
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) else {
            return Vec::new();
        };
        let Some(verb) = items
            .first()
            .and_then(|v| serde_json::from_str::<&str>(v.get()).ok())
        else {
            return Vec::new();
        };
        match (verb, items.get(1)) {
            ("EVENT", Some(ev)) => vec![self.publish(conn, ev)],
            ("REQ", Some(id)) => conn.subscribe(id, items.get(2), self),
            ("CLOSE", Some(id)) => {
                if let Ok(id) = serde_json::from_str::<String>(id.get()) {
                    conn.subs.retain(|(s, _)| *s != id);
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn publish(&self, conn: &mut Connection, raw: &RawValue) -> String {
        let claimed_id = serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        if !conn.trusted && !conn.budget.take() {
            self.over_limit(
                &self.stats.rate_limited,
                "RELAY_EVENTS_PER_SEC",
                self.limits.events_per_sec,
            );
            return ok(&claimed_id, false, "rate-limited: slow down");
        }
        let ev = match Event::parse(raw) {
            Ok(ev) => ev,
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return ok(&claimed_id, false, &e.to_string());
            }
        };
        if !EPHEMERAL_KINDS.contains(&ev.kind) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return ok(
                &ev.id,
                false,
                "blocked: only ephemeral events (kinds 20000-29999) are relayed",
            );
        }
        if let Err(e) = ev.verify() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return ok(&ev.id, false, &e.to_string());
        }
        if !conn.trusted {
            conn.trusted = self
                .trusted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&ev.pubkey);
        }
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let reply = ok(&ev.id, true, "");
        let routed = self.router.route(&Arc::new(ev));
        self.stats.lagged.fetch_add(routed.lost, Ordering::Relaxed);
        reply
    }
}

/// Takes a connection's mailbox out of the router however the connection ends.
struct Unregister<'a>(&'a Router, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// One client's subscriptions and rate budget.
struct Connection {
    limits: RelayLimits,
    subs: Vec<(String, Filter)>,
    budget: TokenBucket,
    /// It published a valid event of a trusted key: no rate limit.
    trusted: bool,
}

impl Connection {
    fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            subs: Vec::new(),
            budget: TokenBucket::new(limits.events_per_sec, limits.event_burst),
            trusted: false,
        }
    }

    /// `["REQ", id, filter, …]`: only the first filter is kept, as genossrv does.
    fn subscribe(
        &mut self,
        id: &RawValue,
        filter: Option<&&RawValue>,
        relay: &Relay,
    ) -> Vec<String> {
        let Ok(id) = serde_json::from_str::<String>(id.get()) else {
            return Vec::new();
        };
        if id.is_empty() || id.len() > self.limits.max_sub_id_len {
            return vec![closed(
                &id,
                "invalid: subscription id must be 1-64 characters",
            )];
        }
        let filter = filter
            .and_then(|f| serde_json::from_str::<Value>(f.get()).ok())
            .and_then(|v| Filter::parse(&v));
        let Some(filter) = filter else {
            return vec![closed(&id, "invalid: filter")];
        };
        if let Some(slot) = self.subs.iter_mut().find(|(s, _)| *s == id) {
            slot.1 = filter;
        } else if self.subs.len() >= self.limits.max_subscriptions {
            relay.over_limit(
                &relay.stats.refused_subscriptions,
                "RELAY_MAX_SUBS",
                self.limits.max_subscriptions as f64,
            );
            return vec![closed(&id, "error: too many subscriptions")];
        } else {
            self.subs.push((id.clone(), filter));
        }
        vec![format!("[\"EOSE\",{}]", json_str(&id))]
    }

    fn first_match(&self, ev: &Event) -> Option<&str> {
        self.subs
            .iter()
            .find(|(_, f)| f.matches(ev))
            .map(|(id, _)| id.as_str())
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a str serializes")
}

fn ok(id: &str, accepted: bool, message: &str) -> String {
    format!("[\"OK\",{},{accepted},{}]", json_str(id), json_str(message))
}

fn closed(id: &str, message: &str) -> String {
    format!("[\"CLOSED\",{},{}]", json_str(id), json_str(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::event::{hex, sign};
    use k256::schnorr::SigningKey;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_slice(&[b; 32]).unwrap()
    }

    fn event(k: &SigningKey, i: usize) -> String {
        sign(
            k,
            1_795_000_000,
            20_001,
            Vec::new(),
            &format!("e{i}"),
            &[7; 32],
        )
    }

    fn accepted(relay: &Relay, conn: &mut Connection, events: &[String]) -> usize {
        events
            .iter()
            .filter(|e| {
                let raw: Box<RawValue> = serde_json::from_str(e).unwrap();
                relay.publish(conn, &raw).contains(",true,")
            })
            .count()
    }

    #[test]
    fn a_trusted_publisher_is_not_rate_limited_and_its_key_cannot_be_borrowed() {
        let relay = Relay::new(RelayLimits {
            events_per_sec: 0.001,
            event_burst: 2.0,
            ..RelayLimits::default()
        });
        let (own, other) = (key(1), key(2));
        relay.trust_publisher(&hex(&own.verifying_key().to_bytes()));
        let ours: Vec<String> = (0..10).map(|i| event(&own, i)).collect();
        let theirs: Vec<String> = (0..10).map(|i| event(&other, i)).collect();
        let mut daemon = Connection::new(relay.limits);
        assert_eq!(accepted(&relay, &mut daemon, &ours), 10);
        // Once trusted, any event of that connection passes.
        assert_eq!(accepted(&relay, &mut daemon, &theirs), 10);
        let mut stranger = Connection::new(relay.limits);
        assert_eq!(accepted(&relay, &mut stranger, &theirs), 2);
        // An event claiming the trusted key without its signature is refused and
        // earns nothing: the limit still holds.
        let own_hex = hex(&own.verifying_key().to_bytes());
        let other_hex = hex(&other.verifying_key().to_bytes());
        let forged: Vec<String> = theirs
            .iter()
            .map(|e| e.replace(&other_hex, &own_hex))
            .collect();
        let mut forger = Connection::new(relay.limits);
        assert_eq!(accepted(&relay, &mut forger, &forged), 0);
        assert!(!forger.trusted);
        assert_eq!(accepted(&relay, &mut forger, &theirs), 0);
    }
}
