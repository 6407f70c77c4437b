//! A GenosRTC room: Nostr signalling (announce, offer, answer, glare, bye) over the
//! relay pool, one WebRTC link per remote peer, frames with keepalive, and the events
//! the sync layer uses (§4, §6, §7).
//!
//! One actor task owns the signalling state. Each link has its own task that
//! reassembles frames, answers pings at once, runs the keepalive, and writes through a
//! bounded queue: a peer that cannot keep up is dropped, never waited for.

mod actor;
mod config;
mod link;
mod overlay;
mod peers;
mod stats;

pub use config::{
    DEFAULT_BYTES_BURST, DEFAULT_BYTES_RATE, DEFAULT_DIAL_WAIT, DEFAULT_MAX_PEERS,
    DEFAULT_MSG_BURST, DEFAULT_MSG_RATE, PENDING_PER_CONNECTION, PENDING_PER_KEY, PeerLimits,
    RoomConfig,
};
pub use stats::RoomStats;

use super::cells::{self, Mesh};
use super::frame::{self, Payload};
use super::nostr::{Inbound, RelayPool, topic_filter};
use super::peer::Peer;
use super::seal::SealKey;
use super::topic;
use crate::rate::LogEvery;
use actor::Actor;
use overlay::Overlay;
use peers::PeerTables;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A single frame that cannot be handed to SCTP within this long marks the peer as stuck.
const SEND_STALL: Duration = Duration::from_secs(10);

/// How often [`Room::wait_delivered`] looks at what the remote has acknowledged.
const DELIVERY_POLL: Duration = Duration::from_millis(3);

/// Messages a link keeps while it waits to be attached (a handful arrive in practice).
const EARLY_MESSAGES: usize = 64;

/// A limit refused or dropped this often is logged once, with how many went unlogged.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

const ALPHABET: &[u8; 62] = b"0123456789AaBbCcDdEeFfGgHhIiJjKkLlMmNnOoPpQqRrSsTtUuVvWwXxYyZz";

/// A fresh 20-character peer id, as GenosRTC makes them.
pub(crate) fn new_peer_id() -> String {
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter()
        .map(|x| ALPHABET[(*x % 62) as usize] as char)
        .collect()
}

#[derive(Debug)]
pub enum RoomEvent {
    Joined {
        peer: String,
        kind: Option<String>,
    },
    Left {
        peer: String,
    },
    Message {
        peer: String,
        message: frame::Message,
    },
}

/// A link's writer, shared by the room handle and the link task.
#[derive(Clone)]
struct Writer {
    frames: mpsc::Sender<Vec<u8>>,
    /// Set while this link is its peer's connected one: only then do its messages count.
    attached: Arc<AtomicBool>,
    /// Woken when `attached` is set, so messages that came first are handed on.
    attach: Arc<tokio::sync::Notify>,
    /// Set when the peer is dropped for being too slow; the link task then ends.
    dropped: Arc<AtomicBool>,
    /// The link's connection, to ask what the remote has acknowledged.
    peer: Arc<Peer>,
    /// Bytes and age of this link, for the console's peer table.
    info: Arc<LinkInfo>,
}

/// Per-link counters for [`Room::peer_table`].
#[derive(Debug)]
struct LinkInfo {
    since: std::time::SystemTime,
    kind: std::sync::OnceLock<String>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// One connected peer, as the operator's console shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PeerRow {
    pub id: String,
    /// `browser` or `superpeer` (what its announce said), or null.
    pub kind: Option<String>,
    /// Unix milliseconds when its link was made.
    pub since: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Its cell, in cells mode.
    pub cell: Option<usize>,
}

impl Writer {
    fn same(&self, other: &Writer) -> bool {
        Arc::ptr_eq(&self.attached, &other.attached)
    }
}

/// What became of everything queued for a peer, from [`Room::wait_delivered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The peer's SCTP acknowledged every byte: it holds every message we queued.
    Delivered,
    /// The link closed or was replaced first.
    Gone,
    /// Bytes stayed unacknowledged, with no progress for the whole stall window.
    Stalled { unacknowledged: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error("the peer is no longer connected")]
    Gone,
}

/// Connected peers' writers, by peer id.
type Links = Arc<Mutex<HashMap<String, Writer>>>;

/// The ids of the peers with a link now.
fn linked_ids(links: &Links) -> Vec<String> {
    links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// The handle the rest of the daemon holds.
pub struct Room {
    pub self_id: String,
    /// The x-only public key (hex) our signalling events are signed with.
    pub nostr_pubkey: String,
    links: Links,
    nonces: Arc<Mutex<HashMap<String, u8>>>,
    stats: Arc<RoomStats>,
    /// The cells overlay, when on.
    mesh: Option<Arc<Mutex<Mesh>>>,
    leave: mpsc::Sender<()>,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Room {
    /// Joins the room over `pool`; `inbound` is the pool's event stream.
    pub fn join(
        cfg: RoomConfig,
        pool: Arc<RelayPool>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> (Self, mpsc::Receiver<RoomEvent>) {
        let self_id = new_peer_id();
        let (events_tx, events_rx) = mpsc::channel(4096);
        let (leave_tx, leave_rx) = mpsc::channel(1);
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        let links: Links = Arc::default();
        let stats = Arc::new(RoomStats::default());
        let root = topic::root_topic(&cfg.app_id, &cfg.room_id);
        let mine = topic::self_topic(&cfg.app_id, &cfg.room_id, &self_id);
        let mesh = cfg
            .cells
            .map(|size| Arc::new(Mutex::new(Mesh::new(&self_id, size))));
        let nonces: Arc<Mutex<HashMap<String, u8>>> = Arc::default();
        let overlay = mesh.clone().map(|mesh| {
            Arc::new(Overlay {
                mesh,
                links: links.clone(),
                nonces: nonces.clone(),
                stats: stats.clone(),
                self_id: self_id.clone(),
            })
        });
        // The pool's key signs our events and answers relays' NIP-42 challenges.
        let nostr_key = pool.keys().clone();
        let nostr_pubkey = nostr_key.public_key().to_hex();
        let actor = Actor {
            overlay: overlay.clone(),
            seal: SealKey::derive(&cfg.password, &cfg.app_id, &cfg.room_id),
            nostr_key,
            self_id: self_id.clone(),
            root_topic: root.clone(),
            self_topic: mine.clone(),
            cfg,
            pool: pool.clone(),
            events: events_tx,
            internal: internal_tx,
            links: links.clone(),
            writers: HashMap::new(),
            stats: stats.clone(),
            peers: PeerTables::default(),
            refusal_log: LogEvery::new(LIMIT_LOG_EVERY),
            types: HashMap::new(),
            invited: HashSet::new(),
        };
        if !actor.cfg.only_superpeers {
            pool.subscribe(
                &sub_id("r", &root),
                topic_filter(topic::kind_of(&root), &root),
            );
        }
        pool.subscribe(
            &sub_id("s", &mine),
            topic_filter(topic::kind_of(&mine), &mine),
        );
        let done = tokio::spawn(actor.run(inbound, internal_rx, leave_rx));
        (
            Self {
                self_id,
                nostr_pubkey,
                links,
                nonces,
                stats,
                mesh,
                leave: leave_tx,
                done: Mutex::new(Some(done)),
            },
            events_rx,
        )
    }

    /// Sends one message on `channel`, to one peer or to every connected peer. A peer
    /// whose queue is full is dropped rather than waited for.
    pub fn send(
        &self,
        channel: &str,
        payload: Payload,
        to: Option<&str>,
    ) -> Result<(), frame::FrameError> {
        let frames = frame::encode(channel, self.next_nonce(channel), payload, None)?;
        let targets: Vec<(String, Writer)> = {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links
                .iter()
                .filter(|(id, _)| to.is_none_or(|t| t == id.as_str()))
                .map(|(id, w)| (id.clone(), w.clone()))
                .collect()
        };
        for (id, w) in targets {
            for f in &frames {
                self.count_out(f);
                w.info
                    .bytes_out
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                if w.frames.try_send(f.clone()).is_err() {
                    self.drop_slow(&id, &w);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Frames one message with the channel's next nonce, for [`Room::send_frames_to`].
    /// Compressing a large message takes milliseconds: callers may do it off the runtime.
    pub fn encode(
        &self,
        channel: &str,
        payload: Payload,
    ) -> Result<Vec<Vec<u8>>, frame::FrameError> {
        frame::encode(channel, self.next_nonce(channel), payload, None)
    }

    /// Queues `frames` for `peer`, waiting while its queue is full. A peer whose queue
    /// does not move for SEND_STALL is dropped.
    pub async fn send_frames_to(&self, peer: &str, frames: Vec<Vec<u8>>) -> Result<(), SendError> {
        let writer = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
            .ok_or(SendError::Gone)?;
        for f in frames {
            self.count_out(&f);
            writer
                .info
                .bytes_out
                .fetch_add(f.len() as u64, Ordering::Relaxed);
            match writer.frames.send_timeout(f, SEND_STALL).await {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    self.drop_slow(peer, &writer);
                    return Err(SendError::Gone);
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(SendError::Gone),
            }
        }
        Ok(())
    }

    /// Waits until the remote has acknowledged everything queued for `peer` on its
    /// current link: the link's queue is empty and its channel holds no unacknowledged
    /// byte. Gives up when the link goes, or when the unacknowledged count has not
    /// fallen for `stall` (SCTP is then waiting out retransmission timeouts).
    pub(crate) async fn wait_delivered(&self, peer: &str, stall: Duration) -> Delivery {
        let Some(writer) = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
        else {
            return Delivery::Gone;
        };
        let (mut least, mut progress_at) = (usize::MAX, Instant::now());
        // Two empty readings in a row: a frame the link task has taken off the queue
        // and not yet handed to the channel is counted by neither.
        let mut empty_once = false;
        loop {
            if writer.dropped.load(Ordering::Relaxed) || !writer.attached.load(Ordering::Relaxed) {
                return Delivery::Gone;
            }
            let queued = writer.frames.max_capacity() - writer.frames.capacity();
            let Some(unacked) = writer.peer.unacknowledged().await else {
                return Delivery::Gone;
            };
            if queued == 0 && unacked == 0 {
                if empty_once {
                    return Delivery::Delivered;
                }
                empty_once = true;
            } else {
                empty_once = false;
            }
            let pending = unacked + queued * frame::MAX_FRAME_LEN;
            if pending < least {
                (least, progress_at) = (pending, Instant::now());
            } else if progress_at.elapsed() >= stall {
                return Delivery::Stalled {
                    unacknowledged: pending,
                };
            }
            tokio::time::sleep(DELIVERY_POLL).await;
        }
    }

    /// Whether cells mode is on.
    pub fn cells(&self) -> bool {
        self.mesh.is_some()
    }

    /// Sends a message to a peer: directly when connected (with `frames` if given,
    /// already encoded for `channel`), else, in cells mode, through the mesh addressed
    /// to it (`_t`), as GenosRTC's channel wrapper does.
    pub(crate) async fn send_message_to(
        &self,
        peer: &str,
        channel: &str,
        json_text: &str,
        frames: Option<Vec<Vec<u8>>>,
    ) -> Result<(), SendError> {
        let direct = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(peer);
        if direct || self.mesh.is_none() {
            let frames = match frames {
                Some(f) => f,
                None => self.encode(channel, Payload::Json(json_text))?,
            };
            return self.send_frames_to(peer, frames).await;
        }
        self.mesh_send(channel, json_text, Some(peer))
    }

    /// Cells mode: `mesh.send({_ch, _d, _t})` to the whole room (or to `to`).
    pub(crate) fn mesh_send(
        &self,
        channel: &str,
        json_text: &str,
        to: Option<&str>,
    ) -> Result<(), SendError> {
        let Some(mesh) = &self.mesh else {
            return Err(SendError::Gone);
        };
        let d: Value = serde_json::from_str(json_text).map_err(|_| SendError::Gone)?;
        let mut data = json!({"_ch": channel, "_d": d});
        if let Some(t) = to {
            data["_t"] = json!([t]);
        }
        let connected = self.peers();
        let out = mesh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(data, &connected);
        let overlay = Overlay {
            mesh: mesh.clone(),
            links: self.links.clone(),
            nonces: self.nonces.clone(),
            stats: self.stats.clone(),
            self_id: self.self_id.clone(),
        };
        overlay.transmit(out);
        Ok(())
    }

    /// The sealed topology, for /health and tests: (cell, cells, is bridge, roster size).
    pub fn cell_state(&self) -> Option<(usize, usize, bool, usize)> {
        let mesh = self
            .mesh
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let s = &mesh.sealed;
        Some((s.my_cell, s.cells, s.is_bridge(), s.roster.len()))
    }

    /// Drops a connected peer that cannot keep up; it resyncs when it comes back.
    pub(crate) fn drop_peer(&self, peer: &str) {
        let writer = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned();
        if let Some(w) = writer {
            self.drop_slow(peer, &w);
        }
    }

    /// Gives the frames of a message encoded earlier for `channel` the channel's next
    /// nonce, as [`Room::encode`] would.
    pub(crate) fn restamp(&self, channel: &str, frames: &mut [Vec<u8>]) {
        frame::set_nonce(frames, self.next_nonce(channel));
    }

    fn next_nonce(&self, channel: &str) -> u8 {
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let n = nonces.entry(channel.to_owned()).or_insert(0);
        let current = *n;
        *n = n.wrapping_add(1);
        current
    }

    fn count_out(&self, frame: &[u8]) {
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_out
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    }

    fn drop_slow(&self, peer: &str, w: &Writer) {
        self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, "peer cannot keep up; dropping it");
        w.dropped.store(true, Ordering::Relaxed);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(peer).is_some_and(|cur| cur.same(w)) {
            links.remove(peer);
        }
    }

    /// Connected peers with their link's age and bytes, for the operator's console.
    pub(crate) fn peer_table(&self) -> Vec<PeerRow> {
        let cells = self.cell_state().map(|(_, cells, _, _)| cells);
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .iter()
            .map(|(id, w)| PeerRow {
                id: id.clone(),
                kind: w.info.kind.get().cloned(),
                since: w
                    .info
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                bytes_in: w.info.bytes_in.load(Ordering::Relaxed),
                bytes_out: w.info.bytes_out.load(Ordering::Relaxed),
                cell: cells.map(|n| cells::cell_of(id, n)),
            })
            .collect()
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<String> {
        linked_ids(&self.links)
    }

    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    pub(crate) fn shared_stats(&self) -> Arc<RoomStats> {
        self.stats.clone()
    }

    /// Says `@_leave` to every peer, `bye` on every relay, and closes every link.
    pub async fn leave(&self) {
        let _ = self.leave.send(()).await;
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
        }
    }
}

fn sub_id(prefix: &str, topic: &str) -> String {
    let mut id = format!("{prefix}{topic}");
    id.truncate(64);
    id
}
fn valid_peer_id(x: &str) -> bool {
    (1..=64).contains(&x.len())
        && x.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
