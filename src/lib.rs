//! genosdb-fallback: an always-on superpeer for GenosDB rooms.

pub mod config;
pub mod store;
pub mod sync;
