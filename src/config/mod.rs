//! Configuration: `.env`, then the process environment, then CLI flags of the same
//! names. Every value is validated up front; a bad one is reported in one line naming
//! the variable, the value and the form it wants, and the daemon exits with code 2.
//!
//! - [`raw`]: the settings as given, one clap argument per variable;
//! - `sections`: each section of [`Config`] from them, every number's bounds in one
//!   constant whose refusal text is derived from it (`parse`);
//! - here: the validated [`Config`], read by `daemon` alone.

mod parse;
mod raw;
mod sections;
#[cfg(test)]
mod tests;

pub use raw::RawSettings;

use crate::http::serve::HttpLimits;
use crate::persist::files::Layout;
use crate::persist::pg::PgTarget;
use crate::persist::{MAX_UNWRITTEN_BYTES, PersistConfig};
use crate::relay::RelayLimits;
use crate::rtc::room::PeerLimits;
use crate::sm::governance::Rule;
use crate::sm::sig::Signer;
use clap::{Parser, Subcommand};
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

/// The default MAX_VALUE_BYTES lives with the sync layer that enforces it.
pub use crate::sync::DEFAULT_MAX_VALUE_BYTES;
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
    Query(QueryArgs),
}

/// What the `query` subcommand prints (it runs in daemon::query).
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// A GenosDB query (JSON object; the operators of SM_RULES: $eq, $gt, $in, $regex…).
    pub query: Option<String>,
    /// Print the node with this id instead.
    #[arg(long)]
    pub node: Option<String>,
    /// Print the oplog window (newest LIMIT entries) instead.
    #[arg(long)]
    pub oplog: bool,
    /// At most this many results (1 to 1000).
    #[arg(long, default_value_t = crate::http::console::look::DEFAULT_LIMIT)]
    pub limit: usize,
    /// A running daemon, http://host:port; ADMIN_TOKEN must be its token.
    #[arg(long)]
    pub url: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Files,
    Postgres,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated configuration, in sections. Only `daemon` reads it: it hands each layer
/// the section (or the limits) that layer needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The room is graph-sync-room-<db_name>; files and rows are named by it.
    pub db_name: String,
    pub rtc: RtcSettings,
    pub relay: RelaySettings,
    pub http: HttpSettings,
    pub sm: SmSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
}

/// The room, its signalling and its peers.
#[derive(Clone, Debug)]
pub struct RtcSettings {
    /// RTC_ENABLED: join the room at all.
    pub enabled: bool,
    /// ROOM_PRESENCE: also be seen in app-sync-<DB_NAME>.
    pub room_presence: bool,
    /// Cells mode with this cell size, or the full mesh.
    pub cells: Option<usize>,
    /// FORWARD_OPS: live ops accepted from one peer go to every other connected peer,
    /// gathered for this long into one message.
    pub forward: Option<Duration>,
    pub relay_urls: Vec<String>,
    /// MAX_PEERS and the per-peer rates.
    pub peer_limits: PeerLimits,
    pub max_message_bytes: usize,
    pub max_value_bytes: usize,
    pub password: Secret,
    pub ice: IceConfig,
    /// SEND_WINDOW_BYTES: what one data channel may have sent and not yet had
    /// acknowledged; sends wait beyond it.
    pub send_window: usize,
    /// DIAL_WAIT_MS: how long a peer heard announcing gets to dial us before we dial it.
    pub dial_wait: Duration,
}

/// The embedded Nostr relay (RELAY).
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub enabled: bool,
    pub limits: RelayLimits,
}

/// The HTTP server (/health, /metrics, the relay's WebSocket).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub host: IpAddr,
    pub port: u16,
    /// HTTP_MAX_CONNECTIONS and HTTP_HEADER_TIMEOUT.
    pub limits: HttpLimits,
    /// ADMIN_TOKEN: the console's read-only look at the graph (empty: off).
    pub admin_token: Secret,
}

/// The Security Manager.
#[derive(Clone, Debug)]
pub struct SmSettings {
    pub enabled: bool,
    pub super_admins: Vec<String>,
    pub strict: bool,
    /// SM_KEY, parsed: its Debug form shows only the address.
    pub signer: Option<Signer>,
    pub rules: Vec<Rule>,
}

/// Where and how the graph is kept.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    /// Set by DATABASE_URL: the store lives in Postgres.
    pub database: Option<PgTarget>,
    pub flush_every: Duration,
    pub oplog_size: usize,
    pub compact_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

impl RawSettings {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        Ok(Config {
            db_name: self.db_name()?,
            rtc: self.rtc()?,
            relay: self.relay()?,
            http: self.http()?,
            sm: self.sm()?,
            storage: self.storage()?,
            log: self.log()?,
        })
    }
}

/// A refused setting: `invalid DB_NAME "../x": expected …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var} {value:?}: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
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
        Layout::new(&self.storage.data_dir, &self.db_name)
    }

    pub fn persist(&self) -> PersistConfig {
        PersistConfig {
            layout: self.layout(),
            oplog_size: self.storage.oplog_size,
            flush_every: self.storage.flush_every,
            compact_bytes: self.storage.compact_bytes,
            max_unwritten_bytes: MAX_UNWRITTEN_BYTES,
        }
    }
}
