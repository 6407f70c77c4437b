//! The WebSocket under nostr-sdk's relay connections, on tokio-tungstenite.
//!
//! nostr-sdk's stock transport reads messages of up to 64 MiB and has no rate bound.
//! This one reads at most `max_message_bytes` per message and takes each relay's budgets
//! on the raw frame, before nostr-sdk parses or verifies anything: events (`["EVENT"`)
//! have one budget, every other message another, so a relay that floods loses its own
//! excess and the `OK`s for our own offers never use up the budget for peers' events.
//!
//! The daemon's own embedded relay ([`super::LocalRelay`]) is reached in process, not
//! over TCP: only that connection is unmetered, and only on it is the fourth element of
//! an `EVENT` (the relay connection that published it) read, from the raw frame, since
//! nostr-sdk's parser drops it ([`Origins`]).

use super::{LocalRelay, PoolConfig, RelayStatus};
use crate::rate::TokenBucket;
use async_wsocket::{ConnectionMode, Message};
use futures_util::{Sink, SinkExt, StreamExt};
use nostr_sdk::Url;
use nostr_sdk::pool::transport::error::TransportError;
use nostr_sdk::pool::transport::websocket::{WebSocketSink, WebSocketStream, WebSocketTransport};
use nostr_sdk::util::BoxedFuture;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Which relay connection published the events the local relay sent lately, by event
/// id: taken by the relay task when nostr-sdk hands it the event. Bounded: what nostr-sdk
/// drops (invalid, duplicate) is pushed out by newer entries.
#[derive(Debug, Default)]
pub(super) struct Origins(Mutex<VecDeque<(String, u64)>>);

const MAX_ORIGINS: usize = 4096;

impl Origins {
    fn put(&self, id: String, origin: u64) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_ORIGINS {
            q.pop_front();
        }
        q.push_back((id, origin));
    }

    /// The origin of event `id`, removed.
    pub(super) fn take(&self, id: &str) -> Option<u64> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let i = q.iter().rposition(|(e, _)| e == id)?;
        q.remove(i).map(|(_, o)| o)
    }
}

/// `["EVENT", sub, {"id": ..}, origin]`: the event's id and the origin, if present.
fn origin_of(frame: &str) -> Option<(String, u64)> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let items: Vec<&RawValue> = serde_json::from_str(frame).ok()?;
    let origin: u64 = serde_json::from_str(items.get(3)?.get()).ok()?;
    let event: Id = serde_json::from_str(items.get(2)?.get()).ok()?;
    Some((event.id, origin))
}

struct Target {
    url: Option<Url>,
    /// The URL as logs show it: credentials masked.
    shown: String,
    raw: String,
    metered: bool,
    status: Arc<RelayStatus>,
    /// Set for the daemon's own relay: how to open the in-process connection.
    local: Option<LocalRelay>,
    origins: Arc<Origins>,
    /// Failed tries since the relay was last open: the first of an outage is a warning,
    /// the retries that follow are debug lines.
    failures: AtomicU64,
    /// Connection tries so far: every one after the first is a reconnect.
    tries: AtomicU64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.shown).finish()
    }
}

#[derive(Debug)]
pub(super) struct Bounded {
    targets: Vec<Target>,
    max_message_bytes: usize,
    connect_timeout: Duration,
    events_per_sec: f64,
    event_burst: f64,
}

impl Bounded {
    pub(super) fn new(
        cfg: &PoolConfig,
        statuses: &[Arc<RelayStatus>],
        origins: &[Arc<Origins>],
    ) -> Self {
        let targets = cfg
            .urls
            .iter()
            .zip(statuses)
            .zip(origins)
            .map(|((url, status), origins)| {
                let local = cfg.local.clone().filter(|l| &l.url == url);
                Target {
                    url: Url::parse(url).ok(),
                    shown: crate::redact::url(url).into_owned(),
                    raw: url.clone(),
                    metered: local.is_none() && !cfg.unmetered.contains(url),
                    status: status.clone(),
                    local,
                    origins: origins.clone(),
                    failures: AtomicU64::new(0),
                    tries: AtomicU64::new(0),
                }
            })
            .collect();
        Self {
            targets,
            max_message_bytes: cfg.max_message_bytes,
            connect_timeout: cfg.connect_timeout,
            events_per_sec: cfg.events_per_sec,
            event_burst: cfg.event_burst,
        }
    }

    fn target(&self, url: &Url) -> Option<&Target> {
        self.targets.iter().find(|t| t.url.as_ref() == Some(url))
    }
}

impl WebSocketTransport for Bounded {
    fn support_ping(&self) -> bool {
        true
    }

    fn connect<'a>(
        &'a self,
        url: &'a Url,
        _mode: &'a ConnectionMode,
        timeout: Duration,
    ) -> BoxedFuture<'a, Result<(WebSocketSink, WebSocketStream), TransportError>> {
        Box::pin(async move {
            let target = self.target(url);
            if let Some(t) = target
                && t.tries.fetch_add(1, Ordering::Relaxed) > 0
            {
                t.status.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let ws_cfg = WebSocketConfig::default()
                .max_message_size(Some(self.max_message_bytes))
                .max_frame_size(Some(self.max_message_bytes));
            let failed = |error: String| {
                let error = match target {
                    Some(t) => crate::redact::scrub(&error, &t.raw),
                    None => error,
                };
                if let Some(t) = target {
                    let failures = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if failures == 1 {
                        tracing::warn!(relay = %t.shown, %error, "relay unreachable; retrying with backoff");
                    } else {
                        tracing::debug!(relay = %t.shown, %error, failures, "relay connect failed");
                    }
                    *t.status
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
                }
                TransportError::backend(std::io::Error::other(error))
            };
            let limit = timeout.min(self.connect_timeout);
            if let Some(local) = target.and_then(|t| t.local.as_ref()) {
                let stream = (local.connect)();
                let connecting =
                    tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_cfg));
                let ws = match tokio::time::timeout(limit, connecting).await {
                    Ok(Ok((ws, _))) => ws,
                    Ok(Err(e)) => return Err(failed(e.to_string())),
                    Err(_) => return Err(failed("connect timed out".into())),
                };
                return Ok(self.wrap(ws, target));
            }
            let connecting =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_cfg), false);
            let ws = match tokio::time::timeout(limit, connecting).await {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => return Err(failed(e.to_string())),
                Err(_) => return Err(failed(format!("no answer in {limit:?}"))),
            };
            Ok(self.wrap(ws, target))
        })
    }
}

impl Bounded {
    /// nostr-sdk's sink and stream over one open WebSocket, with the budgets.
    fn wrap<S>(
        &self,
        ws: tokio_tungstenite::WebSocketStream<S>,
        target: Option<&Target>,
    ) -> (WebSocketSink, WebSocketStream)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if let Some(t) = target {
            t.failures.store(0, Ordering::Relaxed);
        }
        let (tx, rx) = ws.split();
        let sink: WebSocketSink = Box::new(OutSink(tx));
        let metered = target.is_none_or(|t| t.metered);
        let status = target.map(|t| t.status.clone());
        let origins = target
            .filter(|t| t.local.is_some())
            .map(|t| t.origins.clone());
        let mut events = TokenBucket::new(self.events_per_sec, self.event_burst);
        let mut others = TokenBucket::new(self.events_per_sec, self.event_burst);
        let stream = rx.filter_map(move |msg| {
            let out = match msg {
                Ok(WsMessage::Text(t)) => {
                    let is_event = t.as_str().trim_start().starts_with("[\"EVENT\"");
                    let budget = match is_event {
                        true => &mut events,
                        false => &mut others,
                    };
                    if metered && !budget.take() {
                        if let Some(s) = &status {
                            s.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    } else {
                        // Only our own relay says who published an event.
                        if let Some(o) = origins.as_ref().filter(|_| is_event)
                            && let Some((id, origin)) = origin_of(t.as_str())
                        {
                            o.put(id, origin);
                        }
                        Some(Ok(Message::Text(t.as_str().to_owned())))
                    }
                }
                Ok(WsMessage::Binary(b)) => Some(Ok(Message::Binary(b.to_vec()))),
                Ok(WsMessage::Ping(b)) => Some(Ok(Message::Ping(b.to_vec()))),
                Ok(WsMessage::Pong(b)) => Some(Ok(Message::Pong(b.to_vec()))),
                Ok(WsMessage::Close(_)) => Some(Ok(Message::Close(None))),
                Ok(WsMessage::Frame(_)) => None,
                Err(e) => Some(Err(TransportError::backend(e))),
            };
            std::future::ready(out)
        });
        (sink, Box::pin(stream) as WebSocketStream)
    }
}
type WsSink<S> = futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<S>, WsMessage>;

/// nostr-sdk's messages into tungstenite's.
struct OutSink<S>(WsSink<S>);

impl<S> Sink<Message> for OutSink<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready_unpin(cx).map_err(TransportError::backend)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let msg = match item {
            Message::Text(t) => WsMessage::Text(t.into()),
            Message::Binary(b) => WsMessage::Binary(b.into()),
            Message::Ping(b) => WsMessage::Ping(b.into()),
            Message::Pong(b) => WsMessage::Pong(b.into()),
            Message::Close(_) => WsMessage::Close(None),
        };
        self.0
            .start_send_unpin(msg)
            .map_err(TransportError::backend)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_flush_unpin(cx).map_err(TransportError::backend)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_close_unpin(cx).map_err(TransportError::backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_read_from_the_fourth_element() {
        let frame = r#"["EVENT","s",{"id":"ab12","kind":1,"tags":[]},42]"#;
        assert_eq!(origin_of(frame), Some(("ab12".into(), 42)));
        assert_eq!(origin_of(r#"["EVENT","s",{"id":"ab12"}]"#), None);
        assert_eq!(origin_of(r#"["EVENT","s",{"id":"ab12"},"x"]"#), None);
        assert_eq!(origin_of("not json"), None);
        let o = Origins::default();
        for i in 0..(MAX_ORIGINS as u64 + 10) {
            o.put(format!("e{i}"), i);
        }
        assert_eq!(o.take("e0"), None, "the oldest were pushed out");
        assert_eq!(o.take("e20"), Some(20));
        assert_eq!(o.take("e20"), None, "taken once");
    }
}
