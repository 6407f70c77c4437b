//! The GenosDB sync messages of channel `syncGraph` (genosdb-data.md §6–§8): decoding,
//! the protocol's decisions, local writes, and the service that runs them on a room.
//!
//! - `message`, `engine`, `local`, `memo`: the sans-IO core (codec, decisions, writes).
//! - `admission`: pure filters over a decoded batch (MAX_VALUE_BYTES, SM replays, SM_STRICT).
//! - `shared`: the state the service and every outbox share; applies what peers send.
//! - `forward`: FORWARD_OPS, live ops gathered and handed on.
//! - `outbox`: one queue per peer, and the full state in parts, cached per store version.
//! - `warm`: writes that cache ahead once the graph has stood still.
//! - `service`: the actor on the room's events, and the handle the daemon holds.
//! - `catchups`: catch-ups served and their times, for `/metrics` and the console.
//! - `governor`: keeps the SM's ACLs current.

mod admission;
pub mod catchups;
pub mod engine;
mod forward;
pub(crate) mod governor;
pub mod local;
mod memo;
pub mod message;
mod metrics;
mod outbox;
pub mod service;
mod shared;
mod warm;

pub use message::{Batch, Message, ParseError, Rejection};
pub use service::{LocalWrite, PeerChange, SyncHandle};
pub use shared::{CHANNEL, DEFAULT_MAX_VALUE_BYTES, SyncConfig, SyncStats};
