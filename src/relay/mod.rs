//! The embedded Nostr relay (RELAY=1): the NIP-01 subset GenosDB signalling uses,
//! served on the HTTP port (a WebSocket upgrade on `/`), as genossrv's `--relay` does.
//!
//! It verifies every event's id and BIP-340 signature, stores nothing, relays only
//! ephemeral kinds (20000–29999, which is all GenosRTC uses), and bounds message size,
//! subscriptions and event rate per connection, and connections in total and per IP.
//! Fan-out goes by topic (`router`) into a mailbox per connection bounded in events and
//! bytes, under one byte budget for the whole relay: a client that does not read loses
//! events, it never holds memory or other clients back, and one that does not take a
//! message for [`SEND_STALL`] is closed. Every message a client sends (pings too) is
//! rate-bounded, and what it writes back is bounded by a write buffer, so a ping flood
//! closes the flooder. The daemon's own rooms connect in process ([`Relay::accept`]
//! with `own`): nothing a network client sends can make it exempt from a limit.

pub mod event;
pub mod filter;
mod metrics;
pub mod router;

use crate::rate::{LogEvery, TokenBucket};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use event::Relayed;
use filter::Filter;
use futures_util::{SinkExt, StreamExt};
use router::{Interest, Router};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const EPHEMERAL_KINDS: std::ops::Range<u64> = 20_000..30_000;

/// A relay connection's socket read chunk; longer messages take several reads.
const READ_BUFFER: usize = 8 * 1024;

/// A client that does not take one message within this long is closed.
pub const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(20);

/// Room in a connection's write buffer beyond one message: control frames (pongs)
/// and a partly written frame.
const WRITE_SLACK: usize = 16 * 1024;

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
    /// Messages of any kind (pings included) per second one connection may send; it
    /// may send ten times as many at once. Over it, the connection is closed.
    pub messages_per_sec: f64,
    /// Bytes of events waiting for (or being written to) one connection.
    pub queue_bytes: usize,
    /// Bytes of events waiting for (or being written to) all connections together.
    pub memory_bytes: usize,
    /// Bytes one connection's filters may hold together.
    pub max_filter_bytes: usize,
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
            messages_per_sec: 100.0,
            queue_bytes: 1 << 20,
            memory_bytes: 64 << 20,
            max_filter_bytes: 16 << 10,
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
    /// Connections closed for sending over RELAY_MESSAGES_PER_SEC (pings included).
    pub flooded: AtomicU64,
    /// Events a connection lost to RELAY_QUEUE_BYTES (or its count), and to
    /// RELAY_MEMORY_BYTES.
    pub over_queue: AtomicU64,
    pub over_memory: AtomicU64,
    /// Subscriptions refused at RELAY_MAX_FILTER_BYTES.
    pub refused_filters: AtomicU64,
    /// Connections closed for not taking a message within SEND_STALL, or for a write
    /// buffer that filled up.
    pub stalled: AtomicU64,
}

impl RelayStats {
    /// `(limit, times exceeded)` for `genosdb_limit_exceeded_total{limit}`.
    pub fn limits_exceeded(&self) -> [(&'static str, u64); 10] {
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
            ("relay_messages_per_sec", load(&self.flooded)),
            ("relay_queue_bytes", load(&self.over_queue)),
            ("relay_memory_bytes", load(&self.over_memory)),
            ("relay_max_filter_bytes", load(&self.refused_filters)),
            ("relay_send_stall", load(&self.stalled)),
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
    /// Where connections run (see [`Relay::with_own_threads`]); None: the caller's runtime.
    runtime: Option<tokio::runtime::Handle>,
    pub stats: RelayStats,
}

/// Releases a connection slot when the connection ends, however it ends.
struct Slot {
    relay: Arc<Relay>,
    /// None for the daemon's own connection, which no per-IP limit counts.
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.relay.stats.connections.fetch_sub(1, Ordering::Relaxed);
        let Some(ip) = self.ip else { return };
        let mut per_ip = self.relay.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

impl Relay {
    pub fn new(limits: RelayLimits) -> Arc<Self> {
        let budget = Arc::new(router::Budget::new(limits.queue_bytes, limits.memory_bytes));
        Arc::new(Self {
            router: Router::new(budget),
            limits,
            per_ip: Mutex::new(HashMap::new()),
            limit_log: Mutex::new(LogEvery::new(std::time::Duration::from_secs(10))),
            runtime: None,
            stats: RelayStats::default(),
        })
    }

    /// A relay whose connections run on threads of their own (all cores but one, at
    /// least one): however busy relay clients keep it, the rest of the daemon
    /// (`/health`, the rooms, persistence) keeps a core.
    pub fn with_own_threads(limits: RelayLimits) -> std::io::Result<Arc<Self>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.saturating_sub(1).max(1))
            .thread_name("relay")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        // It lives as long as the process: its workers run without being driven.
        std::mem::forget(runtime);
        let mut relay = Arc::into_inner(Self::new(limits)).expect("a new relay has one owner");
        relay.runtime = Some(handle);
        Ok(Arc::new(relay))
    }

    /// Bytes of events waiting for, or being written to, connections (all but the
    /// daemon's own), which RELAY_MEMORY_BYTES bounds.
    pub fn queued_bytes(&self) -> usize {
        self.router.budget().used()
    }

    /// Upgrades the request into a relay connection, or refuses it when full. `own`
    /// is the daemon's own rooms' connection, made in process (never over the
    /// network): it has no rate limit, is counted against no connection limit, and
    /// is told which connection published each event it gets (a fourth element of
    /// `EVENT`, so the rooms can bound what one connection makes them do). `keep` is
    /// held until the connection ends (the HTTP layer's connection slot).
    pub fn accept<K: Send + 'static>(
        self: &Arc<Self>,
        ws: WebSocketUpgrade,
        ip: IpAddr,
        own: bool,
        keep: K,
    ) -> Response {
        let slot = if own {
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            Slot {
                relay: self.clone(),
                ip: None,
            }
        } else {
            match self.reserve(ip) {
                Ok(slot) => slot,
                Err(limit) => return self.refuse(ip, limit),
            }
        };
        let relay = self.clone();
        // tungstenite zero-fills its whole read buffer at every read attempt, and a
        // connection is polled at every event it is sent: 128 KiB (its default) made
        // memset most of the daemon's CPU with a few hundred clients. Its write buffer
        // is unbounded unless told: pongs to a client that pings and never reads would
        // pile up there.
        ws.read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(self.limits.max_message_bytes + WRITE_SLACK)
            .max_message_size(self.limits.max_message_bytes)
            .max_frame_size(self.limits.max_message_bytes)
            .on_upgrade(move |socket| async move {
                let runtime = relay.runtime.clone();
                let served = async move {
                    relay.serve(socket, own).await;
                    drop(slot);
                    drop(keep);
                };
                match runtime {
                    Some(rt) => {
                        let _ = rt.spawn(served).await;
                    }
                    None => served.await,
                }
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
            ip: Some(ip),
        })
    }

    async fn serve(&self, socket: WebSocket, own: bool) {
        let (mut tx, mut rx) = socket.split();
        let (mailbox_id, mut mailbox) = self.router.register(own);
        let _unregister = Unregister(&self.router, mailbox_id);
        let mut conn = Connection::new(self.limits, own);
        loop {
            tokio::select! {
                incoming = rx.next() => {
                    let msg = match incoming {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => {
                            self.on_read_error(&e);
                            break;
                        }
                        None => break,
                    };
                    if !own && !conn.messages.take() {
                        self.over_limit(
                            &self.stats.flooded,
                            "RELAY_MESSAGES_PER_SEC",
                            self.limits.messages_per_sec,
                        );
                        break;
                    }
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    let replies = self.handle(&mut conn, mailbox_id, text.as_str());
                    if std::mem::take(&mut conn.subs_changed) {
                        self.router.listen(mailbox_id, Interest::of(conn.subs.iter().map(|(_, f)| f)));
                    }
                    for reply in replies {
                        if !self.send(&mut tx, reply).await {
                            return;
                        }
                    }
                }
                delivered = mailbox.recv() => {
                    let Some(d) = delivered else { break };
                    if let Some(sub) = conn.first_match(&d.event) {
                        let out = if own {
                            format!("[\"EVENT\",{},{},{}]", json_str(sub), d.event.raw.get(), d.from)
                        } else {
                            format!("[\"EVENT\",{},{}]", json_str(sub), d.event.raw.get())
                        };
                        // `d` keeps its bytes charged until the message is written.
                        if !self.send(&mut tx, out).await {
                            return;
                        }
                    }
                    drop(d);
                }
            }
        }
    }

    /// Writes one message; false when the connection must end: it is gone, its write
    /// buffer is full, or it did not take the message within SEND_STALL.
    async fn send(
        &self,
        tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
        text: String,
    ) -> bool {
        match tokio::time::timeout(SEND_STALL, tx.send(Message::Text(Utf8Bytes::from(text)))).await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                let e = e.to_string();
                if e.contains("buffer") {
                    self.over_limit(
                        &self.stats.stalled,
                        "RELAY_SEND_STALL",
                        SEND_STALL.as_secs_f64(),
                    );
                }
                false
            }
            Err(_) => {
                self.over_limit(
                    &self.stats.stalled,
                    "RELAY_SEND_STALL",
                    SEND_STALL.as_secs_f64(),
                );
                false
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
    fn handle(&self, conn: &mut Connection, id: u64, text: &str) -> Vec<String> {
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
            ("EVENT", Some(ev)) => vec![self.publish(conn, id, ev)],
            ("REQ", Some(sub)) => conn.subscribe(sub, items.get(2), self),
            ("CLOSE", Some(sub)) => {
                if let Ok(sub) = serde_json::from_str::<String>(sub.get()) {
                    conn.subs.retain(|(s, _)| *s != sub);
                    conn.subs_changed = true;
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn publish(&self, conn: &mut Connection, from: u64, raw: &RawValue) -> String {
        let claimed_id = serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        if !conn.own && !conn.budget.take() {
            self.over_limit(
                &self.stats.rate_limited,
                "RELAY_EVENTS_PER_SEC",
                self.limits.events_per_sec,
            );
            return ok(&claimed_id, false, "rate-limited: slow down");
        }
        let mut ev = match Relayed::parse(raw) {
            Ok(ev) => ev,
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return ok(&claimed_id, false, &e.to_string());
            }
        };
        let id = ev.id.to_hex();
        if !EPHEMERAL_KINDS.contains(&u64::from(ev.kind.as_u16())) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return ok(
                &id,
                false,
                "blocked: only ephemeral events (kinds 20000-29999) are relayed",
            );
        }
        if let Err(e) = ev.verify() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return ok(&id, false, &e.to_string());
        }
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let reply = ok(&id, true, "");
        // Relayed as received (`raw`): the parsed content is not needed any more, and
        // would hold the event's bytes twice while it waits.
        ev.event.content = String::new();
        let routed = self.router.route(&Arc::new(ev), from);
        self.stats.lagged.fetch_add(routed.lost, Ordering::Relaxed);
        if routed.lost > 0 {
            let over_total = routed.over_total;
            self.stats
                .over_queue
                .fetch_add(routed.lost - over_total, Ordering::Relaxed);
            if over_total > 0 {
                self.over_limit(
                    &self.stats.over_memory,
                    "RELAY_MEMORY_BYTES",
                    self.limits.memory_bytes as f64,
                );
                self.stats
                    .over_memory
                    .fetch_add(over_total - 1, Ordering::Relaxed);
            }
        }
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

/// One client's subscriptions and rate budgets.
struct Connection {
    limits: RelayLimits,
    subs: Vec<(String, Filter)>,
    /// The router must hear of a REQ or CLOSE.
    subs_changed: bool,
    budget: TokenBucket,
    /// Every message, pings included.
    messages: TokenBucket,
    /// The daemon's own connection: no rate limit.
    own: bool,
}

impl Connection {
    fn new(limits: RelayLimits, own: bool) -> Self {
        Self {
            limits,
            subs: Vec::new(),
            subs_changed: false,
            budget: TokenBucket::new(limits.events_per_sec, limits.event_burst),
            messages: TokenBucket::new(limits.messages_per_sec, 10.0 * limits.messages_per_sec),
            own,
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
        let filter = filter.and_then(|f| Filter::parse(f.get()));
        let Some(filter) = filter else {
            return vec![closed(&id, "invalid: filter")];
        };
        let others: usize = self
            .subs
            .iter()
            .filter(|(s, _)| *s != id)
            .map(|(_, f)| f.size())
            .sum();
        if !self.own && others + filter.size() > self.limits.max_filter_bytes {
            relay.over_limit(
                &relay.stats.refused_filters,
                "RELAY_MAX_FILTER_BYTES",
                self.limits.max_filter_bytes as f64,
            );
            return vec![closed(&id, "error: filters too large")];
        }
        self.subs_changed = true;
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

    fn first_match(&self, ev: &Relayed) -> Option<&str> {
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
    use nostr_sdk::prelude::{EventBuilder, JsonUtil, Keys, Kind, SecretKey, Timestamp};

    fn key(b: u8) -> Keys {
        Keys::new(SecretKey::from_slice(&[b; 32]).unwrap())
    }

    fn event(k: &Keys, i: usize) -> String {
        EventBuilder::new(Kind::Custom(20_001), format!("e{i}"))
            .custom_created_at(Timestamp::from(1_795_000_000))
            .sign_with_keys(k)
            .unwrap()
            .as_json()
    }

    fn accepted(relay: &Relay, conn: &mut Connection, events: &[String]) -> usize {
        events
            .iter()
            .filter(|e| {
                let raw: Box<RawValue> = serde_json::from_str(e).unwrap();
                relay.publish(conn, 1, &raw).contains(",true,")
            })
            .count()
    }

    #[test]
    fn only_the_own_connection_is_unlimited_and_replaying_its_events_earns_nothing() {
        let relay = Relay::new(RelayLimits {
            events_per_sec: 0.001,
            event_burst: 2.0,
            ..RelayLimits::default()
        });
        let (own, other) = (key(1), key(2));
        let ours: Vec<String> = (0..10).map(|i| event(&own, i)).collect();
        let theirs: Vec<String> = (0..10).map(|i| event(&other, i)).collect();
        let mut daemon = Connection::new(relay.limits, true);
        assert_eq!(accepted(&relay, &mut daemon, &ours), 10);
        assert_eq!(accepted(&relay, &mut daemon, &theirs), 10);
        // A stranger republishing the daemon's own signed events stays limited.
        let mut replayer = Connection::new(relay.limits, false);
        assert_eq!(accepted(&relay, &mut replayer, &ours), 2);
        assert_eq!(accepted(&relay, &mut replayer, &theirs), 0);
    }

    #[test]
    fn a_connection_s_filters_are_bounded_in_bytes() {
        let relay = Relay::new(RelayLimits {
            max_filter_bytes: 4096,
            ..RelayLimits::default()
        });
        let mut conn = Connection::new(relay.limits, false);
        let big: Vec<String> = (0..64).map(|i| format!("{i:0>900}")).collect();
        let req = |n: usize, values: &[String]| {
            let f = serde_json::json!({"#x": values}).to_string();
            let id = serde_json::to_string(&format!("s{n}")).unwrap();
            let id: Box<RawValue> = RawValue::from_string(id).unwrap();
            let f: Box<RawValue> = RawValue::from_string(f).unwrap();
            (id, f)
        };
        let (id, f) = req(0, &big);
        let r = conn.subscribe(&id, Some(&&*f), &relay);
        assert!(r[0].starts_with("[\"CLOSED\""), "{r:?}");
        let small: Vec<String> = big.iter().take(4).cloned().collect();
        let mut kept = 0;
        for n in 0..10 {
            let (id, f) = req(n, &small);
            kept +=
                usize::from(conn.subscribe(&id, Some(&&*f), &relay)[0].starts_with("[\"EOSE\""));
        }
        assert_eq!(kept, 1, "4 values of 900 bytes fit once in 4096 bytes");
        assert_eq!(relay.stats.refused_filters.load(Ordering::Relaxed), 10);
    }
}
