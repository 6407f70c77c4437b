//! Each section of [`Config`](super::Config) from the raw settings: every numeric
//! variable's bounds are one [`Num`] constant, next to the section that reads it.

use super::parse::{Num, bad, boolean, db_name, host, url_list};
use super::{
    ConfigError, DEFAULT_FORWARD_MS, DEFAULT_MAX_VALUE_BYTES, DEFAULT_RELAYS, DEFAULT_STUN,
    HttpSettings, IceConfig, LogFormat, LogSettings, MAX_OPLOG_SIZE, RawSettings, RelaySettings,
    RtcSettings, Secret, SmSettings, StorageSettings,
};
use crate::eth;
use crate::http::serve::HttpLimits;
use crate::persist::pg::PgTarget;
use crate::relay::RelayLimits;
use crate::rtc::frame;
use crate::rtc::room::PeerLimits;
use crate::sm::governance::{self, Rule};
use crate::sm::key;
use crate::sm::policy::Roles;
use crate::sm::sig::Signer;
use crate::store::oplog::MIN_OPLOG_SIZE;
use std::path::PathBuf;
use std::time::Duration;

const TB: u64 = 1 << 40;
const COUNT: &str = "a whole number";
const BYTES: &str = "a byte count";

const MAX_PEERS: Num = Num::new("MAX_PEERS", COUNT, 1, 100_000);
const PEER_MSG_RATE: Num = Num::new(
    "PEER_MSG_RATE",
    "a whole number of messages per second",
    1,
    1_000_000,
);
const PEER_MSG_BURST: Num = Num::new(
    "PEER_MSG_BURST",
    "a whole number of messages",
    1,
    10_000_000,
);
const PEER_BYTES_RATE: Num = Num::new("PEER_BYTES_RATE", "a byte count per second", 1024, TB);
const PEER_BYTES_BURST: Num = Num::new("PEER_BYTES_BURST", BYTES, 0, TB);
const MAX_MESSAGE_BYTES: Num = Num::new("MAX_MESSAGE_BYTES", BYTES, 65_536, 256 << 20);
const MAX_VALUE_BYTES: Num = Num::new("MAX_VALUE_BYTES", BYTES, 1, 1 << 30);
const SEND_WINDOW_BYTES: Num = Num::new("SEND_WINDOW_BYTES", BYTES, 16_384, 16 << 20);
const DIAL_WAIT_MS: Num = Num::new("DIAL_WAIT_MS", "milliseconds", 0, 10_000);
const CELL_SIZE: Num =
    Num::new("CELL_SIZE", COUNT, 2, 1000).note("the browsers' rtc.cells.cellSize");
const FORWARD_MS: Num = Num::new("FORWARD_MS", "milliseconds", 1, 1000);

const RELAY_MAX_CONNECTIONS: Num = Num::new("RELAY_MAX_CONNECTIONS", COUNT, 1, 1_000_000);
const RELAY_MAX_PER_IP: Num = Num::new("RELAY_MAX_PER_IP", COUNT, 1, 1_000_000);
const RELAY_MAX_MESSAGE_BYTES: Num = Num::new("RELAY_MAX_MESSAGE_BYTES", BYTES, 4096, 16 << 20);
const RELAY_EVENTS_PER_SEC: Num = Num::new(
    "RELAY_EVENTS_PER_SEC",
    "a whole number of events per second",
    1,
    1_000_000,
);
const RELAY_EVENT_BURST: Num = Num::new(
    "RELAY_EVENT_BURST",
    "a whole number of events",
    1,
    1_000_000,
);
const RELAY_MAX_SUBS: Num = Num::new("RELAY_MAX_SUBS", COUNT, 1, 1024);
const RELAY_MESSAGES_PER_SEC: Num = Num::new(
    "RELAY_MESSAGES_PER_SEC",
    "a whole number of messages per second",
    1,
    1_000_000,
);
const RELAY_QUEUE_BYTES: Num = Num::new("RELAY_QUEUE_BYTES", BYTES, 0, TB);
const RELAY_MEMORY_BYTES: Num = Num::new("RELAY_MEMORY_BYTES", BYTES, 0, TB);
const RELAY_MAX_FILTER_BYTES: Num = Num::new("RELAY_MAX_FILTER_BYTES", BYTES, 1024, 16 << 20);

const HTTP_MAX_CONNECTIONS: Num = Num::new("HTTP_MAX_CONNECTIONS", COUNT, 16, 1_000_000);
const HTTP_HEADER_TIMEOUT: Num =
    Num::new("HTTP_HEADER_TIMEOUT", "a whole number of seconds", 1, 3600);
const PORT: Num = Num::new("PORT", "a port number", 0, u16::MAX as u64);

const FLUSH_MS: Num = Num::new("FLUSH_MS", "milliseconds", 1, 60_000);
const OPLOG_SIZE: Num = Num::new(
    "OPLOG_SIZE",
    COUNT,
    MIN_OPLOG_SIZE as u64,
    MAX_OPLOG_SIZE as u64,
);
const COMPACT_BYTES: Num = Num::at_least("COMPACT_BYTES", BYTES, 4096);

impl RawSettings {
    pub(super) fn db_name(&self) -> Result<String, ConfigError> {
        db_name(self.db_name.as_deref().unwrap_or("default"))
    }

    /// Room, signalling and peers: everything the WebRTC side reads.
    pub(super) fn rtc(&self) -> Result<RtcSettings, ConfigError> {
        Ok(RtcSettings {
            enabled: boolean("RTC_ENABLED", self.rtc_enabled.as_deref(), true)?,
            room_presence: boolean("ROOM_PRESENCE", self.room_presence.as_deref(), false)?,
            cells: self.cells()?,
            forward: self.forward()?,
            relay_urls: relay_urls(self.relay_urls.as_deref(), self.relay_enabled()?)?,
            peer_limits: self.peer_limits()?,
            max_message_bytes: self.max_message_bytes()?,
            max_value_bytes: MAX_VALUE_BYTES.parse(
                self.max_value_bytes.as_deref(),
                DEFAULT_MAX_VALUE_BYTES as u64,
            )? as usize,
            password: Secret(self.password.clone().unwrap_or_default()),
            ice: self.ice()?,
            send_window: SEND_WINDOW_BYTES.parse(
                self.send_window_bytes.as_deref(),
                crate::rtc::peer::DEFAULT_SEND_WINDOW as u64,
            )? as usize,
            dial_wait: Duration::from_millis(DIAL_WAIT_MS.parse(
                self.dial_wait_ms.as_deref(),
                crate::rtc::room::DEFAULT_DIAL_WAIT.as_millis() as u64,
            )?),
        })
    }

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

    fn max_message_bytes(&self) -> Result<usize, ConfigError> {
        Ok(MAX_MESSAGE_BYTES.parse(
            self.max_message_bytes.as_deref(),
            frame::DEFAULT_MAX_MESSAGE_BYTES as u64,
        )? as usize)
    }

    /// MAX_PEERS and the per-peer rates. The byte burst must hold the largest message
    /// a peer may send (its frames and, compressed, what it inflates to), or a peer
    /// that sends one would be dropped every time.
    fn peer_limits(&self) -> Result<PeerLimits, ConfigError> {
        let d = PeerLimits::default();
        let min_burst = (self.max_message_bytes()? + frame::MAX_WIRE_BYTES) as u64;
        Ok(PeerLimits {
            max_peers: MAX_PEERS.parse(self.max_peers.as_deref(), d.max_peers as u64)? as usize,
            msg_rate: PEER_MSG_RATE.parse(self.peer_msg_rate.as_deref(), d.msg_rate as u64)? as f64,
            msg_burst: PEER_MSG_BURST.parse(self.peer_msg_burst.as_deref(), d.msg_burst as u64)?
                as f64,
            bytes_rate: PEER_BYTES_RATE
                .parse(self.peer_bytes_rate.as_deref(), d.bytes_rate as u64)?
                as f64,
            bytes_burst: PEER_BYTES_BURST
                .from(min_burst)
                .because("MAX_MESSAGE_BYTES plus 100 frames, so the largest message fits")
                .parse(
                    self.peer_bytes_burst.as_deref(),
                    (d.bytes_burst as u64).max(min_burst),
                )? as f64,
        })
    }

    fn cells(&self) -> Result<Option<usize>, ConfigError> {
        let on = boolean("CELLS", self.cells.as_deref(), false)?;
        let size = CELL_SIZE.parse(
            self.cell_size.as_deref(),
            crate::rtc::cells::DEFAULT_CELL_SIZE as u64,
        )? as usize;
        Ok(on.then_some(size))
    }

    fn forward(&self) -> Result<Option<Duration>, ConfigError> {
        let on = boolean("FORWARD_OPS", self.forward_ops.as_deref(), false)?;
        let every = FORWARD_MS.parse(self.forward_ms.as_deref(), DEFAULT_FORWARD_MS)?;
        Ok(on.then_some(Duration::from_millis(every)))
    }

    /// The embedded Nostr relay.
    pub(super) fn relay(&self) -> Result<RelaySettings, ConfigError> {
        Ok(RelaySettings {
            enabled: self.relay_enabled()?,
            limits: self.relay_limits()?,
        })
    }

    fn relay_limits(&self) -> Result<RelayLimits, ConfigError> {
        let d = RelayLimits::default();
        let limits = RelayLimits {
            max_connections: RELAY_MAX_CONNECTIONS.parse(
                self.relay_max_connections.as_deref(),
                d.max_connections as u64,
            )? as usize,
            max_per_ip: RELAY_MAX_PER_IP
                .parse(self.relay_max_per_ip.as_deref(), d.max_per_ip as u64)?
                as usize,
            max_message_bytes: RELAY_MAX_MESSAGE_BYTES.parse(
                self.relay_max_message_bytes.as_deref(),
                d.max_message_bytes as u64,
            )? as usize,
            events_per_sec: RELAY_EVENTS_PER_SEC.parse(
                self.relay_events_per_sec.as_deref(),
                d.events_per_sec as u64,
            )? as f64,
            event_burst: RELAY_EVENT_BURST
                .parse(self.relay_event_burst.as_deref(), d.event_burst as u64)?
                as f64,
            max_subscriptions: RELAY_MAX_SUBS
                .parse(self.relay_max_subs.as_deref(), d.max_subscriptions as u64)?
                as usize,
            ..d
        };
        self.relay_memory_limits(limits)
    }

    /// RELAY_MESSAGES_PER_SEC, RELAY_QUEUE_BYTES, RELAY_MEMORY_BYTES and
    /// RELAY_MAX_FILTER_BYTES. A queue must hold the largest event (and its tags);
    /// the total must hold one queue. Their defaults grow with
    /// RELAY_MAX_MESSAGE_BYTES.
    fn relay_memory_limits(&self, l: RelayLimits) -> Result<RelayLimits, ConfigError> {
        let d = RelayLimits::default();
        let min_queue = 2 * l.max_message_bytes as u64 + 4096;
        let queue_bytes = RELAY_QUEUE_BYTES
            .from(min_queue)
            .because("twice RELAY_MAX_MESSAGE_BYTES, and 4096")
            .parse(
                self.relay_queue_bytes.as_deref(),
                (d.queue_bytes as u64).max(16 * l.max_message_bytes as u64),
            )?;
        let memory_bytes = RELAY_MEMORY_BYTES
            .from(queue_bytes)
            .because("RELAY_QUEUE_BYTES")
            .parse(
                self.relay_memory_bytes.as_deref(),
                (d.memory_bytes as u64).max(64 * queue_bytes),
            )?;
        Ok(RelayLimits {
            messages_per_sec: RELAY_MESSAGES_PER_SEC.parse(
                self.relay_messages_per_sec.as_deref(),
                d.messages_per_sec as u64,
            )? as f64,
            queue_bytes: queue_bytes as usize,
            memory_bytes: memory_bytes as usize,
            max_filter_bytes: RELAY_MAX_FILTER_BYTES.parse(
                self.relay_max_filter_bytes.as_deref(),
                d.max_filter_bytes as u64,
            )? as usize,
            ..l
        })
    }

    /// The HTTP server: where it listens and its connection limits.
    pub(super) fn http(&self) -> Result<HttpSettings, ConfigError> {
        let max_connections = match self.http_max_connections.as_deref() {
            None => HttpLimits::default_max_connections(),
            v => HTTP_MAX_CONNECTIONS.parse(v, 0)? as usize,
        };
        Ok(HttpSettings {
            host: host(self.host.as_deref().unwrap_or("0.0.0.0"))?,
            port: PORT.parse(self.port.as_deref(), 3000)? as u16,
            limits: HttpLimits {
                max_connections,
                header_timeout: Duration::from_secs(
                    HTTP_HEADER_TIMEOUT.parse(self.http_header_timeout.as_deref(), 10)?,
                ),
            },
            admin_token: admin_token(self.admin_token.as_deref())?,
        })
    }

    /// The Security Manager.
    pub(super) fn sm(&self) -> Result<SmSettings, ConfigError> {
        Ok(SmSettings {
            enabled: boolean("SM_ENABLED", self.sm_enabled.as_deref(), false)?,
            super_admins: super_admins(self.super_admins.as_deref().unwrap_or(""))?,
            strict: boolean("SM_STRICT", self.sm_strict.as_deref(), false)?,
            signer: sm_key(self.sm_key.as_deref())?,
            rules: self.sm_rules()?,
        })
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

    /// Where and how the graph is kept.
    pub(super) fn storage(&self) -> Result<StorageSettings, ConfigError> {
        Ok(StorageSettings {
            data_dir: data_dir(self.data_dir.as_deref().unwrap_or("./data"))?,
            database: database_url(self.database_url.as_deref())?,
            flush_every: Duration::from_millis(FLUSH_MS.parse(self.flush_ms.as_deref(), 200)?),
            oplog_size: OPLOG_SIZE.parse(self.oplog_size.as_deref(), 1000)? as usize,
            compact_bytes: COMPACT_BYTES.parse(self.compact_bytes.as_deref(), 64 << 20)?,
        })
    }

    pub(super) fn log(&self) -> Result<LogSettings, ConfigError> {
        Ok(LogSettings {
            format: log_format(self.log_format.as_deref().unwrap_or("text"))?,
            filter: log_filter(self.rust_log.as_deref().unwrap_or("info"))?,
        })
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

/// SM_KEY is never echoed: a refusal shows `<hidden>` for its value.
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
