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

/// Plain bytes a snapshot chunk stays under (unless one node alone is larger), so that
/// every chunk the writer makes is far below what the reader inflates
/// ([`MAX_CHUNK_PLAIN`]), whatever the nodes' sizes: 32k nodes of 40 KB would be 1.3 GB.
const CHUNK_PLAIN_TARGET: usize = 64 << 20;

/// About how many bytes a node takes in a chunk's MessagePack.
fn node_plain_size(id: &str, n: &crate::store::Node) -> usize {
    let value = n.value.as_ref().map_or(0, |v| v.get().len());
    let edges: usize = n.edges.iter().map(|e| e.len() + 8).sum();
    let extra: usize = n
        .extra
        .iter()
        .flat_map(|x| x.iter())
        .map(|(k, v)| k.len() + v.get().len() + 8)
        .sum();
    64 + id.len() + value + edges + extra
}

/// Cuts the nodes into chunks of at most [`CHUNK_NODES`] nodes and about `target`
/// plain bytes.
fn chunk_parts<'a, 'n>(
    nodes: &'a [(&'n str, &'n crate::store::Node)],
    target: usize,
) -> Vec<&'a [(&'n str, &'n crate::store::Node)]> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, (id, node)) in nodes.iter().enumerate() {
        let size = node_plain_size(id, node);
        if i > start && (i - start == CHUNK_NODES || bytes.saturating_add(size) > target) {
            parts.push(&nodes[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(size);
    }
    if start < nodes.len() {
        parts.push(&nodes[start..]);
    }
    parts
}

/// Encodes the whole store as snapshot file bytes.
pub fn encode_snapshot(store: &Store, next_seq: u64) -> Vec<u8> {
    let nodes: Vec<(&str, &crate::store::Node)> =
        store.nodes().iter().map(|(k, n)| (k.as_ref(), n)).collect();
    let parts = chunk_parts(&nodes, CHUNK_PLAIN_TARGET);
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

/// An effect too large for one journal record: the reader refuses any record over
/// [`MAX_RECORD_LEN`], so the writer never writes one.
#[derive(Debug, thiserror::Error)]
#[error("a journal record of {len} bytes is over the {MAX_RECORD_LEN}-byte record limit")]
pub struct RecordTooLarge {
    pub len: usize,
}

/// Appends one framed record for `effect` to `out`, or leaves `out` as it was when the
/// record would be larger than the reader accepts.
pub fn encode_record(effect: &Effect, out: &mut Vec<u8>) -> Result<(), RecordTooLarge> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    rmp_serde::encode::write(out, effect).expect("encoding into memory cannot fail");
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    if payload_len > MAX_RECORD_LEN {
        out.truncate(start);
        return Err(RecordTooLarge { len: payload_len });
    }
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
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

/// Reads a journal segment. What it returns is always a prefix of the records written.
///
/// A record that cannot be read is a torn tail (a crash mid-append) only when no whole
/// record follows it anywhere in the rest of the segment: every byte offset after the
/// damage is tried. Damage followed by a readable record is corruption and an error, so
/// that a flipped bit in a length field never hides the records behind it. A record
/// whose checksum holds but which does not decode is never torn: it is an error too.
/// Only the caller knows whether this is the last segment, the only place a torn tail
/// may be ([`JournalScan::torn_bytes`]).
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
        let seq = base_seq + records.len() as u64;
        match read_record(&bytes[pos..]) {
            Ok((effect, used)) => {
                records.push(effect);
                pos += used;
            }
            Err(RecordError::Undecodable) => {
                return Err(corrupt(format!(
                    "journal record {seq} at byte {pos} passes its checksum but does not decode"
                )));
            }
            Err(RecordError::Torn(why)) => match find_record(bytes, pos + 1) {
                Search::None => break,
                Search::Found(at) => {
                    return Err(corrupt(format!(
                        "journal record {seq} at byte {pos} {why}, yet a whole record follows at byte {at}: the segment is damaged, not torn by a crash"
                    )));
                }
                Search::TooCostly => {
                    return Err(corrupt(format!(
                        "journal record {seq} at byte {pos} {why}, and the {} bytes after it are too many to prove that no record follows",
                        bytes.len() - pos
                    )));
                }
            },
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
    /// Not a whole record here: cut short, a bad length or a bad checksum.
    Torn(&'static str),
    /// The checksum holds, yet the payload is not an effect.
    Undecodable,
}

fn read_record(rest: &[u8]) -> Result<(Effect, usize), RecordError> {
    let (payload, end) = framed(rest)?;
    let effect = rmp_serde::from_slice(payload).map_err(|_| RecordError::Undecodable)?;
    Ok((effect, end))
}

/// The payload of the record at the start of `rest`, if its frame and checksum hold.
fn framed(rest: &[u8]) -> Result<(&[u8], usize), RecordError> {
    if rest.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Torn("is cut short"));
    }
    let len = u32_at(rest, 0) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(RecordError::Torn("has an impossible length"));
    }
    let end = RECORD_HEADER_LEN + len;
    if rest.len() < end {
        return Err(RecordError::Torn("runs past the end of the segment"));
    }
    let payload = &rest[RECORD_HEADER_LEN..end];
    if crc32fast::hash(payload) != u32_at(rest, 4) {
        return Err(RecordError::Torn("fails its checksum"));
    }
    Ok((payload, end))
}

/// Bytes of checksum work [`find_record`] may spend before it gives up (and the scan
/// reports the segment as damaged rather than guess): a few seconds at most.
const SEARCH_BUDGET: u64 = 8 << 30;

enum Search {
    None,
    Found(usize),
    TooCostly,
}

/// Looks for a whole record (frame, checksum and payload) starting at any offset from
/// `from` on. Offsets whose length field does not fit the file cost nothing, so a torn
/// tail of zeros or of a cut record is cleared in one pass.
fn find_record(bytes: &[u8], from: usize) -> Search {
    let mut budget = SEARCH_BUDGET;
    for at in from..bytes.len().saturating_sub(RECORD_HEADER_LEN) {
        let rest = &bytes[at..];
        let len = u32_at(rest, 0) as usize;
        if len == 0 || len > MAX_RECORD_LEN || RECORD_HEADER_LEN + len > rest.len() {
            continue;
        }
        budget = match budget.checked_sub(len as u64) {
            Some(b) => b,
            None => return Search::TooCostly,
        };
        if let Ok((payload, _)) = framed(rest)
            && rmp_serde::from_slice::<Effect>(payload).is_ok()
        {
            return Search::Found(at);
        }
    }
    Search::None
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
            encode_record(e, &mut bytes).unwrap();
        }
        bytes
    }

    /// Where each record of `bytes` starts, and where the last one ends.
    fn record_starts(bytes: &[u8]) -> Vec<usize> {
        let mut starts = vec![JOURNAL_HEADER_LEN];
        let mut pos = JOURNAL_HEADER_LEN;
        while pos < bytes.len() {
            pos += RECORD_HEADER_LEN + u32_at(bytes, pos) as usize;
            starts.push(pos);
        }
        starts
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

    /// The review's case: one bit of record 50's length flipped, in a segment of 100.
    /// The length then runs past the end, which once passed for a torn tail and lost the
    /// 50 records after it.
    #[test]
    fn a_flipped_length_bit_mid_segment_is_corruption_not_a_torn_tail() {
        let all = effects(100);
        let clean = journal(&all);
        let starts = record_starts(&clean);
        for bit in 0..32 {
            let mut bytes = clean.clone();
            bytes[starts[50] + bit / 8] ^= 1 << (bit % 8);
            let err = scan_journal(&bytes).expect_err(&format!("bit {bit}"));
            assert!(
                err.to_string().contains("journal record 57 at byte"),
                "bit {bit}: {err}"
            );
        }
        // The same flip in the last record is a torn tail: nothing whole follows it.
        let mut last = clean.clone();
        last[starts[99] + 2] ^= 0x10;
        let scan = scan_journal(&last).unwrap();
        assert_eq!(scan.records, all[..99]);
        assert_eq!(scan.good_len as usize, starts[99]);
    }

    #[test]
    fn damage_followed_by_zeros_or_a_cut_record_is_torn() {
        let all = effects(10);
        let clean = journal(&all);
        let starts = record_starts(&clean);
        // A crash that grew the file before writing it: a hole of zeros at the end.
        let mut holed = clean.clone();
        holed[starts[8]..].fill(0);
        assert_eq!(scan_journal(&holed).unwrap().records, all[..8]);
        // A cut in the middle of the last record, plus zeros after it.
        let mut cut = clean[..starts[9] + 5].to_vec();
        cut.extend_from_slice(&[0; 100]);
        assert_eq!(scan_journal(&cut).unwrap().records, all[..9]);
    }

    #[test]
    fn a_record_whose_checksum_holds_but_does_not_decode_is_corruption() {
        let mut bytes = journal_header(0).to_vec();
        let payload = [0xc1u8; 4]; // never valid MessagePack
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let err = scan_journal(&bytes).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn the_writer_refuses_a_record_the_reader_would_refuse() {
        let big = Effect::Upsert {
            id: "big".into(),
            value: Some(RawJson::parse(format!("\"{}\"", "x".repeat(MAX_RECORD_LEN))).unwrap()),
            ts: Hlc::new(1, 0),
        };
        let mut out = journal(&effects(2));
        let before = out.clone();
        let err = encode_record(&big, &mut out).unwrap_err();
        assert!(err.len > MAX_RECORD_LEN);
        assert_eq!(out, before, "nothing of the refused record is left behind");
    }

    #[test]
    fn snapshot_chunks_are_bounded_in_bytes_as_well_as_in_nodes() {
        let node = |len: usize| {
            crate::store::Node::new(
                Some(RawJson::parse(format!("\"{}\"", "v".repeat(len))).unwrap()),
                Hlc::new(1, 0),
            )
        };
        let small = node(10);
        let big = node(5_000);
        let mut nodes: Vec<(&str, &crate::store::Node)> = vec![("s", &small); CHUNK_NODES + 5];
        nodes.extend(std::iter::repeat_n(("b", &big), 10));
        let parts = chunk_parts(&nodes, 12_000);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), nodes.len());
        assert!(parts.iter().all(|p| p.len() <= CHUNK_NODES));
        for p in &parts {
            let plain: usize = p.iter().map(|(id, n)| node_plain_size(id, n)).sum();
            assert!(
                p.len() == 1 || plain <= 12_000,
                "{} nodes, {plain} bytes",
                p.len()
            );
        }
        assert_eq!(chunk_parts(&nodes[..CHUNK_NODES + 5], usize::MAX).len(), 2);
        // One node larger than the target still gets a chunk of its own.
        let huge = node(50_000);
        assert_eq!(chunk_parts(&[("h", &huge), ("s", &small)], 12_000).len(), 2);
    }
}
