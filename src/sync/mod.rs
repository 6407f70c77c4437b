//! The GenosDB sync messages of channel `syncGraph` (genosdb-data.md §6–§8): decoding,
//! the protocol's decisions, local writes, and the service that runs them on a room.

pub mod engine;
pub mod governor;
pub mod local;
pub mod memo;
pub mod message;
mod metrics;
pub mod service;

pub use message::{Batch, Message, ParseError, Rejection};
pub use service::{CHANNEL, LocalWrite, PeerChange, SyncConfig, SyncHandle, SyncStats};
