//! genosdb-fallback: an always-on superpeer for GenosDB rooms.

pub mod config;
pub mod daemon;
pub mod eth;
pub mod http;
pub mod persist;
pub mod store;
pub mod sync;
pub mod tools;
