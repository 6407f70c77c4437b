//! Nostr topics and event kinds derived from app, room and peer ids (§3.1, §3.2).

use sha1::{Digest, Sha1};

/// GenosDB's fixed appId.
pub const APP_ID: &str = "1234";

/// `concat(base36(b) for b in SHA-1(s))`, lowercase, without zero padding.
pub fn topic_of(s: &str) -> String {
    let digest = Sha1::digest(s.as_bytes());
    let mut out = String::with_capacity(40);
    for b in digest.iter() {
        push_base36(&mut out, *b);
    }
    out
}

fn push_base36(out: &mut String, b: u8) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if b >= 36 {
        out.push(DIGITS[(b / 36) as usize] as char);
    }
    out.push(DIGITS[(b % 36) as usize] as char);
}

/// The room's shared topic, where announces go.
pub fn root_topic(app_id: &str, room: &str) -> String {
    topic_of(&format!("GenosRTC@{app_id}@{room}"))
}

/// A peer's own topic, where offers and answers for it go.
pub fn self_topic(app_id: &str, room: &str, peer_id: &str) -> String {
    topic_of(&format!("GenosRTC@{app_id}@{room}@{peer_id}"))
}

/// `20000 + (sum of UTF-16 code units) mod 10000`: always an ephemeral kind.
pub fn kind_of(topic: &str) -> u16 {
    let sum: u64 = topic.encode_utf16().map(u64::from).sum();
    20_000 + (sum % 10_000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_without_padding() {
        let mut s = String::new();
        for b in [0x05, 35, 36, 0xff] {
            push_base36(&mut s, b);
        }
        assert_eq!(s, "5z1073");
    }
}
