//! Configuration: `.env`, then the process environment, then CLI flags of the same
//! names. Every value is validated up front; a bad one is reported in one line naming
//! the variable, the value and the form it wants, and the daemon exits with code 2.

use crate::eth;
use crate::http::serve::HttpLimits;
use crate::persist::files::Layout;
use crate::persist::pg::PgTarget;
use crate::persist::{MAX_UNWRITTEN_BYTES, PersistConfig};
use crate::relay::RelayLimits;
use crate::rtc::frame;
use crate::rtc::room::PeerLimits;
use crate::sm::governance::{self, Rule};
use crate::sm::key;
use crate::sm::policy::Roles;
use crate::sm::sig::Signer;
use crate::store::oplog::MIN_OPLOG_SIZE;
use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// GenosDB's default relays (genosrtc-transport.md §1.1), in its order.
pub const DEFAULT_RELAYS: [&str; 8] = [
    "wss://relay.primal.net",
    "wss://relay.snort.social",
    "wss://nostr.oxtr.dev",
    "wss://nostr.vulpem.com",
    "wss://relay.nostr.net",
    "wss://nostr.sathoarder.com",
    "wss://nostr.data.haus",
    "wss://relay.mostr.pub",
];

pub const MAX_OPLOG_SIZE: usize = 1_000_000;

/// The default MAX_VALUE_BYTES: browsers write values of a few hundred KB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// FORWARD_MS when unset: what a forwarded op may wait to share a message with others.
pub const DEFAULT_FORWARD_MS: u64 = 50;

#[derive(Parser, Debug)]
#[command(
    name = "genosdb-fallback",
    version,
    about = "Always-on superpeer for GenosDB rooms"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: RawSettings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Write every node as one JSON line to stdout, from a consistent read of DATA_DIR.
    Export,
    /// Write one compacted snapshot to FILE; restore by copying it to DATA_DIR/<DB_NAME>.bin.
    Backup { file: PathBuf },
    /// Merge nodes from JSON lines (the export format; - reads stdin) into the store.
    /// Refuses to run while a daemon holds the store.
    Import { file: PathBuf },
    /// Print the address SM_KEY signs as: the one to list in browsers' superAdmins.
    SmAddress,
    /// Move the store of DB_NAME between DATA_DIR and DATABASE_URL: `--to postgres`
    /// copies the file store into Postgres, `--to files` copies it back. The target must
    /// hold nothing for DB_NAME; the source is left as it is. No daemon may run.
    Migrate {
        #[arg(long, value_enum)]
        to: StorageKind,
    },
    /// Read-only look at the graph, as JSON lines: nodes matching QUERY (a GenosDB query,
    /// e.g. '{"type":"todo"}'), or --node ID, or --oplog. Reads a stopped store, or a
    /// running daemon with --url (then ADMIN_TOKEN must be its token).
    Query(crate::query_cmd::QueryArgs),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Files,
    Postgres,
}

/// Settings as given, before validation. Each flag also reads its env variable.
#[derive(Args, Debug, Default)]
pub struct RawSettings {
    /// Database name; the room is graph-sync-room-<DB_NAME>.
    #[arg(long, env = "DB_NAME", global = true)]
    pub db_name: Option<String>,
    /// Join the room over Nostr-signalled WebRTC.
    #[arg(long, env = "RTC_ENABLED", global = true)]
    pub rtc_enabled: Option<String>,
    /// Comma list of ws:// or wss:// Nostr relays (empty: none).
    #[arg(long, env = "RELAY_URLS", global = true)]
    pub relay_urls: Option<String>,
    /// Room password: seals the SDP exchanged through signalling (secret).
    #[arg(long, env = "PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// Comma list of stun: URLs (unset: GenosDB's 4 STUN servers; empty: none).
    #[arg(long, env = "ICE_SERVERS", global = true)]
    pub ice_servers: Option<String>,
    /// Comma list of turn:/turns: URLs.
    #[arg(long, env = "TURN_URLS", global = true)]
    pub turn_urls: Option<String>,
    #[arg(long, env = "TURN_USERNAME", global = true)]
    pub turn_username: Option<String>,
    /// TURN credential (secret).
    #[arg(long, env = "TURN_CREDENTIAL", global = true, hide_env_values = true)]
    pub turn_credential: Option<String>,
    /// Also join app-sync-<DB_NAME> as a superpeer, so apps' presence UIs show the daemon.
    #[arg(long, env = "ROOM_PRESENCE", global = true)]
    pub room_presence: Option<String>,
    /// Serve an embedded Nostr relay on PORT (WebSocket upgrade on /).
    #[arg(long, env = "RELAY", global = true)]
    pub relay: Option<String>,
    /// Embedded relay: most connections at once.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", global = true)]
    pub relay_max_connections: Option<String>,
    /// Embedded relay: most connections from one IP address.
    #[arg(long, env = "RELAY_MAX_PER_IP", global = true)]
    pub relay_max_per_ip: Option<String>,
    /// Embedded relay: largest WebSocket message, in bytes.
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", global = true)]
    pub relay_max_message_bytes: Option<String>,
    /// Embedded relay: events per second one connection may publish, sustained.
    #[arg(long, env = "RELAY_EVENTS_PER_SEC", global = true)]
    pub relay_events_per_sec: Option<String>,
    /// Embedded relay: events one connection may publish at once.
    #[arg(long, env = "RELAY_EVENT_BURST", global = true)]
    pub relay_event_burst: Option<String>,
    /// Embedded relay: subscriptions per connection.
    #[arg(long, env = "RELAY_MAX_SUBS", global = true)]
    pub relay_max_subs: Option<String>,
    /// Embedded relay: messages of any kind (pings too) per second per connection.
    #[arg(long, env = "RELAY_MESSAGES_PER_SEC", global = true)]
    pub relay_messages_per_sec: Option<String>,
    /// Embedded relay: bytes of events waiting for one connection.
    #[arg(long, env = "RELAY_QUEUE_BYTES", global = true)]
    pub relay_queue_bytes: Option<String>,
    /// Embedded relay: bytes of events waiting for all connections together.
    #[arg(long, env = "RELAY_MEMORY_BYTES", global = true)]
    pub relay_memory_bytes: Option<String>,
    /// Embedded relay: bytes one connection's subscription filters may hold.
    #[arg(long, env = "RELAY_MAX_FILTER_BYTES", global = true)]
    pub relay_max_filter_bytes: Option<String>,
    /// HTTP connections at once (relay connections included).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", global = true)]
    pub http_max_connections: Option<String>,
    /// Seconds a client has to send its request headers (and an idle connection lasts).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", global = true)]
    pub http_header_timeout: Option<String>,
    /// Peers linked (or being linked) at once in each room.
    #[arg(long, env = "MAX_PEERS", global = true)]
    pub max_peers: Option<String>,
    /// Messages per second one peer may send, sustained.
    #[arg(long, env = "PEER_MSG_RATE", global = true)]
    pub peer_msg_rate: Option<String>,
    /// Messages one peer may send at once.
    #[arg(long, env = "PEER_MSG_BURST", global = true)]
    pub peer_msg_burst: Option<String>,
    /// Bytes per second one peer may send, sustained.
    #[arg(long, env = "PEER_BYTES_RATE", global = true)]
    pub peer_bytes_rate: Option<String>,
    /// Bytes one peer may send at once.
    #[arg(long, env = "PEER_BYTES_BURST", global = true)]
    pub peer_bytes_burst: Option<String>,
    /// Largest message a peer may send, as received and once inflated, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", global = true)]
    pub max_message_bytes: Option<String>,
    /// Largest node value (its JSON text) taken from a peer, in bytes.
    #[arg(long, env = "MAX_VALUE_BYTES", global = true)]
    pub max_value_bytes: Option<String>,
    /// Address the HTTP server binds.
    #[arg(long, env = "HOST", global = true)]
    pub host: Option<String>,
    /// HTTP port for /health and /metrics (0 picks a free one).
    #[arg(long, env = "PORT", global = true)]
    pub port: Option<String>,
    /// Verify Security Manager signatures.
    #[arg(long, env = "SM_ENABLED", global = true)]
    pub sm_enabled: Option<String>,
    /// Speak GenosRTC's cellular mesh (browsers' `rtc: {cells: true}`).
    #[arg(long, env = "CELLS", global = true)]
    pub cells: Option<String>,
    /// Cell size of the mesh; must equal the browsers' `cellSize` (default 10).
    #[arg(long, env = "CELL_SIZE", global = true)]
    pub cell_size: Option<String>,
    /// Forward the live ops peers send to every other connected peer.
    #[arg(long, env = "FORWARD_OPS", global = true)]
    pub forward_ops: Option<String>,
    /// How long forwarded ops are gathered into one message, in milliseconds.
    #[arg(long, env = "FORWARD_MS", global = true)]
    pub forward_ms: Option<String>,
    /// Comma list of superadmin 0x addresses.
    #[arg(long, env = "SUPER_ADMINS", global = true)]
    pub super_admins: Option<String>,
    /// Refuse user nodes that name an unlisted address superadmin, even in deltas.
    #[arg(long, env = "SM_STRICT", global = true)]
    pub sm_strict: Option<String>,
    /// Token for the console's read-only look at the graph (secret; unset: off).
    #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Signing key: a BIP39 mnemonic or a 0x private key. Never logged.
    #[arg(long, env = "SM_KEY", global = true, hide_env_values = true)]
    pub sm_key: Option<String>,
    /// Governance rules: inline JSON or a path to a JSON file.
    #[arg(long, env = "SM_RULES", global = true)]
    pub sm_rules: Option<String>,
    /// Directory holding <DB_NAME>.bin and its journal.
    #[arg(long, env = "DATA_DIR", global = true)]
    pub data_dir: Option<String>,
    /// Postgres URL (postgres://user:pass@host:port/db); when set, the store lives there
    /// instead of DATA_DIR (secret: its password is never shown).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Group-commit interval of the journal, in milliseconds.
    #[arg(long, env = "FLUSH_MS", global = true)]
    pub flush_ms: Option<String>,
    /// Oplog window (delta size), at least 200.
    #[arg(long, env = "OPLOG_SIZE", global = true)]
    pub oplog_size: Option<String>,
    /// Journal size that triggers a background compaction, in bytes.
    #[arg(long, env = "COMPACT_BYTES", global = true)]
    pub compact_bytes: Option<String>,
    /// text or json.
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or genosdb_fallback=debug.
    #[arg(long, env = "RUST_LOG", global = true)]
    pub rust_log: Option<String>,
    /// Bytes one data channel may have unacknowledged (SEND_WINDOW_BYTES).
    #[arg(long, env = "SEND_WINDOW_BYTES", global = true)]
    pub send_window_bytes: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub db_name: String,
    pub rtc_enabled: bool,
    pub room_presence: bool,
    /// Cells mode with this cell size, or the full mesh.
    pub cells: Option<usize>,
    /// FORWARD_OPS: live ops accepted from one peer go to every other connected peer,
    /// gathered for this long into one message.
    pub forward: Option<Duration>,
    pub relay_urls: Vec<String>,
    pub relay: bool,
    pub relay_limits: RelayLimits,
    /// HTTP_MAX_CONNECTIONS and HTTP_HEADER_TIMEOUT.
    pub http_limits: HttpLimits,
    /// MAX_PEERS and the per-peer rates.
    pub peer_limits: PeerLimits,
    pub max_message_bytes: usize,
    pub max_value_bytes: usize,
    pub password: Secret,
    /// ADMIN_TOKEN (empty: the admin look is off).
    pub admin_token: Secret,
    pub ice: IceConfig,
    pub host: IpAddr,
    pub port: u16,
    pub sm_enabled: bool,
    pub super_admins: Vec<String>,
    pub sm_strict: bool,
    /// SM_KEY, parsed: its Debug form shows only the address.
    pub sm_signer: Option<Signer>,
    pub sm_rules: Vec<Rule>,
    pub data_dir: PathBuf,
    /// Set by DATABASE_URL: the store lives in Postgres.
    pub database: Option<PgTarget>,
    pub flush_every: Duration,
    pub oplog_size: usize,
    pub compact_bytes: u64,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// SEND_WINDOW_BYTES: what one data channel may have sent and not yet had
    /// acknowledged; sends wait beyond it.
    pub send_window: usize,
}

/// A refused setting: `invalid DB_NAME "../x": expected …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var} {value:?}: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

fn bad(var: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

impl RawSettings {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        Ok(Config {
            db_name: db_name(self.db_name.as_deref().unwrap_or("default"))?,
            rtc_enabled: boolean("RTC_ENABLED", self.rtc_enabled.as_deref(), true)?,
            room_presence: boolean("ROOM_PRESENCE", self.room_presence.as_deref(), false)?,
            cells: self.cells()?,
            forward: self.forward()?,
            relay_urls: relay_urls(self.relay_urls.as_deref(), self.relay_enabled()?)?,
            relay: self.relay_enabled()?,
            relay_limits: self.relay_limits()?,
            http_limits: self.http_limits()?,
            peer_limits: self.peer_limits()?,
            max_message_bytes: self.max_message_bytes()?,
            max_value_bytes: number(
                "MAX_VALUE_BYTES",
                self.max_value_bytes.as_deref(),
                DEFAULT_MAX_VALUE_BYTES as u64,
                1,
                1 << 30,
                "a byte count from 1 to 1073741824",
            )? as usize,
            password: Secret(self.password.clone().unwrap_or_default()),
            admin_token: admin_token(self.admin_token.as_deref())?,
            ice: self.ice()?,
            host: parse_host(self.host.as_deref().unwrap_or("0.0.0.0"))?,
            port: number(
                "PORT",
                self.port.as_deref(),
                3000,
                0,
                u16::MAX as u64,
                "a port number from 0 to 65535",
            )? as u16,
            sm_enabled: boolean("SM_ENABLED", self.sm_enabled.as_deref(), false)?,
            super_admins: super_admins(self.super_admins.as_deref().unwrap_or(""))?,
            sm_strict: boolean("SM_STRICT", self.sm_strict.as_deref(), false)?,
            sm_signer: sm_key(self.sm_key.as_deref())?,
            sm_rules: self.sm_rules()?,
            data_dir: data_dir(self.data_dir.as_deref().unwrap_or("./data"))?,
            database: database_url(self.database_url.as_deref())?,
            flush_every: Duration::from_millis(number(
                "FLUSH_MS",
                self.flush_ms.as_deref(),
                200,
                1,
                60_000,
                "milliseconds from 1 to 60000",
            )?),
            oplog_size: number(
                "OPLOG_SIZE",
                self.oplog_size.as_deref(),
                1000,
                MIN_OPLOG_SIZE as u64,
                MAX_OPLOG_SIZE as u64,
                format!("a whole number from {MIN_OPLOG_SIZE} to {MAX_OPLOG_SIZE}"),
            )? as usize,
            compact_bytes: number(
                "COMPACT_BYTES",
                self.compact_bytes.as_deref(),
                64 << 20,
                4096,
                u64::MAX >> 1,
                "a byte count of at least 4096",
            )?,
            log_format: log_format(self.log_format.as_deref().unwrap_or("text"))?,
            log_filter: log_filter(self.rust_log.as_deref().unwrap_or("info"))?,
            send_window: number(
                "SEND_WINDOW_BYTES",
                self.send_window_bytes.as_deref(),
                crate::rtc::peer::DEFAULT_SEND_WINDOW as u64,
                16_384,
                16 << 20,
                "a byte count from 16384 to 16777216",
            )? as usize,
        })
    }
}

/// A value that is never logged or shown: its Debug form is `<hidden>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// GenosRTC's default STUN servers (genosrtc-transport.md §1.1).
pub const DEFAULT_STUN: [&str; 4] = [
    "stun:stun.l.google.com:19302",
    "stun:stun1.l.google.com:19302",
    "stun:stun2.l.google.com:19302",
    "stun:stun.cloudflare.com:3478",
];

/// ICE servers: STUN, plus TURN with its credentials (never logged).
#[derive(Clone, Default)]
pub struct IceConfig {
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    pub turn_username: String,
    pub turn_credential: String,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceConfig")
            .field("stun", &crate::redact::urls(&self.stun))
            .field("turn", &crate::redact::urls(&self.turn))
            .field("turn_username", &self.turn_username)
            .field("turn_credential", &"<hidden>")
            .finish()
    }
}

impl RawSettings {
    fn relay_enabled(&self) -> Result<bool, ConfigError> {
        boolean("RELAY", self.relay.as_deref(), false)
    }

    fn ice(&self) -> Result<IceConfig, ConfigError> {
        let stun = match self.ice_servers.as_deref() {
            None => DEFAULT_STUN.iter().map(|s| s.to_string()).collect(),
            Some(v) => url_list(
                "ICE_SERVERS",
                v,
                &["stun:", "stuns:"],
                "a comma list of stun: URLs (or empty for none)",
            )?,
        };
        let turn = url_list(
            "TURN_URLS",
            self.turn_urls.as_deref().unwrap_or(""),
            &["turn:", "turns:"],
            "a comma list of turn: or turns: URLs",
        )?;
        let turn_username = self.turn_username.clone().unwrap_or_default();
        let turn_credential = self.turn_credential.clone().unwrap_or_default();
        if !turn.is_empty() && (turn_username.is_empty() || turn_credential.is_empty()) {
            return Err(bad(
                "TURN_USERNAME",
                &turn_username,
                "a username, with TURN_CREDENTIAL, whenever TURN_URLS is set",
            ));
        }
        Ok(IceConfig {
            stun,
            turn,
            turn_username,
            turn_credential,
        })
    }

    fn relay_limits(&self) -> Result<RelayLimits, ConfigError> {
        let d = RelayLimits::default();
        Ok(RelayLimits {
            max_connections: number(
                "RELAY_MAX_CONNECTIONS",
                self.relay_max_connections.as_deref(),
                d.max_connections as u64,
                1,
                1_000_000,
                "a whole number from 1 to 1000000",
            )? as usize,
            max_per_ip: number(
                "RELAY_MAX_PER_IP",
                self.relay_max_per_ip.as_deref(),
                d.max_per_ip as u64,
                1,
                1_000_000,
                "a whole number from 1 to 1000000",
            )? as usize,
            max_message_bytes: number(
                "RELAY_MAX_MESSAGE_BYTES",
                self.relay_max_message_bytes.as_deref(),
                d.max_message_bytes as u64,
                4096,
                16 << 20,
                "a byte count from 4096 to 16777216",
            )? as usize,
            events_per_sec: number(
                "RELAY_EVENTS_PER_SEC",
                self.relay_events_per_sec.as_deref(),
                d.events_per_sec as u64,
                1,
                1_000_000,
                "a whole number of events per second from 1 to 1000000",
            )? as f64,
            event_burst: number(
                "RELAY_EVENT_BURST",
                self.relay_event_burst.as_deref(),
                d.event_burst as u64,
                1,
                1_000_000,
                "a whole number of events from 1 to 1000000",
            )? as f64,
            max_subscriptions: number(
                "RELAY_MAX_SUBS",
                self.relay_max_subs.as_deref(),
                d.max_subscriptions as u64,
                1,
                1024,
                "a whole number from 1 to 1024",
            )? as usize,
            ..d
        })
        .and_then(|l| self.relay_memory_limits(l))
    }

    /// RELAY_MESSAGES_PER_SEC, RELAY_QUEUE_BYTES, RELAY_MEMORY_BYTES and
    /// RELAY_MAX_FILTER_BYTES. A queue must hold the largest event (and its tags);
    /// the total must hold one queue. Their defaults grow with
    /// RELAY_MAX_MESSAGE_BYTES.
    fn relay_memory_limits(&self, l: RelayLimits) -> Result<RelayLimits, ConfigError> {
        let d = RelayLimits::default();
        let min_queue = 2 * l.max_message_bytes as u64 + 4096;
        let queue_bytes = number(
            "RELAY_QUEUE_BYTES",
            self.relay_queue_bytes.as_deref(),
            (d.queue_bytes as u64).max(16 * l.max_message_bytes as u64),
            min_queue,
            1 << 40,
            format!(
                "a byte count from {min_queue} (twice RELAY_MAX_MESSAGE_BYTES, and 4096) to 1099511627776"
            ),
        )?;
        let memory_bytes = number(
            "RELAY_MEMORY_BYTES",
            self.relay_memory_bytes.as_deref(),
            (d.memory_bytes as u64).max(64 * queue_bytes),
            queue_bytes,
            1 << 40,
            format!("a byte count from {queue_bytes} (RELAY_QUEUE_BYTES) to 1099511627776"),
        )?;
        Ok(RelayLimits {
            messages_per_sec: number(
                "RELAY_MESSAGES_PER_SEC",
                self.relay_messages_per_sec.as_deref(),
                d.messages_per_sec as u64,
                1,
                1_000_000,
                "a whole number of messages per second from 1 to 1000000",
            )? as f64,
            queue_bytes: queue_bytes as usize,
            memory_bytes: memory_bytes as usize,
            max_filter_bytes: number(
                "RELAY_MAX_FILTER_BYTES",
                self.relay_max_filter_bytes.as_deref(),
                d.max_filter_bytes as u64,
                1024,
                16 << 20,
                "a byte count from 1024 to 16777216",
            )? as usize,
            ..l
        })
    }

    fn http_limits(&self) -> Result<HttpLimits, ConfigError> {
        Ok(HttpLimits {
            max_connections: match self.http_max_connections.as_deref() {
                None => HttpLimits::default_max_connections(),
                v => number(
                    "HTTP_MAX_CONNECTIONS",
                    v,
                    0,
                    16,
                    1_000_000,
                    "a whole number from 16 to 1000000",
                )? as usize,
            },
            header_timeout: Duration::from_secs(number(
                "HTTP_HEADER_TIMEOUT",
                self.http_header_timeout.as_deref(),
                10,
                1,
                3600,
                "a whole number of seconds from 1 to 3600",
            )?),
        })
    }

    fn max_message_bytes(&self) -> Result<usize, ConfigError> {
        Ok(number(
            "MAX_MESSAGE_BYTES",
            self.max_message_bytes.as_deref(),
            frame::DEFAULT_MAX_MESSAGE_BYTES as u64,
            65_536,
            256 << 20,
            "a byte count from 65536 to 268435456",
        )? as usize)
    }

    /// MAX_PEERS and the per-peer rates. The byte burst must hold the largest message
    /// a peer may send (its frames and, compressed, what it inflates to), or a peer
    /// that sends one would be dropped every time.
    fn peer_limits(&self) -> Result<PeerLimits, ConfigError> {
        let d = PeerLimits::default();
        let min_burst = (self.max_message_bytes()? + frame::MAX_WIRE_BYTES) as u64;
        Ok(PeerLimits {
            max_peers: number(
                "MAX_PEERS",
                self.max_peers.as_deref(),
                d.max_peers as u64,
                1,
                100_000,
                "a whole number from 1 to 100000",
            )? as usize,
            msg_rate: number(
                "PEER_MSG_RATE",
                self.peer_msg_rate.as_deref(),
                d.msg_rate as u64,
                1,
                1_000_000,
                "a whole number of messages per second from 1 to 1000000",
            )? as f64,
            msg_burst: number(
                "PEER_MSG_BURST",
                self.peer_msg_burst.as_deref(),
                d.msg_burst as u64,
                1,
                10_000_000,
                "a whole number of messages from 1 to 10000000",
            )? as f64,
            bytes_rate: number(
                "PEER_BYTES_RATE",
                self.peer_bytes_rate.as_deref(),
                d.bytes_rate as u64,
                1024,
                1 << 40,
                "a byte count per second from 1024 to 1099511627776",
            )? as f64,
            bytes_burst: number(
                "PEER_BYTES_BURST",
                self.peer_bytes_burst.as_deref(),
                (d.bytes_burst as u64).max(min_burst),
                min_burst,
                1 << 40,
                format!(
                    "a byte count from {min_burst} (MAX_MESSAGE_BYTES plus 100 frames, so the largest message fits) to 1099511627776"
                ),
            )? as f64,
        })
    }
}

impl Config {
    /// The room the daemon syncs in.
    pub fn sync_room(&self) -> String {
        format!("graph-sync-room-{}", self.db_name)
    }

    /// The app room (`db.room`) where GenosDB apps keep presence; it carries no sync.
    pub fn presence_room(&self) -> String {
        format!("app-sync-{}", self.db_name)
    }

    /// Where this database's files live.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.data_dir, &self.db_name)
    }

    pub fn persist(&self) -> PersistConfig {
        PersistConfig {
            layout: self.layout(),
            oplog_size: self.oplog_size,
            flush_every: self.flush_every,
            compact_bytes: self.compact_bytes,
            max_unwritten_bytes: MAX_UNWRITTEN_BYTES,
        }
    }
}

fn db_name(v: &str) -> Result<String, ConfigError> {
    let ok = (1..=128).contains(&v.len())
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(bad(
            "DB_NAME",
            v,
            "1 to 128 characters of letters, digits, '.', '_' or '-', not starting with '.'",
        ))
    }
}

fn boolean(var: &'static str, v: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad(var, v, "true, false, 1, 0, yes or no")),
    }
}

fn number(
    var: &'static str,
    v: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
    expected: impl Into<String>,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(var, v, expected)),
    }
}

/// RELAY_URLS; when unset, GenosDB's public relays, unless the daemon runs its own
/// relay (RELAY=1), which it then uses alone.
fn relay_urls(v: Option<&str>, own_relay: bool) -> Result<Vec<String>, ConfigError> {
    let Some(v) = v else {
        if own_relay {
            return Ok(Vec::new());
        }
        return Ok(DEFAULT_RELAYS.iter().map(|s| s.to_string()).collect());
    };
    let mut urls = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let rest = part
            .strip_prefix("wss://")
            .or_else(|| part.strip_prefix("ws://"));
        let host_ok = rest.is_some_and(|r| {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.contains(char::is_whitespace)
        });
        if !host_ok {
            return Err(bad(
                "RELAY_URLS",
                &crate::redact::list(v),
                "a comma list of ws:// or wss:// URLs (or empty for none)",
            ));
        }
        if !urls.iter().any(|u| u == part) {
            urls.push(part.to_owned());
        }
    }
    Ok(urls)
}

fn url_list(
    var: &'static str,
    v: &str,
    schemes: &[&str],
    expected: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = schemes.iter().any(|s| {
            part.strip_prefix(s)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
        });
        if !ok {
            return Err(bad(var, &crate::redact::list(v), expected));
        }
        // WebRTC's own parser: a URL it refuses would fail every peer link later.
        // Credentials belong in TURN_USERNAME and TURN_CREDENTIAL, not in the URL.
        let refused = if part.contains('@') {
            Some("credentials go in TURN_USERNAME and TURN_CREDENTIAL, not in the URL".to_owned())
        } else {
            rtc::ice::url::Url::parse_url(part)
                .err()
                .map(|e| e.to_string())
        };
        if let Some(why) = refused {
            return Err(bad(
                var,
                &crate::redact::list(v),
                format!("{expected}; {} is refused: {why}", crate::redact::url(part)),
            ));
        }
        out.push(part.to_owned());
    }
    Ok(out)
}

/// An IP address, or a host name that resolves (`localhost`): its first IPv4 address,
/// else its first address.
fn parse_host(v: &str) -> Result<IpAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let name = v.trim();
    if let Ok(ip) = name.parse() {
        return Ok(ip);
    }
    let refused = || {
        bad(
            "HOST",
            v,
            "an IP address such as 0.0.0.0 or 127.0.0.1, or a host name that resolves, such as localhost",
        )
    };
    let is_name = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !is_name {
        return Err(refused());
    }
    let addrs: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|_| refused())?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(refused)
}

fn super_admins(v: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr = eth::parse_address(part).map_err(|e| {
            bad(
                "SUPER_ADMINS",
                v,
                format!("a comma list of 0x addresses (40 hex digits, EIP-55 checksummed when mixed case); {part} {e}"),
            )
        })?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// ADMIN_TOKEN is never echoed: 16 to 512 visible ASCII characters, or unset.
fn admin_token(v: Option<&str>) -> Result<Secret, ConfigError> {
    let v = v.unwrap_or("");
    let ok = (16..=512).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic());
    if v.is_empty() || ok {
        return Ok(Secret(v.to_owned()));
    }
    Err(ConfigError {
        var: "ADMIN_TOKEN",
        value: "<hidden>".into(),
        expected:
            "16 to 512 visible ASCII characters (no spaces), or unset to turn the admin look off"
                .into(),
    })
}

/// SM_KEY is never echoed: a refusal shows `<hidden>` for its value.
fn sm_key(v: Option<&str>) -> Result<Option<Signer>, ConfigError> {
    let Some(v) = v.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    key::parse_key(v).map(Some).map_err(|e| ConfigError {
        var: "SM_KEY",
        value: "<hidden>".into(),
        expected: format!(
            "a BIP39 English mnemonic (words separated by spaces) or a 32-byte hex private key (0x + 64 hex digits); it {e}"
        ),
    })
}

impl RawSettings {
    fn cells(&self) -> Result<Option<usize>, ConfigError> {
        let on = boolean("CELLS", self.cells.as_deref(), false)?;
        let size = number(
            "CELL_SIZE",
            self.cell_size.as_deref(),
            crate::rtc::cells::DEFAULT_CELL_SIZE as u64,
            2,
            1000,
            "a whole number from 2 to 1000, the browsers' rtc.cells.cellSize",
        )? as usize;
        Ok(on.then_some(size))
    }

    fn forward(&self) -> Result<Option<Duration>, ConfigError> {
        let on = boolean("FORWARD_OPS", self.forward_ops.as_deref(), false)?;
        let every = number(
            "FORWARD_MS",
            self.forward_ms.as_deref(),
            DEFAULT_FORWARD_MS,
            1,
            1000,
            "milliseconds from 1 to 1000",
        )?;
        Ok(on.then_some(Duration::from_millis(every)))
    }

    fn sm_rules(&self) -> Result<Vec<Rule>, ConfigError> {
        let Some(spec) = self.sm_rules.as_deref().filter(|v| !v.trim().is_empty()) else {
            return Ok(Vec::new());
        };
        const FORM: &str = "a JSON array of {\"if\": <query>, \"then\": {\"assignRole\": \"<role>\"}} rules, inline or in a file";
        if self.sm_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
            return Err(bad(
                "SM_RULES",
                spec,
                format!(
                    "{FORM}, together with SM_KEY (the role assignments it writes must be signed)"
                ),
            ));
        }
        governance::load_rules(spec, &Roles::default())
            .map_err(|e| bad("SM_RULES", spec, format!("{FORM}; it {e}")))
    }
}

fn data_dir(v: &str) -> Result<PathBuf, ConfigError> {
    if v.trim().is_empty() {
        return Err(bad("DATA_DIR", v, "a directory path"));
    }
    Ok(PathBuf::from(v))
}

/// DATABASE_URL: unset or empty means the file store. A refused value is never shown,
/// not even in part: it may hold a password anywhere.
fn database_url(v: Option<&str>) -> Result<Option<PgTarget>, ConfigError> {
    let Some(v) = v.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    PgTarget::parse(v).map(Some).map_err(|why| {
        bad(
            "DATABASE_URL",
            "(not shown: it may hold a password)",
            format!("{} ({why})", crate::persist::pg::EXPECTED_FORMS),
        )
    })
}

fn log_format(v: &str) -> Result<LogFormat, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(bad("LOG_FORMAT", v, "text or json")),
    }
}

fn log_filter(v: &str) -> Result<String, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(v)
        .map(|_| v.to_owned())
        .map_err(|_| {
            bad(
                "RUST_LOG",
                v,
                "a tracing filter such as info or genosdb_fallback=debug,warn",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut RawSettings)) -> Result<Config, ConfigError> {
        let mut raw = RawSettings::default();
        f(&mut raw);
        raw.validate()
    }

    #[test]
    fn host_is_an_address_or_a_name_that_resolves() {
        let host = |v: &str| with(|r| r.host = Some(v.into())).map(|c| c.host);
        assert_eq!(host("127.0.0.1").unwrap().to_string(), "127.0.0.1");
        assert_eq!(host("::").unwrap().to_string(), "::");
        assert!(host("localhost").unwrap().is_loopback());
        for no in ["", "local host", "localhost:80", "http://localhost"] {
            let e = host(no).unwrap_err();
            assert_eq!(e.var, "HOST", "{no:?}");
            assert!(e.expected.contains("host name that resolves"), "{no:?}");
        }
    }

    #[test]
    fn defaults() {
        let c = with(|_| {}).unwrap();
        assert_eq!(c.db_name, "default");
        assert!(c.rtc_enabled);
        assert_eq!(c.relay_urls.len(), 8);
        assert_eq!(c.port, 3000);
        assert!(!c.sm_enabled);
        assert!(!c.relay);
        assert!(c.super_admins.is_empty());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.flush_every, Duration::from_millis(200));
        assert_eq!(c.oplog_size, 1000);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.sync_room(), "graph-sync-room-default");
    }

    #[test]
    fn db_name_rules() {
        for ok in ["a", "my-app-db", "v1.2_x", &"x".repeat(128)] {
            assert!(with(|r| r.db_name = Some(ok.into())).is_ok(), "{ok}");
        }
        for no in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(129),
            "a\\b",
        ] {
            let e = with(|r| r.db_name = Some(no.into())).unwrap_err();
            assert_eq!(e.var, "DB_NAME", "{no}");
        }
    }

    #[test]
    fn booleans_any_case() {
        for (v, want) in [
            ("TRUE", true),
            ("yes", true),
            ("1", true),
            ("No", false),
            ("0", false),
        ] {
            assert_eq!(
                with(|r| r.rtc_enabled = Some(v.into()))
                    .unwrap()
                    .rtc_enabled,
                want
            );
        }
        let e = with(|r| r.sm_enabled = Some("maybe".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid SM_ENABLED \"maybe\": expected true, false, 1, 0, yes or no"
        );
    }

    #[test]
    fn relay_urls_rules() {
        let c =
            with(|r| r.relay_urls = Some("ws://127.0.0.1:7000, wss://r.example/x".into())).unwrap();
        assert_eq!(c.relay_urls, ["ws://127.0.0.1:7000", "wss://r.example/x"]);
        assert!(
            with(|r| r.relay_urls = Some(String::new()))
                .unwrap()
                .relay_urls
                .is_empty()
        );
        for no in ["http://x", "ws://", "wss://a b", "relay.example"] {
            assert_eq!(
                with(|r| r.relay_urls = Some(no.into())).unwrap_err().var,
                "RELAY_URLS"
            );
        }
    }

    #[test]
    fn own_relay_alone_unless_relay_urls_is_set() {
        assert!(
            with(|r| r.relay = Some("1".into()))
                .unwrap()
                .relay_urls
                .is_empty()
        );
        let both = with(|r| {
            r.relay = Some("1".into());
            r.relay_urls = Some("ws://127.0.0.1:7000".into());
        })
        .unwrap();
        assert_eq!(both.relay_urls, ["ws://127.0.0.1:7000"]);
    }

    #[test]
    fn numbers_in_range() {
        assert_eq!(
            with(|r| r.oplog_size = Some("199".into())).unwrap_err().var,
            "OPLOG_SIZE"
        );
        assert_eq!(
            with(|r| r.oplog_size = Some("200".into()))
                .unwrap()
                .oplog_size,
            200
        );
        assert_eq!(
            with(|r| r.port = Some("70000".into())).unwrap_err().var,
            "PORT"
        );
        assert_eq!(
            with(|r| r.port = Some("-1".into())).unwrap_err().var,
            "PORT"
        );
        assert_eq!(
            with(|r| r.flush_ms = Some("0".into())).unwrap_err().var,
            "FLUSH_MS"
        );
        assert_eq!(
            with(|r| r.flush_ms = Some("abc".into())).unwrap_err().var,
            "FLUSH_MS"
        );
    }

    #[test]
    fn relay_memory_and_http_limits_default_sanely_and_are_checked() {
        let c = with(|_| {}).unwrap();
        let r = c.relay_limits;
        assert_eq!((r.queue_bytes, r.memory_bytes), (1 << 20, 64 << 20));
        assert_eq!((r.messages_per_sec, r.max_filter_bytes), (100.0, 16 << 10));
        assert!(c.http_limits.max_connections >= 16);
        assert_eq!(c.http_limits.header_timeout, Duration::from_secs(10));
        // Bigger relay messages raise the default queues with them.
        let c = with(|r| r.relay_max_message_bytes = Some((1 << 20).to_string())).unwrap();
        assert_eq!(c.relay_limits.queue_bytes, 16 << 20);
        assert_eq!(c.relay_limits.memory_bytes, 1 << 30);
        for (set, var) in [
            (
                (|r: &mut RawSettings| r.relay_queue_bytes = Some("135167".into()))
                    as fn(&mut RawSettings),
                "RELAY_QUEUE_BYTES",
            ),
            (
                |r| {
                    r.relay_queue_bytes = Some("200000".into());
                    r.relay_memory_bytes = Some("100000".into());
                },
                "RELAY_MEMORY_BYTES",
            ),
            (
                |r| r.relay_messages_per_sec = Some("0".into()),
                "RELAY_MESSAGES_PER_SEC",
            ),
            (
                |r| r.relay_max_filter_bytes = Some("1023".into()),
                "RELAY_MAX_FILTER_BYTES",
            ),
            (
                |r| r.http_max_connections = Some("15".into()),
                "HTTP_MAX_CONNECTIONS",
            ),
            (
                |r| r.http_header_timeout = Some("1.5".into()),
                "HTTP_HEADER_TIMEOUT",
            ),
        ] {
            assert_eq!(with(set).unwrap_err().var, var);
        }
        let c = with(|r| {
            r.relay_queue_bytes = Some("135168".into());
            r.relay_memory_bytes = Some("135168".into());
            r.relay_messages_per_sec = Some("5".into());
            r.relay_max_filter_bytes = Some("1024".into());
            r.http_max_connections = Some("16".into());
            r.http_header_timeout = Some("2".into());
        })
        .unwrap();
        let r = c.relay_limits;
        assert_eq!((r.queue_bytes, r.memory_bytes), (135_168, 135_168));
        assert_eq!((r.messages_per_sec, r.max_filter_bytes), (5.0, 1024));
        assert_eq!(
            c.http_limits,
            HttpLimits {
                max_connections: 16,
                header_timeout: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn limits_default_generously_and_are_checked() {
        let c = with(|_| {}).unwrap();
        assert_eq!(c.peer_limits, PeerLimits::default());
        assert_eq!(c.peer_limits.max_peers, 256);
        assert_eq!(c.max_message_bytes, 16 << 20);
        assert_eq!(c.max_value_bytes, 1 << 20);
        assert!(
            c.peer_limits.bytes_burst >= (c.max_message_bytes + frame::MAX_WIRE_BYTES) as f64,
            "the default burst holds the largest message"
        );
        assert_eq!(c.relay_limits.max_message_bytes, 64 << 10);
        assert_eq!(c.relay_limits.max_subscriptions, 32);

        let c = with(|r| {
            r.max_peers = Some("2".into());
            r.peer_msg_rate = Some("5".into());
            r.peer_msg_burst = Some("10".into());
            r.peer_bytes_rate = Some("2048".into());
            r.max_message_bytes = Some("65536".into());
            r.peer_bytes_burst = Some("1703936".into());
            r.max_value_bytes = Some("100".into());
            r.relay_max_message_bytes = Some("4096".into());
            r.relay_events_per_sec = Some("1".into());
            r.relay_event_burst = Some("3".into());
            r.relay_max_subs = Some("2".into());
        })
        .unwrap();
        assert_eq!(
            c.peer_limits,
            PeerLimits {
                max_peers: 2,
                msg_rate: 5.0,
                msg_burst: 10.0,
                bytes_rate: 2048.0,
                bytes_burst: 1_703_936.0,
            }
        );
        assert_eq!((c.max_message_bytes, c.max_value_bytes), (65_536, 100));
        let r = c.relay_limits;
        assert_eq!((r.max_message_bytes, r.max_subscriptions), (4096, 2));
        assert_eq!((r.events_per_sec, r.event_burst), (1.0, 3.0));

        // A bigger MAX_MESSAGE_BYTES raises the default burst with it.
        let c = with(|r| r.max_message_bytes = Some((256 << 20).to_string())).unwrap();
        assert_eq!(
            c.peer_limits.bytes_burst,
            ((256 << 20) + frame::MAX_WIRE_BYTES) as f64
        );
        let e = with(|r| {
            r.max_message_bytes = Some("65536".into());
            r.peer_bytes_burst = Some("1703935".into());
        })
        .unwrap_err();
        assert_eq!(e.var, "PEER_BYTES_BURST");
        assert!(e.expected.contains("from 1703936"), "{e}");
    }

    #[test]
    fn forward_ops_and_its_interval() {
        assert_eq!(with(|_| {}).unwrap().forward, None);
        let on = with(|r| r.forward_ops = Some("1".into())).unwrap();
        assert_eq!(on.forward, Some(Duration::from_millis(DEFAULT_FORWARD_MS)));
        let slow = with(|r| {
            r.forward_ops = Some("true".into());
            r.forward_ms = Some("100".into());
        })
        .unwrap();
        assert_eq!(slow.forward, Some(Duration::from_millis(100)));
        for no in ["2", "on", ""] {
            let e = with(|r| r.forward_ops = Some(no.into())).unwrap_err();
            assert_eq!(e.var, "FORWARD_OPS", "{no:?}");
        }
        for no in ["0", "1001", "x", "-5"] {
            let e = with(|r| r.forward_ms = Some(no.into())).unwrap_err();
            assert_eq!(e.var, "FORWARD_MS", "{no:?}");
        }
    }

    #[test]
    fn super_admins_are_checksummed() {
        let c = with(|r| {
            r.super_admins = Some("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266 , 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into())
        })
        .unwrap();
        assert_eq!(
            c.super_admins,
            [
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
                "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
            ]
        );
        let e =
            with(|r| r.super_admins = Some("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266".into()))
                .unwrap_err();
        assert_eq!(e.var, "SUPER_ADMINS");
        assert!(e.expected.contains("EIP-55"));
    }

    #[test]
    fn ice_and_turn() {
        let c = with(|_| {}).unwrap();
        assert_eq!(c.ice.stun.len(), 4);
        assert!(c.password.0.is_empty());
        let c = with(|r| r.password = Some("hunter2".into())).unwrap();
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the password never shows in Debug"
        );
        assert!(
            with(|r| r.ice_servers = Some(String::new()))
                .unwrap()
                .ice
                .stun
                .is_empty()
        );
        assert_eq!(
            with(|r| r.ice_servers = Some("http://x".into()))
                .unwrap_err()
                .var,
            "ICE_SERVERS"
        );
        let e = with(|r| r.turn_urls = Some("turn:t.example:3478".into())).unwrap_err();
        assert_eq!(e.var, "TURN_USERNAME");
        let c = with(|r| {
            r.turn_urls = Some("turn:t.example:3478".into());
            r.turn_username = Some("u".into());
            r.turn_credential = Some("s3cret-cred".into());
        })
        .unwrap();
        assert!(
            !format!("{c:?}").contains("s3cret-cred"),
            "credentials never show in Debug"
        );
        assert_eq!(
            with(|r| r.turn_urls = Some("stun:x".into()))
                .unwrap_err()
                .var,
            "TURN_URLS"
        );
    }

    #[test]
    fn database_url_rules() {
        assert!(with(|_| {}).unwrap().database.is_none());
        assert!(
            with(|r| r.database_url = Some(String::new()))
                .unwrap()
                .database
                .is_none()
        );
        let c = with(|r| {
            r.database_url = Some("postgres://u:hunter2@db.example:5432/d?sslmode=require".into())
        })
        .unwrap();
        assert!(c.database.is_some());
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = with(|r| r.database_url = Some("mysql://u:hunter2@h/d".into())).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.expected.contains("postgres://user:pass@host:port/db"));
        assert!(!e.to_string().contains("mysql"), "{e}");
    }

    #[test]
    fn log_settings() {
        assert_eq!(
            with(|r| r.log_format = Some("JSON".into()))
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        assert_eq!(
            with(|r| r.log_format = Some("xml".into())).unwrap_err().var,
            "LOG_FORMAT"
        );
        assert_eq!(
            with(|r| r.rust_log = Some("[[[".into())).unwrap_err().var,
            "RUST_LOG"
        );
    }

    #[test]
    fn sm_settings() {
        let mnemonic = "test test test test test test test test test test test junk";
        let c = with(|r| {
            r.sm_key = Some(mnemonic.into());
            r.sm_strict = Some("1".into());
            r.sm_rules =
                Some(r#"[{"if":{"points":{"$gte":10}},"then":{"assignRole":"user"}}]"#.into());
        })
        .unwrap();
        assert!(c.sm_strict);
        assert_eq!(c.sm_rules.len(), 1);
        assert_eq!(
            c.sm_signer.as_ref().unwrap().address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert!(
            !format!("{c:?}").contains("junk"),
            "SM_KEY never shows in Debug"
        );

        let e = with(|r| r.sm_key = Some("correct horse battery staple".into())).unwrap_err();
        assert_eq!(e.var, "SM_KEY");
        assert!(!e.to_string().contains("horse"), "{e}");
        assert!(e.to_string().contains("BIP39"), "{e}");
        let e = with(|r| r.sm_key = Some("0x12".into())).unwrap_err();
        assert!(
            e.to_string().contains("<hidden>") && !e.to_string().contains("0x12"),
            "{e}"
        );

        let e = with(|r| r.sm_rules = Some(r#"[{"if":{},"then":{"assignRole":"user"}}]"#.into()))
            .unwrap_err();
        assert_eq!(e.var, "SM_RULES");
        assert!(e.to_string().contains("together with SM_KEY"), "{e}");
        for (rules, needle) in [
            (
                r#"[{"if":{},"then":{"assignRole":"wizard"}}]"#,
                "unknown role",
            ),
            (
                r#"[{"if":{"a":{"$regex":"("}},"then":{"assignRole":"user"}}]"#,
                "$regex",
            ),
            ("[oops", "not JSON"),
            ("/no/such/rules.json", "cannot read"),
        ] {
            let e = with(|r| {
                r.sm_key = Some(mnemonic.into());
                r.sm_rules = Some(rules.into());
            })
            .unwrap_err();
            assert_eq!(e.var, "SM_RULES");
            assert!(e.to_string().contains(needle), "{rules}: {e}");
        }
        assert_eq!(
            with(|r| r.sm_strict = Some("sometimes".into()))
                .unwrap_err()
                .var,
            "SM_STRICT"
        );
    }
}
