//! The GenosRTC codecs reproduce tests/vectors/transport-vectors.json byte for byte.

use genosdb_fallback::rtc::frame::{self, Payload, Reassembler};
use genosdb_fallback::rtc::seal::{SealKey, key_bytes};
use genosdb_fallback::rtc::topic;
use serde_json::Value;
use std::time::Instant;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/transport-vectors.json"
    );
    serde_json::from_str(
        &std::fs::read_to_string(path).expect("tests/vectors/transport-vectors.json"),
    )
    .unwrap()
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn topics_and_kinds() {
    let v = vectors();
    for t in v["topics"].as_array().unwrap() {
        let input = t["input"].as_str().unwrap();
        let got = topic::topic_of(input);
        assert_eq!(got, t["topic"].as_str().unwrap(), "{input}");
        assert_eq!(
            topic::kind_of(&got) as u64,
            t["kind"].as_u64().unwrap(),
            "{input}"
        );
    }
    assert_eq!(
        topic::root_topic(topic::APP_ID, "graph-sync-room-testdb"),
        "3x4d3sj1e3c4t1c4d6a1d1n1w335w3a1s5e4t1r"
    );
    assert_eq!(
        topic::self_topic(
            topic::APP_ID,
            "graph-sync-room-testdb",
            "peerCCCCCCCCCCCCCCCC"
        ),
        "5t6f2235s4k463s2r5s136n6b5236x6xy6r3c"
    );
}

#[test]
fn sealing_keys_and_wire_form() {
    let v = vectors();
    for k in v["keys"].as_array().unwrap() {
        let key = key_bytes(
            k["password"].as_str().unwrap(),
            k["appId"].as_str().unwrap(),
            k["room"].as_str().unwrap(),
        );
        assert_eq!(hex(&key), k["aesKeyHex"].as_str().unwrap());
    }
    let g = &v["aesgcm"];
    let key = SealKey::derive("", "1234", "graph-sync-room-testdb");
    let iv: [u8; 12] = unhex(g["ivHex"].as_str().unwrap()).try_into().unwrap();
    let plaintext = g["plaintext"].as_str().unwrap();
    assert_eq!(key.seal_with_iv(plaintext, iv), g["wire"].as_str().unwrap());
    assert_eq!(key.open(g["wire"].as_str().unwrap()).unwrap(), plaintext);
    assert!(
        SealKey::derive("s3cret", "1234", "graph-sync-room-testdb")
            .open(g["wire"].as_str().unwrap())
            .is_err()
    );
}

#[test]
fn captured_frames() {
    let v = vectors();
    let cases: [(u8, Payload, Option<&str>); 4] = [
        (0, Payload::Text("hi"), None),
        (1, Payload::Json(r#"{"hello":"world","n":1}"#), None),
        (
            2,
            Payload::Json(r#"[{"type":"sync","timestamp":null}]"#),
            None,
        ),
        (
            5,
            Payload::Binary(&[1, 2, 3, 4]),
            Some(r#"{"name":"f.bin"}"#),
        ),
    ];
    let captured = v["frames"].as_array().unwrap();
    for (i, (nonce, payload, meta)) in cases.into_iter().enumerate() {
        let frames = frame::encode("syncGraph", nonce, payload, meta).unwrap();
        let want: Vec<String> = captured[i]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        let got: Vec<String> = frames.iter().map(|f| hex(f)).collect();
        assert_eq!(got, want, "{}", captured[i]["desc"]);
        // And back.
        let mut r = Reassembler::default();
        let mut out = None;
        for f in &want {
            out = r.push(&unhex(f), Instant::now()).unwrap();
        }
        let m = out.unwrap();
        let sent: &[u8] = match payload {
            Payload::Text(s) | Payload::Json(s) => s.as_bytes(),
            Payload::Binary(b) => b,
        };
        assert_eq!(m.data, sent);
        assert_eq!(m.meta.as_deref(), meta);
    }
    let control: Vec<String> = captured[4]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        [frame::PING, frame::PONG, frame::LEAVE]
            .map(|c| hex(&frame::control(c)))
            .to_vec(),
        control
    );
}

/// §6.5 rows that are not in the JSON file: the number 42, and 600 x's deflated.
#[test]
fn spec_table_frames() {
    let f = frame::encode("syncGraph", 3, Payload::Json("42"), None).unwrap();
    assert_eq!(hex(&f[0]), "73796e6347726170680000000309ff3432");
    let s = "x".repeat(600);
    let f = frame::encode("syncGraph", 4, Payload::Text(&s), None).unwrap();
    assert_eq!(
        &hex(&f[0])[..30],
        "73796e63477261706800000004 11ff".replace(' ', "")
    );
    // Chromium's frame inflates to the same text through our reassembler.
    let chromium = unhex("73796e6347726170680000000411ff789caba81805a380fa0000394e1950");
    let m = Reassembler::default()
        .push(&chromium, Instant::now())
        .unwrap()
        .unwrap();
    assert_eq!(m.data, s.as_bytes());
}

/// §4.3: the deterministic announce (sk = 3, aux = 0) signs, with the `nostr` crate, to
/// the captured id and signature, and the captured event verifies as the relay takes it.
#[test]
fn nostr_event_vector() {
    use genosdb_fallback::relay::event::Relayed;
    use nostr_sdk::prelude::{EventBuilder, JsonUtil, Keys, Kind, SecretKey, Tag, Timestamp};
    use nostr_sdk::secp256k1::{Keypair, Message};
    use sha2::{Digest, Sha256};
    let v = vectors();
    let n = &v["nostrEvent"];
    let e = &n["event"];
    let keys =
        Keys::new(SecretKey::from_slice(&unhex(n["secretKeyHex"].as_str().unwrap())).unwrap());
    let aux: [u8; 32] = unhex(n["auxRandHex"].as_str().unwrap()).try_into().unwrap();
    let tags: Vec<Vec<String>> = serde_json::from_value(e["tags"].clone()).unwrap();
    let mut unsigned = EventBuilder::new(
        Kind::Custom(e["kind"].as_u64().unwrap() as u16),
        e["content"].as_str().unwrap(),
    )
    .tags(tags.into_iter().map(|t| Tag::parse(t).unwrap()))
    .custom_created_at(Timestamp::from(e["created_at"].as_u64().unwrap()))
    .build(keys.public_key());
    let id = unsigned.id();
    let sig = nostr_sdk::SECP256K1.sign_schnorr_with_aux_rand(
        &Message::from_digest(id.to_bytes()),
        &Keypair::from_secret_key(nostr_sdk::SECP256K1, keys.secret_key()),
        &aux,
    );
    let signed: Value =
        serde_json::from_str(&unsigned.add_signature(sig).unwrap().as_json()).unwrap();
    assert_eq!(signed, *e);
    // The id is the hash of the captured serialization.
    let serialized = n["serialized"].as_str().unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(serialized.as_bytes())),
        id.to_hex()
    );
    let wire: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(n["wire"].as_str().unwrap()).unwrap();
    let parsed = Relayed::parse(&wire[1]).unwrap();
    assert_eq!(parsed.verify(), Ok(()));
    assert_eq!(parsed.raw.get(), wire[1].get());
}
