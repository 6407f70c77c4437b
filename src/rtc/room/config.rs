//! What a room is told: ids, timings, queue sizes and the limits on peers.

use crate::rtc::frame::Limits;
use crate::rtc::peer::PeerConfig;
use crate::rtc::topic;
use std::time::Duration;

/// Links being built (not open yet) at once for one Nostr key, and for one connection
/// to the daemon's own relay. A browser has one key and one peer id per room, and at
/// most one link being built per relay with a peer; anything past these is a replay.
pub const PENDING_PER_KEY: usize = 3;
pub const PENDING_PER_CONNECTION: usize = 4;

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
    /// How long a peer heard announcing on the room's topic gets to dial us after we
    /// answered with an announce on its own topic, before we dial it ourselves
    /// (DIAL_WAIT_MS; zero dials at once). A GenosDB browser dials on any announce with
    /// an offer it began gathering when it joined, and answers an offer only after a
    /// fresh ICE gathering, so its own offer links sooner than ours.
    pub dial_wait: Duration,
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

/// The default DIAL_WAIT_MS: longer than a browser takes to gather its first offer
/// (150–210 ms on loopback), short enough that a peer that never dials costs little.
pub const DEFAULT_DIAL_WAIT: Duration = Duration::from_millis(400);

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
            dial_wait: DEFAULT_DIAL_WAIT,
            answer_pings: true,
            cells: None,
            limits: PeerLimits::default(),
            only_superpeers: false,
            dial: Vec::new(),
        }
    }
}
