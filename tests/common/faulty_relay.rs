//! A WebSocket proxy in front of a real relay that mistreats NIP-01 `EVENT` messages,
//! in both directions: it drops, duplicates, reorders (holds one back and releases it
//! after the next) and delays them, by a seeded RNG. Everything else (`REQ`, `CLOSE`,
//! `EOSE`, `OK`, pings, closes) passes untouched and at once, so the relay still looks
//! healthy to its clients: the faults hit only what signalling carries.

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// What happens to each `EVENT`, independently, per direction.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that an event is never delivered.
    pub drop: f64,
    /// Probability that a delivered event is delivered twice.
    pub duplicate: f64,
    /// Probability that an event is held back and released after the next one.
    pub reorder: f64,
    /// Each delivery is delayed by a uniform 0..=max_delay.
    pub max_delay: Duration,
}

impl Faults {
    /// Looks alive (connects, subscribes, answers) and delivers no event at all.
    pub const BLACK_HOLE: Faults = Faults {
        drop: 1.0,
        duplicate: 0.0,
        reorder: 0.0,
        max_delay: Duration::ZERO,
    };
}

/// What the proxy did, so a test can check it was not a no-op.
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub events: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub delayed: AtomicU64,
    pub connections: AtomicU64,
}

impl FaultCounters {
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        format!(
            "events={} dropped={} duplicated={} reordered={} delayed={} connections={}",
            self.get(&self.events),
            self.get(&self.dropped),
            self.get(&self.duplicated),
            self.get(&self.reordered),
            self.get(&self.delayed),
            self.get(&self.connections),
        )
    }
}

/// SplitMix64: small, seeded, good enough to pick faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [0, max].
    pub fn duration(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// A seed from `FAULT_SEED`, or a fresh one; printed so a failure can be replayed.
pub fn seed(what: &str) -> u64 {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        });
    eprintln!("{what}: FAULT_SEED={seed}");
    seed
}

/// A running proxy; dropping it closes every connection through it.
pub struct FaultyRelay {
    pub port: u16,
    pub counters: Arc<FaultCounters>,
    accept: tokio::task::JoinHandle<()>,
}

/// Held back for reordering is released after this long if no other event comes.
const HOLD_AT_MOST: Duration = Duration::from_millis(500);

impl FaultyRelay {
    /// Listens on 127.0.0.1:0 and proxies every connection to the relay on `upstream`.
    pub async fn start(upstream: u16, faults: Faults, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counters = Arc::new(FaultCounters::default());
        let c = counters.clone();
        let accept = tokio::spawn(async move {
            // Owned here: aborting the accept task drops every connection with it.
            let mut conns = JoinSet::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        n += 1;
                        c.connections.fetch_add(1, Ordering::Relaxed);
                        let rngs = (Rng::new(seed ^ (n << 1)), Rng::new(seed ^ (n << 1 | 1)));
                        conns.spawn(connection(tcp, upstream, faults, rngs, c.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Self {
            port,
            counters,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultyRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    upstream: u16,
    faults: Faults,
    (rng_up, rng_down): (Rng, Rng),
    counters: Arc<FaultCounters>,
) {
    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let Ok((relay, _)) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{upstream}")).await
    else {
        return;
    };
    let (client_tx, client_rx) = client.split();
    let (relay_tx, relay_rx) = relay.split();
    let (to_relay, to_relay_rx) = mpsc::unbounded_channel();
    let (to_client, to_client_rx) = mpsc::unbounded_channel();
    // The connection ends when either side closes; the other is dropped with it.
    tokio::select! {
        _ = mistreat(client_rx, to_relay, faults, rng_up, counters.clone()) => {}
        _ = mistreat(relay_rx, to_client, faults, rng_down, counters) => {}
        _ = write_all(to_relay_rx, relay_tx) => {}
        _ = write_all(to_client_rx, client_tx) => {}
    }
}

async fn write_all<K>(mut rx: mpsc::UnboundedReceiver<Message>, mut sink: K)
where
    K: futures_util::Sink<Message> + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.send(m).await.is_err() {
            return;
        }
    }
}

fn is_event(m: &Message) -> bool {
    let Message::Text(t) = m else { return false };
    serde_json::from_str::<Vec<&serde_json::value::RawValue>>(t.as_str())
        .ok()
        .and_then(|items| items.first().map(|v| v.get() == "\"EVENT\""))
        .unwrap_or(false)
}

/// Reads one direction and hands each message on, mistreating events.
async fn mistreat<S, E>(
    mut from: S,
    out: mpsc::UnboundedSender<Message>,
    faults: Faults,
    mut rng: Rng,
    counters: Arc<FaultCounters>,
) where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
{
    let mut held: Option<Message> = None;
    let release = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(release);
    loop {
        let m = tokio::select! {
            m = from.next() => m,
            () = &mut release, if held.is_some() => {
                if let Some(h) = held.take() {
                    deliver(h, &out, &faults, &mut rng, &counters);
                }
                continue;
            }
        };
        let Some(Ok(m)) = m else { return };
        if !is_event(&m) {
            let closing = matches!(m, Message::Close(_));
            let _ = out.send(m);
            if closing {
                return;
            }
            continue;
        }
        counters.events.fetch_add(1, Ordering::Relaxed);
        if rng.chance(faults.drop) {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if held.is_none() && rng.chance(faults.reorder) {
            counters.reordered.fetch_add(1, Ordering::Relaxed);
            held = Some(m);
            release
                .as_mut()
                .reset(tokio::time::Instant::now() + HOLD_AT_MOST);
            continue;
        }
        if rng.chance(faults.duplicate) {
            counters.duplicated.fetch_add(1, Ordering::Relaxed);
            deliver(m.clone(), &out, &faults, &mut rng, &counters);
        }
        deliver(m, &out, &faults, &mut rng, &counters);
        if let Some(h) = held.take() {
            deliver(h, &out, &faults, &mut rng, &counters);
        }
    }
}

/// Sends now, or after a random delay (which may reorder it further).
fn deliver(
    m: Message,
    out: &mpsc::UnboundedSender<Message>,
    faults: &Faults,
    rng: &mut Rng,
    counters: &FaultCounters,
) {
    let delay = rng.duration(faults.max_delay);
    if delay < Duration::from_millis(1) {
        let _ = out.send(m);
        return;
    }
    counters.delayed.fetch_add(1, Ordering::Relaxed);
    let out = out.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = out.send(m);
    });
}
