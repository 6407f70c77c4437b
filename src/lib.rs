//! genosdb-fallback: an always-on superpeer for GenosDB rooms.
//!
//! # Layout
//!
//! The components, lowest layer first; each imports only from the layers before it
//! (`tests/layers.rs` checks it, and lists the exceptions still to remove):
//!
//! 0. [`eth`] (addresses, EIP-55), [`rate`] (token buckets, backoff), [`redact`]
//!    (secrets out of logs), [`dotenv`] (`.env`, checked), [`figures`] (the rows each
//!    stats type lists for `/metrics`).
//! 1. [`store`]: pure. The graph, hybrid logical clocks, GenosDB's merge rules, the oplog.
//! 2. [`persist`]: the flusher and its `Backend` trait, the shared error and load types
//!    (`persist::error`), one compactor thread for every backend, the byte codec, and the
//!    file and Postgres backends. [`sm`]: the Security Manager, pure: signatures, roles,
//!    rules.
//! 3. [`rtc`]: GenosRTC: frames, topics, sealing, the Nostr relay pool, WebRTC peers, the
//!    room and its cells overlay. [`relay`]: the embedded Nostr relay.
//! 4. [`sync`]: GenosDB's messages on a room: decoding, the pure protocol engine, the
//!    service with its per-peer queues, the SM_RULES governor.
//! 5. [`http`]: `/`, `/health`, `/metrics`, the bounded listener, the relay's WebSocket,
//!    the operator's console; `http::Running` holds what the daemon has started.
//! 6. [`config`]: environment, `.env` and flags, validated into sections.
//! 7. [`daemon`]: the composition root and the only reader of `Config`: `run`, the
//!    storage choice (`daemon::storage`), the room wiring, the subcommands.
//!
//! Tooling, imported by nothing: `loadgen` (the load generator, behind the `loadgen`
//! feature) and `fuzzing` (what the fuzz targets run).
//!
//! The store applies GenosDB's merge rules to operations as peers send them, and
//! answers a returning peer's `sync` with a delta or a full state:
//!
//! ```
//! use genosdb_fallback::store::{Store, SyncReply};
//! use genosdb_fallback::sync::{message, Message};
//!
//! let mut store = Store::new(1000);
//! let batch = message::parse_json(
//!     r#"[{"type":"upsert","id":"n1","value":{"title":"hello"},"timestamp":{"physical":1795591854021,"logical":1}}]"#,
//! ).unwrap();
//! for msg in batch.messages {
//!     if let Message::Op(op) = msg {
//!         store.apply(op, 1_795_591_854_100);
//!     }
//! }
//! assert_eq!(store.get("n1").unwrap().value.as_ref().unwrap().get(), r#"{"title":"hello"}"#);
//! // A peer that last saw the room before our oldest oplog entry gets everything.
//! let stale = Some(genosdb_fallback::store::Hlc::new(1, 0));
//! assert_eq!(store.sync_reply(stale), SyncReply::Full);
//! assert!(store.delta_json().starts_with(r#"{"type":"deltaSync","operations":[{"type":"upsert","id":"n1""#));
//! ```

pub mod config;
pub mod daemon;
pub mod dotenv;
pub mod eth;
pub mod figures;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod persist;
pub mod rate;
pub mod redact;
pub mod relay;
pub mod rtc;
pub mod sm;
pub mod store;
pub mod sync;
