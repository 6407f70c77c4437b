//! The cells overlay (§8) glued to the room's links: envelopes out through the
//! links' queues, envelopes in forwarded and unwrapped.

use super::{Links, RoomStats, Writer, valid_peer_id};
use crate::rtc::cells::{self, Mesh};
use crate::rtc::frame::{self, Payload};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The cells overlay as the link tasks and the room handle use it.
pub(super) struct Overlay {
    pub(super) mesh: Arc<Mutex<Mesh>>,
    pub(super) links: Links,
    pub(super) nonces: Arc<Mutex<HashMap<String, u8>>>,
    pub(super) stats: Arc<RoomStats>,
    pub(super) self_id: String,
}

impl Overlay {
    fn connected(&self) -> Vec<String> {
        super::linked_ids(&self.links)
    }

    /// Queues envelopes to their peers; a peer whose queue is full misses it (the
    /// mesh delivers through others, and the sync layer resyncs on rejoin).
    pub(super) fn transmit(&self, out: Vec<cells::Outbound>) {
        for o in out {
            let nonce = {
                let mut n = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
                let e = n.entry(o.channel.clone()).or_insert(0);
                let cur = *e;
                *e = e.wrapping_add(1);
                cur
            };
            let Ok(frames) = frame::encode(&o.channel, nonce, Payload::Text(&o.envelope), None)
            else {
                continue;
            };
            let writers: Vec<Writer> = {
                let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
                o.to.iter().filter_map(|t| links.get(t).cloned()).collect()
            };
            for w in writers {
                self.stats
                    .cell_envelopes_out
                    .fetch_add(1, Ordering::Relaxed);
                for f in &frames {
                    self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_out
                        .fetch_add(f.len() as u64, Ordering::Relaxed);
                    w.info
                        .bytes_out
                        .fetch_add(f.len() as u64, Ordering::Relaxed);
                    if w.frames.try_send(f.clone()).is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// An envelope on a cell channel: forwards it, and returns what it carries for
    /// `syncGraph` and the like as a message from its origin.
    pub(super) fn receive(&self, message: &frame::Message) -> Option<(String, frame::Message)> {
        self.stats.cell_envelopes_in.fetch_add(1, Ordering::Relaxed);
        let text = std::str::from_utf8(&message.data).ok()?;
        let connected = self.connected();
        let now_ms = crate::persist::unix_ms();
        let handled = self.mesh.lock().unwrap_or_else(|p| p.into_inner()).receive(
            &message.channel,
            text,
            &connected,
            now_ms,
        );
        self.transmit(handled.send);
        let (data, origin) = handled.deliver?;
        let channel = data.get("_ch").and_then(Value::as_str)?.to_owned();
        if let Some(t) = data.get("_t").and_then(Value::as_array)
            && !t.iter().any(|x| x.as_str() == Some(self.self_id.as_str()))
        {
            return None;
        }
        if channel.len() > frame::NAME_LEN || channel.starts_with("@_") || !valid_peer_id(&origin) {
            return None;
        }
        let d = data.get("_d")?;
        let (flags, bytes) = match d {
            Value::String(s) => (frame::LAST, s.clone().into_bytes()),
            other => (frame::LAST | frame::JSON, other.to_string().into_bytes()),
        };
        self.stats.cell_deliveries.fetch_add(1, Ordering::Relaxed);
        Some((
            origin,
            frame::Message {
                channel,
                flags,
                data: bytes,
                meta: None,
            },
        ))
    }
}
