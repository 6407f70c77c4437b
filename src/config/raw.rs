//! The settings as given: one clap argument per variable, each also read from its
//! environment variable (`.env` is loaded into the environment first). Nothing is
//! checked here; [`RawSettings::validate`](super::RawSettings::validate) does that.

use clap::Args;

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
    /// Milliseconds a peer heard announcing gets to dial us first (DIAL_WAIT_MS).
    #[arg(long, env = "DIAL_WAIT_MS", global = true)]
    pub dial_wait_ms: Option<String>,
}
