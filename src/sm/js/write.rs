//! `JSON.stringify` of a parsed value: the canonical form of §10.3 (`sortKeysDeep`)
//! and the plain form with members where `JSON.parse` left them.

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::{Js, number_to_string};

/// A canonical array index: "0".."4294967294", no leading zeros.
fn array_index(key: &[u16]) -> Option<u32> {
    if key.is_empty() || key.len() > 10 || (key.len() > 1 && key[0] == u16::from(b'0')) {
        return None;
    }
    let mut n: u64 = 0;
    for &u in key {
        let d = u.checked_sub(u16::from(b'0')).filter(|d| *d < 10)?;
        n = n * 10 + u64::from(d);
    }
    u32::try_from(n).ok().filter(|n| *n != u32::MAX)
}

/// Object.keys order after `sortKeysDeep`: index keys numerically, then the rest by
/// UTF-16 code units.
pub(super) fn key_order(a: &[u16], b: &[u16]) -> Ordering {
    match (array_index(a), array_index(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

pub(super) const PROTO: &[u16] = &[
    b'_' as u16,
    b'_' as u16,
    b'p' as u16,
    b'r' as u16,
    b'o' as u16,
    b't' as u16,
    b'o' as u16,
    b'_' as u16,
    b'_' as u16,
];

pub(super) fn write_canonical(v: &Js, out: &mut String) {
    match v {
        Js::Null => out.push_str("null"),
        Js::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Js::Num(n) if n.is_finite() => out.push_str(&number_to_string(*n)),
        Js::Num(_) => out.push_str("null"),
        Js::Str(s) => write_js_string(s, out),
        Js::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Js::Obj(members) => {
            // The last value of a repeated key wins; `__proto__` is swallowed by the
            // assignment in sortKeysDeep.
            let mut order: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].0 != PROTO)
                .collect();
            order.sort_by(|&a, &b| key_order(&members[a].0, &members[b].0).then(b.cmp(&a)));
            order.dedup_by(|later, earlier| members[*later].0 == members[*earlier].0);
            out.push('{');
            for (n, &i) in order.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_js_string(&members[i].0, out);
                out.push(':');
                write_canonical(&members[i].1, out);
            }
            out.push('}');
        }
    }
}

pub(super) fn write_json(v: &Js, out: &mut String) {
    match v {
        Js::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Js::Obj(members) => {
            out.push('{');
            let mut first = true;
            for (i, (k, _)) in members.iter().enumerate() {
                if members[..i].iter().any(|(seen, _)| seen == k) {
                    continue;
                }
                let last = members.iter().rev().find(|(x, _)| x == k).map(|(_, v)| v);
                if !first {
                    out.push(',');
                }
                first = false;
                write_js_string(k, out);
                out.push(':');
                write_json(last.unwrap_or(&Js::Null), out);
            }
            out.push('}');
        }
        scalar => write_canonical(scalar, out),
    }
}

/// JSON.stringify's QuoteJSONString, lone surrogates escaped.
pub(super) fn write_js_string(units: &[u16], out: &mut String) {
    out.push('"');
    for item in char::decode_utf16(units.iter().copied()) {
        match item {
            Ok(c) => match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            },
            Err(e) => {
                let _ = write!(out, "\\u{:04x}", e.unpaired_surrogate());
            }
        }
    }
    out.push('"');
}
