//! The Nostr side of signalling, on `nostr-sdk`: one `Client` per pool, one relay
//! connection per URL.
//!
//! nostr-sdk does the client's work: connecting and reconnecting each relay on its own
//! task with backoff and jitter, parsing relay messages, verifying every event's id and
//! signature, NIP-42 `AUTH` (answered with the pool's key, which is the room's key),
//! `CLOSED`/`NOTICE` handling and message-size limits. What GenosRTC needs beyond it is
//! wrapped thinly here, each with the reason:
//! - subscriptions are re-sent by us with a fresh `since` on every (re)connect and after
//!   `AUTH`: nostr-sdk re-sends the filter it first sent, whose old `since` makes a relay
//!   that stores ephemeral events replay stale offers (GenosDB issue #36 was a peer that
//!   could announce but no longer hear);
//! - a relay that answers `CLOSED` with `rate-limited:` is asked again after a pause
//!   that doubles (2 s to 60 s, jittered) while it keeps refusing
//!   (nostr-sdk only marks such a subscription closed);
//! - a relay that demands proof of work is dropped for the life of the process (§4.9);
//!   nostr-sdk only drops the subscription;
//! - each relay has budgets for events and for other messages, taken on the raw frame
//!   before anything is parsed, so a relay that floods only loses its own excess and
//!   the replies to our own offers never crowd out peers' events ([`transport`]);
//! - the WebSocket reads are bounded by `max_message_bytes` ([`transport`]); the stock
//!   transport accepts 64 MiB messages.

mod transport;

use crate::rate::Backoff;
use nostr_sdk::pool::{RelayLimits, RelayPoolOptions};
use nostr_sdk::prelude::{
    Alphabet, ClientMessage, Event, Filter, Keys, MachineReadablePrefix, MemoryDatabase,
    MemoryDatabaseOptions, RelayMessage, SingleLetterTag, SubscriptionId, Timestamp,
};
use nostr_sdk::{Client, ClientOptions, Relay, RelayOptions};
use nostr_sdk::{RelayStatus as SdkStatus, pool::RelayNotification};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub urls: Vec<String>,
    /// Reconnect delay; nostr-sdk stretches it after repeated failures (up to 60 s)
    /// and adds up to ±3 s of jitter.
    pub backoff_base: Duration,
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
    /// The key events are signed with and NIP-42 `AUTH` challenges answered with.
    pub keys: Keys,
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
            .field("url", &crate::redact::url(&self.url))
            .finish()
    }
}

impl PoolConfig {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            backoff_base: Duration::from_millis(3333),
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: 256 * 1024,
            events_per_sec: 200.0,
            event_burst: 400.0,
            unmetered: Vec::new(),
            keys: Keys::generate(),
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
        event: Box<Event>,
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
    /// Messages dropped: over budget, or not taken by a signalling layer that is behind.
    pub rejected: AtomicU64,
    /// Why the last connection attempt failed, if it did.
    pub last_error: Mutex<Option<String>>,
}

impl RelayStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct RelayHandle {
    url: String,
    relay: Arc<OnceLock<Relay>>,
    status: Arc<RelayStatus>,
}

type Subs = Arc<Mutex<Vec<(String, Filter)>>>;

/// The set of relays one process signals through.
pub struct RelayPool {
    client: Client,
    keys: Keys,
    relays: Vec<RelayHandle>,
    subs: Subs,
}

impl RelayPool {
    /// Starts one task per relay; events and connection changes arrive on the receiver.
    pub fn start(cfg: PoolConfig) -> (Self, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(4096);
        let subs: Subs = Arc::default();
        let statuses: Vec<Arc<RelayStatus>> = cfg.urls.iter().map(|_| Arc::default()).collect();
        let origins: Vec<Arc<transport::Origins>> =
            cfg.urls.iter().map(|_| Arc::default()).collect();
        let transport = transport::Bounded::new(&cfg, &statuses, &origins);
        // nostr-sdk's default database tracks the last 35,000 event ids (to drop an
        // event a second relay brings again); a second copy arrives within
        // milliseconds, and a thousand peers announcing are 400 events/s, so a few
        // seconds' worth is enough and the rest was resident memory for nothing.
        let seen = MemoryDatabase::with_opts(MemoryDatabaseOptions {
            events: false,
            max_events: Some(SEEN_EVENT_IDS),
        });
        let client = Client::builder()
            .signer(cfg.keys.clone())
            .database(seen)
            .websocket_transport(transport)
            .opts(
                ClientOptions::new()
                    .pool(RelayPoolOptions::new().notification_channel_size(POOL_NOTIFICATIONS))
                    .automatic_authentication(true),
            )
            .build();
        let relays = cfg
            .urls
            .iter()
            .zip(statuses)
            .zip(origins)
            .enumerate()
            .map(|(id, ((url, status), origins))| {
                let relay = Arc::new(OnceLock::new());
                let local = cfg.local.as_ref().is_some_and(|l| &l.url == url);
                let task = RelayTask {
                    id,
                    url: url.clone(),
                    shown: crate::redact::url(url).into_owned(),
                    origins: local.then_some(origins),
                    cfg: cfg.clone(),
                    subs: subs.clone(),
                    status: status.clone(),
                    inbound: tx.clone(),
                    relay: relay.clone(),
                };
                tokio::spawn(task.run(client.clone()));
                RelayHandle {
                    url: url.clone(),
                    relay,
                    status,
                }
            })
            .collect();
        let keys = cfg.keys;
        (
            Self {
                client,
                keys,
                relays,
                subs,
            },
            rx,
        )
    }

    /// The pool's key: sign what you publish with it.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Subscribes on every relay now and after every reconnect. `filter` gets a fresh
    /// `since` (now) each time it is sent.
    pub fn subscribe(&self, sub_id: &str, filter: Filter) {
        // Under the lock a relay task takes its snapshot under: either the snapshot has
        // this subscription, or the relay is already marked connected and gets the REQ
        // here. Without that, a relay that connects just as we subscribe would never
        // hear the REQ.
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(id, _)| id != sub_id);
        subs.push((sub_id.to_owned(), filter.clone()));
        for r in &self.relays {
            self.send_to(r, req_message(sub_id, &filter));
        }
    }

    pub fn unsubscribe(&self, sub_id: &str) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(id, _)| id != sub_id);
        for r in &self.relays {
            self.send_to(r, ClientMessage::close(SubscriptionId::new(sub_id)));
        }
    }

    /// Publishes a signed event on one relay, or on all of them. Like browsers, it is
    /// dropped where the relay is not open.
    pub fn publish(&self, event: &Event, relay: Option<usize>) {
        for (i, r) in self.relays.iter().enumerate() {
            let wanted = relay.is_none_or(|want| want == i);
            if wanted
                && !r.status.pow_blocked.load(Ordering::Relaxed)
                && self.send_to(r, ClientMessage::event(event.clone()))
            {
                r.status.events_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send_to(&self, r: &RelayHandle, msg: ClientMessage<'_>) -> bool {
        r.status.connected.load(Ordering::Relaxed)
            && r.relay
                .get()
                .is_some_and(|relay| relay.send_msg(msg).is_ok())
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

impl Drop for RelayPool {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { client.shutdown().await });
        }
    }
}

/// The room's filter for `topic`: its kind and its `x` tag (§3).
pub fn topic_filter(kind: u16, topic: &str) -> Filter {
    Filter::new()
        .kind(nostr_sdk::Kind::Custom(kind))
        .custom_tag(SingleLetterTag::lowercase(Alphabet::X), topic)
}

fn req_message(sub_id: &str, filter: &Filter) -> ClientMessage<'static> {
    ClientMessage::req(
        SubscriptionId::new(sub_id),
        vec![filter.clone().since(Timestamp::now())],
    )
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

/// Event ids remembered to drop the copy of an event that another relay brings.
const SEEN_EVENT_IDS: usize = 4096;

/// Slots of the client's pool-wide notification channel. Nothing here listens to it
/// (each relay task reads its relay's own channel), but tokio's broadcast channel
/// allocates and initializes every slot up front: nostr-sdk's default of 4,096 was
/// 1.4 MiB per client, resident for nothing (heap profile, BENCHMARKS.md, issue 19).
const POOL_NOTIFICATIONS: usize = 64;

/// How long a relay that answered `CLOSED rate-limited:` is left alone before the
/// subscription is asked for again: the first pause, and the most it grows to when the
/// relay keeps refusing (doubling, ±25 % jitter so that many peers do not retry in step).
const RATE_LIMITED_RETRY: Duration = Duration::from_secs(2);
const RATE_LIMITED_RETRY_MAX: Duration = Duration::from_secs(60);

/// Per subscription: its retry pause after `CLOSED rate-limited:`, and whether a retry
/// is already waiting (a relay that repeats `CLOSED` does not stack retries). Keyed by
/// our own subscription ids, so it holds a handful of entries.
#[derive(Default)]
struct Retries(std::collections::HashMap<String, (Backoff, bool)>);

impl Retries {
    /// The pause before asking for `sub` again, or None when a retry already waits.
    fn schedule(&mut self, sub: &str) -> Option<Duration> {
        let (backoff, pending) = self.0.entry(sub.to_owned()).or_insert_with(|| {
            (
                Backoff::new(RATE_LIMITED_RETRY, RATE_LIMITED_RETRY_MAX).jittered(),
                false,
            )
        });
        (!std::mem::replace(pending, true)).then(|| backoff.next_delay())
    }

    /// The retry of `sub` was sent.
    fn sent(&mut self, sub: &str) {
        if let Some((_, pending)) = self.0.get_mut(sub) {
            *pending = false;
        }
    }

    /// The relay accepted `sub` (`EOSE`): the next refusal waits the first pause again.
    fn accepted(&mut self, sub: &str) {
        if let Some((backoff, _)) = self.0.get_mut(sub) {
            backoff.reset();
        }
    }
}

struct RelayTask {
    id: usize,
    url: String,
    /// The URL as logs show it: credentials masked.
    shown: String,
    /// The daemon's own relay: who published each event, read by the transport.
    origins: Option<Arc<transport::Origins>>,
    cfg: PoolConfig,
    subs: Subs,
    status: Arc<RelayStatus>,
    inbound: mpsc::Sender<Inbound>,
    relay: Arc<OnceLock<Relay>>,
}

impl RelayTask {
    /// Adds the relay to the client; None (logged, and shown on /health) when its
    /// URL is refused.
    async fn open_relay(&self, client: &Client) -> Option<Relay> {
        let opts = RelayOptions::new()
            .retry_interval(self.cfg.backoff_base)
            .limits(limits(self.cfg.max_message_bytes))
            .notification_channel_size(1024);
        let added = client.pool().add_relay(self.url.as_str(), opts).await;
        match added.and(client.pool().relay(self.url.as_str()).await) {
            Ok(relay) => Some(relay),
            Err(e) => {
                let error = crate::redact::scrub(&e.to_string(), &self.url);
                tracing::warn!(relay = %self.shown, %error, "relay URL refused; not used");
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(error);
                None
            }
        }
    }

    async fn run(self, client: Client) {
        let Some(relay) = self.open_relay(&client).await else {
            return;
        };
        let mut notes = relay.notifications();
        let _ = self.relay.set(relay.clone());
        relay.connect();
        let (retry_tx, mut retry_rx) = mpsc::channel::<String>(16);
        let mut retries = Retries::default();
        loop {
            let note = tokio::select! {
                note = notes.recv() => note,
                Some(sub) = retry_rx.recv() => {
                    retries.sent(&sub);
                    self.resend(&relay, Some(&sub));
                    continue;
                }
            };
            match note {
                Ok(RelayNotification::RelayStatus { status }) => {
                    if self.on_status(&relay, status).await {
                        return;
                    }
                }
                Ok(RelayNotification::Authenticated) => {
                    tracing::info!(relay = %self.shown, "authenticated to the relay (NIP-42)");
                    self.resend(&relay, None);
                }
                Ok(RelayNotification::AuthenticationFailed) => {
                    tracing::warn!(relay = %self.shown, "NIP-42 authentication refused by the relay");
                }
                Ok(RelayNotification::Event {
                    subscription_id,
                    event,
                }) => {
                    self.status.events_in.fetch_add(1, Ordering::Relaxed);
                    let origin = self
                        .origins
                        .as_ref()
                        .and_then(|o| o.take(&event.id.to_hex()));
                    let inbound = Inbound::Event {
                        relay: self.id,
                        sub: subscription_id.to_string(),
                        event,
                        origin,
                    };
                    // When the signalling layer is behind, the event is dropped rather
                    // than queued without bound.
                    if self.inbound.try_send(inbound).is_err() {
                        self.status.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(RelayNotification::Message { message }) => {
                    if self.on_message(&relay, message, &retry_tx, &mut retries) {
                        return;
                    }
                }
                Ok(RelayNotification::Shutdown) => return,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.status.rejected.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The relay's connection changed; true when the task must end.
    async fn on_status(&self, relay: &Relay, status: SdkStatus) -> bool {
        match status {
            SdkStatus::Connected => {
                tracing::info!(relay = %self.shown, "relay connected");
                self.resend(relay, None);
                if self
                    .inbound
                    .send(Inbound::Connected { relay: self.id })
                    .await
                    .is_err()
                {
                    return true;
                }
            }
            SdkStatus::Disconnected
            | SdkStatus::Terminated
            | SdkStatus::Banned
            | SdkStatus::Sleeping => {
                if self.status.connected.swap(false, Ordering::Relaxed) {
                    tracing::info!(relay = %self.shown, "relay disconnected");
                    if self
                        .inbound
                        .send(Inbound::Disconnected { relay: self.id })
                        .await
                        .is_err()
                    {
                        return true;
                    }
                }
                if status != SdkStatus::Disconnected {
                    return true;
                }
            }
            _ => {}
        }
        false
    }

    /// Sends every subscription (or only `only`) with a fresh `since`.
    fn resend(&self, relay: &Relay, only: Option<&str>) {
        // See `RelayPool::subscribe`: the snapshot and the connected flag change together.
        let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        self.status.connected.store(true, Ordering::Relaxed);
        for (id, filter) in subs.iter() {
            if only.is_none_or(|o| o == id) {
                let _ = relay.send_msg(req_message(id, filter));
            }
        }
    }

    /// Returns true when the relay is dropped for good.
    fn on_message(
        &self,
        relay: &Relay,
        message: RelayMessage<'static>,
        retry: &mpsc::Sender<String>,
        retries: &mut Retries,
    ) -> bool {
        let text = match &message {
            RelayMessage::EndOfStoredEvents(sub) => {
                retries.accepted(sub.as_str());
                return false;
            }
            RelayMessage::Ok {
                status: false,
                message,
                ..
            } => message.as_ref(),
            RelayMessage::Notice(message) => message.as_ref(),
            RelayMessage::Closed {
                subscription_id,
                message,
            } => {
                if MachineReadablePrefix::parse(message) == Some(MachineReadablePrefix::RateLimited)
                    && let Some(pause) = retries.schedule(subscription_id.as_str())
                {
                    let (retry, sub) = (retry.clone(), subscription_id.to_string());
                    tracing::debug!(relay = %self.shown, %sub, pause_ms = pause.as_millis() as u64, "subscription rate-limited; asking again after a pause");
                    tokio::spawn(async move {
                        tokio::time::sleep(pause).await;
                        let _ = retry.send(sub).await;
                    });
                }
                message.as_ref()
            }
            _ => return false,
        };
        if !demands_pow(text) {
            return false;
        }
        self.status.pow_blocked.store(true, Ordering::Relaxed);
        tracing::warn!(relay = %self.shown, "relay demands proof of work; dropped for this process");
        relay.disconnect();
        false
    }
}

fn limits(max_message_bytes: usize) -> RelayLimits {
    let mut limits = RelayLimits::default();
    limits.messages.max_size = Some(max_message_bytes.try_into().unwrap_or(u32::MAX));
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::JsonUtil;

    #[test]
    fn pow_messages() {
        assert!(demands_pow("pow: 20 bits needed"));
        assert!(demands_pow("POW:8 bits needed."));
        assert!(!demands_pow("pow: 0 bits needed"));
        assert!(!demands_pow("rate-limited: slow down"));
        assert!(!demands_pow("pow: lots"));
    }

    #[test]
    fn rate_limited_retries_back_off_with_jitter_to_a_cap_and_do_not_stack() {
        let mut r = Retries::default();
        let first = r.schedule("s").unwrap();
        assert!(
            first >= RATE_LIMITED_RETRY.mul_f64(0.75) && first <= RATE_LIMITED_RETRY.mul_f64(1.25)
        );
        // A second CLOSED while the retry waits schedules nothing more.
        assert_eq!(r.schedule("s"), None);
        let mut last = first;
        for _ in 0..10 {
            r.sent("s");
            last = r.schedule("s").unwrap();
        }
        assert!(
            last >= RATE_LIMITED_RETRY_MAX.mul_f64(0.75)
                && last <= RATE_LIMITED_RETRY_MAX.mul_f64(1.25)
        );
        // Accepted (EOSE): the next refusal waits the first pause again; others are apart.
        r.sent("s");
        r.accepted("s");
        assert!(r.schedule("s").unwrap() <= RATE_LIMITED_RETRY.mul_f64(1.25));
        assert!(r.schedule("other").unwrap() <= RATE_LIMITED_RETRY.mul_f64(1.25));
    }

    #[test]
    fn requests_carry_a_fresh_since() {
        let f = topic_filter(23061, "topic");
        let msg = req_message("sub", &f).as_json();
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v[0], "REQ");
        assert_eq!(v[2]["kinds"][0], 23061);
        assert_eq!(v[2]["#x"][0], "topic");
        let since = v[2]["since"].as_u64().unwrap();
        assert!(since.abs_diff(Timestamp::now().as_secs()) < 5);
    }
}
