//! Events as the relay takes them: the `nostr` crate's [`Event`] (parsed, and verified
//! with its `verify`: id hash and BIP-340 signature, on libsecp256k1), bounded in tags,
//! and kept with the object exactly as received, which is what is relayed.

use nostr_sdk::prelude::{Alphabet, Event, JsonUtil, SingleLetterTag};
use serde_json::value::RawValue;

/// Bounds on what one event may carry; browsers' signalling events are far smaller.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_ITEMS: usize = 8;

/// GenosRTC's topic tag.
pub const X: SingleLetterTag = SingleLetterTag::lowercase(Alphabet::X);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid: not a Nostr event ({0})")]
    Shape(String),
    #[error("invalid: too many tags")]
    Tags,
    #[error("invalid: id does not match the event")]
    Id,
    #[error("invalid: bad signature")]
    Signature,
}

/// A parsed event and the object it was parsed from (relayed unchanged).
#[derive(Debug)]
pub struct Relayed {
    pub event: Event,
    pub raw: Box<RawValue>,
}

impl std::ops::Deref for Relayed {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl Relayed {
    /// Parses `raw` (not verified yet: see [`Relayed::verify`]).
    pub fn parse(raw: &RawValue) -> Result<Self, EventError> {
        let event = Event::from_json(raw.get()).map_err(|e| EventError::Shape(e.to_string()))?;
        if event.tags.len() > MAX_TAGS
            || event
                .tags
                .iter()
                .any(|t| t.as_slice().len() > MAX_TAG_ITEMS)
        {
            return Err(EventError::Tags);
        }
        Ok(Self {
            event,
            raw: raw.to_owned(),
        })
    }

    /// The id is the hash of the event and the signature is the pubkey's.
    pub fn verify(&self) -> Result<(), EventError> {
        self.event.verify().map_err(|e| match e {
            nostr_sdk::event::Error::InvalidId => EventError::Id,
            _ => EventError::Signature,
        })
    }

    /// The values of the event's `x` tags.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.event
            .tags
            .indexes()
            .get(&X)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}
