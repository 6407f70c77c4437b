//! Nostr events (NIP-01): parsing, ids and BIP-340 signatures. Pure.

use k256::schnorr::{Signature, SigningKey, VerifyingKey};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Bounds on what one event may carry; browsers' signalling events are far smaller.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_ITEMS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid: not a Nostr event ({0})")]
    Shape(String),
    #[error("invalid: {0} is not lowercase hex of the right length")]
    Hex(&'static str),
    #[error("invalid: too many tags")]
    Tags,
    #[error("invalid: id does not match the event")]
    Id,
    #[error("invalid: bad signature")]
    Signature,
}

#[derive(Debug, Clone, Deserialize)]
struct Wire {
    id: String,
    pubkey: String,
    created_at: u64,
    kind: u64,
    tags: Vec<Vec<String>>,
    content: String,
    sig: String,
}

/// A parsed event. `raw` is the object exactly as received, relayed unchanged.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub pubkey: String,
    pub created_at: u64,
    pub kind: u64,
    pub tags: Vec<Vec<String>>,
    pub content: String,
    pub sig: String,
    pub raw: Box<RawValue>,
}

impl Event {
    pub fn parse(raw: &RawValue) -> Result<Self, EventError> {
        let w: Wire =
            serde_json::from_str(raw.get()).map_err(|e| EventError::Shape(e.to_string()))?;
        check_hex(&w.id, 64, "id")?;
        check_hex(&w.pubkey, 64, "pubkey")?;
        check_hex(&w.sig, 128, "sig")?;
        if w.tags.len() > MAX_TAGS || w.tags.iter().any(|t| t.len() > MAX_TAG_ITEMS) {
            return Err(EventError::Tags);
        }
        Ok(Self {
            id: w.id,
            pubkey: w.pubkey,
            created_at: w.created_at,
            kind: w.kind,
            tags: w.tags,
            content: w.content,
            sig: w.sig,
            raw: raw.to_owned(),
        })
    }

    /// `[0,pubkey,created_at,kind,tags,content]`, serialized as JSON.stringify does.
    pub fn serialized(
        pubkey: &str,
        created_at: u64,
        kind: u64,
        tags: &[Vec<String>],
        content: &str,
    ) -> String {
        serde_json::to_string(&(0, pubkey, created_at, kind, tags, content))
            .expect("strings and numbers serialize")
    }

    pub fn compute_id(&self) -> [u8; 32] {
        let s = Self::serialized(
            &self.pubkey,
            self.created_at,
            self.kind,
            &self.tags,
            &self.content,
        );
        Sha256::digest(s.as_bytes()).into()
    }

    /// Checks that the id is the hash of the event and the signature is the pubkey's.
    pub fn verify(&self) -> Result<(), EventError> {
        let id = self.compute_id();
        if hex(&id) != self.id {
            return Err(EventError::Id);
        }
        let key =
            VerifyingKey::from_slice(&unhex(&self.pubkey)).map_err(|_| EventError::Signature)?;
        let sig =
            Signature::try_from(unhex(&self.sig).as_slice()).map_err(|_| EventError::Signature)?;
        key.verify_raw(&id, &sig).map_err(|_| EventError::Signature)
    }

    /// The values of every tag named `name`.
    pub fn tag_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tags
            .iter()
            .filter(move |t| t.first().is_some_and(|n| n == name))
            .filter_map(|t| t.get(1).map(String::as_str))
    }
}

/// Builds and signs an event (used by our own signalling and by tests).
pub fn sign(
    key: &SigningKey,
    created_at: u64,
    kind: u64,
    tags: Vec<Vec<String>>,
    content: &str,
    aux: &[u8; 32],
) -> String {
    let pubkey = hex(&key.verifying_key().to_bytes());
    let s = Event::serialized(&pubkey, created_at, kind, &tags, content);
    let id: [u8; 32] = Sha256::digest(s.as_bytes()).into();
    let sig = key
        .sign_raw(&id, aux)
        .expect("signing a 32-byte digest works");
    serde_json::json!({
        "kind": kind,
        "content": content,
        "pubkey": pubkey,
        "created_at": created_at,
        "tags": tags,
        "id": hex(&id),
        "sig": hex(&sig.to_bytes()),
    })
    .to_string()
}

fn check_hex(s: &str, len: usize, what: &'static str) -> Result<(), EventError> {
    if s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(EventError::Hex(what))
    }
}

pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Decodes hex already checked by [`check_hex`].
fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}
