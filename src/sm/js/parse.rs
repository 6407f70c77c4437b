//! `JSON.parse` into [`Js`]: strings as UTF-16 code units, numbers as doubles,
//! nesting bounded by [`MAX_DEPTH`].

use super::{Js, JsonError, MAX_DEPTH};

pub(super) struct Parser<'a> {
    pub(super) s: &'a [u8],
    pub(super) i: usize,
}

impl Parser<'_> {
    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn err(&self) -> JsonError {
        JsonError::Syntax(self.i)
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    pub(super) fn value(&mut self, depth: usize) -> Result<Js, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Js::Str),
            Some(b't') if self.eat(b"true") => Ok(Js::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(Js::Bool(false)),
            Some(b'n') if self.eat(b"null") => Ok(Js::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err()),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Js, JsonError> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b"}") {
            return Ok(Js::Obj(members));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.err());
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b":") {
                return Err(self.err());
            }
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"}") {
                return Ok(Js::Obj(members));
            }
            return Err(self.err());
        }
    }

    fn array(&mut self, depth: usize) -> Result<Js, JsonError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b"]") {
            return Ok(Js::Arr(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"]") {
                return Ok(Js::Arr(items));
            }
            return Err(self.err());
        }
    }

    fn string(&mut self) -> Result<Vec<u16>, JsonError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let start = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            let run = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err())?;
            out.extend(run.encode_utf16());
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let unit = match self.s.get(self.i) {
                        Some(b'"') => 0x22,
                        Some(b'\\') => 0x5c,
                        Some(b'/') => 0x2f,
                        Some(b'b') => 0x08,
                        Some(b'f') => 0x0c,
                        Some(b'n') => 0x0a,
                        Some(b'r') => 0x0d,
                        Some(b't') => 0x09,
                        Some(b'u') => {
                            let hex = self.s.get(self.i + 1..self.i + 5).ok_or(self.err())?;
                            let hex = std::str::from_utf8(hex).map_err(|_| self.err())?;
                            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return Err(self.err());
                            }
                            self.i += 4;
                            u16::from_str_radix(hex, 16).map_err(|_| self.err())?
                        }
                        _ => return Err(self.err()),
                    };
                    self.i += 1;
                    out.push(unit);
                }
                _ => return Err(self.err()),
            }
        }
    }

    fn number(&mut self) -> Result<Js, JsonError> {
        let start = self.i;
        self.eat(b"-");
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err()),
        }
        if self.eat(b".") {
            if !self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                return Err(self.err());
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if !self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                return Err(self.err());
            }
            self.digits();
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err())?;
        text.parse::<f64>().map(Js::Num).map_err(|_| self.err())
    }

    fn digits(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }
}
