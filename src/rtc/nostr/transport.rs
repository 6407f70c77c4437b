//! The WebSocket under nostr-sdk's relay connections, on tokio-tungstenite.
//!
//! nostr-sdk's stock transport reads messages of up to 64 MiB and has no rate bound.
//! This one reads at most `max_message_bytes` per message and takes each relay's budgets
//! on the raw frame, before nostr-sdk parses or verifies anything: events (`["EVENT"`)
//! have one budget, every other message another, so a relay that floods loses its own
//! excess and the `OK`s for our own offers never use up the budget for peers' events.

use super::{PoolConfig, RelayStatus};
use crate::rate::TokenBucket;
use async_wsocket::{ConnectionMode, Message};
use futures_util::{Sink, SinkExt, StreamExt};
use nostr_sdk::Url;
use nostr_sdk::pool::transport::error::TransportError;
use nostr_sdk::pool::transport::websocket::{WebSocketSink, WebSocketStream, WebSocketTransport};
use nostr_sdk::util::BoxedFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug)]
struct Target {
    url: Option<Url>,
    name: String,
    metered: bool,
    status: Arc<RelayStatus>,
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
    pub(super) fn new(cfg: &PoolConfig, statuses: &[Arc<RelayStatus>]) -> Self {
        let targets = cfg
            .urls
            .iter()
            .zip(statuses)
            .map(|(url, status)| Target {
                url: Url::parse(url).ok(),
                name: url.clone(),
                metered: !cfg.unmetered.contains(url),
                status: status.clone(),
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
            let ws_cfg = WebSocketConfig::default()
                .max_message_size(Some(self.max_message_bytes))
                .max_frame_size(Some(self.max_message_bytes));
            let connecting =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_cfg), false);
            let failed = |error: String| {
                if let Some(t) = target {
                    let mut last = t
                        .status
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    // Once per distinct error, not at every retry.
                    if last.as_deref() != Some(error.as_str()) {
                        tracing::warn!(relay = %t.name, %error, "relay connect failed; retrying");
                    }
                    *last = Some(error.clone());
                }
                TransportError::backend(std::io::Error::other(error))
            };
            let ws = match tokio::time::timeout(timeout.min(self.connect_timeout), connecting).await
            {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => return Err(failed(e.to_string())),
                Err(_) => return Err(failed("connect timed out".into())),
            };
            let (tx, rx) = ws.split();
            let sink: WebSocketSink = Box::new(OutSink(tx));
            let metered = target.is_none_or(|t| t.metered);
            let status = target.map(|t| t.status.clone());
            let mut events = TokenBucket::new(self.events_per_sec, self.event_burst);
            let mut others = TokenBucket::new(self.events_per_sec, self.event_burst);
            let stream = rx.filter_map(move |msg| {
                let out = match msg {
                    Ok(WsMessage::Text(t)) => {
                        let budget = match t.as_str().trim_start().starts_with("[\"EVENT\"") {
                            true => &mut events,
                            false => &mut others,
                        };
                        if metered && !budget.take() {
                            if let Some(s) = &status {
                                s.rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            None
                        } else {
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
            Ok((sink, Box::pin(stream) as WebSocketStream))
        })
    }
}

type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    WsMessage,
>;

/// nostr-sdk's messages into tungstenite's.
struct OutSink(WsSink);

impl Sink<Message> for OutSink {
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
