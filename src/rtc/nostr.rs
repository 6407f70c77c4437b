//! The Nostr side of signalling: one independent client per relay URL.
//!
//! Each relay runs in its own task, so a dead or slow relay never delays the others.
//! A relay that drops is reconnected with capped exponential backoff and jitter, and
//! every subscription is sent again on every reconnect (GenosDB issue #36 was a peer
//! that could announce but no longer hear). A relay that demands proof of work is
//! dropped for the life of the process (§4.9). Events from relays are hostile: their
//! ids and signatures are verified, their rate and size are bounded, and a relay that
//! floods only loses its own excess.

use crate::rate::{Backoff, TokenBucket};
use crate::relay::event::Event;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub urls: Vec<String>,
    /// First reconnect delay; doubles after each failure up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub max_message_bytes: usize,
    /// Events per second accepted from one relay, and the burst. Other messages
    /// (`OK` for what we publish, `EOSE`, `NOTICE`) have a budget of their own, so the
    /// replies to our own offers and answers never crowd out peers' events.
    pub events_per_sec: f64,
    pub event_burst: f64,
    /// Relays whose messages are not rate-bounded: the daemon's embedded relay, which
    /// verifies every event and bounds each publisher itself. A thousand peers
    /// announcing every 2.5 s are 400 events/s on it alone.
    pub unmetered: Vec<String>,
    /// The daemon's own embedded relay, reached in process rather than over TCP: its
    /// URL and how to open a connection. That connection has no rate limit there, and
    /// its events say which relay connection published them (`Inbound::Event::origin`).
    pub local: Option<LocalRelay>,
}

/// See [`PoolConfig::local`].
#[derive(Clone)]
pub struct LocalRelay {
    pub url: String,
    pub connect: Arc<dyn Fn() -> tokio::io::DuplexStream + Send + Sync>,
}

impl std::fmt::Debug for LocalRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRelay")
            .field("url", &self.url)
            .finish()
    }
}

impl PoolConfig {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            backoff_base: Duration::from_millis(3333),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: 256 * 1024,
            events_per_sec: 200.0,
            event_burst: 400.0,
            unmetered: Vec::new(),
            local: None,
        }
    }
}

/// What the pool hands to the signalling layer.
#[derive(Debug)]
pub enum Inbound {
    /// The relay (re)opened and every subscription was sent again.
    Connected {
        relay: usize,
    },
    Disconnected {
        relay: usize,
    },
    /// A verified event that arrived on subscription `sub`.
    Event {
        relay: usize,
        sub: String,
        event: Event,
        /// On the daemon's own relay: the relay connection that published it.
        origin: Option<u64>,
    },
}

/// Live state of one relay, for /health and /metrics.
#[derive(Debug, Default)]
pub struct RelayStatus {
    pub connected: AtomicBool,
    pub pow_blocked: AtomicBool,
    pub reconnects: AtomicU64,
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub rejected: AtomicU64,
}

struct RelayHandle {
    url: String,
    out: mpsc::Sender<String>,
    status: Arc<RelayStatus>,
}

type Subs = Arc<Mutex<Vec<(String, Value)>>>;

/// The set of relays one process signals through.
pub struct RelayPool {
    relays: Vec<RelayHandle>,
    subs: Subs,
}

impl RelayPool {
    /// Starts one task per relay; events and connection changes arrive on the receiver.
    pub fn start(cfg: PoolConfig) -> (Self, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(4096);
        let subs: Subs = Arc::default();
        let relays = cfg
            .urls
            .iter()
            .enumerate()
            .map(|(id, url)| {
                let (out, out_rx) = mpsc::channel(256);
                let status = Arc::new(RelayStatus::default());
                let task = RelayTask {
                    id,
                    shown: crate::redact::url(url).into_owned(),
                    url: url.clone(),
                    cfg: cfg.clone(),
                    subs: subs.clone(),
                    status: status.clone(),
                    inbound: tx.clone(),
                };
                tokio::spawn(task.run(out_rx));
                RelayHandle {
                    url: url.clone(),
                    out,
                    status,
                }
            })
            .collect();
        (Self { relays, subs }, rx)
    }

    /// Subscribes on every relay now and after every reconnect. `filter` gets a fresh
    /// `since` (now) each time it is sent.
    pub fn subscribe(&self, sub_id: &str, filter: Value) {
        // Under the lock a session takes its snapshot under: either the snapshot has
        // this subscription, or the session is already marked connected and takes it
        // through its queue. Without that, a relay that connects just as we subscribe
        // would never hear the REQ.
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(id, _)| id != sub_id);
        subs.push((sub_id.to_owned(), filter.clone()));
        let req = req_message(sub_id, &filter);
        for r in &self.relays {
            self.send_to(r, req.clone());
        }
    }

    pub fn unsubscribe(&self, sub_id: &str) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(id, _)| id != sub_id);
        let close = serde_json::json!(["CLOSE", sub_id]).to_string();
        for r in &self.relays {
            self.send_to(r, close.clone());
        }
    }

    /// Publishes a signed event (its JSON object) on one relay, or on all of them.
    /// Like browsers, it is dropped where the relay is not open.
    pub fn publish(&self, event: &str, relay: Option<usize>) {
        let msg = format!("[\"EVENT\",{event}]");
        for (i, r) in self.relays.iter().enumerate() {
            let wanted = relay.is_none_or(|want| want == i);
            if wanted
                && !r.status.pow_blocked.load(Ordering::Relaxed)
                && self.send_to(r, msg.clone())
            {
                r.status.events_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send_to(&self, r: &RelayHandle, msg: String) -> bool {
        r.status.connected.load(Ordering::Relaxed) && r.out.try_send(msg).is_ok()
    }

    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.relays.iter().map(|r| r.url.as_str())
    }

    pub fn status(&self, relay: usize) -> Option<&RelayStatus> {
        self.relays.get(relay).map(|r| r.status.as_ref())
    }

    pub fn connected(&self) -> usize {
        self.relays
            .iter()
            .filter(|r| r.status.connected.load(Ordering::Relaxed))
            .count()
    }

    pub fn len(&self) -> usize {
        self.relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }
}

fn req_message(sub_id: &str, filter: &Value) -> String {
    let mut filter = filter.clone();
    if let Some(obj) = filter.as_object_mut() {
        obj.insert("since".into(), Value::from(unix_secs()));
    }
    serde_json::json!(["REQ", sub_id, filter]).to_string()
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `pow: N bits needed` with N > 0 (§4.9).
pub fn demands_pow(msg: &str) -> bool {
    let lower = msg.to_ascii_lowercase();
    let Some(rest) = lower.split("pow:").nth(1) else {
        return false;
    };
    let rest = rest.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].trim_start();
    digits.parse::<u32>().is_ok_and(|n| n > 0) && after.starts_with("bits needed")
}

struct RelayTask {
    id: usize,
    url: String,
    /// The URL as logs show it: credentials masked.
    shown: String,
    cfg: PoolConfig,
    subs: Subs,
    status: Arc<RelayStatus>,
    inbound: mpsc::Sender<Inbound>,
}

enum SessionEnd {
    Closed,
    PowDemanded,
    PoolGone,
}

impl RelayTask {
    async fn run(self, mut out: mpsc::Receiver<String>) {
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max).jittered();
        let mut first = true;
        // Failed tries since the relay was last open: the first of a cycle is a warning,
        // the retries that follow are debug lines.
        let mut failures = 0u64;
        loop {
            if !first {
                tokio::time::sleep(backoff.next_delay()).await;
                self.status.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let ws_cfg = WebSocketConfig::default()
                .max_message_size(Some(self.cfg.max_message_bytes))
                .max_frame_size(Some(self.cfg.max_message_bytes));
            if let Some(local) = self.cfg.local.as_ref().filter(|l| l.url == self.url) {
                let stream = (local.connect)();
                let connecting =
                    tokio_tungstenite::client_async_with_config(&self.url, stream, Some(ws_cfg));
                match tokio::time::timeout(self.cfg.connect_timeout, connecting).await {
                    Ok(Ok((ws, _))) => {
                        backoff.reset();
                        tracing::info!(relay = %self.shown, "relay connected (in process)");
                        let end = self.session(ws, &mut out, true).await;
                        if !self.ended(end, &mut out).await {
                            return;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(relay = %self.shown, error = %e, "relay connect failed")
                    }
                    Err(_) => tracing::debug!(relay = %self.shown, "relay connect timed out"),
                }
                continue;
            }
            let connecting =
                tokio_tungstenite::connect_async_with_config(&self.url, Some(ws_cfg), false);
            let error = match tokio::time::timeout(self.cfg.connect_timeout, connecting).await {
                Ok(Ok((ws, _))) => Ok(ws),
                Ok(Err(e)) => Err(crate::redact::scrub(&e.to_string(), &self.url)),
                Err(_) => Err(format!("no answer in {:?}", self.cfg.connect_timeout)),
            };
            let ws = match error {
                Ok(ws) => ws,
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(relay = %self.shown, %error, "relay unreachable; retrying with backoff");
                    } else {
                        tracing::debug!(relay = %self.shown, %error, failures, "relay connect failed");
                    }
                    continue;
                }
            };
            backoff.reset();
            tracing::info!(relay = %self.shown, failed_tries = failures, "relay connected");
            failures = 0;
            let end = self.session(ws, &mut out, false).await;
            if !self.ended(end, &mut out).await {
                return;
            }
        }
    }

    /// After a session: false when the task must end.
    async fn ended(&self, end: SessionEnd, out: &mut mpsc::Receiver<String>) -> bool {
        self.status.connected.store(false, Ordering::Relaxed);
        while out.try_recv().is_ok() {}
        match end {
            SessionEnd::PoolGone => false,
            SessionEnd::PowDemanded => {
                self.status.pow_blocked.store(true, Ordering::Relaxed);
                tracing::warn!(relay = %self.shown, "relay demands proof of work; dropped for this process");
                let _ = self
                    .inbound
                    .send(Inbound::Disconnected { relay: self.id })
                    .await;
                false
            }
            SessionEnd::Closed => {
                tracing::info!(relay = %self.shown, "relay disconnected; reconnecting");
                self.inbound
                    .send(Inbound::Disconnected { relay: self.id })
                    .await
                    .is_ok()
            }
        }
    }

    /// One connection to the relay. `local`: the daemon's own relay, in process.
    async fn session<S>(
        &self,
        ws: tokio_tungstenite::WebSocketStream<S>,
        out: &mut mpsc::Receiver<String>,
        local: bool,
    ) -> SessionEnd
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (mut tx, mut rx) = ws.split();
        let reqs: Vec<String> = {
            // See `subscribe`: the snapshot and the connected flag change together.
            let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
            self.status.connected.store(true, Ordering::Relaxed);
            subs.iter().map(|(id, f)| req_message(id, f)).collect()
        };
        for req in reqs {
            if tx.send(Message::Text(req.into())).await.is_err() {
                return SessionEnd::Closed;
            }
        }
        if self
            .inbound
            .send(Inbound::Connected { relay: self.id })
            .await
            .is_err()
        {
            return SessionEnd::PoolGone;
        }
        let metered = !local && !self.cfg.unmetered.contains(&self.url);
        let mut events = TokenBucket::new(self.cfg.events_per_sec, self.cfg.event_burst);
        let mut others = TokenBucket::new(self.cfg.events_per_sec, self.cfg.event_burst);
        loop {
            tokio::select! {
                msg = rx.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return SessionEnd::Closed,
                        Some(Ok(_)) => continue,
                    };
                    let budget = match text.as_str().trim_start().starts_with("[\"EVENT\"") {
                        true => &mut events,
                        false => &mut others,
                    };
                    if metered && !budget.take() {
                        self.status.rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match self.handle(text.as_str(), local) {
                        Some(Handled::Pow) => return SessionEnd::PowDemanded,
                        Some(Handled::Event(inbound)) => self.deliver(inbound),
                        None => {}
                    }
                }
                next = out.recv() => {
                    let Some(text) = next else { return SessionEnd::PoolGone };
                    if tx.send(Message::Text(text.into())).await.is_err() {
                        return SessionEnd::Closed;
                    }
                }
            }
        }
    }

    /// Hands an event on; when the signalling layer is behind, the event is dropped
    /// rather than queued without bound.
    fn deliver(&self, inbound: Inbound) {
        if self.inbound.try_send(inbound).is_err() {
            self.status.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn handle(&self, text: &str, local: bool) -> Option<Handled> {
        let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
        let verb: &str = serde_json::from_str(items.first()?.get()).ok()?;
        match verb {
            "EVENT" => {
                let sub: String = serde_json::from_str(items.get(1)?.get()).ok()?;
                let event = Event::parse(items.get(2)?).and_then(|e| e.verify().map(|_| e));
                match event {
                    Ok(event) => {
                        self.status.events_in.fetch_add(1, Ordering::Relaxed);
                        // Only our own relay says who published an event.
                        let origin = local
                            .then(|| {
                                items
                                    .get(3)
                                    .and_then(|o| serde_json::from_str(o.get()).ok())
                            })
                            .flatten();
                        Some(Handled::Event(Inbound::Event {
                            relay: self.id,
                            sub,
                            event,
                            origin,
                        }))
                    }
                    Err(e) => {
                        self.status.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(relay = %self.shown, error = %e, "relay sent an invalid event");
                        None
                    }
                }
            }
            "OK" | "NOTICE" | "CLOSED" => {
                let msg: String = serde_json::from_str(items.last()?.get()).ok()?;
                demands_pow(&msg).then_some(Handled::Pow)
            }
            _ => None,
        }
    }
}

enum Handled {
    Event(Inbound),
    Pow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow_messages() {
        assert!(demands_pow("pow: 20 bits needed"));
        assert!(demands_pow("POW:8 bits needed."));
        assert!(!demands_pow("pow: 0 bits needed"));
        assert!(!demands_pow("rate-limited: slow down"));
        assert!(!demands_pow("pow: lots"));
    }
}
