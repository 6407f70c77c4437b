//! JSON helpers that keep values exactly as received.
//!
//! Values are never parsed into a tree: a node's value is kept as the raw JSON text the
//! peer sent, so big integers, float spellings and key order survive untouched. Only the
//! top level of an object is split when a rule needs to look inside it.

use super::hlc::{Hlc, MAX_SAFE_INTEGER};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Owned raw JSON text, valid by construction.
#[derive(Clone, Debug)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    pub fn from_raw(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }

    /// Validates `text` as one JSON value.
    pub fn parse(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    pub fn from_bool(b: bool) -> Self {
        Self::parse(b.to_string()).expect("a bool is JSON")
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}
impl Eq for RawJson {}

/// In MessagePack (our storage) raw JSON travels as a string.
impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.get())
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RawJson::parse(text).map_err(de::Error::custom)
    }
}

/// An object key that borrows from the input when it holds no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top level of a JSON object: its members in order, each value left raw.
#[derive(Debug, Default)]
pub struct RawObject<'a> {
    pub members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key.0, value));
                }
                Ok(RawObject { members })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> RawObject<'a> {
    /// Splits `raw` if it is an object; `None` for any other JSON value.
    pub fn parse(raw: &'a RawValue) -> Option<Self> {
        if !raw.get().trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// The member `key`; with duplicate keys the last one wins, as in `JSON.parse`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.members.iter().any(|(k, _)| k == key)
    }

    /// Writes the object back without the members named `skip`.
    pub fn to_json_without(&self, skip: &str) -> String {
        self.to_json_led_by(skip, None)
    }

    /// Writes the object back with `key: value` first (when given) and every other
    /// member named `key` left out.
    pub fn to_json_led_by(&self, key: &str, value: Option<&str>) -> String {
        let mut out = String::with_capacity(64);
        out.push('{');
        let mut first = true;
        if let Some(v) = value {
            write_str(&mut out, key);
            out.push(':');
            out.push_str(v);
            first = false;
        }
        for (k, v) in self.members.iter().filter(|(k, _)| k != key) {
            if !first {
                out.push(',');
            }
            first = false;
            write_str(&mut out, k);
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        out
    }
}

/// Writes `s` as a JSON string, escaped the way `JSON.stringify` does.
pub fn write_str(out: &mut String, s: &str) {
    // serde_json and JSON.stringify agree: only `"`, `\` and C0 controls are escaped.
    let needs_escape = s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    if needs_escape {
        out.push_str(&serde_json::to_string(s).expect("a str serializes"));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Reads a JSON string member.
pub fn parse_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

/// Is this raw value the JSON literal `true`?
pub fn is_true(raw: &RawValue) -> bool {
    raw.get().trim() == "true"
}

pub fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error("timestamp is not an object with numeric physical and logical")]
    Shape,
    #[error("timestamp field is not a non-negative integer up to 2^53-1")]
    Range,
}

/// Reads an HLC. `null` gives `None`; anything that is not two safe non-negative
/// integers is refused, since such a time can only come from a broken or hostile peer.
pub fn parse_hlc(raw: &RawValue) -> Result<Option<Hlc>, HlcError> {
    if is_null(raw) {
        return Ok(None);
    }
    let obj = RawObject::parse(raw).ok_or(HlcError::Shape)?;
    let physical = safe_integer(obj.get("physical").ok_or(HlcError::Shape)?)?;
    let logical = safe_integer(obj.get("logical").ok_or(HlcError::Shape)?)?;
    Ok(Some(Hlc::new(physical, logical)))
}

fn safe_integer(raw: &RawValue) -> Result<u64, HlcError> {
    let n: serde_json::Number = serde_json::from_str(raw.get()).map_err(|_| HlcError::Shape)?;
    let value = if let Some(u) = n.as_u64() {
        u
    } else {
        // 1795591854021.0 is the same JS number as 1795591854021.
        let f = n.as_f64().ok_or(HlcError::Range)?;
        if !(f >= 0.0 && f.fract() == 0.0 && f <= MAX_SAFE_INTEGER as f64) {
            return Err(HlcError::Range);
        }
        f as u64
    };
    if value > MAX_SAFE_INTEGER {
        return Err(HlcError::Range);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn object_members_keep_order_and_text() {
        let r = raw(r#"{"b":1.50,"a":{"x":[1,2]},"big":123456789012345678901234567890}"#);
        let o = RawObject::parse(&r).unwrap();
        let keys: Vec<&str> = o.members.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "big"]);
        assert_eq!(o.get("b").unwrap().get(), "1.50");
        assert_eq!(
            o.get("big").unwrap().get(),
            "123456789012345678901234567890"
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let r = raw(r#"{"priority":false,"priority":true}"#);
        assert!(is_true(
            RawObject::parse(&r).unwrap().get("priority").unwrap()
        ));
    }

    #[test]
    fn strip_member() {
        let r = raw(r#"{"role":"admin","priority":true,"esc\"k":"v\n"}"#);
        let o = RawObject::parse(&r).unwrap();
        assert_eq!(
            o.to_json_without("priority"),
            r#"{"role":"admin","esc\"k":"v\n"}"#
        );
    }

    #[test]
    fn non_objects_are_not_split() {
        assert!(RawObject::parse(&raw("[1]")).is_none());
        assert!(RawObject::parse(&raw("\"{\"")).is_none());
        assert!(RawObject::parse(&raw("null")).is_none());
    }

    #[test]
    fn hlc_forms() {
        assert_eq!(
            parse_hlc(&raw(r#"{"physical":5,"logical":2}"#)),
            Ok(Some(Hlc::new(5, 2)))
        );
        assert_eq!(
            parse_hlc(&raw(r#"{"logical":2.0,"physical":5}"#)),
            Ok(Some(Hlc::new(5, 2)))
        );
        assert_eq!(parse_hlc(&raw("null")), Ok(None));
        assert_eq!(
            parse_hlc(&raw(r#"{"physical":-1,"logical":2}"#)),
            Err(HlcError::Range)
        );
        assert_eq!(
            parse_hlc(&raw(r#"{"physical":1.5,"logical":2}"#)),
            Err(HlcError::Range)
        );
        assert_eq!(
            parse_hlc(&raw(r#"{"physical":9007199254740992,"logical":2}"#)),
            Err(HlcError::Range)
        );
        assert_eq!(
            parse_hlc(&raw(r#"{"physical":"1","logical":2}"#)),
            Err(HlcError::Shape)
        );
        assert_eq!(parse_hlc(&raw("7")), Err(HlcError::Shape));
    }

    #[test]
    fn string_escaping_matches_json_stringify() {
        let mut s = String::new();
        write_str(&mut s, "a\"b\\c\u{1}\té😀");
        assert_eq!(s, "\"a\\\"b\\\\c\\u0001\\té😀\"");
    }
}
