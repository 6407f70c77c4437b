//! `new Date(v).getTime()` for the values JSON can carry: what the role check reads
//! from a node's `expiresAt`.

use super::js::Js;

/// `new Date(v).getTime()` for the forms JSON can carry: numbers are milliseconds,
/// strings are read as ECMAScript's date-time format (date-only forms and forms
/// without an offset as UTC). Anything else is NaN, which never counts as past.
pub(crate) fn date_ms(v: &Js) -> f64 {
    match v {
        Js::Num(n) if n.abs() <= 8.64e15 => n.trunc(),
        Js::Bool(b) => f64::from(u8::from(*b)),
        Js::Null => 0.0,
        Js::Str(_) | Js::Arr(_) | Js::Obj(_) => {
            parse_iso(&String::from_utf16_lossy(&v.to_js_string())).unwrap_or(f64::NAN)
        }
        Js::Num(_) => f64::NAN,
    }
}

/// The time of day of a date-time string, and its offset from UTC in minutes.
#[derive(Default)]
struct Time {
    h: i64,
    m: i64,
    sec: i64,
    ms: f64,
    offset_min: i64,
}

fn parse_iso(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    let (year, month, day) = parse_date(b, &mut i)?;
    let t = if b.get(i) == Some(&b'T') {
        i += 1;
        parse_time(b, &mut i)?
    } else {
        Time::default()
    };
    let valid = i == b.len()
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && (t.h < 24 || (t.h == 24 && t.m == 0 && t.sec == 0 && t.ms == 0.0))
        && t.m < 60
        && t.sec < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + t.h * 3600 + t.m * 60 + t.sec - t.offset_min * 60;
    let ms = secs as f64 * 1000.0 + t.ms;
    (ms.abs() <= 8.64e15).then_some(ms)
}

/// `n` ASCII digits at `*i` as a number; `*i` moves past them.
fn digits(b: &[u8], i: &mut usize, n: usize) -> Option<i64> {
    let d = b.get(*i..*i + n)?;
    if !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *i += n;
    std::str::from_utf8(d).ok()?.parse().ok()
}

/// `YYYY`, `±YYYYYY`, then optional `-MM` and `-DD` (both default to 1), from the
/// start of `b`; `*i` ends past them.
fn parse_date(b: &[u8], i: &mut usize) -> Option<(i64, i64, i64)> {
    let year = match b.first()? {
        b'+' | b'-' => {
            let neg = b[0] == b'-';
            *i = 1;
            let y = digits(b, i, 6)?;
            if neg && y == 0 {
                return None;
            }
            if neg { -y } else { y }
        }
        _ => digits(b, i, 4)?,
    };
    let (mut month, mut day) = (1, 1);
    if b.get(*i) == Some(&b'-') {
        *i += 1;
        month = digits(b, i, 2)?;
        if b.get(*i) == Some(&b'-') {
            *i += 1;
            day = digits(b, i, 2)?;
        }
    }
    Some((year, month, day))
}

/// `HH:mm`, optional `:ss` and `.sss`, then `Z`, `±HH:mm` or nothing (UTC), from
/// `*i` (just past the `T`).
fn parse_time(b: &[u8], i: &mut usize) -> Option<Time> {
    let h = digits(b, i, 2)?;
    if b.get(*i) != Some(&b':') {
        return None;
    }
    *i += 1;
    let m = digits(b, i, 2)?;
    let (mut sec, mut ms) = (0, 0.0);
    if b.get(*i) == Some(&b':') {
        *i += 1;
        sec = digits(b, i, 2)?;
        if b.get(*i) == Some(&b'.') {
            *i += 1;
            let start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            if *i == start {
                return None;
            }
            let frac = std::str::from_utf8(&b[start..*i]).ok()?;
            let frac: f64 = format!("0.{frac}").parse().ok()?;
            ms = (frac * 1000.0).trunc();
        }
    }
    let mut offset_min = 0;
    match b.get(*i) {
        Some(b'Z') => *i += 1,
        Some(&sign @ (b'+' | b'-')) => {
            *i += 1;
            let oh = digits(b, i, 2)?;
            if b.get(*i) != Some(&b':') {
                return None;
            }
            *i += 1;
            let om = digits(b, i, 2)?;
            offset_min = (oh * 60 + om) * if sign == b'+' { 1 } else { -1 };
        }
        _ => {}
    }
    Some(Time {
        h,
        m,
        sec,
        ms,
        offset_min,
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_as_date_parse_reads_them() {
        assert_eq!(parse_iso("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(
            parse_iso("2026-11-25T07:39:49.695Z"),
            Some(1_795_592_389_695.0)
        );
        assert_eq!(parse_iso("2026-11-25"), Some(1_795_564_800_000.0));
        assert_eq!(parse_iso("2026-11"), Some(1_793_491_200_000.0));
        assert_eq!(
            parse_iso("2026-11-25T08:39:49.695+01:00"),
            Some(1_795_592_389_695.0)
        );
        assert_eq!(parse_iso("+002026-11-25T07:39Z"), Some(1_795_592_340_000.0));
        for bad in [
            "",
            "2026-13-01",
            "2026-02-30",
            "2026-11-25T25:00Z",
            "soon",
            "2026-11-25 07:39",
            "-000000-01-01",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
        assert_eq!(date_ms(&Js::Num(12.7)), 12.0);
        assert!(date_ms(&Js::Num(9e15)).is_nan());
        assert!(date_ms(&Js::str("tomorrow")).is_nan());
    }
}
