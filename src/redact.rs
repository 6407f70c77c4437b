//! Credentials inside relay and ICE URLs (`wss://user:pass@relay/…`, `?token=…`) never
//! leave the process: logs, /health, / and error messages show these URLs through
//! [`url`], which masks them. DATABASE_URL has its own redaction (persist::pg).

use std::borrow::Cow;

/// Query parameters whose values are shown: they say how to connect, never who.
const PLAIN_PARAMS: &[&str] = &["transport"];

const MASK: &str = "***";

/// `url` with its user information and query values masked:
/// `wss://u:p@relay.example/x?token=abc&transport=tcp#f` shows as
/// `wss://***@relay.example/x?token=***&transport=tcp#***`.
///
/// Everything before the last `@` counts as user information, whatever the characters
/// in it: a password may hold `/`, `?` or `#`, and a parser may read it up to the `@`.
pub fn url(url: &str) -> Cow<'_, str> {
    let (scheme, rest) = split_scheme(url);
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (true, &rest[at + 1..]),
        None => (false, rest),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let query_secret = query.is_some_and(|q| {
        q.split('&').any(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| !v.is_empty() && !plain(k))
        })
    });
    let fragment_secret = fragment.is_some_and(|f| !f.is_empty());
    if !userinfo && !query_secret && !fragment_secret {
        return Cow::Borrowed(url);
    }
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if userinfo {
        out.push_str(MASK);
        out.push('@');
    }
    out.push_str(base);
    if let Some(q) = query {
        out.push('?');
        for (i, param) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match param.split_once('=') {
                Some((k, v)) if !v.is_empty() && !plain(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(MASK);
                }
                _ => out.push_str(param),
            }
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        if !f.is_empty() {
            out.push_str(MASK);
        }
    }
    Cow::Owned(out)
}

/// A comma list of URLs (RELAY_URLS, ICE_SERVERS, TURN_URLS), each masked.
pub fn list(v: &str) -> String {
    v.split(',').map(url).collect::<Vec<_>>().join(",")
}

/// URLs, each masked, for a log field.
pub fn urls(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| url(u).into_owned()).collect()
}

/// `text` (an error message that may quote `url`, whole or in parts) with the URL's
/// credentials masked.
pub fn scrub(text: &str, url_text: &str) -> String {
    let mut out = text.replace(url_text, &url(url_text));
    for secret in secret_parts(url_text) {
        out = out.replace(secret, MASK);
    }
    out
}

/// The parts of `url` that [`url`] masks, longest first.
fn secret_parts(url: &str) -> Vec<&str> {
    let (_, rest) = split_scheme(url);
    let mut parts = Vec::new();
    let rest = match rest.rfind('@') {
        Some(at) => {
            let info = &rest[..at];
            parts.push(info);
            parts.extend(info.split(':'));
            &rest[at + 1..]
        }
        None => rest,
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, f),
        None => (rest, ""),
    };
    parts.push(fragment);
    if let Some((_, q)) = rest.split_once('?') {
        for param in q.split('&') {
            if let Some((k, v)) = param.split_once('=')
                && !plain(k)
            {
                parts.push(v);
            }
        }
    }
    // Masking a short fragment everywhere would mangle the message for no gain.
    parts.retain(|p| p.len() >= 3);
    parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    parts
}

fn plain(key: &str) -> bool {
    PLAIN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(key))
}

/// `wss://` or `turn:` and what follows.
fn split_scheme(url: &str) -> (&str, &str) {
    if let Some(i) = url.find("://") {
        return url.split_at(i + 3);
    }
    match url.find(':') {
        Some(i) if url[..i].chars().all(|c| c.is_ascii_alphanumeric()) => url.split_at(i + 1),
        _ => ("", url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_masked() {
        let cases = [
            ("wss://relay.example", "wss://relay.example"),
            ("ws://127.0.0.1:7000/x", "ws://127.0.0.1:7000/x"),
            ("wss://u:Secret1@relay.example/", "wss://***@relay.example/"),
            (
                "wss://u:p/S?e#c@relay.example/a",
                "wss://***@relay.example/a",
            ),
            (
                "wss://relay.example/?token=Secret2&x=",
                "wss://relay.example/?token=***&x=",
            ),
            ("wss://relay.example/p#Secret3", "wss://relay.example/p#***"),
            (
                "turn:t.example:3478?transport=udp",
                "turn:t.example:3478?transport=udp",
            ),
            (
                "turn:user:Secret4@t.example:3478",
                "turn:***@t.example:3478",
            ),
            (
                "turns:t.example?transport=tcp&credential=Secret5",
                "turns:t.example?transport=tcp&credential=***",
            ),
        ];
        for (raw, shown) in cases {
            assert_eq!(url(raw), shown, "{raw}");
        }
        assert_eq!(list("ws://a, wss://u:Secret@b"), "ws://a, wss://***@b");
    }

    #[test]
    fn error_text_loses_every_secret_part() {
        let raw = "wss://alice:Secret6@relay.example:443/r?token=Secret7#Secret8";
        let msg = format!(
            "Unable to connect to {raw}; host relay.example, user alice:Secret6, query token=Secret7"
        );
        let clean = scrub(&msg, raw);
        for s in ["Secret6", "Secret7", "Secret8"] {
            assert!(!clean.contains(s), "{clean}");
        }
        assert!(clean.contains("relay.example"), "{clean}");
    }
}
