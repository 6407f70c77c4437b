//! A GenosRTC room: Nostr signalling (announce, offer, answer, glare, bye) over the
//! relay pool, one WebRTC link per remote peer, frames with keepalive, and the events
//! the sync layer uses (§4, §6, §7).
//!
//! One actor task owns the signalling state. Each link has its own task that
//! reassembles frames, answers pings at once, runs the keepalive, and writes through a
//! bounded queue: a peer that cannot keep up is dropped, never waited for.

use super::cells::{self, Mesh};
use super::frame::{self, Limits, Payload, Reassembler};
use super::nostr::{Inbound, RelayPool, topic_filter};
use super::peer::{Peer, PeerConfig, PeerEvent};
use super::seal::SealKey;
use super::topic;
use crate::rate::{LogEvery, TokenBucket};
use nostr_sdk::prelude::{
    Alphabet, Event, EventBuilder, Keys, Kind, SingleLetterTag, Tag, TagKind,
};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
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

/// Links being built (not open yet) at once for one Nostr key, and for one connection
/// to the daemon's own relay. A browser has one key and one peer id per room, and at
/// most one link being built per relay with a peer; anything past these is a replay.
pub const PENDING_PER_KEY: usize = 3;
pub const PENDING_PER_CONNECTION: usize = 4;

const ALPHABET: &[u8; 62] = b"0123456789AaBbCcDdEeFfGgHhIiJjKkLlMmNnOoPpQqRrSsTtUuVvWwXxYyZz";

/// A fresh 20-character peer id, as GenosRTC makes them.
pub fn new_peer_id() -> String {
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter()
        .map(|x| ALPHABET[(*x % 62) as usize] as char)
        .collect()
}

#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub app_id: String,
    pub room_id: String,
    pub password: String,
    /// `"superpeer"` for the daemon; browsers send none.
    pub peer_type: Option<String>,
    pub peer: PeerConfig,
    pub announce_every: Duration,
    pub keepalive_tick: Duration,
    pub ping_after_idle: Duration,
    pub ping_timeout: Duration,
    pub frames: Limits,
    /// Frames queued for one peer before it counts as too slow and is dropped.
    pub send_queue: usize,
    pub dial_timeout: Duration,
    /// A dial whose offer got no answer this long is abandoned, so one signalling
    /// message lost by a relay costs seconds, not the whole dial timeout; the next
    /// announce dials again.
    pub answer_timeout: Duration,
    pub max_pending_dials: usize,
    /// Answer `@_ping`. Only a test turns this off, to play a peer that went deaf.
    pub answer_pings: bool,
    /// Cells mode (§8) with this cell size; `None` is the full mesh.
    pub cells: Option<usize>,
    /// How many peers, and how much from each, the room takes.
    pub limits: PeerLimits,
    /// Link only with superpeers: never dial on announces (they carry no `type`), and
    /// answer only offers marked `type:"superpeer"`; nor listen on the root topic, so
    /// other members' announces cost nothing. The load generator's peers use it to form
    /// a star around the daemon instead of a full mesh; browsers never do this.
    pub only_superpeers: bool,
    /// Peers dialled at every announce tick while not linked, without hearing them
    /// first: announces carry no `type`, so a star peer (see `only_superpeers`) that
    /// knows the daemon's id dials it as a browser would on its announce.
    pub dial: Vec<String>,
}

/// The default MAX_PEERS.
pub const DEFAULT_MAX_PEERS: usize = 256;
/// The default PEER_MSG_RATE and PEER_MSG_BURST.
pub const DEFAULT_MSG_RATE: u64 = 1000;
pub const DEFAULT_MSG_BURST: u64 = 5000;
/// The default PEER_BYTES_RATE and PEER_BYTES_BURST.
pub const DEFAULT_BYTES_RATE: u64 = 8 << 20;
pub const DEFAULT_BYTES_BURST: u64 = 128 << 20;

/// Bounds on peers (MAX_PEERS, PEER_MSG_RATE/BURST, PEER_BYTES_RATE/BURST).
///
/// A message is a whole reassembled message or a control frame (`@_ping`, `@_pong`,
/// `@_leave`). Bytes are every frame as received, plus the inflated size of each
/// compressed message. A peer over either rate is dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerLimits {
    /// Peers linked or being linked at once; others are not answered or dialled.
    pub max_peers: usize,
    pub msg_rate: f64,
    pub msg_burst: f64,
    pub bytes_rate: f64,
    pub bytes_burst: f64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_peers: DEFAULT_MAX_PEERS,
            msg_rate: DEFAULT_MSG_RATE as f64,
            msg_burst: DEFAULT_MSG_BURST as f64,
            bytes_rate: DEFAULT_BYTES_RATE as f64,
            bytes_burst: DEFAULT_BYTES_BURST as f64,
        }
    }
}

impl RoomConfig {
    pub fn new(room_id: &str) -> Self {
        Self {
            app_id: topic::APP_ID.into(),
            room_id: room_id.into(),
            password: String::new(),
            peer_type: Some("superpeer".into()),
            peer: PeerConfig::default(),
            announce_every: Duration::from_millis(2500),
            keepalive_tick: Duration::from_secs(5),
            ping_after_idle: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
            frames: Limits::default(),
            send_queue: 4096,
            dial_timeout: Duration::from_millis(57_333),
            answer_timeout: Duration::from_secs(10),
            max_pending_dials: 10,
            answer_pings: true,
            cells: None,
            limits: PeerLimits::default(),
            only_superpeers: false,
            dial: Vec::new(),
        }
    }
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

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct RoomStats {
    pub signals_in: AtomicU64,
    pub signals_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Incomplete messages held in the links' reassembly buffers right now (a gauge).
    pub partial_messages: AtomicU64,
    pub seal_failures: AtomicU64,
    /// Cell envelopes received while cells mode is off (CELLS mismatch).
    pub cell_frames_unexpected: AtomicU64,
    pub cell_envelopes_in: AtomicU64,
    pub cell_envelopes_out: AtomicU64,
    pub cell_deliveries: AtomicU64,
    pub cell_seals: AtomicU64,
    pub cell_pruned: AtomicU64,
    /// Peers not answered or dialled because MAX_PEERS were linked or being linked.
    pub refused_max_peers: AtomicU64,
    /// Peers dropped for sending more than PEER_MSG_RATE or PEER_BYTES_RATE.
    pub dropped_msg_rate: AtomicU64,
    pub dropped_bytes_rate: AtomicU64,
    /// Messages dropped for passing MAX_MESSAGE_BYTES.
    pub dropped_message_bytes: AtomicU64,
    /// Offers and announces not acted on: their key or relay connection already had
    /// PENDING_PER_KEY or PENDING_PER_CONNECTION links being built.
    pub refused_pending_source: AtomicU64,
    /// Links being built that were closed to make room for a newcomer: unopened links
    /// may hold at most half of MAX_PEERS, and never a slot a link that opens needs.
    pub evicted_pending: AtomicU64,
    /// Signals naming a peer whose link another Nostr key made (replays), ignored.
    pub impostor_signals: AtomicU64,
    /// Links being built right now (a gauge).
    pub pending_links: AtomicU64,
}

impl RoomStats {
    /// `(limit, times exceeded)` for `genosdb_limit_exceeded_total{limit}`.
    pub fn limits_exceeded(&self) -> [(&'static str, u64); 6] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("max_peers", load(&self.refused_max_peers)),
            ("pending_per_source", load(&self.refused_pending_source)),
            ("pending_links", load(&self.evicted_pending)),
            ("peer_msg_rate", load(&self.dropped_msg_rate)),
            ("peer_bytes_rate", load(&self.dropped_bytes_rate)),
            ("max_message_bytes", load(&self.dropped_message_bytes)),
        ]
    }
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
pub struct PeerRow {
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
pub enum Delivery {
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
            pending: HashMap::new(),
            connected: HashMap::new(),
            answering: HashMap::new(),
            refusal_log: LogEvery::new(LIMIT_LOG_EVERY),
            types: HashMap::new(),
            next_link: 0,
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
    pub async fn wait_delivered(&self, peer: &str, stall: Duration) -> Delivery {
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
    pub async fn send_message_to(
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
    pub fn mesh_send(
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
    pub fn drop_peer(&self, peer: &str) {
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
    pub fn restamp(&self, channel: &str, frames: &mut [Vec<u8>]) {
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
    pub fn peer_table(&self) -> Vec<PeerRow> {
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
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    pub fn shared_stats(&self) -> Arc<RoomStats> {
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

/// The cells overlay as the link tasks and the room handle use it.
struct Overlay {
    mesh: Arc<Mutex<Mesh>>,
    links: Links,
    nonces: Arc<Mutex<HashMap<String, u8>>>,
    stats: Arc<RoomStats>,
    self_id: String,
}

impl Overlay {
    fn connected(&self) -> Vec<String> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Queues envelopes to their peers; a peer whose queue is full misses it (the
    /// mesh delivers through others, and the sync layer resyncs on rejoin).
    fn transmit(&self, out: Vec<cells::Outbound>) {
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
    fn receive(&self, message: &frame::Message) -> Option<(String, frame::Message)> {
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

/// Messages from link and dial tasks to the actor.
enum Internal {
    /// A dial produced its offer (or failed).
    Dialed {
        peer: String,
        relay: usize,
        link: u64,
        result: Result<(Arc<Peer>, mpsc::Receiver<PeerEvent>, String), String>,
    },
    /// An answer was produced for a remote offer.
    Answered {
        peer: String,
        relay: usize,
        link: u64,
        result: Result<(Arc<Peer>, mpsc::Receiver<PeerEvent>, String), String>,
    },
    Opened {
        peer: String,
        link: u64,
    },
    Closed {
        peer: String,
        link: u64,
    },
}

/// Who sent a signal: the Nostr key that signed it and, on the daemon's own relay,
/// the relay connection that published it (relay index, connection id).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    pubkey: String,
    conn: Option<(usize, u64)>,
}

/// An answer being built (a PeerConnection exists).
struct Answering {
    peer: String,
    source: Option<Source>,
    since: Instant,
}

struct Pending {
    link: u64,
    relay: usize,
    peer: Option<Arc<Peer>>,
    since: Instant,
    /// The signal that made it (None: a dial of `cfg.dial`).
    source: Option<Source>,
    /// Our own offer (a dial), rather than an answer to theirs.
    ours: bool,
    /// Both descriptions are in place (always so for links we answered).
    answered: bool,
}

struct Connected {
    link: u64,
    peer: Arc<Peer>,
    since: Instant,
    /// The Nostr key that made the link: only it speaks for this peer while linked.
    pubkey: Option<String>,
}

struct Actor {
    overlay: Option<Arc<Overlay>>,
    cfg: RoomConfig,
    seal: SealKey,
    nostr_key: Keys,
    self_id: String,
    root_topic: String,
    self_topic: String,
    pool: Arc<RelayPool>,
    events: mpsc::Sender<RoomEvent>,
    internal: mpsc::Sender<Internal>,
    links: Links,
    /// Every link's writer, connected or not.
    writers: HashMap<u64, Writer>,
    stats: Arc<RoomStats>,
    /// Dials and answers not yet open, by peer.
    pending: HashMap<String, Vec<Pending>>,
    connected: HashMap<String, Connected>,
    /// Answers being built (a PeerConnection exists), by link: they count toward
    /// MAX_PEERS before they reach `pending`.
    answering: HashMap<u64, Answering>,
    /// MAX_PEERS refusals are logged at most once per LIMIT_LOG_EVERY.
    refusal_log: LogEvery,
    types: HashMap<String, String>,
    next_link: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut internal: mpsc::Receiver<Internal>,
        mut leave: mpsc::Receiver<()>,
    ) {
        let mut announce = tokio::time::interval(self.cfg.announce_every);
        let mut reap = tokio::time::interval(Duration::from_secs(5));
        let mut cells_tick = tokio::time::interval(cells::TICK);
        loop {
            tokio::select! {
                _ = announce.tick() => {
                    self.announce(None);
                    self.dial_known(0);
                }
                _ = reap.tick() => self.reap_dials(),
                _ = cells_tick.tick(), if self.overlay.is_some() => self.reseal().await,
                msg = inbound.recv() => match msg {
                    Some(Inbound::Connected { relay }) => {
                        self.announce(Some(relay));
                        self.dial_known(relay);
                    }
                    Some(Inbound::Disconnected { .. }) => {}
                    Some(Inbound::Event { relay, event, origin, .. }) => self.on_signal(relay, &event, origin),
                    None => break,
                },
                Some(msg) = internal.recv() => self.on_internal(msg).await,
                _ = leave.recv() => {
                    self.leave().await;
                    return;
                }
            }
            let building =
                self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>();
            self.stats
                .pending_links
                .store(building as u64, Ordering::Relaxed);
        }
    }

    fn publish(&self, topic: &str, content: Value, relay: Option<usize>) {
        let ev = EventBuilder::new(Kind::Custom(topic::kind_of(topic)), content.to_string())
            .tag(Tag::custom(
                TagKind::SingleLetter(SingleLetterTag::lowercase(Alphabet::X)),
                [topic],
            ))
            .sign_with_keys(&self.nostr_key);
        let Ok(ev) = ev else {
            tracing::warn!("could not sign a signalling event");
            return;
        };
        self.stats.signals_out.fetch_add(1, Ordering::Relaxed);
        self.pool.publish(&ev, relay);
    }

    fn announce(&self, relay: Option<usize>) {
        self.publish(
            &self.root_topic.clone(),
            json!({"peerId": self.self_id}),
            relay,
        );
    }

    /// Sends our sealed offer or answer to `x`'s own topic, on the relay the exchange
    /// started on.
    fn send_description(&self, x: &str, relay: usize, kind: &str, sdp: &str) {
        let mut content = json!({"peerId": self.self_id});
        content[kind] = json!({"type": kind, "sdp": self.seal.seal(sdp)});
        let content = self.with_type(content);
        let to = topic::self_topic(&self.cfg.app_id, &self.cfg.room_id, x);
        tracing::debug!(peer = %x, relay, kind, "sending our description");
        self.publish(&to, content, Some(relay));
    }

    fn with_type(&self, mut content: Value) -> Value {
        if let Some(t) = &self.cfg.peer_type {
            content["type"] = json!(t);
        }
        content
    }

    fn on_signal(&mut self, relay: usize, event: &Event, origin: Option<u64>) {
        self.stats.signals_in.fetch_add(1, Ordering::Relaxed);
        let content = event.content.as_str();
        let topic = event
            .tags
            .find(TagKind::SingleLetter(SingleLetterTag::lowercase(
                Alphabet::X,
            )))
            .and_then(|t| t.content());
        if !topic.is_some_and(|t| t == self.root_topic || t == self.self_topic) {
            return;
        }
        let Ok(m) = serde_json::from_str::<Value>(content) else {
            return;
        };
        let Some(x) = m
            .get("peerId")
            .and_then(Value::as_str)
            .filter(|x| valid_peer_id(x))
        else {
            return;
        };
        if x == self.self_id || self.ignores(&m) {
            return;
        }
        let x = x.to_owned();
        let source = Source {
            pubkey: event.pubkey.to_hex(),
            conn: origin.map(|o| (relay, o)),
        };
        if m.get("bye")
            .is_some_and(|b| !b.is_null() && b != &json!(false))
        {
            // The peer id is not signed by anything the peer owns: while `x` has a
            // link, only the Nostr key that made it may say goodbye for it.
            if self.owner_of(&x).is_some_and(|k| k != source.pubkey) {
                self.stats.impostor_signals.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.types.remove(&x);
            if let Some(o) = &self.overlay {
                o.mesh.lock().unwrap_or_else(|p| p.into_inner()).bye(&x);
            }
            return;
        }
        if let Some(o) = &self.overlay {
            let mut mesh = o.mesh.lock().unwrap_or_else(|p| p.into_inner());
            mesh.heard(&x, Instant::now());
            // §8.7: only peers the topology admits are dialled or answered.
            if !self.connected.contains_key(&x) && !mesh.admit(&x, Instant::now()) {
                return;
            }
        }
        let offer = m
            .get("offer")
            .and_then(|o| o.get("sdp"))
            .and_then(Value::as_str);
        let answer = m
            .get("answer")
            .and_then(|o| o.get("sdp"))
            .and_then(Value::as_str);
        // An answer only ever completes a dial of ours, which already counts. An offer
        // or an announce may make a new link: not past its sender's share, and, for a
        // new peer, not past MAX_PEERS; only an offer closes a link being built to make
        // room (announces are too cheap to forge).
        if answer.is_none() {
            if self.source_full(&source) {
                return;
            }
            if !self.has_link_to(&x) {
                let full = self.peers_in_use() >= self.cfg.limits.max_peers;
                let room = match offer {
                    Some(_) => self.make_room(&x),
                    None => self.has_room(),
                };
                if !room {
                    // An announce while only the links being built are at their share
                    // is not a refusal: the peer is dialled at a later announce, or
                    // dials us.
                    if full || offer.is_some() {
                        self.refuse_peer(&x);
                    }
                    return;
                }
            }
        }
        if let Some(t) = m.get("type").and_then(Value::as_str) {
            self.types.insert(x.clone(), t.chars().take(32).collect());
        }
        if let Some(c) = self.connected.get(&x) {
            // A connected peer only offers again after it restarted (a reloaded tab keeps
            // its id, with a new Nostr key): the new offer is answered, unless the link is
            // brand new, and replaces the old link once it opens. The peer id and a sealed
            // offer can be replayed by anyone: a replay never opens, so it never costs
            // the peer its link.
            if offer.is_none() || c.since.elapsed() < Duration::from_secs(2) {
                return;
            }
            tracing::info!(peer = %x, "peer offered again; its old link goes once the new one opens");
        }
        if let Some(sealed) = offer {
            let ours_wins = self.pending.get(&x).is_some_and(|p| {
                p.iter()
                    .any(|d| d.ours && d.relay == relay && d.peer.is_some())
            }) && self.self_id.as_str() > x.as_str();
            tracing::debug!(peer = %x, relay, ours_wins, "offer received");
            if ours_wins {
                return;
            }
            let Ok(sdp) = self.open(sealed) else { return };
            self.spawn_answer(x, relay, sdp, source);
        } else if let Some(sealed) = answer {
            let Some(dial) = self
                .pending
                .get_mut(&x)
                .and_then(|p| {
                    p.iter_mut().find(|d| {
                        d.ours
                            && !d.answered
                            && d.relay == relay
                            && d.peer.is_some()
                            && d.source.as_ref().is_none_or(|s| s.pubkey == source.pubkey)
                    })
                })
                .and_then(|d| {
                    d.answered = true;
                    d.peer.clone()
                })
            else {
                tracing::debug!(peer = %x, relay, "answer with no dial of ours waiting for it");
                return;
            };
            tracing::debug!(peer = %x, relay, "answer received");
            let Ok(sdp) = self.open(sealed) else { return };
            tokio::spawn(async move {
                if let Err(e) = dial.accept_answer(&sdp).await {
                    tracing::debug!(error = %e, "could not apply an answer");
                }
            });
        } else {
            self.maybe_dial(x, relay, Some(source));
        }
    }

    /// The Nostr key that made `x`'s link (connected, or being built), if any.
    fn owner_of(&self, x: &str) -> Option<&str> {
        if let Some(c) = self.connected.get(x) {
            return c.pubkey.as_deref();
        }
        let pending = self.pending.get(x).into_iter().flatten();
        pending
            .filter_map(|d| d.source.as_ref())
            .chain(
                self.answering
                    .values()
                    .filter(|a| a.peer == x)
                    .filter_map(|a| a.source.as_ref()),
            )
            .map(|s| s.pubkey.as_str())
            .next()
    }

    /// Links being built: (peer, link, source, since).
    fn building(&self) -> Vec<(&str, u64, Option<&Source>, Instant)> {
        let pending = self.pending.iter().flat_map(|(x, v)| {
            v.iter()
                .map(move |d| (x.as_str(), d.link, d.source.as_ref(), d.since))
        });
        let answering = self
            .answering
            .iter()
            .map(|(link, a)| (a.peer.as_str(), *link, a.source.as_ref(), a.since));
        pending.chain(answering).collect()
    }

    /// PENDING_PER_KEY and PENDING_PER_CONNECTION: true (and counted) when `source`
    /// already has as many links being built as it may.
    fn source_full(&mut self, source: &Source) -> bool {
        let building = self.building();
        let by_key = building
            .iter()
            .filter(|b| b.2.is_some_and(|s| s.pubkey == source.pubkey))
            .count();
        let by_conn = source.conn.map_or(0, |c| {
            building
                .iter()
                .filter(|b| b.2.is_some_and(|s| s.conn == Some(c)))
                .count()
        });
        let full = by_key >= PENDING_PER_KEY || by_conn >= PENDING_PER_CONNECTION;
        if full {
            self.stats
                .refused_pending_source
                .fetch_add(1, Ordering::Relaxed);
            if let Some(unlogged) = self.refusal_log.allow(Instant::now()) {
                tracing::warn!(
                    pubkey = %source.pubkey,
                    limit = if by_key >= PENDING_PER_KEY { "PENDING_PER_KEY" } else { "PENDING_PER_CONNECTION" },
                    unlogged,
                    "offer or announce ignored: its sender already has links being built"
                );
            }
        }
        full
    }

    /// Room for one more peer: under MAX_PEERS, and links being built under their
    /// share of it (half, or up to 4 when MAX_PEERS is small).
    fn has_room(&self) -> bool {
        let max = self.cfg.limits.max_peers;
        let building = self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>();
        self.peers_in_use() < max && building < (max / 2).max(max.min(4))
    }

    /// Whether a new peer may have a link built: MAX_PEERS bounds links open and being
    /// built, and links being built at most half of it. When either is full, the
    /// oldest link being built of the sender with the most is closed to make room;
    /// open links are never closed for a newcomer.
    fn make_room(&mut self, newcomer: &str) -> bool {
        // Each round closes one link being built; there are never more rounds than that.
        for _ in 0..=self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>() {
            if self.has_room() {
                return true;
            }
            let building = self.building();
            // The sender holding the most links being built; its oldest one.
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for b in &building {
                *counts
                    .entry(b.2.map_or("", |s| s.pubkey.as_str()))
                    .or_default() += 1;
            }
            let victim = building
                .iter()
                .filter(|b| b.0 != newcomer)
                .max_by_key(|b| {
                    let n = counts[b.2.map_or("", |s| s.pubkey.as_str())];
                    (n, std::cmp::Reverse(b.3))
                })
                .map(|b| (b.0.to_owned(), b.1));
            let Some((x, link)) = victim else {
                return false;
            };
            self.stats.evicted_pending.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %x, link, "closing a link being built to make room");
            if self.answering.remove(&link).is_none() {
                self.forget_pending(&x, link);
            }
        }
        self.has_room()
    }

    /// Dials each peer of `cfg.dial` that is neither linked nor being dialled, once
    /// the relay is open: an offer published before would be dropped, and the dial
    /// would wait out the answer timeout.
    fn dial_known(&mut self, relay: usize) {
        if self.cfg.dial.is_empty() || self.pool.connected() == 0 {
            return;
        }
        let known: Vec<String> = self
            .cfg
            .dial
            .iter()
            .filter(|x| !self.connected.contains_key(*x) && !self.pending.contains_key(*x))
            .cloned()
            .collect();
        for x in known {
            self.maybe_dial(x, relay, None);
        }
    }

    /// With `only_superpeers`, everything but a superpeer's offer or answer and a bye.
    fn ignores(&self, m: &Value) -> bool {
        self.cfg.only_superpeers
            && m.get("bye").is_none()
            && m.get("type").and_then(Value::as_str) != Some("superpeer")
    }

    /// Cells mode: runs the re-seal schedule, and once the grace after a seal is over,
    /// closes links the topology no longer admits.
    async fn reseal(&mut self) {
        let Some(o) = self.overlay.clone() else {
            return;
        };
        let now = Instant::now();
        let connected: Vec<String> = self.connected.keys().cloned().collect();
        let prune: Vec<String> = {
            let mut mesh = o.mesh.lock().unwrap_or_else(|p| p.into_inner());
            if mesh.tick(&connected, now) {
                self.stats.cell_seals.fetch_add(1, Ordering::Relaxed);
                let s = &mesh.sealed;
                tracing::debug!(
                    epoch = mesh.epoch,
                    cell = s.my_cell,
                    cells = s.cells,
                    bridge = s.is_bridge(),
                    roster = s.roster.len(),
                    "cells: sealed"
                );
            }
            if mesh.grace_over(now) {
                connected
                    .into_iter()
                    .filter(|x| !mesh.admit(x, now))
                    .collect()
            } else {
                Vec::new()
            }
        };
        for x in prune {
            self.stats.cell_pruned.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %x, "cells: closing a link the topology does not admit");
            if let Some(c) = self.connected.get(&x) {
                let _ = c.peer.send(&frame::control(frame::LEAVE)).await;
            }
            self.drop_connected(&x);
            let _ = self.events.send(RoomEvent::Left { peer: x }).await;
        }
    }

    /// Whether `x` is connected or has a PeerConnection being built.
    fn has_link_to(&self, x: &str) -> bool {
        self.connected.contains_key(x)
            || self.pending.contains_key(x)
            || self.answering.values().any(|a| a.peer == x)
    }

    /// Peers connected or with a PeerConnection being built: what MAX_PEERS bounds.
    fn peers_in_use(&self) -> usize {
        let mut peers: std::collections::HashSet<&str> =
            self.connected.keys().map(String::as_str).collect();
        peers.extend(self.pending.keys().map(String::as_str));
        peers.extend(self.answering.values().map(|a| a.peer.as_str()));
        peers.len()
    }

    /// MAX_PEERS: `x` is neither answered nor dialled. Logged at most once per 10 s.
    fn refuse_peer(&mut self, x: &str) {
        self.stats.refused_max_peers.fetch_add(1, Ordering::Relaxed);
        if let Some(unlogged) = self.refusal_log.allow(Instant::now()) {
            tracing::warn!(
                peer = %x,
                limit = "MAX_PEERS",
                value = self.cfg.limits.max_peers,
                unlogged,
                "peer refused: MAX_PEERS peers are linked or being linked"
            );
        }
    }

    fn open(&self, sealed: &str) -> Result<String, ()> {
        self.seal.open(sealed).map_err(|e| {
            self.stats.seal_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "could not open a sealed SDP (another password?)");
        })
    }

    fn maybe_dial(&mut self, x: String, relay: usize, source: Option<Source>) {
        let dials = self.pending.get(&x).map_or(0, Vec::len);
        let already = self
            .pending
            .get(&x)
            .is_some_and(|p| p.iter().any(|d| d.relay == relay));
        let total: usize = self.pending.values().map(Vec::len).sum();
        if already || dials >= 2 || total >= self.cfg.max_pending_dials {
            return;
        }
        tracing::debug!(peer = %x, relay, "dialing");
        let link = self.new_link();
        self.pending.entry(x.clone()).or_default().push(Pending {
            link,
            relay,
            peer: None,
            since: Instant::now(),
            source,
            ours: true,
            answered: false,
        });
        let cfg = self.cfg.peer.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let result = Peer::offer(&cfg)
                .await
                .map(|(p, rx, sdp)| (Arc::new(p), rx, sdp))
                .map_err(|e| e.to_string());
            let _ = internal
                .send(Internal::Dialed {
                    peer: x,
                    relay,
                    link,
                    result,
                })
                .await;
        });
    }

    fn spawn_answer(&mut self, x: String, relay: usize, offer_sdp: String, source: Source) {
        let link = self.new_link();
        self.answering.insert(
            link,
            Answering {
                peer: x.clone(),
                source: Some(source),
                since: Instant::now(),
            },
        );
        let cfg = self.cfg.peer.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let result = Peer::answer(&cfg, &offer_sdp)
                .await
                .map(|(p, rx, sdp)| (Arc::new(p), rx, sdp))
                .map_err(|e| e.to_string());
            let _ = internal
                .send(Internal::Answered {
                    peer: x,
                    relay,
                    link,
                    result,
                })
                .await;
        });
    }

    fn new_link(&mut self) -> u64 {
        self.next_link += 1;
        self.next_link
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Dialed {
                peer: x,
                relay,
                link,
                result,
            } => {
                let still_wanted = self
                    .pending
                    .get(&x)
                    .is_some_and(|p| p.iter().any(|d| d.link == link));
                let (p, rx, sdp) = match result {
                    Ok(r) if still_wanted && !self.connected.contains_key(&x) => r,
                    Ok((p, _, _)) => {
                        p.close().await;
                        self.forget_pending(&x, link);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %x, error = %e, "could not create an offer");
                        self.forget_pending(&x, link);
                        return;
                    }
                };
                if let Some(d) = self
                    .pending
                    .get_mut(&x)
                    .and_then(|v| v.iter_mut().find(|d| d.link == link))
                {
                    d.peer = Some(p.clone());
                }
                self.start_link(x.clone(), link, p, rx);
                self.send_description(&x, relay, "offer", &sdp);
            }
            Internal::Answered {
                peer: x,
                relay,
                link,
                result,
            } => {
                let building = self.answering.remove(&link);
                let (p, rx, sdp) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(peer = %x, error = %e, "could not answer an offer");
                        return;
                    }
                };
                let Some(building) = building else {
                    // Closed to make room while it was being built.
                    tokio::spawn(async move { p.close().await });
                    return;
                };
                self.pending.entry(x.clone()).or_default().push(Pending {
                    link,
                    relay,
                    peer: Some(p.clone()),
                    since: building.since,
                    source: building.source,
                    ours: false,
                    answered: true,
                });
                self.start_link(x.clone(), link, p, rx);
                self.send_description(&x, relay, "answer", &sdp);
            }
            Internal::Opened { peer: x, link } => {
                let Some(d) = self.take_pending(&x, link) else {
                    return;
                };
                let Some(p) = d.peer else { return };
                let offered_by = if d.ours { "us" } else { "peer" };
                tracing::debug!(peer = %x, link, offered_by, "data channel open");
                if self.connected.contains_key(&x) {
                    self.drop_connected(&x);
                }
                // The most recently opened link wins; every other attempt is closed.
                for other in self.pending.remove(&x).unwrap_or_default() {
                    self.detach(&x, other.link);
                    if let Some(op) = other.peer {
                        tokio::spawn(async move { op.close().await });
                    }
                }
                self.connected.insert(
                    x.clone(),
                    Connected {
                        link,
                        peer: p,
                        since: Instant::now(),
                        pubkey: d.source.map(|s| s.pubkey),
                    },
                );
                let writer = self.writers.get(&link).cloned();
                if let Some(w) = &writer {
                    self.links
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(x.clone(), w.clone());
                }
                let kind = self.types.get(&x).cloned();
                if let (Some(w), Some(k)) = (&writer, &kind) {
                    let _ = w.info.kind.set(k.clone());
                }
                let _ = self.events.send(RoomEvent::Joined { peer: x, kind }).await;
                // Only now may the link hand on messages: the sync layer must see the
                // join before anything the peer sent, which its first frames often are.
                if let Some(w) = writer {
                    w.attached.store(true, Ordering::Release);
                    w.attach.notify_one();
                }
            }
            Internal::Closed { peer: x, link } => {
                if self.connected.get(&x).is_some_and(|c| c.link == link) {
                    self.drop_connected(&x);
                    let _ = self.events.send(RoomEvent::Left { peer: x }).await;
                } else {
                    self.forget_pending(&x, link);
                }
            }
        }
    }

    fn take_pending(&mut self, x: &str, link: u64) -> Option<Pending> {
        let list = self.pending.get_mut(x)?;
        let i = list.iter().position(|d| d.link == link)?;
        let d = list.remove(i);
        if list.is_empty() {
            self.pending.remove(x);
        }
        Some(d)
    }

    fn forget_pending(&mut self, x: &str, link: u64) {
        if let Some(d) = self.take_pending(x, link) {
            self.detach(x, link);
            if let Some(p) = d.peer {
                tokio::spawn(async move { p.close().await });
            }
        }
    }

    fn drop_connected(&mut self, x: &str) {
        if let Some(c) = self.connected.remove(x) {
            self.detach(x, c.link);
            tokio::spawn(async move { c.peer.close().await });
        }
    }

    /// Forgets a link's writer and, if it was the peer's connected one, the peer.
    fn detach(&mut self, x: &str, link: u64) {
        let Some(w) = self.writers.remove(&link) else {
            return;
        };
        w.attached.store(false, Ordering::Relaxed);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(x).is_some_and(|cur| cur.same(&w)) {
            links.remove(x);
        }
    }

    fn start_link(
        &mut self,
        x: String,
        link: u64,
        peer: Arc<Peer>,
        events: mpsc::Receiver<PeerEvent>,
    ) {
        let (tx, rx) = mpsc::channel(self.cfg.send_queue);
        let writer = Writer {
            frames: tx,
            attached: Arc::new(AtomicBool::new(false)),
            attach: Arc::default(),
            dropped: Arc::new(AtomicBool::new(false)),
            peer: peer.clone(),
            info: Arc::new(LinkInfo {
                since: std::time::SystemTime::now(),
                kind: std::sync::OnceLock::new(),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
            }),
        };
        self.writers.insert(link, writer.clone());
        let task = LinkTask {
            peer_id: x,
            link,
            peer,
            writer,
            room_events: self.events.clone(),
            internal: self.internal.clone(),
            stats: self.stats.clone(),
            cfg: self.cfg.clone(),
            overlay: self.overlay.clone(),
        };
        tokio::spawn(task.run(events, rx));
    }

    fn reap_dials(&mut self) {
        let (dial, answer) = (self.cfg.dial_timeout, self.cfg.answer_timeout);
        let stale: Vec<(String, u64)> = self
            .pending
            .iter()
            .flat_map(|(x, v)| {
                v.iter()
                    .filter(|d| d.since.elapsed() > if d.answered { dial } else { answer })
                    .map(move |d| (x.clone(), d.link))
            })
            .collect();
        for (x, link) in stale {
            self.forget_pending(&x, link);
        }
    }

    async fn leave(&mut self) {
        for c in self.connected.values() {
            let _ = c.peer.send(&frame::control(frame::LEAVE)).await;
        }
        self.publish(
            &self.root_topic.clone(),
            json!({"peerId": self.self_id, "bye": 1}),
            None,
        );
        // GenosRTC lingers 99 ms after @_leave before closing.
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let peers: Vec<Arc<Peer>> = self
            .connected
            .drain()
            .map(|(_, c)| c.peer)
            .chain(
                self.pending
                    .drain()
                    .flat_map(|(_, v)| v.into_iter().filter_map(|d| d.peer)),
            )
            .collect();
        for p in peers {
            p.close().await;
        }
    }
}

fn valid_peer_id(x: &str) -> bool {
    (1..=64).contains(&x.len())
        && x.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Which of a peer's rates ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    Messages,
    Bytes,
}

/// One link's allowance (PEER_MSG_RATE, PEER_BYTES_RATE), and its log of messages
/// over MAX_MESSAGE_BYTES.
struct PeerBudget {
    messages: TokenBucket,
    bytes: TokenBucket,
    oversize_log: LogEvery,
}

impl PeerBudget {
    fn new(l: &PeerLimits) -> Self {
        Self {
            messages: TokenBucket::new(l.msg_rate, l.msg_burst),
            bytes: TokenBucket::new(l.bytes_rate, l.bytes_burst),
            oversize_log: LogEvery::new(LIMIT_LOG_EVERY),
        }
    }

    /// A whole message: one message, and for a compressed one its inflated bytes (its
    /// frames were charged as they came).
    fn charge(&mut self, message: &frame::Message) -> Result<(), Rate> {
        if !self.messages.take() {
            return Err(Rate::Messages);
        }
        if message.flags & frame::DEFLATE != 0 && !self.bytes.take_n(message.data.len() as f64) {
            return Err(Rate::Bytes);
        }
        Ok(())
    }
}

struct LinkTask {
    peer_id: String,
    link: u64,
    peer: Arc<Peer>,
    writer: Writer,
    room_events: mpsc::Sender<RoomEvent>,
    internal: mpsc::Sender<Internal>,
    stats: Arc<RoomStats>,
    cfg: RoomConfig,
    overlay: Option<Arc<Overlay>>,
}

/// One link's share of [`RoomStats::partial_messages`], given back when the link ends
/// (however it ends: its reassembly buffer goes with it).
struct PartialGauge {
    stats: Arc<RoomStats>,
    held: u64,
}

impl PartialGauge {
    fn set(&mut self, now: usize) {
        let now = now as u64;
        let total = &self.stats.partial_messages;
        if now > self.held {
            total.fetch_add(now - self.held, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.held - now, Ordering::Relaxed);
        }
        self.held = now;
    }
}

impl Drop for PartialGauge {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Warned once per process: cell envelopes arrive while CELLS is off.
static CELLS_MISMATCH_WARNED: AtomicBool = AtomicBool::new(false);

impl LinkTask {
    async fn run(self, mut events: mpsc::Receiver<PeerEvent>, mut frames: mpsc::Receiver<Vec<u8>>) {
        let mut reasm = Reassembler::new(self.cfg.frames);
        let mut budget = PeerBudget::new(&self.cfg.limits);
        let mut partial = PartialGauge {
            stats: self.stats.clone(),
            held: 0,
        };
        let mut last_seen = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.cfg.keepalive_tick);
        let mut opened = false;
        let mut early = VecDeque::new();
        loop {
            tokio::select! {
                _ = self.writer.attach.notified() => {
                    if !self.deliver_early(&mut early).await {
                        break;
                    }
                }
                ev = events.recv() => match ev {
                    Some(PeerEvent::Open) => {
                        opened = true;
                        last_seen = Instant::now();
                        let _ = self.internal.send(Internal::Opened { peer: self.peer_id.clone(), link: self.link }).await;
                    }
                    Some(PeerEvent::Message(bytes)) => {
                        last_seen = Instant::now();
                        ping_sent = None;
                        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        self.writer.info.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if !budget.bytes.take_n(bytes.len() as f64) {
                            self.over_rate(Rate::Bytes);
                            break;
                        }
                        let keep = self.on_frame(&bytes, &mut reasm, &mut early, &mut budget).await;
                        partial.set(reasm.pending());
                        if !keep {
                            break;
                        }
                    }
                    Some(PeerEvent::Closed) | None => break,
                },
                f = frames.recv() => match f {
                    Some(f) => {
                        let sent = tokio::time::timeout(SEND_STALL, self.peer.send(&f)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(peer = %self.peer_id, "send failed or stalled; dropping the peer");
                            break;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if self.writer.dropped.load(Ordering::Relaxed) {
                        break;
                    }
                    if !opened {
                        continue;
                    }
                    reasm.expire(Instant::now());
                    partial.set(reasm.pending());
                    match ping_sent {
                        Some(at) if at.elapsed() > self.cfg.ping_timeout => {
                            tracing::info!(peer = %self.peer_id, "peer stopped answering pings; dropping it");
                            break;
                        }
                        None if last_seen.elapsed() > self.cfg.ping_after_idle => {
                            ping_sent = Some(Instant::now());
                            if self.peer.send(&frame::control(frame::PING)).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.writer.attached.store(false, Ordering::Relaxed);
        self.peer.close().await;
        let _ = self
            .internal
            .send(Internal::Closed {
                peer: self.peer_id.clone(),
                link: self.link,
            })
            .await;
    }

    /// Returns false when the link must end: `@_leave`, a peer over its rate, or a
    /// sync layer that stopped taking messages.
    async fn on_frame(
        &self,
        bytes: &[u8],
        reasm: &mut Reassembler,
        early: &mut VecDeque<frame::Message>,
        budget: &mut PeerBudget,
    ) -> bool {
        let Ok((header, _)) = frame::parse(bytes) else {
            self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let control = matches!(
            header.channel.as_str(),
            frame::PING | frame::PONG | frame::LEAVE
        );
        if control && !budget.messages.take() {
            self.over_rate(Rate::Messages);
            return false;
        }
        match header.channel.as_str() {
            // Answered here, before any queue, so a busy sync layer never starves pings.
            frame::PING => {
                if self.cfg.answer_pings {
                    let _ = self.peer.send(&frame::control(frame::PONG)).await;
                }
                return true;
            }
            frame::PONG => return true,
            frame::LEAVE => return false,
            _ => {}
        }
        let pushed = reasm.push(bytes, Instant::now());
        if let Ok(Some(message)) = &pushed
            && let Err(rate) = budget.charge(message)
        {
            self.over_rate(rate);
            return false;
        }
        match pushed {
            Ok(Some(message)) if cells::channel_cell(&message.channel).is_some() => {
                let Some(overlay) = &self.overlay else {
                    self.stats
                        .cell_frames_unexpected
                        .fetch_add(1, Ordering::Relaxed);
                    if !CELLS_MISMATCH_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(peer = %self.peer_id, channel = %message.channel, "a peer speaks the cells overlay (rtc: {{cells: true}}) but CELLS is off: set CELLS=1 (and CELL_SIZE to the browsers' cellSize), or writes from other cells never reach the daemon");
                    }
                    return true;
                };
                if let Some((origin, delivered)) = overlay.receive(&message) {
                    let ev = RoomEvent::Message {
                        peer: origin,
                        message: delivered,
                    };
                    if self.room_events.send_timeout(ev, SEND_STALL).await.is_err() {
                        return false;
                    }
                }
            }
            Ok(Some(message)) => {
                // A browser sends its `sync` the moment its side opens, which can be
                // before this link is attached: keep it until then.
                if early.len() < EARLY_MESSAGES {
                    early.push_back(message);
                } else {
                    tracing::debug!(peer = %self.peer_id, "too many messages before the link was attached");
                }
                return self.deliver_early(early).await;
            }
            Ok(_) => {}
            Err(frame::FrameError::MessageBytes { channel, limit }) => {
                self.stats
                    .dropped_message_bytes
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = budget.oversize_log.allow(Instant::now()) {
                    tracing::warn!(peer = %self.peer_id, limit = "MAX_MESSAGE_BYTES", value = limit, %channel, unlogged, "message over MAX_MESSAGE_BYTES dropped");
                }
            }
            Err(e) => {
                self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer_id, error = %e, "bad frame");
            }
        }
        true
    }

    /// The peer sent more than PEER_MSG_RATE or PEER_BYTES_RATE allow: counted and
    /// logged once; the caller ends the link. It may come back, with a fresh budget.
    fn over_rate(&self, rate: Rate) {
        let l = &self.cfg.limits;
        let (counter, limit, value, burst) = match rate {
            Rate::Messages => (
                &self.stats.dropped_msg_rate,
                "PEER_MSG_RATE",
                l.msg_rate,
                l.msg_burst,
            ),
            Rate::Bytes => (
                &self.stats.dropped_bytes_rate,
                "PEER_BYTES_RATE",
                l.bytes_rate,
                l.bytes_burst,
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %self.peer_id, limit, value, burst, "peer over its rate limit; dropping it");
    }

    /// Hands on every kept message once the link is attached, in arrival order. Waiting
    /// slows only this link; a message is never dropped: if the sync layer stays
    /// blocked, the peer goes, and resyncs when it returns.
    async fn deliver_early(&self, early: &mut VecDeque<frame::Message>) -> bool {
        if !self.writer.attached.load(Ordering::Acquire) {
            tracing::debug!(peer = %self.peer_id, link = self.link, kept = early.len(), "message kept until the link is attached");
            return true;
        }
        while let Some(message) = early.pop_front() {
            let ev = RoomEvent::Message {
                peer: self.peer_id.clone(),
                message,
            };
            if self.room_events.send_timeout(ev, SEND_STALL).await.is_err() {
                tracing::warn!(peer = %self.peer_id, "the sync layer is not taking messages; dropping the peer");
                return false;
            }
        }
        true
    }
}
