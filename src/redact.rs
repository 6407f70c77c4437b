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
pub fn secret_parts(url: &str) -> Vec<&str> {
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

/// A log writer that masks known secrets in every line it writes: the last line of
/// defence for what the daemon's own fields already mask, and for what other crates log
/// at debug and trace (tungstenite logs a relay's whole request, query included).
#[derive(Clone)]
pub struct Scrub<M> {
    inner: M,
    secrets: std::sync::Arc<[String]>,
}

impl<M> Scrub<M> {
    /// `secrets` shorter than 4 bytes are left alone: masking them everywhere would
    /// mangle every line. JSON logs escape `"` and `\`, so those forms are masked too.
    pub fn new(inner: M, secrets: impl IntoIterator<Item = String>) -> Self {
        let mut all: Vec<String> = Vec::new();
        for s in secrets.into_iter().filter(|s| s.len() >= 4) {
            let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
            if escaped != s {
                all.push(escaped);
            }
            all.push(s);
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Self {
            inner,
            secrets: all.into(),
        }
    }

    /// `text` with every secret masked.
    pub fn apply<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for s in self.secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a> + 'a> tracing_subscriber::fmt::MakeWriter<'a>
    for Scrub<M>
{
    type Writer = ScrubWriter<'a, M::Writer, M>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubWriter {
            inner: self.inner.make_writer(),
            scrub: self,
        }
    }
}

/// One event's writer: tracing hands it the whole formatted line in one write.
pub struct ScrubWriter<'a, W, M> {
    inner: W,
    scrub: &'a Scrub<M>,
}

impl<W: std::io::Write, M> std::io::Write for ScrubWriter<'_, W, M> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(self.scrub.apply(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
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

    #[test]
    fn the_log_writer_masks_every_known_secret() {
        let scrub = Scrub::new(
            std::io::sink,
            [
                "pw\"Secret9".to_owned(),
                "ab".to_owned(),
                "tok-Secret10".to_owned(),
            ],
        );
        let line = r#"{"message":"GET /?token=tok-Secret10","pw":"pw\"Secret9","x":"ab"}"#;
        let clean = scrub.apply(line);
        assert!(!clean.contains("Secret"), "{clean}");
        assert!(
            clean.contains(r#""x":"ab""#),
            "short values are left alone: {clean}"
        );
    }
}
