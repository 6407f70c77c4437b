//! GenosRTC, the transport browsers speak (genosrtc-transport.md). This release holds
//! its pure codecs: data-channel frames, topics and kinds, and SDP sealing. Signalling,
//! peer connections and the room API build on them.

pub mod cells;
pub mod frame;
mod ifaces;
pub mod nostr;
pub mod peer;
pub mod room;
mod room_metrics;
pub mod seal;
pub mod topic;
pub mod udp;
