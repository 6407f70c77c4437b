//! genosdb-fallback: an always-on superpeer for GenosDB rooms.
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
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod loadgen;
pub mod persist;
pub mod query_cmd;
pub mod rate;
pub mod redact;
pub mod relay;
pub mod rtc;
pub mod sm;
pub mod store;
pub mod sync;
pub mod tools;
