//! JSON as a browser's JavaScript sees it: `JSON.parse` into values whose strings are
//! UTF-16 code units and whose numbers are doubles, the canonical form the Security
//! Manager signs (`JSON.stringify(sortKeysDeep(v))`, genosdb-data.md §10.3), and the
//! few JS coercions the role check and the query operators depend on.
//!
//! Pure and total: any input gives a value or an error, never a panic.

mod parse;
mod write;

use parse::Parser;
use write::{write_canonical, write_json};

/// Nesting deeper than this is refused (a browser would take it; no honest op has it).
pub const MAX_DEPTH: usize = 512;

#[derive(Clone, Debug, PartialEq)]
pub enum Js {
    Null,
    Bool(bool),
    Num(f64),
    Str(Vec<u16>),
    Arr(Vec<Js>),
    /// Members in arrival order; a repeated key keeps its last value.
    Obj(Vec<(Vec<u16>, Js)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON at byte {0}")]
    Syntax(usize),
    #[error("JSON nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

impl Js {
    pub fn parse(text: &str) -> Result<Js, JsonError> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(JsonError::Syntax(p.i));
        }
        Ok(v)
    }

    pub fn str(s: &str) -> Js {
        Js::Str(s.encode_utf16().collect())
    }

    /// The member `key` of an object (its last occurrence, as `JSON.parse` keeps).
    pub fn get(&self, key: &str) -> Option<&Js> {
        let Js::Obj(members) = self else { return None };
        let key: Vec<u16> = key.encode_utf16().collect();
        members
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Sets `key`, in place if present (JS keeps a property's position), else at the end.
    pub fn set(&mut self, key: &str, value: Js) {
        let Js::Obj(members) = self else { return };
        let key: Vec<u16> = key.encode_utf16().collect();
        let mut found = false;
        for (k, v) in members.iter_mut() {
            if *k == key {
                *v = value.clone();
                found = true;
            }
        }
        if !found {
            members.push((key, value));
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Js::Obj(members) = self {
            let key: Vec<u16> = key.encode_utf16().collect();
            members.retain(|(k, _)| *k != key);
        }
    }

    /// The string, if this is one made of valid UTF-16.
    pub fn as_string(&self) -> Option<String> {
        match self {
            Js::Str(units) => String::from_utf16(units).ok(),
            _ => None,
        }
    }

    /// JS truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Js::Null => false,
            Js::Bool(b) => *b,
            Js::Num(n) => *n != 0.0 && !n.is_nan(),
            Js::Str(s) => !s.is_empty(),
            Js::Arr(_) | Js::Obj(_) => true,
        }
    }

    /// `===` between two values read from JSON: objects and arrays are distinct
    /// references, so never equal.
    pub fn strict_eq(&self, other: &Js) -> bool {
        match (self, other) {
            (Js::Null, Js::Null) => true,
            (Js::Bool(a), Js::Bool(b)) => a == b,
            (Js::Num(a), Js::Num(b)) => a == b,
            (Js::Str(a), Js::Str(b)) => a == b,
            _ => false,
        }
    }

    /// `String(v)` as UTF-16.
    pub fn to_js_string(&self) -> Vec<u16> {
        match self {
            Js::Null => "null".encode_utf16().collect(),
            Js::Bool(b) => b.to_string().encode_utf16().collect(),
            Js::Num(n) => number_to_string(*n).encode_utf16().collect(),
            Js::Str(s) => s.clone(),
            // Array.prototype.join: null and undefined elements print as "".
            Js::Arr(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(u16::from(b','));
                    }
                    if *item != Js::Null {
                        out.extend(item.to_js_string());
                    }
                }
                out
            }
            Js::Obj(_) => "[object Object]".encode_utf16().collect(),
        }
    }

    /// `Number(v)` for the values a relational comparison converts.
    pub fn to_number(&self) -> f64 {
        match self {
            Js::Null => 0.0,
            Js::Bool(b) => f64::from(u8::from(*b)),
            Js::Num(n) => *n,
            Js::Str(s) => string_to_number(&String::from_utf16_lossy(s)),
            Js::Arr(_) | Js::Obj(_) => {
                string_to_number(&String::from_utf16_lossy(&self.to_js_string()))
            }
        }
    }

    /// `JSON.stringify` of the parsed value: members in their first position with
    /// their last value, as `JSON.parse` leaves them.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        write_json(self, &mut out);
        out
    }

    /// The canonical text of §10.3.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        write_canonical(self, &mut out);
        out
    }
}

/// `a < b` with JS's abstract relational comparison: two strings (after ToPrimitive)
/// compare by code units, anything else as numbers, and NaN compares false.
pub fn js_less(a: &Js, b: &Js) -> bool {
    let (pa, pb) = (to_primitive(a), to_primitive(b));
    if let (Js::Str(x), Js::Str(y)) = (&pa, &pb) {
        return x < y;
    }
    let (x, y) = (pa.to_number(), pb.to_number());
    x < y
}

/// `a <= b`: `!(b < a)` unless either side is NaN.
pub fn js_less_eq(a: &Js, b: &Js) -> bool {
    let (pa, pb) = (to_primitive(a), to_primitive(b));
    if let (Js::Str(x), Js::Str(y)) = (&pa, &pb) {
        return x <= y;
    }
    let (x, y) = (pa.to_number(), pb.to_number());
    x <= y
}

fn to_primitive(v: &Js) -> Js {
    match v {
        Js::Arr(_) | Js::Obj(_) => Js::Str(v.to_js_string()),
        other => other.clone(),
    }
}

/// `Number("…")`: trimmed, empty is 0, decimal, `0x`/`0o`/`0b` integers, Infinity.
fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            return digits.chars().fold(0.0, |acc, c| {
                acc * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0))
            });
        }
    }
    let unsigned = t.trim_start_matches(['+', '-']);
    if unsigned == "Infinity" && t.len() - unsigned.len() <= 1 {
        return if t.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    let valid = t.len() - unsigned.len() <= 1
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if !valid {
        return f64::NAN;
    }
    t.parse().unwrap_or(f64::NAN)
}

/// ECMAScript Number::toString (what `JSON.stringify` prints for finite numbers).
pub fn number_to_string(n: f64) -> String {
    if n.is_nan() {
        return "NaN".into();
    }
    if n == 0.0 {
        return "0".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    ryu_js::Buffer::new().format_finite(n).to_owned()
}

#[cfg(test)]
mod tests {
    use super::write::{PROTO, key_order, write_js_string};
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    fn canon(text: &str) -> String {
        Js::parse(text).unwrap().canonical()
    }

    #[test]
    fn keys_sort_as_browsers_enumerate_them() {
        // §10.3 rule 1 and 2, the probe the browser accepted.
        assert_eq!(
            canon(r#"{"10":1,"2":2,"b":3,"a":4,"Z":5,"é":6}"#),
            r#"{"2":2,"10":1,"Z":5,"a":4,"b":3,"é":6}"#
        );
        assert_eq!(
            canon(r#"{"01":1,"-1":2,"4294967295":3,"4294967294":4,"1":5}"#),
            r#"{"1":5,"4294967294":4,"-1":2,"01":1,"4294967295":3}"#
        );
        // UTF-16 order: an astral character (0xD83D…) before U+FF61.
        assert_eq!(canon(r#"{"｡":1,"😀":2}"#), r#"{"😀":2,"｡":1}"#);
        // Nested objects inside arrays are sorted too.
        assert_eq!(
            canon(r#"[{"b":1,"a":[{"d":1,"c":2}]}]"#),
            r#"[{"a":[{"c":2,"d":1}],"b":1}]"#
        );
    }

    #[test]
    fn proto_vanishes_and_repeated_keys_keep_the_last_value() {
        assert_eq!(canon(r#"{"__proto__":{"x":1},"a":1}"#), r#"{"a":1}"#);
        assert_eq!(canon(r#"{"a":{"__proto__":5}}"#), r#"{"a":{}}"#);
        assert_eq!(canon(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        for (input, js) in [
            ("1e21", "1e+21"),
            ("1e-7", "1e-7"),
            ("0.1", "0.1"),
            ("100.0", "100"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("9007199254740993", "9007199254740992"),
            ("123456789012345680000", "123456789012345680000"),
            ("1.5e300", "1.5e+300"),
            ("0.000001", "0.000001"),
            ("1e400", "null"),
            ("-1e400", "null"),
            ("5e-324", "5e-324"),
        ] {
            assert_eq!(canon(input), js, "{input}");
        }
        assert_eq!(canon("[0.1,0.2]"), "[0.1,0.2]");
        assert_eq!(number_to_string(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn strings_escape_as_json_stringify_does() {
        assert_eq!(
            canon(r#""a\"b\\c\/d\b\f\n\r\t\u0001\u001f\u007f""#),
            "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}\""
        );
        // Lone surrogates stay escaped (lowercase); a valid pair becomes the character.
        assert_eq!(canon(r#""\uD800x\uDFFF""#), r#""\ud800x\udfff""#);
        assert_eq!(canon(r#""\ud83d\ude00""#), "\"😀\"");
        // Not escaped: U+2028, non-ASCII.
        assert_eq!(canon("\"\u{2028}é\""), "\"\u{2028}é\"");
    }

    #[test]
    fn refuses_what_json_parse_refuses() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            ".5",
            "+1",
            "\"\\x\"",
            "\"\\u12\"",
            "tru",
            "[1] x",
            "{\"a\":1,}",
            "\"a\u{1}\"",
            "NaN",
        ] {
            assert!(Js::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert_eq!(Js::parse(&deep), Err(JsonError::TooDeep));
    }

    #[test]
    fn coercions() {
        assert!(js_less(&Js::str("5"), &Js::Num(10.0)));
        assert!(!js_less(&Js::str("5"), &Js::str("10")));
        assert!(!js_less(&Js::Null, &Js::str("x")));
        assert!(js_less_eq(&Js::Null, &Js::Num(0.0)));
        assert!(js_less(&Js::Arr(vec![Js::Num(1.0)]), &Js::Num(2.0)));
        assert_eq!(
            String::from_utf16_lossy(&Js::parse("[1,null,[2,3]]").unwrap().to_js_string()),
            "1,,2,3"
        );
        assert!(Js::str("0x1f").to_number() == 31.0);
        assert!(Js::str(" 12 ").to_number() == 12.0);
        assert!(Js::str("1e3").to_number() == 1000.0);
        assert!(Js::str("abc").to_number().is_nan());
        assert!(!Js::Num(0.0).truthy() && !Js::str("").truthy() && Js::Arr(vec![]).truthy());
    }

    fn arb_js() -> impl Strategy<Value = Js> {
        let leaf = prop_oneof![
            Just(Js::Null),
            any::<bool>().prop_map(Js::Bool),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| Js::Num(if f == 0.0 { 0.0 } else { f })),
            proptest::collection::vec(any::<u16>(), 0..8).prop_map(Js::Str),
            "[a-zA-Z0-9 é😀\"\\\\\n]{0,6}".prop_map(|s| Js::str(&s)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Js::Arr),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            "[a-z]{0,3}".prop_map(|s| s.encode_utf16().collect::<Vec<u16>>()),
                            (0u32..20).prop_map(|n| n.to_string().encode_utf16().collect()),
                            proptest::collection::vec(any::<u16>(), 1..3),
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|mut m| {
                    // Distinct keys, as a parsed object has.
                    let mut seen = std::collections::HashSet::new();
                    m.retain(|(k, _)| k.as_slice() != PROTO && seen.insert(k.clone()));
                    Js::Obj(m)
                }),
            ]
        })
    }

    fn sorted(v: &Js) -> Js {
        match v {
            Js::Arr(items) => Js::Arr(items.iter().map(sorted).collect()),
            Js::Obj(m) => {
                let mut m: Vec<_> = m.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                m.sort_by(|a, b| key_order(&a.0, &b.0));
                Js::Obj(m)
            }
            other => other.clone(),
        }
    }

    proptest! {
        /// Canonical JSON parses back to the same value, sorted; printing is stable.
        #[test]
        fn canonical_parses_back_equal(v in arb_js()) {
            let text = v.canonical();
            let back = Js::parse(&text).unwrap();
            prop_assert_eq!(&back, &sorted(&v));
            prop_assert_eq!(back.canonical(), text);
        }

        /// Keys come out index-first, then in UTF-16 order; nothing is escaped that
        /// JSON.stringify leaves alone.
        #[test]
        fn canonical_key_order_and_escaping(v in arb_js()) {
            fn check(v: &Js) -> Result<(), TestCaseError> {
                match v {
                    Js::Obj(m) => {
                        let s = sorted(v);
                        let Js::Obj(sm) = &s else { unreachable!() };
                        for w in sm.windows(2) {
                            prop_assert!(key_order(&w[0].0, &w[1].0) == Ordering::Less);
                        }
                        for (_, x) in m { check(x)?; }
                    }
                    Js::Arr(items) => for x in items { check(x)?; },
                    Js::Str(s) => {
                        let mut out = String::new();
                        write_js_string(s, &mut out);
                        prop_assert!(!out.contains("\\/"));
                        prop_assert!(out.chars().all(|c| c >= ' '));
                    }
                    _ => {}
                }
                Ok(())
            }
            check(&v)?;
        }

        /// Numbers survive the round trip through their JS spelling exactly.
        #[test]
        fn numbers_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let s = number_to_string(f);
            let back: f64 = s.parse().unwrap();
            prop_assert_eq!(back, if f == 0.0 { 0.0 } else { f });
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            let _ = Js::parse(&s);
        }
    }
}
