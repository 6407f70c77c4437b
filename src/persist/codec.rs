//! Byte formats of the file store. Pure: bytes in, records out.
//!
//! Snapshot `<db>.bin`:
//! ```text
//! 0   8  magic "GDBFSNAP"          24  8  body length (u64 LE)
//! 8   4  version (u32 LE) = 1      32  4  CRC-32 of the body
//! 12  4  flags (0)                 36  4  CRC-32 of bytes 0..36
//! 16  8  next journal seq          40  …  MessagePack(SnapshotBody)
//! ```
//! The body holds the global timestamp, the oplog, the node count, and the nodes in
//! chunks of [`CHUNK_NODES`], each `zstd(MessagePack([[id, node], …]))`, so that chunks
//! are compressed and decoded on every core at once.
//! Journal segment `<db>.journal[.<base>]`: a 32-byte header (magic "GDBFJRNL",
//! version, flags, base seq, CRC-32 of the header, reserved), then records of
//! `len u32 LE | crc32(payload) u32 LE | payload = MessagePack(Effect)`.

use crate::store::{Effect, Entry, Hlc, NodeMap, Store};
use serde::{Deserialize, Serialize};
use std::io::Read;

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"GDBFSNAP";
pub const JOURNAL_MAGIC: &[u8; 8] = b"GDBFJRNL";
pub const VERSION: u32 = 1;
pub const SNAPSHOT_HEADER_LEN: usize = 40;
pub const JOURNAL_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 8;
/// No single effect is this large: peers' messages are bounded far below it.
pub const MAX_RECORD_LEN: usize = 64 << 20;
/// Refuse to inflate a snapshot body past this (a damaged or hostile file).
pub const MAX_SNAPSHOT_BODY: u64 = 64 << 30;
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a genosdb-fallback {0} file (bad magic)")]
    NotOurs(&'static str),
    #[error("{kind} format version {found} is not supported (this build reads version {VERSION})")]
    UnknownVersion { kind: &'static str, found: u32 },
    #[error("{0}")]
    Corrupt(String),
}

fn corrupt(msg: impl Into<String>) -> CodecError {
    CodecError::Corrupt(msg.into())
}

/// Nodes per snapshot chunk: small enough to spread over the cores, large enough to
/// compress well.
pub const CHUNK_NODES: usize = 32 * 1024;
/// Refuse to inflate one chunk past this (a damaged or hostile file).
const MAX_CHUNK_PLAIN: u64 = 1 << 30;
/// A damaged node count must not reserve the whole machine.
const MAX_PRESIZED_NODES: u64 = 64 << 20;

#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    global_ts: Option<Hlc>,
    oplog: Vec<&'a Entry>,
    node_count: u64,
    chunks: Vec<&'a serde_bytes::Bytes>,
}

#[derive(Deserialize)]
struct SnapshotBody<'a> {
    global_ts: Option<Hlc>,
    oplog: Vec<Entry>,
    node_count: u64,
    #[serde(borrow)]
    chunks: Vec<&'a serde_bytes::Bytes>,
}

/// A decoded snapshot: the store it holds and the first journal seq it does not cover.
pub struct Snapshot {
    pub store: Store,
    pub next_seq: u64,
}

fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Runs `f` over `items` on every core; results come back in order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..workers().min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_iter()
        .map(|r| r.expect("every slot filled"))
        .collect()
}

fn encode_chunk(nodes: &[(&str, &crate::store::Node)]) -> Vec<u8> {
    let mut enc = zstd::Encoder::new(Vec::new(), ZSTD_LEVEL).expect("zstd encoder");
    rmp_serde::encode::write(&mut enc, nodes).expect("encoding into memory cannot fail");
    enc.finish().expect("zstd into memory cannot fail")
}

fn decode_chunk(bytes: &[u8]) -> Result<Vec<(Box<str>, crate::store::Node)>, CodecError> {
    let mut plain = Vec::with_capacity(bytes.len().saturating_mul(6));
    zstd::Decoder::new(bytes)
        .map_err(|e| corrupt(format!("snapshot chunk: {e}")))?
        .take(MAX_CHUNK_PLAIN)
        .read_to_end(&mut plain)
        .map_err(|e| corrupt(format!("snapshot chunk does not inflate: {e}")))?;
    rmp_serde::from_slice(&plain)
        .map_err(|e| corrupt(format!("snapshot chunk does not decode: {e}")))
}

/// Encodes the whole store as snapshot file bytes.
pub fn encode_snapshot(store: &Store, next_seq: u64) -> Vec<u8> {
    let nodes: Vec<(&str, &crate::store::Node)> =
        store.nodes().iter().map(|(k, n)| (k.as_ref(), n)).collect();
    let parts: Vec<&[(&str, &crate::store::Node)]> = nodes.chunks(CHUNK_NODES).collect();
    let chunks = parallel_map(&parts, |part| encode_chunk(part));
    let body = SnapshotBodyRef {
        global_ts: store.global_ts(),
        oplog: store.oplog().iter().collect(),
        node_count: nodes.len() as u64,
        chunks: chunks.iter().map(|c| serde_bytes::Bytes::new(c)).collect(),
    };
    let mut out = vec![0u8; SNAPSHOT_HEADER_LEN];
    rmp_serde::encode::write(&mut out, &body).expect("encoding into memory cannot fail");
    let body_len = (out.len() - SNAPSHOT_HEADER_LEN) as u64;
    let body_crc = crc32fast::hash(&out[SNAPSHOT_HEADER_LEN..]);
    out[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&next_seq.to_le_bytes());
    out[24..32].copy_from_slice(&body_len.to_le_bytes());
    out[32..36].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[0..36]);
    out[36..40].copy_from_slice(&header_crc.to_le_bytes());
    out
}

/// Decodes snapshot file bytes; any damage is an error, never a partial store.
pub fn decode_snapshot(bytes: &[u8], oplog_size: usize) -> Result<Snapshot, CodecError> {
    if bytes.len() < 8 || &bytes[0..8] != SNAPSHOT_MAGIC {
        return Err(CodecError::NotOurs("snapshot"));
    }
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(corrupt("snapshot header is truncated"));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(CodecError::UnknownVersion {
            kind: "snapshot",
            found: version,
        });
    }
    if crc32fast::hash(&bytes[0..36]) != u32_at(bytes, 36) {
        return Err(corrupt("snapshot header fails its checksum"));
    }
    let next_seq = u64_at(bytes, 16);
    let body_len = u64_at(bytes, 24);
    let body = &bytes[SNAPSHOT_HEADER_LEN..];
    if body.len() as u64 != body_len {
        return Err(corrupt(format!(
            "snapshot body is {} bytes, its header says {body_len}",
            body.len()
        )));
    }
    if crc32fast::hash(body) != u32_at(bytes, 32) {
        return Err(corrupt("snapshot body fails its checksum"));
    }
    let body: SnapshotBody = rmp_serde::from_slice(body)
        .map_err(|e| corrupt(format!("snapshot body does not decode: {e}")))?;
    let mut nodes = NodeMap::with_capacity_and_hasher(
        body.node_count.min(MAX_PRESIZED_NODES) as usize,
        Default::default(),
    );
    // Chunks decode on the other cores while this thread fills the map.
    let chunks: Vec<&[u8]> = body.chunks.iter().map(|c| c.as_ref()).collect();
    let (tx, rx) = std::sync::mpsc::sync_channel(workers());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let filled = std::thread::scope(|scope| {
        for _ in 0..workers().min(chunks.len()) {
            let tx = tx.clone();
            let (next, chunks) = (&next, &chunks);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else { break };
                    if tx.send(decode_chunk(chunk)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for decoded in rx {
            for (id, node) in decoded? {
                nodes.insert(id, node);
            }
        }
        Ok::<(), CodecError>(())
    });
    filled?;
    if nodes.len() as u64 != body.node_count {
        return Err(corrupt(format!(
            "snapshot holds {} nodes, its body says {}",
            nodes.len(),
            body.node_count
        )));
    }
    Ok(Snapshot {
        store: Store::from_parts(oplog_size, nodes, body.oplog, body.global_ts),
        next_seq,
    })
}

pub fn journal_header(base_seq: u64) -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[0..8].copy_from_slice(JOURNAL_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends one framed record for `effect` to `out`.
pub fn encode_record(effect: &Effect, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    rmp_serde::encode::write(out, effect).expect("encoding into memory cannot fail");
    let payload_len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A journal segment, read.
#[derive(Debug)]
pub struct JournalScan {
    pub base_seq: u64,
    pub records: Vec<Effect>,
    /// Bytes up to the end of the last complete record.
    pub good_len: u64,
    /// Bytes after that: a record torn by a crash, ignored.
    pub torn_bytes: u64,
}

/// Reads a journal segment. A damaged last record is torn (a crash mid-append) and
/// ignored; damage followed by more data is corruption and an error.
pub fn scan_journal(bytes: &[u8]) -> Result<JournalScan, CodecError> {
    if bytes.len() < 8 || &bytes[0..8] != JOURNAL_MAGIC {
        return Err(CodecError::NotOurs("journal"));
    }
    if bytes.len() < JOURNAL_HEADER_LEN {
        return Err(corrupt("journal header is truncated"));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(CodecError::UnknownVersion {
            kind: "journal",
            found: version,
        });
    }
    if crc32fast::hash(&bytes[0..24]) != u32_at(bytes, 24) {
        return Err(corrupt("journal header fails its checksum"));
    }
    let base_seq = u64_at(bytes, 16);
    let mut records = Vec::new();
    let mut pos = JOURNAL_HEADER_LEN;
    while pos < bytes.len() {
        match read_record(&bytes[pos..]) {
            Ok((effect, used)) => {
                records.push(effect);
                pos += used;
            }
            Err(RecordError::Torn) => break,
            Err(RecordError::Bad(why)) => {
                if is_tail(&bytes[pos..]) {
                    break;
                }
                return Err(corrupt(format!(
                    "journal record {} at byte {pos} {why}",
                    base_seq + records.len() as u64
                )));
            }
        }
    }
    Ok(JournalScan {
        base_seq,
        good_len: pos as u64,
        torn_bytes: (bytes.len() - pos) as u64,
        records,
    })
}

enum RecordError {
    /// The record runs past the end of the file.
    Torn,
    Bad(&'static str),
}

fn read_record(rest: &[u8]) -> Result<(Effect, usize), RecordError> {
    if rest.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Torn);
    }
    let len = u32_at(rest, 0) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(RecordError::Bad("has an impossible length"));
    }
    let end = RECORD_HEADER_LEN + len;
    if rest.len() < end {
        return Err(RecordError::Torn);
    }
    let payload = &rest[RECORD_HEADER_LEN..end];
    if crc32fast::hash(payload) != u32_at(rest, 4) {
        return Err(RecordError::Bad("fails its checksum"));
    }
    let effect = rmp_serde::from_slice(payload).map_err(|_| RecordError::Bad("does not decode"))?;
    Ok((effect, end))
}

/// A bad record is a torn tail when nothing valid can follow it: it is the last record
/// (its length reaches the end of the file), or the rest of the file is zeros, as a
/// crash leaves when the file grew before its data was written.
fn is_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|&b| b == 0) {
        return true;
    }
    if rest.len() < RECORD_HEADER_LEN {
        return true;
    }
    let len = u32_at(rest, 0) as usize;
    len > 0 && RECORD_HEADER_LEN + len >= rest.len()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Op, RawJson, UpsertOp};

    fn sample_store() -> Store {
        let mut s = Store::new(200);
        for i in 0..50u64 {
            s.apply(
                Op::Upsert(UpsertOp {
                    id: format!("n{i}"),
                    value: Some(RawJson::parse(format!(r#"{{"i":{i},"f":1.50}}"#)).unwrap()),
                    ts: Hlc::new(1_000 + i, i),
                }),
                2_000,
            );
        }
        s
    }

    fn effects(n: u64) -> Vec<Effect> {
        (0..n)
            .map(|i| Effect::Upsert {
                id: format!("k{i}").into(),
                value: Some(RawJson::parse(format!("[{i}]")).unwrap()),
                ts: Hlc::new(i, i),
            })
            .collect()
    }

    fn journal(effects: &[Effect]) -> Vec<u8> {
        let mut bytes = journal_header(7).to_vec();
        for e in effects {
            encode_record(e, &mut bytes);
        }
        bytes
    }

    #[test]
    fn snapshot_round_trip() {
        let s = sample_store();
        let bytes = encode_snapshot(&s, 42);
        let back = decode_snapshot(&bytes, 200).unwrap();
        assert_eq!(back.next_seq, 42);
        assert_eq!(back.store.len(), 50);
        assert_eq!(back.store.delta_json(), s.delta_json());
        assert_eq!(back.store.global_ts(), s.global_ts());
        assert_eq!(
            back.store.get("n7").unwrap().value.as_ref().unwrap().get(),
            r#"{"i":7,"f":1.50}"#
        );
    }

    #[test]
    fn every_damaged_snapshot_is_refused() {
        let bytes = encode_snapshot(&sample_store(), 1);
        for cut in [0, 7, 39, 40, bytes.len() - 1] {
            assert!(decode_snapshot(&bytes[..cut], 200).is_err(), "cut {cut}");
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode_snapshot(&b, 200).is_err(), "flip at {i}");
        }
        let mut future = bytes.clone();
        future[8] = 9;
        assert!(matches!(
            decode_snapshot(&future, 200),
            Err(CodecError::UnknownVersion { found: 9, .. })
        ));
        assert!(matches!(
            decode_snapshot(b"SQLite format 3\0", 200),
            Err(CodecError::NotOurs(_))
        ));
    }

    #[test]
    fn every_prefix_of_a_journal_yields_its_complete_records() {
        let all = effects(20);
        let bytes = journal(&all);
        let mut ends = vec![JOURNAL_HEADER_LEN];
        let mut pos = JOURNAL_HEADER_LEN;
        while pos < bytes.len() {
            pos += RECORD_HEADER_LEN + u32_at(&bytes, pos) as usize;
            ends.push(pos);
        }
        for cut in JOURNAL_HEADER_LEN..=bytes.len() {
            let scan = scan_journal(&bytes[..cut]).unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut).count() - 1;
            assert_eq!(scan.records, all[..complete], "cut {cut}");
            assert_eq!(scan.good_len as usize, ends[complete]);
            assert_eq!(scan.base_seq, 7);
        }
    }

    #[test]
    fn zeroed_tail_is_torn_but_mid_file_damage_is_corrupt() {
        let all = effects(5);
        let mut bytes = journal(&all);
        let clean_len = bytes.len();
        bytes.extend_from_slice(&[0u8; 4096]);
        let scan = scan_journal(&bytes).unwrap();
        assert_eq!(scan.records.len(), 5);
        assert_eq!(scan.torn_bytes, 4096);

        let mut flipped = journal(&all);
        flipped[JOURNAL_HEADER_LEN + 10] ^= 1;
        assert!(matches!(
            scan_journal(&flipped),
            Err(CodecError::Corrupt(_))
        ));

        let mut last_flipped = journal(&all);
        last_flipped[clean_len - 1] ^= 1;
        assert_eq!(scan_journal(&last_flipped).unwrap().records.len(), 4);
    }
}
