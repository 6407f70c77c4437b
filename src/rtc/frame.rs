//! GenosRTC data-channel frames (§6): a pure codec.
//!
//! ```text
//! 0   12  channel name, UTF-8, NUL-padded
//! 12  1   nonce (per sender and channel, +1 per message, wraps)
//! 13  1   flags: LAST | META | BINARY | JSON | DEFLATE
//! 14  1   progress = round((i+1)/n*255)
//! 15  …   up to 16369 bytes of the (possibly deflated) payload
//! ```
//! Received bytes are hostile: parsing never panics, and reassembly is bounded in
//! chunks, bytes, inflated size and time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub const NAME_LEN: usize = 12;
pub const HEADER_LEN: usize = 15;
pub const MAX_FRAME_LEN: usize = 16_384;
pub const CHUNK_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// Browsers refuse to send, and ignore, messages of more chunks.
pub const MAX_CHUNKS: usize = 100;
/// The default MAX_MESSAGE_BYTES.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The most bytes of frames one message can take on the wire (100 full frames).
pub const MAX_WIRE_BYTES: usize = MAX_CHUNKS * MAX_FRAME_LEN;
/// Payloads this large or larger are deflated when that makes them smaller.
pub const DEFLATE_MIN: usize = 512;

pub const LAST: u8 = 0x01;
pub const META: u8 = 0x02;
pub const BINARY: u8 = 0x04;
pub const JSON: u8 = 0x08;
pub const DEFLATE: u8 = 0x10;

pub const PING: &str = "@_ping";
pub const PONG: &str = "@_pong";
pub const LEAVE: &str = "@_leave";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("channel name {0:?} is empty, longer than 12 bytes or holds NUL")]
    Channel(String),
    #[error("message needs {0} chunks; at most 100 fit")]
    TooLarge(usize),
    #[error("frame of {0} bytes is shorter than its 15-byte header or longer than 16384")]
    FrameLength(usize),
    #[error("message on {channel} exceeds {limit} chunks, or {limit} incomplete messages are held")]
    Limit { channel: String, limit: usize },
    /// MAX_MESSAGE_BYTES: the message, received or inflated, or everything held of
    /// incomplete messages, would pass the byte limit.
    #[error("message on {channel} exceeds {limit} bytes")]
    MessageBytes { channel: String, limit: usize },
    #[error("message on {0} does not inflate")]
    Inflate(String),
    #[error("meta chunk on {0} is not JSON")]
    Meta(String),
}

/// What `send()` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A JS string: sent as UTF-8, no JSON flag.
    Text(&'a str),
    /// Any other JS value, already serialized as JSON text.
    Json(&'a str),
    /// Bytes (a `Uint8Array`); browsers set the JSON bit on these too.
    Binary(&'a [u8]),
}

/// Encodes one message into its frames. `meta` is only valid with binary payloads.
pub fn encode(
    channel: &str,
    nonce: u8,
    payload: Payload,
    meta: Option<&str>,
) -> Result<Vec<Vec<u8>>, FrameError> {
    let name = channel_bytes(channel)?;
    let (bytes, mut kind) = match payload {
        Payload::Text(s) => (s.as_bytes(), 0),
        Payload::Json(s) => (s.as_bytes(), JSON),
        Payload::Binary(b) => (b, BINARY | JSON),
    };
    let deflated;
    let mut body: &[u8] = bytes;
    if kind & BINARY == 0 && bytes.len() >= DEFLATE_MIN {
        deflated = deflate(bytes);
        if deflated.len() < bytes.len() {
            body = &deflated;
            kind |= DEFLATE;
        }
    }
    let meta = meta.filter(|_| kind & BINARY != 0);
    let data_chunks = body.len().div_ceil(CHUNK_LEN);
    let total = (data_chunks + meta.is_some() as usize).max(1);
    if total > MAX_CHUNKS {
        return Err(FrameError::TooLarge(total));
    }
    let mut frames = Vec::with_capacity(total);
    let mut pieces = body.chunks(CHUNK_LEN);
    for i in 0..total {
        let is_meta = meta.is_some() && i == 0;
        let piece: &[u8] = if is_meta {
            meta.unwrap_or_default().as_bytes()
        } else {
            pieces.next().unwrap_or_default()
        };
        let mut flags = kind;
        if i == total - 1 {
            flags |= LAST;
        }
        if is_meta {
            flags |= META;
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + piece.len());
        frame.extend_from_slice(&name);
        frame.extend_from_slice(&[nonce, flags, progress(i, total)]);
        frame.extend_from_slice(piece);
        frames.push(frame);
    }
    Ok(frames)
}

/// Gives already encoded frames of one message a new nonce, so a message encoded
/// once can be sent again as a new message (a cached full state to the next peer).
pub fn set_nonce(frames: &mut [Vec<u8>], nonce: u8) {
    for f in frames {
        if let Some(b) = f.get_mut(NAME_LEN) {
            *b = nonce;
        }
    }
}

/// A 15-byte frame with an empty string payload: ping, pong and leave.
pub fn control(channel: &str) -> Vec<u8> {
    let mut frame = channel_bytes(channel)
        .expect("built-in channel names are valid")
        .to_vec();
    frame.extend_from_slice(&[0, LAST, 0xff]);
    frame
}

/// `Math.round((i+1)/n*255)`, exactly as browsers compute it.
fn progress(i: usize, n: usize) -> u8 {
    let x = (i + 1) as f64 / n as f64 * 255.0;
    (x + 0.5).floor() as u8
}

fn channel_bytes(channel: &str) -> Result<[u8; NAME_LEN], FrameError> {
    let b = channel.as_bytes();
    if b.is_empty() || b.len() > NAME_LEN || b.contains(&0) {
        return Err(FrameError::Channel(channel.to_owned()));
    }
    let mut name = [0u8; NAME_LEN];
    name[..b.len()].copy_from_slice(b);
    Ok(name)
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("deflate into memory");
    enc.finish().expect("deflate into memory")
}

/// One frame's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub channel: String,
    pub nonce: u8,
    pub flags: u8,
    pub progress: u8,
}

/// Splits a frame into header and chunk. The name is decoded as browsers do: UTF-8
/// (lossy) with every NUL removed.
pub fn parse(frame: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    if frame.len() < HEADER_LEN || frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::FrameLength(frame.len()));
    }
    let channel: String = String::from_utf8_lossy(&frame[..NAME_LEN])
        .chars()
        .filter(|&c| c != '\0')
        .collect();
    Ok((
        Header {
            channel,
            nonce: frame[12],
            flags: frame[13],
            progress: frame[14],
        },
        &frame[HEADER_LEN..],
    ))
}

/// A whole received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: String,
    pub flags: u8,
    /// Inflated payload bytes: UTF-8 text or JSON unless `flags & BINARY`.
    pub data: Vec<u8>,
    pub meta: Option<String>,
}

impl Message {
    pub fn is_binary(&self) -> bool {
        self.flags & BINARY != 0
    }

    pub fn is_json(&self) -> bool {
        self.flags & (BINARY | JSON) == JSON
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_chunks: usize,
    /// Cap on one message, both as received and once inflated (MAX_MESSAGE_BYTES), and
    /// on the bytes held of one peer's incomplete messages together.
    pub max_bytes: usize,
    /// An incomplete message older than this is dropped.
    pub timeout: Duration,
    /// Incomplete messages kept per peer at once.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_chunks: MAX_CHUNKS,
            max_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            timeout: Duration::from_secs(30),
            max_pending: 64,
        }
    }
}

#[derive(Debug)]
struct Partial {
    chunks: Vec<Vec<u8>>,
    bytes: usize,
    meta: Option<String>,
    started: Instant,
}

/// Reassembly for one peer, keyed by (channel, nonce): chunks of different messages
/// may interleave.
#[derive(Debug, Default)]
pub struct Reassembler {
    limits: Limits,
    pending: HashMap<(String, u8), Partial>,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
        }
    }

    /// Takes one frame; returns the message when its last chunk arrives.
    pub fn push(&mut self, frame: &[u8], now: Instant) -> Result<Option<Message>, FrameError> {
        let (header, chunk) = parse(frame)?;
        self.expire(now);
        let key = (header.channel.clone(), header.nonce);
        if !self.pending.contains_key(&key) && self.pending.len() >= self.limits.max_pending {
            return Err(FrameError::Limit {
                channel: header.channel,
                limit: self.limits.max_pending,
            });
        }
        // What all incomplete messages hold, this one's chunks included.
        let held: usize = self.pending.values().map(|p| p.bytes).sum();
        let partial = self.pending.entry(key.clone()).or_insert_with(|| Partial {
            chunks: Vec::new(),
            bytes: 0,
            meta: None,
            started: now,
        });
        if partial.chunks.len() + partial.meta.is_some() as usize >= self.limits.max_chunks {
            self.pending.remove(&key);
            return Err(FrameError::Limit {
                channel: header.channel,
                limit: self.limits.max_chunks,
            });
        }
        if held + chunk.len() > self.limits.max_bytes {
            self.pending.remove(&key);
            return Err(FrameError::MessageBytes {
                channel: header.channel,
                limit: self.limits.max_bytes,
            });
        }
        if header.flags & META != 0 {
            let meta = std::str::from_utf8(chunk)
                .ok()
                .filter(|m| serde_json::from_str::<serde::de::IgnoredAny>(m).is_ok());
            let Some(meta) = meta else {
                self.pending.remove(&key);
                return Err(FrameError::Meta(header.channel));
            };
            partial.meta = Some(meta.to_owned());
        } else {
            partial.bytes += chunk.len();
            partial.chunks.push(chunk.to_vec());
        }
        if header.flags & LAST == 0 {
            return Ok(None);
        }
        let Some(done) = self.pending.remove(&key) else {
            return Ok(None);
        };
        let joined = done.chunks.concat();
        let data = if header.flags & DEFLATE != 0 {
            match inflate(&joined, self.limits.max_bytes) {
                Inflated::Done(data) => data,
                Inflated::TooBig => {
                    return Err(FrameError::MessageBytes {
                        channel: header.channel,
                        limit: self.limits.max_bytes,
                    });
                }
                Inflated::Corrupt => return Err(FrameError::Inflate(header.channel)),
            }
        } else {
            joined
        };
        Ok(Some(Message {
            channel: header.channel,
            flags: header.flags,
            data,
            meta: done.meta,
        }))
    }

    /// Drops incomplete messages older than the timeout; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.pending.len();
        let timeout = self.limits.timeout;
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.started) <= timeout);
        before - self.pending.len()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

enum Inflated {
    Done(Vec<u8>),
    TooBig,
    Corrupt,
}

fn inflate(bytes: &[u8], limit: usize) -> Inflated {
    let mut out = Vec::new();
    let read = flate2::read::ZlibDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Err(_) => Inflated::Corrupt,
        Ok(_) if out.len() > limit => Inflated::TooBig,
        Ok(_) => Inflated::Done(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        hex::encode(b)
    }

    #[test]
    fn progress_matches_math_round() {
        assert_eq!(progress(0, 1), 255);
        assert_eq!(progress(0, 2), 128);
        assert_eq!(progress(0, 3), 85);
        assert_eq!(progress(1, 3), 170);
    }

    #[test]
    fn large_binary_splits_like_browsers() {
        let data = vec![7u8; 40_000];
        let frames = encode("syncGraph", 0, Payload::Binary(&data), None).unwrap();
        let shape: Vec<(usize, u8, u8)> = frames.iter().map(|f| (f.len(), f[13], f[14])).collect();
        assert_eq!(
            shape,
            [(16384, 0x0c, 0x55), (16384, 0x0c, 0xaa), (7277, 0x0d, 0xff)]
        );
    }

    #[test]
    fn repetitive_text_is_deflated() {
        let s = "x".repeat(600);
        let frames = encode("syncGraph", 4, Payload::Text(&s), None).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0][13], LAST | DEFLATE);
        let mut r = Reassembler::default();
        let m = r.push(&frames[0], Instant::now()).unwrap().unwrap();
        assert_eq!(m.data, s.as_bytes());
        assert!(!m.is_json());
        // Short or incompressible payloads go out as they are.
        let f = encode("syncGraph", 0, Payload::Json("[1]"), None).unwrap();
        assert_eq!(hex(&f[0]), "73796e6347726170680000000009ff5b315d");
    }

    #[test]
    fn too_many_chunks_is_refused_on_both_sides() {
        let big: Vec<u8> = (0..CHUNK_LEN * 100 + 1)
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        assert_eq!(
            encode("c", 0, Payload::Binary(&big), None),
            Err(FrameError::TooLarge(101))
        );
        let mut r = Reassembler::default();
        let chunk = {
            let mut f = channel_bytes("c").unwrap().to_vec();
            f.extend_from_slice(&[9, BINARY, 1]);
            f.extend_from_slice(&[0u8; 100]);
            f
        };
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(r.push(&chunk, now), Ok(None));
        }
        assert!(matches!(r.push(&chunk, now), Err(FrameError::Limit { .. })));
        assert_eq!(r.pending(), 0, "the offending message is dropped whole");
    }

    #[test]
    fn a_full_hundred_chunk_message_reassembles() {
        let big: Vec<u8> = (0..CHUNK_LEN * 100).map(|i| (i % 253) as u8).collect();
        let frames = encode("c", 1, Payload::Binary(&big), None).unwrap();
        assert_eq!(frames.len(), 100);
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut out = None;
        for f in &frames {
            out = r.push(f, now).unwrap();
        }
        assert_eq!(out.unwrap().data, big);
    }

    #[test]
    fn interleaved_messages_reassemble_by_nonce() {
        let a: Vec<u8> = (0..30_000).map(|i| (i % 256) as u8).collect();
        let b: Vec<u8> = (0..20_000).map(|i| (i % 13) as u8).collect();
        let fa = encode("ch", 1, Payload::Binary(&a), None).unwrap();
        let fb = encode("ch", 2, Payload::Binary(&b), None).unwrap();
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.push(&fa[0], now), Ok(None));
        assert_eq!(r.push(&fb[0], now), Ok(None));
        assert_eq!(r.push(&fb[1], now).unwrap().unwrap().data, b);
        assert_eq!(r.push(&fa[1], now).unwrap().unwrap().data, a);
    }

    #[test]
    fn stalled_halves_expire_and_bombs_are_refused() {
        let data = vec![1u8; 20_000];
        let frames = encode("ch", 1, Payload::Binary(&data), None).unwrap();
        let mut r = Reassembler::new(Limits {
            timeout: Duration::from_secs(5),
            ..Limits::default()
        });
        let t0 = Instant::now();
        assert_eq!(r.push(&frames[0], t0), Ok(None));
        assert_eq!(r.expire(t0 + Duration::from_secs(6)), 1);
        // The second half alone completes a message of only that half; the first is gone.
        let m = r
            .push(&frames[1], t0 + Duration::from_secs(6))
            .unwrap()
            .unwrap();
        assert_eq!(m.data.len(), 20_000 - CHUNK_LEN);

        let bomb = deflate(&vec![0u8; 64 << 20]);
        let mut f = channel_bytes("ch").unwrap().to_vec();
        f.extend_from_slice(&[3, LAST | JSON | DEFLATE, 0xff]);
        f.extend_from_slice(&bomb[..bomb.len().min(CHUNK_LEN)]);
        let mut r = Reassembler::default();
        assert!(r.push(&f, t0).is_err());
    }

    #[test]
    fn max_message_bytes_bounds_received_inflated_and_held_bytes() {
        let limits = Limits {
            max_bytes: 40_000,
            ..Limits::default()
        };
        let now = Instant::now();
        let too_big = |e: Result<Option<Message>, FrameError>| {
            matches!(e, Err(FrameError::MessageBytes { limit: 40_000, .. }))
        };
        // Received: the third chunk of a 45,000-byte message passes the limit.
        let big: Vec<u8> = (0..45_000).map(|i| (i * 7919 % 251) as u8).collect();
        let frames = encode("ch", 1, Payload::Binary(&big), None).unwrap();
        let mut r = Reassembler::new(limits);
        assert_eq!(r.push(&frames[0], now), Ok(None));
        assert_eq!(r.push(&frames[1], now), Ok(None));
        assert!(too_big(r.push(&frames[2], now)));
        assert_eq!(r.pending(), 0, "the offending message is dropped whole");
        // A message of exactly the limit still passes.
        let exact: Vec<u8> = big[..40_000].to_vec();
        let mut out = None;
        for f in encode("ch", 2, Payload::Binary(&exact), None).unwrap() {
            out = r.push(&f, now).unwrap();
        }
        assert_eq!(out.unwrap().data, exact);
        // Inflated: 60,000 compressible bytes arrive as one small frame.
        let text = "a".repeat(60_000);
        let frames = encode("ch", 3, Payload::Text(&text), None).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(too_big(r.push(&frames[0], now)));
        // Held: two incomplete messages of 30,000 bytes each do not fit together.
        let half: Vec<u8> = big[..30_000].to_vec();
        let a = encode("ch", 4, Payload::Binary(&half), None).unwrap();
        let b = encode("ch", 5, Payload::Binary(&half), None).unwrap();
        assert_eq!(r.push(&a[0], now), Ok(None));
        assert_eq!(r.push(&b[0], now), Ok(None));
        assert!(too_big(r.push(&b[1], now)));
        assert_eq!(r.push(&a[1], now).unwrap().unwrap().data, half);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert!(r.push(&[], now).is_err());
        assert!(r.push(&[0; 14], now).is_err());
        assert!(r.push(&vec![0; MAX_FRAME_LEN + 1], now).is_err());
        let mut meta = channel_bytes("ch").unwrap().to_vec();
        meta.extend_from_slice(&[1, META | BINARY, 1, b'{']);
        assert_eq!(r.push(&meta, now), Err(FrameError::Meta("ch".into())));
        assert!(encode("", 0, Payload::Text("x"), None).is_err());
        assert!(encode("thirteen-byte", 0, Payload::Text("x"), None).is_err());
    }
}
