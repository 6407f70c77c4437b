//! The GenosDB sync messages of channel `syncGraph` (genosdb-data.md §6).

pub mod message;

pub use message::{Batch, Message, ParseError, Rejection};
