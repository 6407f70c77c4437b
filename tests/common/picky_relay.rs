//! A WebSocket proxy in front of a real relay that behaves like relays people run,
//! which our embedded relay does not: it demands NIP-42 `AUTH` first, answers a first
//! `REQ` with `CLOSED rate-limited:`, stores ephemeral events and replays them to every
//! new subscription (honouring `since`, as storing relays do), and drops every
//! connection after a while. Each quirk is on or off; counters show it was exercised.

use futures_util::{SinkExt, StreamExt};
use nostr_sdk::{Event, JsonUtil, Kind};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, Default)]
pub struct Quirks {
    /// Sends `AUTH` on connect and refuses `REQ` and `EVENT` until it is answered.
    pub auth_first: bool,
    /// Answers the first `REQ` of every subscription id on a connection with
    /// `CLOSED rate-limited:`.
    pub rate_limit_first_req: bool,
    /// Keeps every event and replays the matching ones to each new `REQ`.
    pub replay: bool,
    /// Closes every connection this long after it opened.
    pub drop_after: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// `AUTH` answers with a valid kind-22242 event for our challenge.
    pub authenticated: AtomicU64,
    /// `REQ`s and `EVENT`s refused because the connection had not authenticated.
    pub refused_unauthenticated: AtomicU64,
    /// `EVENT`s signed by another key than the one the connection authenticated with.
    pub foreign_key_events: AtomicU64,
    pub rate_limited: AtomicU64,
    pub replayed: AtomicU64,
    /// Replayed events older than the connection they were replayed on: what a client
    /// gets when it re-sends an old `since`.
    pub replayed_stale: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        format!(
            "connections={} authenticated={} refused_unauthenticated={} foreign_key_events={} rate_limited={} replayed={} replayed_stale={} dropped={}",
            self.get(&self.connections),
            self.get(&self.authenticated),
            self.get(&self.refused_unauthenticated),
            self.get(&self.foreign_key_events),
            self.get(&self.rate_limited),
            self.get(&self.replayed),
            self.get(&self.replayed_stale),
            self.get(&self.dropped),
        )
    }
}

pub struct PickyRelay {
    pub port: u16,
    pub counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

const MAX_STORED: usize = 2000;

type Store = Arc<Mutex<Vec<Value>>>;

impl PickyRelay {
    /// Listens on 127.0.0.1:0 and proxies every connection to the relay on `upstream`.
    pub async fn start(upstream: u16, quirks: Quirks) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counters = Arc::new(Counters::default());
        let store: Store = Arc::default();
        let c = counters.clone();
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let n = c.connections.fetch_add(1, Ordering::Relaxed);
                        conns.spawn(connection(tcp, port, upstream, quirks, n, c.clone(), store.clone()));
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

impl Drop for PickyRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn now() -> u64 {
    super::unix_now()
}

/// `kinds` and `#x` of a filter, and `since` as storing relays honour it.
fn matches(filter: &Value, ev: &Value) -> bool {
    let kind_ok = filter["kinds"]
        .as_array()
        .is_none_or(|ks| ks.contains(&ev["kind"]));
    let x = ev["tags"]
        .as_array()
        .and_then(|tags| tags.iter().find(|t| t[0] == "x"))
        .map(|t| t[1].clone());
    let x_ok = filter["#x"]
        .as_array()
        .is_none_or(|xs| x.is_some_and(|x| xs.contains(&x)));
    let since_ok = filter["since"]
        .as_u64()
        .is_none_or(|s| ev["created_at"].as_u64().is_some_and(|c| c >= s));
    kind_ok && x_ok && since_ok
}

async fn connection(
    tcp: tokio::net::TcpStream,
    port: u16,
    upstream: u16,
    quirks: Quirks,
    n: u64,
    counters: Arc<Counters>,
    store: Store,
) {
    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let Ok((relay, _)) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{upstream}")).await
    else {
        return;
    };
    let opened = now();
    let (mut client_tx, mut client_rx) = client.split();
    let (mut relay_tx, mut relay_rx) = relay.split();
    let challenge = format!("challenge-{n}-{opened}");
    let mut authed: Option<String> = None;
    if quirks.auth_first {
        let auth = json!(["AUTH", challenge]).to_string();
        if client_tx.send(Message::Text(auth.into())).await.is_err() {
            return;
        }
    }
    let mut limited: HashSet<String> = HashSet::new();
    let drop_at = tokio::time::sleep(quirks.drop_after.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(drop_at);
    loop {
        tokio::select! {
            () = &mut drop_at => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            m = relay_rx.next() => {
                let Some(Ok(m)) = m else { return };
                if client_tx.send(m).await.is_err() {
                    return;
                }
            }
            m = client_rx.next() => {
                let Some(Ok(m)) = m else { return };
                let Message::Text(t) = &m else {
                    if relay_tx.send(m).await.is_err() {
                        return;
                    }
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                let mut replies = Vec::new();
                let mut forward = true;
                match v[0].as_str() {
                    Some("AUTH") => {
                        forward = false;
                        let ok = Event::from_json(v[1].to_string()).ok().filter(|e| {
                            e.verify().is_ok()
                                && e.kind == Kind::Authentication
                                && e.tags.iter().any(|t| {
                                    let s = t.as_slice();
                                    s.first().map(String::as_str) == Some("challenge")
                                        && s.get(1) == Some(&challenge)
                                })
                                && e.tags.iter().any(|t| {
                                    let s = t.as_slice();
                                    s.first().map(String::as_str) == Some("relay")
                                        && s.get(1).is_some_and(|u| u.contains(&port.to_string()))
                                })
                        });
                        let id = v[1]["id"].clone();
                        match ok {
                            Some(e) => {
                                counters.authenticated.fetch_add(1, Ordering::Relaxed);
                                authed = Some(e.pubkey.to_hex());
                                replies.push(json!(["OK", id, true, ""]));
                            }
                            None => replies.push(json!(["OK", id, false, "auth-required: bad AUTH"])),
                        }
                    }
                    Some("REQ") => {
                        let sub = v[1].as_str().unwrap_or_default().to_owned();
                        if quirks.auth_first && authed.is_none() {
                            forward = false;
                            counters.refused_unauthenticated.fetch_add(1, Ordering::Relaxed);
                            replies.push(json!(["CLOSED", sub, "auth-required: authenticate first"]));
                        } else if quirks.rate_limit_first_req && limited.insert(sub.clone()) {
                            forward = false;
                            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                            replies.push(json!(["CLOSED", sub, "rate-limited: slow down"]));
                        } else if quirks.replay {
                            let stored = store.lock().unwrap().clone();
                            for ev in stored.iter().filter(|ev| matches(&v[2], ev)) {
                                counters.replayed.fetch_add(1, Ordering::Relaxed);
                                if ev["created_at"].as_u64().is_some_and(|c| c + 1 < opened) {
                                    counters.replayed_stale.fetch_add(1, Ordering::Relaxed);
                                }
                                replies.push(json!(["EVENT", sub, ev]));
                            }
                        }
                    }
                    Some("EVENT") => {
                        if quirks.auth_first && authed.is_none() {
                            forward = false;
                            counters.refused_unauthenticated.fetch_add(1, Ordering::Relaxed);
                            replies.push(json!(["OK", v[1]["id"], false, "auth-required: authenticate first"]));
                        } else {
                            if authed.as_ref().is_some_and(|k| v[1]["pubkey"].as_str() != Some(k)) {
                                counters.foreign_key_events.fetch_add(1, Ordering::Relaxed);
                            }
                            if quirks.replay {
                                let mut s = store.lock().unwrap();
                                if s.len() >= MAX_STORED {
                                    s.remove(0);
                                }
                                s.push(v[1].clone());
                            }
                        }
                    }
                    _ => {}
                }
                for r in replies {
                    if client_tx.send(Message::Text(r.to_string().into())).await.is_err() {
                        return;
                    }
                }
                if forward && relay_tx.send(m).await.is_err() {
                    return;
                }
            }
        }
    }
}
