//! GenosDB's query operators over nodes (`db.map({query})`), as its query engine
//! evaluates them, for SM_RULES governance.
//!
//! A query is an object. A plain key names a field: it is looked up by dot path in
//! the node's value, then in the node itself (`id`, `timestamp.physical`). A scalar
//! condition means `$eq`; an object condition holds operators, all of which must
//! hold, and an unknown key in it is false. `$and`, `$or` and `$not` nest queries.
//! Where GenosDB's code would throw (a `$text` at the top level, `$and` without an
//! array, an unknown top-level operator), evaluation is an error and the rule is
//! skipped for that round, as sm-gov does.

use super::js::{Js, js_less, js_less_eq};
use regex::{Regex, RegexBuilder};
use std::collections::HashMap;
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("a query must be a JSON object")]
    NotObject,
    #[error("{0} needs an array of queries")]
    NeedsArray(&'static str),
    #[error("{0} needs a [low, high] array")]
    Between(&'static str),
    #[error("unknown operator {0}")]
    Unknown(String),
    #[error("$edge is not supported by the daemon's governance")]
    Edge,
    #[error("{op} pattern {pattern:?} is not a regular expression the daemon can run: {error}")]
    Regex {
        op: &'static str,
        pattern: String,
        error: String,
    },
}

/// A query checked once, with its patterns compiled.
#[derive(Debug, Clone)]
pub struct Query {
    root: Js,
    patterns: HashMap<String, Regex>,
}

const FIELD_OPS: [&str; 18] = [
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$between",
    "$exists",
    "$startsWith",
    "$endsWith",
    "$contains",
    "$text",
    "$like",
    "$regex",
    "$and",
    "$or",
    "$not",
];

impl Query {
    pub fn compile(root: &Js) -> Result<Query, QueryError> {
        let mut patterns = HashMap::new();
        check_query(root, &mut patterns)?;
        Ok(Query {
            root: root.clone(),
            patterns,
        })
    }

    /// Does the node `{id, value, edges, timestamp}` match?
    pub fn matches(&self, node: &Js) -> Result<bool, QueryError> {
        self.filter(&self.root, Some(node))
    }

    fn filter(&self, query: &Js, target: Option<&Js>) -> Result<bool, QueryError> {
        let Js::Obj(members) = query else {
            return Err(QueryError::NotObject);
        };
        for (key, cond) in members {
            let key = String::from_utf16_lossy(key);
            let ok = if key.starts_with('$') {
                self.top_level(&key, cond, target)?
            } else {
                let field = target
                    .and_then(|t| t.get("value"))
                    .and_then(|v| path(v, &key))
                    .or_else(|| target.and_then(|t| path(t, &key)));
                self.condition(field, cond)?
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// An operator applied to the node itself.
    fn top_level(&self, op: &str, cond: &Js, target: Option<&Js>) -> Result<bool, QueryError> {
        match op {
            "$text" => Err(QueryError::Unknown("$text at the top level".into())),
            "$edge" => Err(QueryError::Edge),
            _ if FIELD_OPS.contains(&op) => self.operator(op, target, cond),
            _ => Err(QueryError::Unknown(op.into())),
        }
    }

    fn condition(&self, field: Option<&Js>, cond: &Js) -> Result<bool, QueryError> {
        let ops = match cond {
            Js::Obj(ops) => ops,
            // An array is an object to JS: its index keys are no operators.
            Js::Arr(items) => return Ok(items.is_empty()),
            scalar => return Ok(is_strict_eq(field, scalar)),
        };
        for (op, arg) in ops {
            let op = String::from_utf16_lossy(op);
            let ok = match op.as_str() {
                "$text" => text_field(field, arg),
                _ if FIELD_OPS.contains(&op.as_str()) => self.operator(&op, field, arg)?,
                // `P0[P]?.(…) ?? false`: an unknown key is simply false.
                _ => false,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn operator(&self, op: &str, v: Option<&Js>, arg: &Js) -> Result<bool, QueryError> {
        let undefined = Js::Num(f64::NAN);
        let x = v.unwrap_or(&undefined);
        Ok(match op {
            "$eq" => is_strict_eq(v, arg),
            "$ne" => !is_strict_eq(v, arg),
            "$gt" => js_less(arg, x),
            "$gte" => v.is_some() && js_less_eq(arg, x),
            "$lt" => js_less(x, arg),
            "$lte" => v.is_some() && js_less_eq(x, arg),
            "$in" => match (arg, v) {
                (Js::Arr(list), Some(Js::Arr(items))) => {
                    items.iter().any(|i| list.iter().any(|l| l.strict_eq(i)))
                }
                (Js::Arr(list), Some(x)) => list.iter().any(|l| l.strict_eq(x)),
                _ => false,
            },
            "$between" => {
                let Js::Arr(bounds) = arg else {
                    return Err(QueryError::Between("$between"));
                };
                match (v, bounds.first(), bounds.get(1)) {
                    (Some(x), Some(lo), Some(hi)) => js_less_eq(lo, x) && js_less_eq(x, hi),
                    _ => false,
                }
            }
            "$exists" => v.is_some() == arg.truthy(),
            "$startsWith" | "$endsWith" | "$contains" => match v {
                Some(Js::Str(s)) => {
                    let needle = arg.to_js_string();
                    match op {
                        "$startsWith" => s.starts_with(&needle),
                        "$endsWith" => s.ends_with(&needle),
                        _ => needle.is_empty() || s.windows(needle.len()).any(|w| w == needle),
                    }
                }
                _ => false,
            },
            "$like" => match (v, arg) {
                (Some(Js::Str(s)), Js::Str(_)) => self
                    .regex(&like_pattern(arg))?
                    .is_match(&String::from_utf16_lossy(s)),
                _ => false,
            },
            "$regex" => match v {
                Some(Js::Str(s)) => self
                    .regex(&regex_source(arg))?
                    .is_match(&String::from_utf16_lossy(s)),
                _ => false,
            },
            "$and" | "$or" => {
                let Js::Arr(subs) = arg else {
                    return Err(QueryError::NeedsArray(if op == "$and" {
                        "$and"
                    } else {
                        "$or"
                    }));
                };
                let mut results = Vec::with_capacity(subs.len());
                for sub in subs {
                    let r = self.filter(sub, v)?;
                    results.push(r);
                    if (op == "$and" && !r) || (op == "$or" && r) {
                        break;
                    }
                }
                if op == "$and" {
                    results.iter().all(|r| *r)
                } else {
                    results.iter().any(|r| *r)
                }
            }
            "$not" => !self.filter(arg, v)?,
            _ => return Err(QueryError::Unknown(op.into())),
        })
    }

    fn regex(&self, pattern: &str) -> Result<Regex, QueryError> {
        match self.patterns.get(pattern) {
            Some(r) => Ok(r.clone()),
            None => compile_regex("$regex", pattern),
        }
    }
}

/// `$eq` against a possibly missing field: a missing field equals nothing.
fn is_strict_eq(v: Option<&Js>, arg: &Js) -> bool {
    v.is_some_and(|v| v.strict_eq(arg))
}

/// The dot-path lookup of GenosDB: each step needs an object (or array) holding the
/// key; arrays also answer `length`.
fn path<'a>(root: &'a Js, dotted: &str) -> Option<&'a Js> {
    let mut cur = root;
    for step in dotted.split('.') {
        cur = match cur {
            Js::Obj(_) => cur.get(step)?,
            Js::Arr(items) => {
                let i: usize = step
                    .parse()
                    .ok()
                    .filter(|_| step == "0" || !step.starts_with('0'))?;
                items.get(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// `$text` on a field: accent- and case-insensitive substring on word characters.
fn text_field(v: Option<&Js>, arg: &Js) -> bool {
    let needle = text_norm(&String::from_utf16_lossy(&arg.to_js_string()));
    let hay = |x: &Js| text_norm(&String::from_utf16_lossy(&x.to_js_string())).contains(&needle);
    match v {
        Some(Js::Arr(items)) => items.iter().any(hay),
        Some(x) => hay(x),
        None => "undefined".contains(&needle),
    }
}

/// NFD, combining marks U+0300–U+036F removed, lowercased, then everything that is
/// not `[A-Za-z0-9_]` or whitespace removed.
fn text_norm(s: &str) -> String {
    let stripped: String = s
        .nfd()
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .collect();
    stripped
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || is_js_space(*c))
        .collect()
}

fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

fn like_pattern(arg: &Js) -> String {
    let p = String::from_utf16_lossy(&arg.to_js_string());
    format!("^{}$", p.replace('%', ".*").replace('_', "."))
}

/// `new RegExp(Q.$regex || Q)`.
fn regex_source(arg: &Js) -> String {
    let inner = arg.get("$regex").filter(|r| r.truthy()).unwrap_or(arg);
    String::from_utf16_lossy(&inner.to_js_string())
}

fn compile_regex(op: &'static str, pattern: &str) -> Result<Regex, QueryError> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| QueryError::Regex {
            op,
            pattern: pattern.into(),
            error: e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .into(),
        })
}

/// Walks a query once: operators known, nesting well formed, patterns compiled.
fn check_query(q: &Js, patterns: &mut HashMap<String, Regex>) -> Result<(), QueryError> {
    let Js::Obj(members) = q else {
        return Err(QueryError::NotObject);
    };
    for (key, cond) in members {
        let key = String::from_utf16_lossy(key);
        if key.starts_with('$') {
            check_operator(&key, cond, true, patterns)?;
        } else if let Js::Obj(ops) = cond {
            for (op, arg) in ops {
                let op = String::from_utf16_lossy(op);
                if op.starts_with('$') {
                    check_operator(&op, arg, false, patterns)?;
                }
            }
        }
    }
    Ok(())
}

fn check_operator(
    op: &str,
    arg: &Js,
    top: bool,
    patterns: &mut HashMap<String, Regex>,
) -> Result<(), QueryError> {
    match op {
        "$edge" => return Err(QueryError::Edge),
        "$text" if top => return Err(QueryError::Unknown("$text at the top level".into())),
        "$and" | "$or" => {
            let Js::Arr(subs) = arg else {
                return Err(QueryError::NeedsArray(if op == "$and" {
                    "$and"
                } else {
                    "$or"
                }));
            };
            for sub in subs {
                check_query(sub, patterns)?;
            }
        }
        "$not" => check_query(arg, patterns)?,
        "$between" if !matches!(arg, Js::Arr(_)) => return Err(QueryError::Between("$between")),
        "$like" => {
            if let Js::Str(_) = arg {
                let p = like_pattern(arg);
                let r = compile_regex("$like", &p)?;
                patterns.insert(p, r);
            }
        }
        "$regex" => {
            let p = regex_source(arg);
            let r = compile_regex("$regex", &p)?;
            patterns.insert(p, r);
        }
        _ if FIELD_OPS.contains(&op) => {}
        _ if top => return Err(QueryError::Unknown(op.into())),
        // Unknown operators inside a condition are false at run time, not errors;
        // flag them anyway, since a rule with a typo never matches.
        _ => return Err(QueryError::Unknown(op.into())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: &str) -> Js {
        Js::parse(&format!(
            r#"{{"id":"user:0xabc","value":{value},"edges":["n2"],"timestamp":{{"physical":1000,"logical":2}}}}"#
        ))
        .unwrap()
    }

    fn q(text: &str) -> Query {
        Query::compile(&Js::parse(text).unwrap()).unwrap()
    }

    fn hit(query: &str, value: &str) -> bool {
        q(query).matches(&node(value)).unwrap()
    }

    #[test]
    fn comparison_operators() {
        let v = r#"{"points":12,"name":"Ana","tags":["a","b"],"role":"guest","nested":{"k":3}}"#;
        assert!(hit(r#"{"points":12}"#, v));
        assert!(hit(r#"{"points":{"$eq":12}}"#, v));
        assert!(!hit(r#"{"points":{"$eq":"12"}}"#, v));
        assert!(hit(r#"{"points":{"$ne":11}}"#, v));
        assert!(hit(r#"{"missing":{"$ne":1}}"#, v));
        assert!(hit(r#"{"points":{"$gt":10,"$lt":13}}"#, v));
        assert!(!hit(r#"{"points":{"$gt":12}}"#, v));
        assert!(hit(r#"{"points":{"$gte":12,"$lte":12}}"#, v));
        assert!(
            hit(r#"{"points":{"$gt":"9"}}"#, v),
            "JS converts the string to a number"
        );
        assert!(
            !hit(r#"{"name":{"$gt":"b"}}"#, v),
            "two strings compare as strings"
        );
        assert!(!hit(r#"{"missing":{"$gte":0}}"#, v));
        assert!(hit(r#"{"points":{"$between":[10,20]}}"#, v));
        assert!(!hit(r#"{"points":{"$between":[13,20]}}"#, v));
        assert!(hit(r#"{"role":{"$in":["guest","user"]}}"#, v));
        assert!(hit(r#"{"tags":{"$in":["b","z"]}}"#, v));
        assert!(!hit(r#"{"tags":{"$in":["z"]}}"#, v));
        assert!(hit(
            r#"{"points":{"$exists":true},"missing":{"$exists":false}}"#,
            v
        ));
        assert!(hit(r#"{"nested.k":3}"#, v));
        assert!(hit(r#"{"tags.1":"b"}"#, v));
        assert!(
            hit(r#"{"timestamp.physical":{"$lt":2000}}"#, v),
            "falls back to the node"
        );
        assert!(hit(r#"{"id":{"$startsWith":"user:"}}"#, v));
        assert!(
            !hit(r#"{"points":{"foo":1}}"#, v),
            "a plain key in a condition is false"
        );
        assert!(hit(r#"{"gone":null}"#, r#"{"gone":null}"#));
        assert!(!hit(r#"{"gone":null}"#, v));
    }

    #[test]
    fn string_operators() {
        let v = r#"{"name":"José Müller","email":"jose@example.com","n":5}"#;
        assert!(hit(r#"{"email":{"$endsWith":"example.com"}}"#, v));
        assert!(hit(r#"{"email":{"$contains":"@"}}"#, v));
        assert!(!hit(r#"{"n":{"$contains":"5"}}"#, v), "only strings");
        assert!(hit(r#"{"name":{"$text":"jose muller"}}"#, v));
        assert!(hit(r#"{"name":{"$text":"MÜLL"}}"#, v));
        assert!(!hit(r#"{"name":{"$text":"maria"}}"#, v));
        assert!(hit(r#"{"email":{"$like":"JOSE%.com"}}"#, v));
        assert!(hit(r#"{"email":{"$like":"jos_@%"}}"#, v));
        assert!(!hit(r#"{"email":{"$like":"jose"}}"#, v));
        assert!(hit(r#"{"email":{"$regex":"^JOSE@"}}"#, v));
        assert!(hit(
            r#"{"email":{"$regex":{"$regex":"example\\.com$"}}}"#,
            v
        ));
        assert!(!hit(r#"{"n":{"$regex":"5"}}"#, v));
    }

    #[test]
    fn logical_operators() {
        let v = r#"{"points":12,"role":"guest"}"#;
        assert!(hit(
            r#"{"$and":[{"points":{"$gt":10}},{"role":"guest"}]}"#,
            v
        ));
        assert!(!hit(
            r#"{"$and":[{"points":{"$gt":10}},{"role":"user"}]}"#,
            v
        ));
        assert!(hit(
            r#"{"$or":[{"points":{"$gt":100}},{"role":"guest"}]}"#,
            v
        ));
        assert!(!hit(r#"{"$or":[]}"#, v));
        assert!(hit(r#"{"$not":{"role":"user"}}"#, v));
        assert!(hit(r#"{}"#, v));
    }

    #[test]
    fn errors_where_genosdb_throws() {
        for bad in [
            r#"{"$and":{"a":1}}"#,
            r#"{"$edge":{"a":1}}"#,
            r#"{"$text":"x"}"#,
            r#"{"$bogus":1}"#,
            r#"{"a":{"$between":5}}"#,
            r#"{"a":{"$regex":"(?<=x)y"}}"#,
            r#"{"a":{"$regex":"(unclosed"}}"#,
            r#"{"a":{"$nope":1}}"#,
            "[1]",
        ] {
            assert!(Query::compile(&Js::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
