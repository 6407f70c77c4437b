//! Parsers shared by the sections: every refusal names the variable and the form it
//! wants ([`ConfigError`]). A number's bounds are written once, in its [`Num`], and
//! the text of its refusal is derived from them.

use super::ConfigError;
use std::net::IpAddr;

pub(super) fn bad(var: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

/// A numeric variable: its name, what it counts, and the bounds the parser checks.
/// The refusal says `<unit> from <min> to <max>`, or `<unit> of at least <min>` when
/// the maximum is past any sane value.
#[derive(Clone, Copy)]
pub(super) struct Num {
    pub var: &'static str,
    pub unit: &'static str,
    pub min: u64,
    pub max: u64,
    /// Said after the bounds: what the value must match.
    pub note: &'static str,
}

/// A maximum this large is not worth saying.
const NO_MAX: u64 = u64::MAX >> 1;

impl Num {
    pub const fn new(var: &'static str, unit: &'static str, min: u64, max: u64) -> Self {
        Self {
            var,
            unit,
            min,
            max,
            note: "",
        }
    }

    pub const fn at_least(var: &'static str, unit: &'static str, min: u64) -> Self {
        Self::new(var, unit, min, NO_MAX)
    }

    pub const fn note(self, note: &'static str) -> Self {
        Self { note, ..self }
    }

    /// The same bounds with a minimum that depends on another setting, which `why`
    /// names.
    pub fn from(self, min: u64) -> Bounded {
        Bounded {
            num: Num { min, ..self },
            why: None,
        }
    }

    /// The form a refusal asks for.
    #[cfg(test)]
    pub fn expected(&self) -> String {
        self.bounded().expected()
    }

    fn bounded(self) -> Bounded {
        Bounded {
            num: self,
            why: None,
        }
    }

    /// The value given, or `default` when unset.
    pub fn parse(self, v: Option<&str>, default: u64) -> Result<u64, ConfigError> {
        self.bounded().parse(v, default)
    }
}

/// A [`Num`] whose minimum comes from another setting.
pub(super) struct Bounded {
    num: Num,
    why: Option<String>,
}

impl Bounded {
    /// Why the minimum is what it is, said right after it.
    pub fn because(self, why: impl Into<String>) -> Self {
        Self {
            why: Some(why.into()),
            ..self
        }
    }

    pub fn expected(&self) -> String {
        let n = &self.num;
        let why = self
            .why
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        let note = if n.note.is_empty() {
            String::new()
        } else {
            format!(", {}", n.note)
        };
        if n.max >= NO_MAX {
            format!("{} of at least {}{why}{note}", n.unit, n.min)
        } else {
            format!("{} from {}{why} to {}{note}", n.unit, n.min, n.max)
        }
    }

    pub fn parse(&self, v: Option<&str>, default: u64) -> Result<u64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        match v.trim().parse::<u64>() {
            Ok(n) if (self.num.min..=self.num.max).contains(&n) => Ok(n),
            _ => Err(bad(self.num.var, v, self.expected())),
        }
    }
}

pub(super) fn boolean(
    var: &'static str,
    v: Option<&str>,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad(var, v, "true, false, 1, 0, yes or no")),
    }
}

pub(super) fn db_name(v: &str) -> Result<String, ConfigError> {
    const MAX: usize = 128;
    let ok = (1..=MAX).contains(&v.len())
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(bad(
            "DB_NAME",
            v,
            format!(
                "1 to {MAX} characters of letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        ))
    }
}

/// A comma list of URLs with one of `schemes`, each one WebRTC's own parser takes.
pub(super) fn url_list(
    var: &'static str,
    v: &str,
    schemes: &[&str],
    expected: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = schemes.iter().any(|s| {
            part.strip_prefix(s)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
        });
        if !ok {
            return Err(bad(var, &crate::redact::list(v), expected));
        }
        // WebRTC's own parser: a URL it refuses would fail every peer link later.
        // Credentials belong in TURN_USERNAME and TURN_CREDENTIAL, not in the URL.
        let refused = if part.contains('@') {
            Some("credentials go in TURN_USERNAME and TURN_CREDENTIAL, not in the URL".to_owned())
        } else {
            rtc::ice::url::Url::parse_url(part)
                .err()
                .map(|e| e.to_string())
        };
        if let Some(why) = refused {
            return Err(bad(
                var,
                &crate::redact::list(v),
                format!("{expected}; {} is refused: {why}", crate::redact::url(part)),
            ));
        }
        out.push(part.to_owned());
    }
    Ok(out)
}

/// An IP address, or a host name that resolves (`localhost`): its first IPv4 address,
/// else its first address.
pub(super) fn host(v: &str) -> Result<IpAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let name = v.trim();
    if let Ok(ip) = name.parse() {
        return Ok(ip);
    }
    let refused = || {
        bad(
            "HOST",
            v,
            "an IP address such as 0.0.0.0 or 127.0.0.1, or a host name that resolves, such as localhost",
        )
    };
    let is_name = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !is_name {
        return Err(refused());
    }
    let addrs: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|_| refused())?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_says_the_bounds_checked() {
        let n = Num::new("X", "a whole number", 2, 9);
        assert_eq!(n.expected(), "a whole number from 2 to 9");
        assert_eq!(n.parse(None, 5), Ok(5));
        assert_eq!(n.parse(Some(" 9 "), 5), Ok(9));
        let e = n.parse(Some("10"), 5).unwrap_err();
        assert_eq!(
            (e.var, e.expected.as_str()),
            ("X", "a whole number from 2 to 9")
        );
        assert!(n.parse(Some("1"), 5).is_err());
        let open = Num::at_least("Y", "a byte count", 4096);
        assert_eq!(open.expected(), "a byte count of at least 4096");
        let noted = Num::new("Z", "a whole number", 2, 1000).note("the browsers' cellSize");
        assert_eq!(
            noted.expected(),
            "a whole number from 2 to 1000, the browsers' cellSize"
        );
        let tied = Num::new("W", "a byte count", 1, 100)
            .from(50)
            .because("twice V");
        assert_eq!(tied.expected(), "a byte count from 50 (twice V) to 100");
        assert!(tied.parse(Some("49"), 60).is_err());
    }
}
